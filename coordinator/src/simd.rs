//! Hot vector loops compiled twice, for baseline x86-64 and for AVX2 with FMA, the wider one chosen at run time; both give the same bits.
//!
//! The release build targets every x86-64, whose vectors hold two `f64`; the loops over
//! gradients run twice as fast with AVX2's four. Rust never reorders, fuses or contracts
//! floating-point operations on its own, so vectorising the same source for a wider register
//! changes the speed and never the result: machines with and without AVX2 stay bit-identical.
//! A loop that asks for fusion with `mul_add` gets one rounding per multiply-add everywhere:
//! from the FMA unit where the CPU has one (every x86-64 since 2013 with AVX2, every
//! aarch64), from libm's exact `fma` otherwise, which is slow but gives the same bits.

/// Defines `fn NAME(ARGS) -> RET { BODY }` that runs `BODY` compiled for AVX2 and FMA when the
/// CPU has both, and for baseline x86-64 (or any other target) otherwise. Helpers the body
/// calls must be `#[inline(always)]` to be compiled for AVX2 with it.
macro_rules! with_avx2 {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn portable($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) $(-> $ret)? {
                    portable($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU was just seen to support AVX2 and FMA.
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

    with_avx2! {
        /// A dot product whose bits depend on each multiply-add being fused.
        fn fused_dot(a: &[f32], b: &[f32]) -> f32 {
            let mut lanes = [0.0f32; 8];
            for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
                for lane in 0..8 {
                    lanes[lane] = x[lane].mul_add(y[lane], lanes[lane]);
                }
            }
            lanes.iter().sum()
        }
    }

    #[test]
    fn a_dispatched_mul_add_gives_the_scalar_mul_adds_bits() {
        let a: Vec<f32> = (0..4096).map(|i| 1.0 + (i % 97) as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..4096).map(|i| 1.0 - (i % 89) as f32 * 1e-3).collect();
        let mut lanes = [0.0f32; 8];
        let mut unfused = [0.0f32; 8];
        for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
            lanes[i % 8] = x.mul_add(y, lanes[i % 8]);
            unfused[i % 8] += x * y;
        }
        let scalar: f32 = lanes.iter().sum();
        assert_eq!(fused_dot(&a, &b).to_bits(), scalar.to_bits());
        // The products are not exact in f32, so fusing them must show in the bits; otherwise
        // this test could not tell a fused loop from one that is not.
        assert_ne!(unfused.iter().sum::<f32>().to_bits(), scalar.to_bits());
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
