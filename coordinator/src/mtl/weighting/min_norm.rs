//! The min-norm point of the convex hull of a few gradients, from their Gram matrix.
//!
//! Sener & Koltun's MinNormSolver (NeurIPS 2018, arXiv:1810.04650, Algorithms 1–2), with
//! Wolfe's fully corrective step ("Finding the nearest point in a polytope", Math. Programming
//! 1976).
//!
//! As in Sener & Koltun's code the search starts from the best pair of gradients, solved by
//! the exact two-vector step, and each round adds the Frank–Wolfe vertex (the gradient with
//! the smallest projection on the current point). Where their loop then takes one more
//! two-vector step between the current point and that vertex, up to 250 times or until the
//! change falls below 1e-5, this solver re-solves exactly over all the gradients in use
//! (Wolfe's minor cycle: the affine min-norm point of the set, stepping back to the hull's
//! boundary and dropping a gradient when it falls outside), which ends in a finite number of
//! rounds with the answer to rounding, even where the origin lies in the hull. The two-vector
//! step is exact at the ends of the segment, where their code returns 0.999 and 0.001, so a
//! gradient that already is the min-norm point gets weight exactly 1 and the answer does not
//! depend on the order of the tasks.

use super::linalg::{mat_vec, solve};

/// The Frank–Wolfe gap `‖x‖² − minᵢ gᵢ·x` at which the point is taken, relative to the largest
/// squared gradient norm: about a hundred times rounding, far below anything a step can see.
pub const TOLERANCE: f64 = 1e-14;

/// Rounds of adding a vertex; each strictly shortens the point and Wolfe's algorithm never
/// revisits a set of gradients, so a few times the number of tasks is the most seen.
const MAX_ROUNDS: usize = 1000;

/// Where the solver stopped.
#[derive(Clone, Debug, PartialEq)]
pub struct Solution {
    /// `α` on the simplex.
    pub alpha: Vec<f64>,
    /// The final gap `‖x‖² − minᵢ gᵢ·x`, in the units of the Gram matrix: an upper bound on
    /// how far `‖x‖²` is above the minimum.
    pub gap: f64,
}

/// The weight `γ` on `v1` of the point of the segment `[v1, v2]` nearest the origin, from
/// `v1·v1`, `v1·v2` and `v2·v2` (Sener & Koltun's Algorithm 1).
pub fn two_point(v1v1: f64, v1v2: f64, v2v2: f64) -> f64 {
    if v1v2 >= v1v1 {
        // v1 is nearer the origin than any other point of the segment.
        1.0
    } else if v1v2 >= v2v2 {
        0.0
    } else {
        (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2)
    }
}

/// `α` on the simplex minimising `‖Σ αᵢ gᵢ‖² = αᵀ M α` for the Gram matrix `gram`.
pub fn min_norm(gram: &[Vec<f64>]) -> Solution {
    let n = gram.len();
    let scale = (0..n).map(|i| gram[i][i]).fold(0.0, f64::max);
    if n < 2 || scale <= 0.0 {
        // One gradient, or all of them zero: the first is as short as any.
        let mut alpha = vec![0.0; n];
        if let Some(first) = alpha.first_mut() {
            *first = 1.0;
        }
        return Solution { alpha, gap: 0.0 };
    }
    // Unit scale, so the tolerances below are pure numbers.
    let m: Vec<Vec<f64>> = gram
        .iter()
        .map(|row| row.iter().map(|v| v / scale).collect())
        .collect();
    let mut alpha = vec![0.0; n];
    let mut corral = best_pair(&m, &mut alpha);
    let squared_norm = |alpha: &[f64]| {
        let mx = mat_vec(&m, alpha);
        let xx: f64 = alpha.iter().zip(&mx).map(|(a, b)| a * b).sum();
        (mx, xx)
    };
    let (mut mx, mut xx) = squared_norm(&alpha);
    let mut gap = f64::INFINITY;
    for _ in 0..MAX_ROUNDS {
        // Ties go to the lowest index, so the solver is deterministic.
        let vertex = (0..n)
            .min_by(|&i, &j| mx[i].total_cmp(&mx[j]))
            .expect("n ≥ 2");
        gap = xx - mx[vertex];
        // The best vertex already in use means the corral's exact solution is optimal to
        // rounding.
        if gap <= TOLERANCE || corral.contains(&vertex) {
            break;
        }
        let saved = alpha.clone();
        corral.push(vertex);
        let solved = minor_cycles(&m, &mut corral, &mut alpha);
        let (next_mx, next_xx) = squared_norm(&alpha);
        if !solved || next_xx >= xx {
            // Rounding: the vertex is (nearly) in the corral's affine hull, and the point it
            // would give is no shorter; keep the last one and its gap.
            alpha = saved;
            break;
        }
        (mx, xx) = (next_mx, next_xx);
    }
    let total: f64 = alpha.iter().sum();
    alpha.iter_mut().for_each(|a| *a /= total);
    Solution {
        alpha,
        gap: gap.max(0.0) * scale,
    }
}

/// Sener & Koltun's start: the closest point over all pairs, written into `alpha`; returns the
/// gradients it uses.
fn best_pair(m: &[Vec<f64>], alpha: &mut [f64]) -> Vec<usize> {
    let n = m.len();
    let (mut best, mut pair, mut weight) = (f64::INFINITY, (0, 1), 1.0);
    for i in 0..n {
        for j in i + 1..n {
            let gamma = two_point(m[i][i], m[i][j], m[j][j]);
            let cost = gamma * gamma * m[i][i]
                + 2.0 * gamma * (1.0 - gamma) * m[i][j]
                + (1.0 - gamma) * (1.0 - gamma) * m[j][j];
            if cost < best {
                (best, pair, weight) = (cost, (i, j), gamma);
            }
        }
    }
    alpha[pair.0] = weight;
    alpha[pair.1] = 1.0 - weight;
    [pair.0, pair.1]
        .into_iter()
        .filter(|&i| alpha[i] > 0.0)
        .collect()
}

/// Wolfe's minor cycles: moves `alpha` to the min-norm point of the hull of `corral`'s
/// gradients, dropping those that end with no weight. False when the affine problem is
/// singular (rounding has made the corral affinely dependent); the caller then keeps its
/// previous point.
fn minor_cycles(m: &[Vec<f64>], corral: &mut Vec<usize>, alpha: &mut [f64]) -> bool {
    loop {
        let Some(affine) = affine_min_norm(m, corral) else {
            corral.retain(|&i| alpha[i] > 0.0);
            return false;
        };
        if affine.iter().all(|&w| w > 0.0) {
            for (&i, w) in corral.iter().zip(&affine) {
                alpha[i] = *w;
            }
            return true;
        }
        // Walk from the current point towards the affine minimiser until the first weight
        // reaches zero (Wolfe's step back to the boundary), then drop every gradient left
        // without weight; the one that limited the step is set to exactly zero, so at least one
        // goes whatever the rounding.
        let mut step = 1.0f64;
        let mut limiting = None;
        for (&i, &w) in corral.iter().zip(&affine) {
            if w <= 0.0 && alpha[i] > w {
                let reach = alpha[i] / (alpha[i] - w);
                if reach < step {
                    (step, limiting) = (reach, Some(i));
                }
            }
        }
        for (&i, &w) in corral.iter().zip(&affine) {
            alpha[i] = ((1.0 - step) * alpha[i] + step * w).max(0.0);
        }
        if let Some(i) = limiting {
            alpha[i] = 0.0;
        }
        corral.retain(|&i| alpha[i] > 0.0);
        if corral.is_empty() {
            return false;
        }
    }
}

/// The weights, summing to one, of the point of the affine hull of `corral`'s gradients nearest
/// the origin: `M_SS μ + ν 1 = 0`, `1ᵀ μ = 1`. `None` if the gradients are affinely dependent.
fn affine_min_norm(m: &[Vec<f64>], corral: &[usize]) -> Option<Vec<f64>> {
    let k = corral.len();
    let mut system = vec![vec![0.0; k + 1]; k + 1];
    for (a, &i) in corral.iter().enumerate() {
        for (b, &j) in corral.iter().enumerate() {
            system[a][b] = m[i][j];
        }
        system[a][k] = 1.0;
        system[k][a] = 1.0;
    }
    let mut rhs = vec![0.0; k + 1];
    rhs[k] = 1.0;
    let mut solution = solve(&system, &rhs, 1e-13)?;
    solution.truncate(k);
    Some(solution)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::linalg::{gram, quadratic};

    #[test]
    fn two_point_is_exact_inside_and_at_the_ends() {
        // v1 = (1, 0), v2 = (0, 2): γ = (4 − 0) / (1 + 4 − 0) = 0.8, the point (0.8, 0.4), which
        // is orthogonal to v1 − v2 = (1, −2).
        assert_eq!(two_point(1.0, 0.0, 4.0), 0.8);
        // v1 = (1, 0), v2 = (1, 1): v1·v2 = 1 ≥ v1·v1, so v1 itself (not 0.999 of it).
        assert_eq!(two_point(1.0, 1.0, 2.0), 1.0);
        assert_eq!(two_point(2.0, 1.0, 1.0), 0.0);
    }

    #[test]
    fn min_norm_point_of_a_triangle_around_the_origin_is_zero() {
        // (1, 0), (−1, 1) and (−1, −1) surround the origin: 0 = ½g₁ + ¼g₂ + ¼g₃.
        let g = vec![vec![1.0f32, 0.0], vec![-1.0, 1.0], vec![-1.0, -1.0]];
        let solution = min_norm(&gram(&g));
        for (x, want) in solution.alpha.iter().zip([0.5, 0.25, 0.25]) {
            assert!((x - want).abs() < 1e-12, "{solution:?}");
        }
    }

    #[test]
    fn min_norm_point_inside_a_face() {
        // g₁ = (1, 0, 1), g₂ = (0, 1, 1), g₃ = (2, 2, 3): the nearest point of the hull is the
        // midpoint (½, ½, 1) of g₁g₂, orthogonal to g₁ − g₂, and g₃·(½, ½, 1) = 5 > ‖·‖² = 1.5
        // keeps g₃ out of it: weight exactly 0, not a Frank–Wolfe remnant.
        let g = vec![
            vec![1.0f32, 0.0, 1.0],
            vec![0.0, 1.0, 1.0],
            vec![2.0, 2.0, 3.0],
        ];
        let solution = min_norm(&gram(&g));
        assert_eq!(solution.alpha, vec![0.5, 0.5, 0.0]);
        assert!(solution.gap <= 1e-14, "{solution:?}");
    }

    #[test]
    fn agrees_with_a_search_over_every_face() {
        // The min-norm point is the affine min-norm point of the face whose relative interior
        // holds it, so the shortest of the faces' affine points that lie in their face is the
        // answer: an exhaustive reference for up to six gradients, in spaces of fewer
        // dimensions than gradients too (where the origin is often in the hull).
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
        for case in 0..300 {
            let tasks = 2 + case % 5;
            let dim = 2 + case % 7;
            let g: Vec<Vec<f32>> = (0..tasks)
                .map(|_| {
                    let scale = 10f32.powf(rng.random_range(-1.0..1.0));
                    (0..dim)
                        .map(|_| scale * rng.random_range(-1.0..1.0))
                        .collect()
                })
                .collect();
            let m = gram(&g);
            let mut best = f64::INFINITY;
            for subset in 1..(1u32 << tasks) {
                let face: Vec<usize> = (0..tasks).filter(|i| subset & (1 << i) != 0).collect();
                let Some(weights) = affine_min_norm(&m, &face) else {
                    continue;
                };
                if weights.iter().all(|&w| w >= 0.0) {
                    let mut point = vec![0.0; tasks];
                    for (&i, w) in face.iter().zip(&weights) {
                        point[i] = *w;
                    }
                    best = best.min(quadratic(&m, &point, &point));
                }
            }
            let solution = min_norm(&m);
            let found = quadratic(&m, &solution.alpha, &solution.alpha);
            let scale = (0..tasks).map(|i| m[i][i]).fold(0.0, f64::max);
            assert!(
                (found - best).abs() <= 1e-12 * scale,
                "case {case}: {found} against {best}"
            );
            assert!(solution.alpha.iter().all(|&a| a >= 0.0));
            assert!((solution.alpha.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
    }
}
