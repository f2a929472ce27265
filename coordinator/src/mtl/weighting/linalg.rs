//! The little linear algebra the methods share, on flat `f32` gradients accumulated in `f64`.
//!
//! Gradients of shared layers have millions of entries and every method reads each task's
//! once per step, so the loops over them are written for the machine: independent
//! accumulator lanes the compiler turns into SIMD (AVX2 where the CPU has it), and blocks
//! small enough to stay in cache while every task's slice of a block is used. Every sum still
//! runs in one fixed order, so results are the same on every run and machine.

use crate::mtl::pair_sums::add_pairs;
use crate::parallel;
use crate::simd::with_avx2;

/// Independent accumulators per dot product: a sum per lane vectorises, one running sum
/// cannot (its additions must happen in order).
pub(crate) const LANES: usize = 8;
/// Entries per block in [`gram`] and [`combine`]: every task's slice of a block (32 KiB of
/// f32 each) stays in cache while the block is used.
const BLOCK: usize = 8192;
/// Entries per segment: [`gram`] sums each segment on its own (on whichever core) and then the
/// segments in order, so the result depends on the gradients' length, never on the cores.
const SEGMENT: usize = 16 * BLOCK;
/// Entries per block in [`gram`], widened to `f64` once per task rather than once per pair:
/// every task's slice (32 KiB of f64 each) stays in cache while the pairs are formed.
const GRAM_BLOCK: usize = 4096;

/// The segments of a vector of `len` entries.
fn segments(len: usize) -> Vec<std::ops::Range<usize>> {
    (0..len.max(1))
        .step_by(SEGMENT)
        .map(|start| start..(start + SEGMENT).min(len))
        .collect()
}

fn is_large(gradients: &[Vec<f32>]) -> bool {
    parallel::worth_it(gradients.iter().map(Vec::len).sum())
}

/// Adds the products of `a` and `b` lane by lane into `acc`, the tail into lane 0. Products
/// of two `f32` are exact in `f64`.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], acc: &mut [f64; LANES]) {
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..LANES {
            acc[lane] += f64::from(x[lane]) * f64::from(y[lane]);
        }
    }
    for (&x, &y) in a_tail.iter().zip(b_tail) {
        acc[0] += f64::from(x) * f64::from(y);
    }
}

/// [`dot_lanes`] of `a` with each of `K` rows at once, on entries already widened to `f64`
/// (the products are exact): `a` is loaded once for `K` products. Each accumulator still adds
/// its own products in entry order, so the bits are those of `K` separate dot products.
#[inline(always)]
pub(crate) fn dot_wide_rows<const K: usize>(
    a: &[f64],
    rows: [&[f64]; K],
    acc: &mut [[f64; LANES]; K],
) {
    let full = a.len() / LANES * LANES;
    let mut sums = *acc;
    for start in (0..full).step_by(LANES) {
        let x = &a[start..start + LANES];
        for (sum, row) in sums.iter_mut().zip(&rows) {
            let y = &row[start..start + LANES];
            for lane in 0..LANES {
                sum[lane] += x[lane] * y[lane];
            }
        }
    }
    for (index, &x) in a.iter().enumerate().skip(full) {
        for (sum, row) in sums.iter_mut().zip(&rows) {
            sum[0] += x * row[index];
        }
    }
    *acc = sums;
}

with_avx2! {
    /// Dot product of two gradients, accumulated in f64.
    pub fn dot(a: &[f32], b: &[f32]) -> f64 {
        let mut acc = [0.0; LANES];
        dot_lanes(a, b, &mut acc);
        acc.iter().sum()
    }
}

with_avx2! {
    /// Adds, for every pair `i ≤ j` of the tasks, the products of their entries in `range`
    /// into `acc[i * n + j]`, one cache-sized block at a time, each widened to `f64` once.
    fn gram_segment(gradients: &[Vec<f32>], range: std::ops::Range<usize>, acc: &mut [[f64; LANES]]) {
        let n = gradients.len();
        let mut wide = vec![0.0f64; n * GRAM_BLOCK];
        for start in range.clone().step_by(GRAM_BLOCK) {
            let end = (start + GRAM_BLOCK).min(range.end);
            let len = end - start;
            for (i, g) in gradients.iter().enumerate() {
                for (w, &x) in wide[i * GRAM_BLOCK..][..len].iter_mut().zip(&g[start..end]) {
                    *w = f64::from(x);
                }
            }
            let rows: Vec<&[f64]> = (0..n).map(|t| &wide[t * GRAM_BLOCK..][..len]).collect();
            add_pairs(&rows, acc);
        }
    }
}

with_avx2! {
    /// Writes `Σ coefficients[t] · gradients[t][offset..]` into `piece`, block by block.
    fn combine_piece(coefficients: &[f64], gradients: &[Vec<f32>], offset: usize, piece: &mut [f32]) {
        let mut block = vec![0.0f64; BLOCK.min(piece.len())];
        for start in (0..piece.len()).step_by(BLOCK) {
            let end = (start + BLOCK).min(piece.len());
            let block = &mut block[..end - start];
            block.fill(0.0);
            let at = offset + start..offset + end;
            for (&c, g) in coefficients.iter().zip(gradients) {
                for (o, &x) in block.iter_mut().zip(&g[at.clone()]) {
                    *o += c * f64::from(x);
                }
            }
            for (o, &x) in piece[start..end].iter_mut().zip(block.iter()) {
                *o = x as f32;
            }
        }
    }
}

/// Euclidean norm of a gradient.
pub fn norm(a: &[f32]) -> f64 {
    dot(a, a).sqrt()
}

/// The Gram matrix `G Gᵀ` of the gradients (row-major, tasks × tasks), all of one length.
/// Computed block by block, so each gradient is read from memory once rather than once per
/// pair, and in each block the pairs four tasks by four ([`add_pairs`]: each widened slice
/// loaded once for four pairs, the bits of one pair at a time).
pub fn gram(gradients: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let n = gradients.len();
    let len = gradients.first().map_or(0, Vec::len);
    let per_segment = parallel::map(&segments(len), is_large(gradients), |range| {
        let mut acc = vec![[0.0; LANES]; n * n];
        gram_segment(gradients, range.clone(), &mut acc);
        acc.iter()
            .map(|lanes| lanes.iter().sum::<f64>())
            .collect::<Vec<f64>>()
    });
    let mut m = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i..n {
            let d: f64 = per_segment.iter().map(|s| s[i * n + j]).sum();
            m[i][j] = d;
            m[j][i] = d;
        }
    }
    m
}

/// `Σ coefficients[i] · gradients[i]`, accumulated in f64 and rounded once, block by block.
pub fn combine(coefficients: &[f64], gradients: &[Vec<f32>]) -> Vec<f32> {
    let len = gradients.first().map_or(0, Vec::len);
    // Each entry is its own sum over the tasks, so any split of the entries gives the same bits.
    let mut out = vec![0.0f32; len];
    let mut pieces: Vec<(usize, &mut [f32])> = out
        .chunks_mut(SEGMENT)
        .enumerate()
        .map(|(i, piece)| (i * SEGMENT, piece))
        .collect();
    parallel::for_each_mut(&mut pieces, is_large(gradients), |_, (offset, piece)| {
        combine_piece(coefficients, gradients, *offset, piece)
    });
    out
}

/// Solves `a x = b` for a small square system by Gaussian elimination with partial pivoting;
/// `None` when a pivot's magnitude is at most `min_pivot` (singular, or too close to it for
/// the answer to mean anything at the scale the caller knows its entries have).
pub fn solve(a: &[Vec<f64>], b: &[f64], min_pivot: f64) -> Option<Vec<f64>> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a.to_vec();
    let mut x = b.to_vec();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].is_nan() || m[pivot][col].abs() <= min_pivot {
            return None;
        }
        m.swap(col, pivot);
        x.swap(col, pivot);
        let (done, rest) = m.split_at_mut(col + 1);
        let (x_done, x_rest) = x.split_at_mut(col + 1);
        let pivot_row = &done[col];
        for (row, value) in rest.iter_mut().zip(x_rest.iter_mut()) {
            let factor = row[col] / pivot_row[col];
            for (entry, p) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *entry -= factor * p;
            }
            *value -= factor * x_done[col];
        }
    }
    for col in (0..n).rev() {
        let tail: f64 = (col + 1..n).map(|k| m[col][k] * x[k]).sum();
        x[col] = (x[col] - tail) / m[col][col];
    }
    Some(x)
}

/// The quadratic form `xᵀ m y` of a small symmetric matrix.
pub fn quadratic(m: &[Vec<f64>], x: &[f64], y: &[f64]) -> f64 {
    m.iter()
        .zip(x)
        .map(|(row, &xi)| xi * row.iter().zip(y).map(|(a, b)| a * b).sum::<f64>())
        .sum()
}

/// The product `m x` of a small matrix and a vector.
pub fn mat_vec(m: &[Vec<f64>], x: &[f64]) -> Vec<f64> {
    m.iter()
        .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn solve_needs_pivoting_and_refuses_singular_systems() {
        // [0 1; 2 1] x = [3; 4] has x = (0.5, 3): 1·3 = 3 and 2·0.5 + 3 = 4. The zero in the
        // corner defeats elimination without a row swap.
        let x = solve(&[vec![0.0, 1.0], vec![2.0, 1.0]], &[3.0, 4.0], 0.0).unwrap();
        assert!(
            (x[0] - 0.5).abs() < 1e-15 && (x[1] - 3.0).abs() < 1e-15,
            "{x:?}"
        );
        assert_eq!(
            solve(&[vec![1.0, 2.0], vec![2.0, 4.0]], &[1.0, 2.0], 0.0),
            None
        );
        assert_eq!(solve(&[vec![1e-9]], &[1.0], 1e-6), None);
    }

    #[test]
    fn blocked_gram_and_combine_match_plain_loops_across_lane_and_block_edges() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for len in [0, 1, 7, 8, 9, BLOCK - 1, BLOCK, BLOCK + 3, 3 * BLOCK + 11] {
            // Six tasks: a block of four pairs by four and a ragged one.
            let g: Vec<Vec<f32>> = (0..6)
                .map(|_| (0..len).map(|_| rng.random_range(-1.0..1.0)).collect())
                .collect();
            let plain_dot = |a: &[f32], b: &[f32]| -> f64 {
                a.iter()
                    .zip(b)
                    .map(|(&x, &y)| f64::from(x) * f64::from(y))
                    .sum()
            };
            let m = gram(&g);
            for i in 0..6 {
                for j in 0..6 {
                    let expected = plain_dot(&g[i], &g[j]);
                    assert!(
                        (m[i][j] - expected).abs() <= 1e-12 * expected.abs().max(1.0),
                        "len {len}: G[{i}][{j}] = {} but the plain sum is {expected}",
                        m[i][j]
                    );
                    assert!(
                        (dot(&g[i], &g[j]) - expected).abs() <= 1e-12 * expected.abs().max(1.0)
                    );
                    assert_eq!(m[i][j].to_bits(), m[j][i].to_bits());
                    // One segment: the same lanes summed in the same order as one dot product.
                    assert_eq!(m[i][j].to_bits(), dot(&g[i], &g[j]).to_bits(), "len {len}");
                }
            }
            let c = [0.5, -2.0, 3.0];
            let combined = combine(&c, &g);
            assert_eq!(combined.len(), len);
            for (k, &x) in combined.iter().enumerate() {
                let expected: f64 = (0..3).map(|t| c[t] * f64::from(g[t][k])).sum();
                assert_eq!(x, expected as f32, "len {len}: entry {k}");
            }
        }
    }

    #[test]
    fn quadratic_and_mat_vec_agree_with_hand_arithmetic() {
        let m = [vec![2.0, 1.0], vec![1.0, 3.0]];
        // m (1, 2) = (2 + 2, 1 + 6) = (4, 7); (1, -1)·(4, 7) = -3.
        assert_eq!(mat_vec(&m, &[1.0, 2.0]), vec![4.0, 7.0]);
        assert_eq!(quadratic(&m, &[1.0, -1.0], &[1.0, 2.0]), -3.0);
    }
}
