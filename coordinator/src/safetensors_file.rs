//! Writes safetensors files byte-for-byte deterministically (sorted header, no hash-map order).

use std::collections::BTreeMap;

use outerloop_proto::MlpLayout;
use serde_json::{json, Map, Value};

/// Encodes `params` (laid out by `layout`) as a safetensors file of F32 tensors with
/// `metadata`. The same inputs always give the same bytes, so runs can be compared by checksum.
pub fn encode(layout: &MlpLayout, params: &[f32], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    assert_eq!(
        params.len(),
        layout.param_count(),
        "parameters do not match the layout"
    );
    let mut header = Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), json!(metadata));
    }
    for slot in &layout.slots {
        let (begin, end) = (4 * slot.offset, 4 * (slot.offset + slot.len()));
        header.insert(
            slot.name.clone(),
            json!({ "dtype": "F32", "shape": slot.shape, "data_offsets": [begin, end] }),
        );
    }
    // serde_json's Map is ordered by key, so the header text is deterministic.
    let mut header =
        serde_json::to_vec(&Value::Object(header)).expect("a JSON object always serializes");
    // The format asks for the data to start 8-byte aligned; the header is padded with spaces.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + 4 * params.len());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for v in params {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_reader_reads_what_we_write() {
        let layout = MlpLayout::new(2, &[3], 1);
        let params: Vec<f32> = (0..layout.param_count()).map(|i| i as f32 * 0.5).collect();
        let metadata = BTreeMap::from([
            ("step".to_string(), "7".to_string()),
            ("a".to_string(), "b".to_string()),
        ]);
        let bytes = encode(&layout, &params, &metadata);
        assert_eq!(bytes, encode(&layout, &params, &metadata), "deterministic");

        let (_, parsed_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            parsed_meta
                .metadata()
                .as_ref()
                .unwrap()
                .get("step")
                .map(String::as_str),
            Some("7")
        );
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let w = file.tensor("0.weight").unwrap();
        assert_eq!(
            (w.dtype(), w.shape()),
            (safetensors::Dtype::F32, &[3usize, 2][..])
        );
        let bias: Vec<f32> = file
            .tensor("2.bias")
            .unwrap()
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(bias, vec![params[params.len() - 1]]);
        assert_eq!(
            (8 + u64::from_le_bytes(bytes[..8].try_into().unwrap())) % 8,
            0
        );
    }
}
