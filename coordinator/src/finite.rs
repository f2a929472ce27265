//! Whether `f32` values are all finite, as a slice or as the little-endian bytes they travel in: one vectorised pass.

crate::simd::with_avx2! {
    /// Whether every value is finite: its exponent bits are not all ones. An `or` of integers
    /// may be taken in any order, so the compiler vectorises it, where an early-exit search or
    /// a running float sum is one value at a time (a tenth of a multi-task step's coordinator
    /// time at 10 tasks of 1M values); blocks still stop at the first bad one.
    pub fn all_finite(values: &[f32]) -> bool {
        values.chunks(4096).all(|block| {
            block
                .iter()
                .fold(0u32, |bad, g| bad | not_finite(*g))
                == 0
        })
    }
}

crate::simd::with_avx2! {
    /// [`all_finite`] of little-endian `f32` bytes (a whole number of values), read in place.
    pub fn all_finite_bytes(bytes: &[u8]) -> bool {
        bytes.chunks(4 * 4096).all(|block| {
            block
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")))
                .fold(0u32, |bad, bits| bad | not_finite_bits(bits))
                == 0
        })
    }
}

/// The exponent bits of an `f32`: all ones for infinities and NaNs.
const EXPONENT: u32 = 0x7f80_0000;

/// 1 when `x` is infinite or NaN, 0 otherwise, without a branch: an `or` of these over a
/// block vectorises where a search for the first bad value cannot.
#[inline(always)]
pub(crate) fn not_finite(x: f32) -> u32 {
    not_finite_bits(x.to_bits())
}

/// [`not_finite`] of an `f32` given by its bits.
#[inline(always)]
fn not_finite_bits(bits: u32) -> u32 {
    u32::from(bits & EXPONENT == EXPONENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::f32s_to_bytes;

    #[test]
    fn every_non_finite_value_is_found_wherever_it_is() {
        let mut values = vec![1.5f32; 10_000];
        assert!(all_finite(&values) && all_finite_bytes(&f32s_to_bytes(&values)));
        values[9_999] = f32::MAX;
        assert!(all_finite(&values), "the largest finite value is finite");
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 4095, 4096, 9_999] {
                let mut v = values.clone();
                v[at] = bad;
                assert!(!all_finite(&v), "{bad} at {at}");
                assert!(!all_finite_bytes(&f32s_to_bytes(&v)), "{bad} at {at}");
            }
        }
    }
}
