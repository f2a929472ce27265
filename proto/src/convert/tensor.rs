//! Tensors on the wire: little-endian f32 buffers.

use std::ops::Deref;

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

/// [`f32s_to_bytes`] of values the caller gives up (a `Vec`) or shares (an `Arc` of one): on
/// little-endian machines their memory becomes the bytes, with no copy (a step's parameters, a
/// chunk's layer inputs and heads' gradients are megabytes). Shared values stay unchanged while
/// the bytes live: an `Arc`'s holders can only write them through a copy (`Arc::make_mut`).
pub fn f32s_into_bytes<V>(values: V) -> Bytes
where
    V: Deref + Send + 'static,
    V::Target: AsRef<[f32]>,
{
    if cfg!(target_endian = "little") {
        return Bytes::from_owner(LittleEndian(values));
    }
    f32s_to_bytes((*values).as_ref())
}

/// `f32` values whose memory is their little-endian bytes (on little-endian machines).
struct LittleEndian<V>(V);

impl<V: Deref> AsRef<[u8]> for LittleEndian<V>
where
    V::Target: AsRef<[f32]>,
{
    fn as_ref(&self) -> &[u8] {
        bytemuck::cast_slice((*self.0).as_ref())
    }
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
    fn values_given_up_are_the_bytes_of_the_values_copied() {
        let values = vec![0.0f32, -1.5, f32::MIN_POSITIVE, 3.25e7, f32::NAN, -0.0];
        let copied = f32s_to_bytes(&values);
        let given = f32s_into_bytes(values);
        assert_eq!(given, copied);
        assert_eq!(given.slice(4..12), copied.slice(4..12));
        assert!(f32s_into_bytes(Vec::<f32>::new()).is_empty());
        let shared = std::sync::Arc::new(vec![1.0f32, 2.0]);
        let bytes = f32s_into_bytes(shared.clone());
        assert_eq!(bytes, f32s_to_bytes(&shared));
        // The bytes are the shared values themselves, not a copy of them.
        assert_eq!(bytes.as_ptr(), shared.as_ptr().cast());
    }

    #[test]
    fn ragged_buffers_are_refused() {
        assert_eq!(f32s_from_bytes(&[1, 2, 3]), None);
    }
}
