//! Hot vector loops compiled twice, for baseline x86-64 and for AVX2, the wider one chosen at run time; both give the same bits.
//!
//! The release build targets every x86-64, whose vectors hold two `f64`; the loops over
//! gradients run twice as fast with AVX2's four. Rust never reorders, fuses or contracts
//! floating-point operations, so vectorising the same source for a wider register changes the
//! speed and never the result: machines with and without AVX2 stay bit-identical.

/// Defines `fn NAME(ARGS) -> RET { BODY }` that runs `BODY` compiled for AVX2 when the CPU has
/// it, and for baseline x86-64 (or any other target) otherwise. Helpers the body calls must be
/// `#[inline(always)]` to be compiled for AVX2 with it.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU was just seen to support AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            portable($($arg),*)
        }
    };
}

pub(crate) use with_avx2;

#[cfg(test)]
mod tests {
    with_avx2! {
        /// A sum whose bits depend on the order of its additions.
        fn ordered_sum(values: &[f32]) -> f32 {
            let mut lanes = [0.0f32; 8];
            for chunk in values.chunks_exact(8) {
                for (lane, &v) in lanes.iter_mut().zip(chunk) {
                    *lane += v;
                }
            }
            lanes.iter().sum()
        }
    }

    #[test]
    fn the_dispatched_loop_gives_the_scalar_loops_bits() {
        let values: Vec<f32> = (0..4096)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 + 1e4)
            .collect();
        let mut lanes = [0.0f32; 8];
        for (i, &v) in values.iter().enumerate() {
            lanes[i % 8] += v;
        }
        let scalar: f32 = lanes.iter().sum();
        assert_eq!(ordered_sum(&values).to_bits(), scalar.to_bits());
    }
}
