//! IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, ICLR 2021), the gradient half of IMTL.
//!
//! "Towards Impartial Multi-task Learning".
//!
//! The shared direction `g = Σ αᵢ gᵢ` with `Σ αᵢ = 1` has the same projection onto every task's
//! unit gradient `uᵢ`. In closed form `α₂..T = g₁ Uᵀ (D Uᵀ)⁻¹`, with `D`'s rows `g₁ − gₜ` and `U`'s
//! rows `u₁ − uₜ`, and `α₁ = 1 − Σ α₂..T`; `shared = Σ αᵢ gᵢ`, unscaled, as LibMTL's
//! `IMTL.backward` applies it. Every product in the formula is a Gram-matrix entry divided by
//! norms, so the system is `(T − 1) × (T − 1)` whatever the model's size, and it is solved by
//! elimination instead of LibMTL's explicit inverse. The `α` need not be positive (the paper
//! does not constrain them). LibMTL's IMTL also learns IMTL-L loss scales; this is IMTL-G alone,
//! so heads get their own task's unweighted gradient (`head_scale` 1).
//!
//! A zero gradient (no unit vector) or a singular system (two tasks with parallel gradients,
//! or the gradients affinely dependent) leaves `α` undetermined and is reported as
//! [`WeightingError::Method`] where LibMTL would return NaN or infinities.
//!
//! `record`: `weights`, the `α`.

use super::linalg::solve;
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

pub struct ImtlG;

impl Weighting for ImtlG {
    fn name(&self) -> &'static str {
        "imtl_g"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, input.tasks())?;
        let alpha = weights(&input.gradients.gram())?;
        Ok(Combination {
            shared: input.gradients.combine(&alpha),
            head_scale: vec![1.0; alpha.len()],
            record: vec![("weights", alpha)],
        })
    }
}

/// IMTL-G's `α` from the Gram matrix `m` of the gradients.
fn weights(m: &[Vec<f64>]) -> Result<Vec<f64>, WeightingError> {
    let tasks = m.len();
    let norms: Vec<f64> = (0..tasks).map(|i| m[i][i].sqrt()).collect();
    if let Some(task) = norms.iter().position(|&n| n <= 0.0) {
        return Err(error(format!(
            "task {task}'s shared-layer gradient is zero, so it has no direction to be \
             impartial to"
        )));
    }
    if tasks < 2 {
        return Ok(vec![1.0; tasks]);
    }
    // gₐ·u_b = M_ab / ‖g_b‖.
    let gu = |a: usize, b: usize| m[a][b] / norms[b];
    // Row i of the system is the (i+1)-th column of α (D Uᵀ) = g₁ Uᵀ: Σⱼ αⱼ Dⱼ·Uᵢ = g₁·Uᵢ, where
    // Dⱼ·Uᵢ = (g₁ − gⱼ)·(u₁ − uᵢ) for the tasks i, j ≥ 2.
    let others = 1..tasks;
    let system: Vec<Vec<f64>> = others
        .clone()
        .map(|i| {
            others
                .clone()
                .map(|j| gu(0, 0) - gu(0, i) - gu(j, 0) + gu(j, i))
                .collect()
        })
        .collect();
    let target: Vec<f64> = others.map(|i| gu(0, 0) - gu(0, i)).collect();
    // Every entry is a difference of projections, at most 4 max‖gᵢ‖ in size; a pivot a
    // trillion times smaller than that is rounding, not information.
    let largest = norms.iter().fold(0.0, |a: f64, &n| a.max(n));
    let rest = solve(&system, &target, 1e-12 * largest).ok_or_else(|| {
        error(
            "the system for the weights is singular: two tasks' gradients are parallel, or the \
             gradients are affinely dependent, so no unique direction is impartial to all"
                .to_string(),
        )
    })?;
    let mut alpha = Vec::with_capacity(tasks);
    alpha.push(1.0 - rest.iter().sum::<f64>());
    alpha.extend(rest);
    Ok(alpha)
}

fn error(detail: String) -> WeightingError {
    WeightingError::Method {
        method: "imtl_g",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::testing::{assert_task_order_independent, combine as step};
    use crate::mtl::weighting::testing::{four_tasks, record};
    use crate::mtl::weighting::TaskGradients;

    #[test]
    fn the_direction_projects_equally_onto_every_unit_gradient() {
        let g = four_tasks();
        let c = step(&mut ImtlG, 0, &[1.0; 4], &g, 0);
        let alpha = record(&c, "weights");
        assert!((alpha.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{alpha:?}");
        // Rebuild the direction in f64 from α, independently of the solver's Gram algebra.
        let direction: Vec<f64> = (0..6)
            .map(|k| (0..4).map(|i| alpha[i] * f64::from(g[i][k])).sum())
            .collect();
        let projections: Vec<f64> = g
            .iter()
            .map(|gi| {
                let n = gi.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
                gi.iter()
                    .zip(&direction)
                    .map(|(&x, d)| f64::from(x) * d)
                    .sum::<f64>()
                    / n
            })
            .collect();
        for p in &projections {
            assert!((p - projections[0]).abs() < 1e-12, "{projections:?}");
        }
        assert!(projections[0] > 0.0, "{projections:?}");
        assert_eq!(c.head_scale, vec![1.0; 4]);
    }

    #[test]
    fn two_tasks_by_hand() {
        // g₁ = (1, 0), g₂ = (0, 2): u₁ = (1, 0), u₂ = (0, 1), D = g₁ − g₂ = (1, −2),
        // U = u₁ − u₂ = (1, −1). α₂ = g₁·U / D·U = 1 / 3, α₁ = 2/3, shared = (⅔, ⅔), which
        // projects to ⅔ on both u₁ and u₂.
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 2.0]];
        let c = step(&mut ImtlG, 0, &[1.0, 1.0], &g, 0);
        let alpha = record(&c, "weights");
        assert!((alpha[0] - 2.0 / 3.0).abs() < 1e-15 && (alpha[1] - 1.0 / 3.0).abs() < 1e-15);
        assert_eq!(c.shared, vec![2.0 / 3.0, 2.0 / 3.0]);
    }

    #[test]
    fn does_not_depend_on_task_order() {
        assert_task_order_independent(
            || Box::new(ImtlG),
            &[(vec![1.0; 4], four_tasks())],
            &[3, 2, 0, 1],
            1e-6,
        );
    }

    #[test]
    fn singular_systems_and_zero_gradients_are_errors_not_nans() {
        let detail = |g: Vec<Vec<f32>>| {
            let err = ImtlG
                .combine(&StepInput {
                    step: 0,
                    losses: &vec![1.0; g.len()],
                    gradients: TaskGradients::Dense(&g),
                    rng_key: 0,
                })
                .unwrap_err();
            match err {
                WeightingError::Method { detail, .. } => detail,
                other => panic!("{other}"),
            }
        };
        // Identical gradients, parallel ones of different lengths, and a third gradient equal to
        // the second: D Uᵀ has a zero row or column.
        for g in [
            vec![vec![1.0f32, 2.0], vec![1.0, 2.0]],
            vec![vec![1.0f32, 2.0], vec![2.0, 4.0]],
            vec![
                vec![1.0f32, 0.0, 0.0],
                vec![0.0, 1.0, 0.0],
                vec![0.0, 1.0, 0.0],
            ],
        ] {
            let text = detail(g);
            assert!(text.contains("singular"), "{text}");
        }
        let text = detail(vec![vec![1.0f32, 0.0], vec![0.0, 0.0]]);
        assert!(text.contains("task 1"), "{text}");
    }

    #[test]
    fn one_task_keeps_its_gradient() {
        let c = step(&mut ImtlG, 0, &[1.0], &[vec![0.5, -2.0]], 0);
        assert_eq!(c.shared, vec![0.5, -2.0]);
        assert_eq!(record(&c, "weights"), &[1.0]);
    }
}
