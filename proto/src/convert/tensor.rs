//! Tensors on the wire: little-endian f32 buffers.

use prost::bytes::Bytes;

/// Encodes `values` as little-endian f32, the wire form of every tensor. On little-endian
/// machines that is their memory, copied at once: a multi-task chunk's gradients are tens of
/// megabytes, and the value-by-value encoding was a seventh of a worker's time.
pub fn f32s_to_bytes(values: &[f32]) -> Bytes {
    if cfg!(target_endian = "little") {
        return Bytes::copy_from_slice(bytemuck::cast_slice(values));
    }
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Bytes::from(out)
}

/// Decodes little-endian f32; `None` when the length is not a multiple of four.
pub fn f32s_from_bytes(bytes: &[u8]) -> Option<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    if cfg!(target_endian = "little") {
        // Their memory, copied at once (the bytes need not be 4-aligned, so not cast in place).
        let mut values = vec![0f32; bytes.len() / 4];
        bytemuck::cast_slice_mut::<f32, u8>(&mut values).copy_from_slice(bytes);
        return Some(values);
    }
    Some(
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_buffers_round_trip_bit_for_bit() {
        let values = [0.0f32, -1.5, f32::MIN_POSITIVE, 3.25e7, f32::NAN];
        let back = f32s_from_bytes(&f32s_to_bytes(&values)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&values));
    }

    #[test]
    fn ragged_buffers_are_refused() {
        assert_eq!(f32s_from_bytes(&[1, 2, 3]), None);
    }
}
