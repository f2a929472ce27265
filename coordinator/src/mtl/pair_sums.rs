//! Inner products of every pair of a few rows widened from `f32`, in `f64` lanes, a block of four rows by four in registers (AVX-512 where the CPU has it), every kernel giving the same bits.
//!
//! The factored gradients need two such sets of sums: each layer's `A Aᵀ` over its inputs,
//! and the Gram matrix's pairs of `Lᵀ Δ_t`. A pair's sum is kept as [`LANES`] partial sums,
//! value `i` going to lane `i % LANES` in order and a tail past the last whole lane to lane
//! 0, as [`dot_wide_rows`] does. Taking the pairs a block of 4 × 4 at a time loads each row
//! once for four pairs rather than once for every pair, and keeps sixteen independent sums
//! going. The values are `f32` widened, so each product is exact in `f64` and fusing it with
//! its add (the AVX-512 kernel) rounds where the separate add does: the same bits.

use crate::mtl::weighting::linalg::{dot_wide_rows, LANES};

/// Rows of a block: a block of pairs is `BLOCK × BLOCK`.
pub(crate) const BLOCK: usize = 4;

/// Where a block's sixteen pairs keep their lanes: `at[a][b]` is the index, in the caller's
/// lanes, of the pair of row `a` of the first four and row `b` of the second, no two pairs
/// sharing one; `None` for a pair whose sums are not wanted (summed, then dropped).
pub(crate) type BlockAt = [[Option<usize>; BLOCK]; BLOCK];

/// Adds the products of `first[a]` and `second[b]` (all of one length) to `lanes[at[a][b]]`,
/// for every `a` and `b` with a place, by the widest kernel the CPU has. Every value must be
/// an `f32` widened.
pub(crate) fn add_block(
    first: [&[f64]; BLOCK],
    second: [&[f64]; BLOCK],
    at: &BlockAt,
    lanes: &mut [[f64; LANES]],
) {
    let len = first[0].len();
    assert!(
        first.iter().chain(&second).all(|row| row.len() == len),
        "rows of one length"
    );
    assert!(
        at.iter().flatten().flatten().all(|&i| i < lanes.len()),
        "a place for every pair within the lanes"
    );
    // The AVX-512 kernel loads each place's lanes once and stores them at the end, so two
    // pairs sharing a place would keep only one of their sums.
    debug_assert!(
        (at.iter().flatten().flatten()).enumerate().all(|(n, i)| at
            .iter()
            .flatten()
            .flatten()
            .skip(n + 1)
            .all(|j| i != j)),
        "a place of its own for every pair"
    );
    debug_assert!(
        (first.iter().chain(&second))
            .flat_map(|row| row.iter())
            .all(|&x| x == f64::from(x as f32)),
        "values widened from f32"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU was just seen to have AVX-512F; the rows and places were checked.
        return unsafe { add_block_avx512(first, second, at, lanes) };
    }
    add_block_portable(first, second, at, lanes)
}

crate::simd::with_avx2! {
    /// [`add_block`] as four calls of [`dot_wide_rows`] (one row against four).
    fn add_block_portable(
        first: [&[f64]; BLOCK],
        second: [&[f64]; BLOCK],
        at: &BlockAt,
        lanes: &mut [[f64; LANES]],
    ) {
        for (row, at) in first.iter().zip(at) {
            let mut sums = at.map(|i| i.map_or([0.0; LANES], |i| lanes[i]));
            dot_wide_rows(row, second, &mut sums);
            for (&i, sums) in at.iter().zip(&sums) {
                if let Some(i) = i {
                    lanes[i] = *sums;
                }
            }
        }
    }
}

/// [`add_block`] with the sixteen sums in AVX-512 registers, one lane set each.
///
/// # Safety
/// The CPU has AVX-512F, every row has `first[0].len()` values and every place is within
/// `lanes`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_block_avx512(
    first: [&[f64]; BLOCK],
    second: [&[f64]; BLOCK],
    at: &BlockAt,
    lanes: &mut [[f64; LANES]],
) {
    use std::arch::x86_64::*;
    const { assert!(LANES == 8, "one AVX-512 register of f64 is a pair's lanes") };
    let len = first[0].len();
    let full = len / LANES * LANES;
    let mut sums = [[_mm512_setzero_pd(); BLOCK]; BLOCK];
    for (sums, at) in sums.iter_mut().zip(at) {
        for (sum, &i) in sums.iter_mut().zip(at) {
            if let Some(i) = i {
                // SAFETY: a lane set is 8 `f64`; the place was checked.
                *sum = unsafe { _mm512_loadu_pd(lanes.get_unchecked(i).as_ptr()) };
            }
        }
    }
    for i in (0..full).step_by(LANES) {
        // SAFETY: `i + LANES <= full <= len`, every row's length.
        let x: [__m512d; BLOCK] =
            std::array::from_fn(|a| unsafe { _mm512_loadu_pd(first[a].as_ptr().add(i)) });
        let y: [__m512d; BLOCK] =
            std::array::from_fn(|b| unsafe { _mm512_loadu_pd(second[b].as_ptr().add(i)) });
        for (sums, &x) in sums.iter_mut().zip(&x) {
            for (sum, &y) in sums.iter_mut().zip(&y) {
                *sum = _mm512_fmadd_pd(x, y, *sum);
            }
        }
    }
    for ((sums, at), row) in sums.iter().zip(at).zip(&first) {
        for ((&sum, &i), other) in sums.iter().zip(at).zip(&second) {
            if let Some(i) = i {
                let lanes = &mut lanes[i];
                // SAFETY: a lane set is 8 `f64`.
                unsafe { _mm512_storeu_pd(lanes.as_mut_ptr(), sum) };
                // The tail, value after value into lane 0, as `dot_wide_rows` adds it.
                for k in full..len {
                    lanes[0] += row[k] * other[k];
                }
            }
        }
    }
}

/// Adds to `lanes[s * n + t]`, for every pair `s ≤ t` of the `n` rows (all of one length),
/// their products, [`add_block`] by [`add_block`]. A block past the last row repeats it and
/// drops what it summed for it; so do a diagonal block's pairs below the diagonal.
pub(crate) fn add_pairs(rows: &[&[f64]], lanes: &mut [[f64; LANES]]) {
    let n = rows.len();
    assert_eq!(lanes.len(), n * n, "a lane set for every pair");
    for s in (0..n).step_by(BLOCK) {
        for t in (s..n).step_by(BLOCK) {
            let at: BlockAt = std::array::from_fn(|a| {
                std::array::from_fn(|b| {
                    let (i, j) = (s + a, t + b);
                    (i <= j && j < n).then_some(i * n + j)
                })
            });
            add_block(
                std::array::from_fn(|a| rows[(s + a).min(n - 1)]),
                std::array::from_fn(|b| rows[(t + b).min(n - 1)]),
                &at,
                lanes,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Rows of `f32` values widened, of `len` each.
    fn rows(n: usize, len: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                (0..len)
                    .map(|_| f64::from(rng.random_range(-1.0f32..1.0)))
                    .collect()
            })
            .collect()
    }

    /// Every pair's lanes by [`dot_wide_rows`], one pair at a time, over two parts of the
    /// rows, as the callers add them.
    fn reference(rows: &[Vec<f64>], split: usize) -> Vec<[f64; LANES]> {
        let n = rows.len();
        let mut lanes = vec![[0.0; LANES]; n * n];
        for part in [0..split, split..rows[0].len()] {
            for s in 0..n {
                for t in s..n {
                    let mut sums = [lanes[s * n + t]];
                    dot_wide_rows(&rows[s][part.clone()], [&rows[t][part.clone()]], &mut sums);
                    lanes[s * n + t] = sums[0];
                }
            }
        }
        lanes
    }

    /// Blocks over any number of rows (ragged last blocks included), lengths with and
    /// without a tail, added to sums already there: the bits of one pair at a time.
    #[test]
    fn blocks_of_pairs_give_the_bits_of_one_pair_at_a_time() {
        for (n, len, split) in [
            (1, 8, 8),
            (3, 21, 16),
            (4, 64, 24),
            (10, 203, 96),
            (13, 37, 5),
        ] {
            let rows = rows(n, len, n as u64 + 7);
            let expected = reference(&rows, split);
            let mut lanes = vec![[0.0; LANES]; n * n];
            for part in [0..split, split..len] {
                let parts: Vec<&[f64]> = rows.iter().map(|r| &r[part.clone()]).collect();
                add_pairs(&parts, &mut lanes);
            }
            for s in 0..n {
                for t in s..n {
                    assert_eq!(
                        lanes[s * n + t].map(f64::to_bits),
                        expected[s * n + t].map(f64::to_bits),
                        "{n} rows of {len}, pair ({s}, {t})"
                    );
                }
            }
            // Pairs below the diagonal are never written.
            assert!((0..n).all(|s| (0..s).all(|t| lanes[s * n + t] == [0.0; LANES])));
        }
    }

    /// The portable kernel gives the bits of the one chosen for this CPU.
    #[test]
    fn the_portable_block_gives_the_bits_of_the_chosen_one() {
        let rows = rows(8, 77, 3);
        let (first, second) = (
            std::array::from_fn(|a| &rows[a][..]),
            std::array::from_fn(|b| &rows[4 + b][..]),
        );
        // Every pair kept but one, placed out of order, over sums already there.
        let at: BlockAt = std::array::from_fn(|a| {
            std::array::from_fn(|b| (a + b != 3).then_some(15 - 4 * a - b))
        });
        let mut chosen = vec![[0.5; LANES]; 16];
        let mut portable = chosen.clone();
        add_block(first, second, &at, &mut chosen);
        add_block_portable(first, second, &at, &mut portable);
        let bits = |lanes: &[[f64; LANES]]| {
            lanes
                .iter()
                .map(|l| l.map(f64::to_bits))
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&chosen), bits(&portable));
        // The dropped pair's place (row 1 against row 2) kept what it held.
        assert_eq!(chosen[15 - 4 - 2], [0.5; LANES]);
        assert_ne!(chosen[0], [0.5; LANES]);
    }

    #[test]
    #[should_panic(expected = "a place for every pair within the lanes")]
    fn places_past_the_lanes_are_refused() {
        let row = vec![0.0; 8];
        let mut lanes = [[0.0; LANES]; 16];
        let at: BlockAt = std::array::from_fn(|a| std::array::from_fn(|b| Some(5 * a + b)));
        add_block(
            [&row, &row, &row, &row],
            [&row, &row, &row, &row],
            &at,
            &mut lanes,
        );
    }

    #[test]
    #[should_panic(expected = "rows of one length")]
    fn rows_of_different_lengths_are_refused() {
        let (long, short) = (vec![0.0; 8], vec![0.0; 7]);
        let mut lanes = [[0.0; LANES]; 16];
        let at: BlockAt = std::array::from_fn(|a| std::array::from_fn(|b| Some(4 * a + b)));
        add_block(
            [&long, &long, &long, &long],
            [&long, &long, &long, &short],
            &at,
            &mut lanes,
        );
    }
}
