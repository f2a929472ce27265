//! Safetensors files: written byte-for-byte deterministically (sorted header), read back with the reference crate.

use std::collections::BTreeMap;

use outerloop_proto::model::ParamLayout;
use serde_json::{json, Map, Value};

/// One f32 tensor to write.
#[derive(Clone, Debug)]
pub struct NamedTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: &'a [f32],
}

/// The tensors of a flat parameter buffer, named and shaped by its layout.
pub fn model_tensors<'a>(layout: &ParamLayout, params: &'a [f32]) -> Vec<NamedTensor<'a>> {
    assert_eq!(
        params.len(),
        layout.param_count(),
        "parameters do not match the layout"
    );
    layout
        .slots
        .iter()
        .map(|slot| NamedTensor {
            name: slot.name.clone(),
            shape: slot.shape.clone(),
            values: slot.values(params),
        })
        .collect()
}

/// Encodes F32 tensors and `metadata` as a safetensors file. The same inputs always give the
/// same bytes, so runs can be compared by checksum.
pub fn encode(tensors: &[NamedTensor], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    let mut offset = 0;
    for t in tensors {
        assert_eq!(
            t.shape.iter().product::<usize>(),
            t.values.len(),
            "{}: shape and data differ",
            t.name
        );
        let end = offset + 4 * t.values.len();
        header.insert(
            t.name.clone(),
            json!({ "dtype": "F32", "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    // serde_json's Map is ordered by key, so the header text is deterministic.
    let mut header =
        serde_json::to_vec(&Value::Object(header)).expect("a JSON object always serializes");
    // The format asks for the data to start 8-byte aligned; the header is padded with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in tensors {
        for v in t.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// A decoded file: every tensor flattened, and the metadata.
#[derive(Debug, Default, PartialEq)]
pub struct Decoded {
    pub tensors: BTreeMap<String, Vec<f32>>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads an F32 safetensors file; the error says what is wrong with it.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let mut decoded = Decoded {
        metadata: header
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Decoded::default()
    };
    for (name, view) in file.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor {name} is {:?}, expected F32", view.dtype()));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        decoded.tensors.insert(name, values);
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::model::Mlp;

    #[test]
    fn the_reference_reader_reads_what_we_write() {
        let layout = Mlp {
            input: 2,
            hidden: vec![3],
            output: 1,
        }
        .layout();
        let params: Vec<f32> = (0..layout.param_count()).map(|i| i as f32 * 0.5).collect();
        let metadata = BTreeMap::from([
            ("step".to_string(), "7".to_string()),
            ("a".to_string(), "b".to_string()),
        ]);
        let bytes = encode(&model_tensors(&layout, &params), &metadata);
        assert_eq!(
            bytes,
            encode(&model_tensors(&layout, &params), &metadata),
            "deterministic"
        );
        assert_eq!(
            (8 + u64::from_le_bytes(bytes[..8].try_into().unwrap())) % 8,
            0,
            "aligned"
        );

        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let w = file.tensor("0.weight").unwrap();
        assert_eq!(
            (w.dtype(), w.shape()),
            (safetensors::Dtype::F32, &[3usize, 2][..])
        );

        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.metadata, metadata);
        assert_eq!(decoded.tensors["2.bias"], vec![params[params.len() - 1]]);
        let flat: Vec<f32> = layout
            .slots
            .iter()
            .flat_map(|s| decoded.tensors[&s.name].clone())
            .collect();
        assert_eq!(flat, params);
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        assert!(decode(b"not a safetensors file").is_err());
    }
}
