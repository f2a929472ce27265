//! Random loss weighting (RLW): Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random
//! Weighting: A Litmus Test for Multi-Task Learning", TMLR 2022 (arXiv:2111.10603).
//!
//! Each step draws `z ~ N(0, I)` and weighs the task losses by `w = softmax(z)`, as LibMTL's
//! `RLW` does with its default normal distribution: the weights lie on the simplex, with no
//! scaling by the task count. The shared direction is `Σ w_i g_i` and heads are scaled by `w_i`.
//! The draw comes from the step's key alone, so a run is reproducible; `z_i` is the draw at
//! position `i`, so reordering the tasks reorders which task gets which draw, and the method is
//! order independent only in distribution. Recorded: `weights`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{check_input, Combination, StepInput, Weighting, WeightingError};

pub struct Rlw;

/// `count` independent standard normal draws by the Box–Muller transform, two per pair of
/// uniforms.
fn standard_normals(rng: &mut impl Rng, count: usize) -> Vec<f64> {
    let mut draws = Vec::with_capacity(count + 1);
    while draws.len() < count {
        // 1 − u lies in (0, 1], so the logarithm stays finite.
        let radius = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt();
        let angle = std::f64::consts::TAU * rng.random::<f64>();
        draws.push(radius * angle.cos());
        draws.push(radius * angle.sin());
    }
    draws.truncate(count);
    draws
}

/// The weights for the step keyed `rng_key`: `softmax(z)`, `z ~ N(0, I_tasks)`.
fn draw_weights(rng_key: u64, tasks: usize) -> Vec<f64> {
    let z = standard_normals(&mut ChaCha8Rng::seed_from_u64(rng_key), tasks);
    let top = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = z.iter().map(|x| (x - top).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

impl Weighting for Rlw {
    fn name(&self) -> &'static str {
        "rlw"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, input.tasks())?;
        let weights = draw_weights(input.rng_key, input.tasks());
        Ok(Combination::weighted(weights, input.gradients, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;

    #[test]
    fn weights_are_on_the_simplex_and_combine_the_gradients() {
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        for key in 0..50 {
            let out = testing::combine(&mut Rlw, 0, &[1.0, 2.0, 3.0], &g, key);
            let w = &out.head_scale;
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
            assert!(w.iter().all(|&x| x > 0.0 && x < 1.0), "{w:?}");
            let expected = [(w[0] + w[2]) as f32, (w[1] + w[2]) as f32];
            for (s, e) in out.shared.iter().zip(expected) {
                assert!((s - e).abs() < 1e-6, "{:?} vs {expected:?}", out.shared);
            }
            assert_eq!(out.record, vec![("weights", w.clone())]);
        }
    }

    #[test]
    fn the_key_alone_decides_the_draw() {
        let g = vec![vec![1.0f32], vec![2.0], vec![3.0]];
        let a = testing::combine(&mut Rlw, 0, &[1.0; 3], &g, 41);
        // Another step, other losses, the same key: the same weights.
        let b = testing::combine(&mut Rlw, 9, &[5.0, 0.1, 2.0], &g, 41);
        assert_eq!(a.head_scale, b.head_scale);
        let c = testing::combine(&mut Rlw, 0, &[1.0; 3], &g, 42);
        assert_ne!(a.head_scale, c.head_scale);
    }

    #[test]
    fn every_task_has_the_same_weight_distribution() {
        // Over many keys each task's mean weight is 1/K. The weight of one of K = 3 tasks has
        // a standard deviation below 0.25, so the mean of 20 000 draws is within 0.01 (over 5
        // standard errors) of 1/3.
        let (tasks, draws) = (3, 20_000u64);
        let mut mean = vec![0.0; tasks];
        // log(w_0 / w_1) = z_0 − z_1 ~ N(0, 2): checks the draws are standard normal, not
        // merely exchangeable.
        let (mut log_ratio_sum, mut log_ratio_sq) = (0.0, 0.0);
        for key in 0..draws {
            let w = draw_weights(key, tasks);
            for (m, x) in mean.iter_mut().zip(&w) {
                *m += x / draws as f64;
            }
            let r = (w[0] / w[1]).ln();
            log_ratio_sum += r;
            log_ratio_sq += r * r;
        }
        for m in &mean {
            assert!((m - 1.0 / 3.0).abs() < 0.01, "{mean:?}");
        }
        let r_mean = log_ratio_sum / draws as f64;
        let r_var = log_ratio_sq / draws as f64 - r_mean * r_mean;
        // Standard errors: mean √(2/n) ≈ 0.01, variance 2·√(2/n) ≈ 0.02.
        assert!(r_mean.abs() < 0.05, "{r_mean}");
        assert!((r_var - 2.0).abs() < 0.1, "{r_var}");
    }

    #[test]
    fn box_muller_draws_are_standard_normal() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let z = standard_normals(&mut rng, 40_001);
        assert_eq!(z.len(), 40_001);
        let n = z.len() as f64;
        let mean = z.iter().sum::<f64>() / n;
        let var = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let within_one = z.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
            "{mean} {var}"
        );
        // P(|Z| < 1) = 0.6827.
        assert!((within_one - 0.6827).abs() < 0.01, "{within_one}");
    }

    #[test]
    fn one_task_is_left_unchanged() {
        let g = vec![vec![0.5f32, -2.0]];
        let out = testing::combine(&mut Rlw, 0, &[1.0], &g, 5);
        assert_eq!(out.head_scale, vec![1.0]);
        assert_eq!(out.shared, g[0]);
    }
}
