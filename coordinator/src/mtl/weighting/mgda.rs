//! MGDA (Sener & Koltun, NeurIPS 2018, arXiv:1810.04650).
//!
//! "Multi-Task Learning as Multi-Objective Optimization".
//!
//! The shared direction is the min-norm point of the convex hull of the tasks' gradients,
//! each first divided by its normaliser (LibMTL's `mgda_gn`): `shared = Σ αᵢ gᵢ / nᵢ` with `α`
//! on the simplex, as LibMTL's `MGDA.backward` builds it. The point is found by
//! [`super::min_norm`]: Sener & Koltun's best-pair start and Frank–Wolfe vertex choice, with
//! Wolfe's exact corrective step in place of their capped loop (250 steps or a 1e-5 change), so
//! it is exact to rounding, and an exact two-vector step where their code clips to 0.999 /
//! 0.001. Heads get their own task's unweighted gradient (`head_scale` 1), as in LibMTL; Sener
//! & Koltun's own code weights the head losses by `α`.
//!
//! `record`: `weights` (each task's coefficient `αᵢ / nᵢ` in `shared`), `alpha` (the point on
//! the simplex) and `gap` (the solver's final Frank–Wolfe gap `‖v‖² − minᵢ gᵢ·v` for the
//! normalised gradients, an upper bound on how far `‖v‖²` is above the minimum; rounding-level
//! unless the gradients are nearly affinely dependent).

use super::min_norm::min_norm;
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

/// What each task's gradient is divided by before the min-norm point is sought.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// The raw gradients: the paper's algorithm.
    #[default]
    None,
    /// Each gradient's L2 norm: every task gets a unit gradient.
    L2,
    /// Each task's loss.
    Loss,
    /// Each task's loss times its gradient's L2 norm.
    #[serde(rename = "loss+")]
    LossPlus,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `none | l2 | loss | loss+`, LibMTL's `mgda_gn`; default `none`, LibMTL's argument
    /// default (`LibMTL/config.py`).
    pub normalization: Normalization,
}

impl Settings {
    /// Every value of the one field is allowed; kept so every method's settings are checked
    /// alike.
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        Ok(())
    }
}

pub struct Mgda {
    settings: Settings,
}

impl Mgda {
    pub fn new(settings: Settings) -> Self {
        Mgda { settings }
    }

    /// `1 / nᵢ` for every task. A zero gradient stays zero whatever it is divided by, so its
    /// factor is 1 rather than a division by zero.
    fn inverse_normalisers(
        &self,
        losses: &[f64],
        gram: &[Vec<f64>],
    ) -> Result<Vec<f64>, WeightingError> {
        (0..gram.len())
            .map(|i| {
                let norm = gram[i][i].sqrt();
                let loss = || {
                    let loss = losses.get(i).copied().unwrap_or(f64::NAN);
                    if loss > 0.0 {
                        Ok(loss)
                    } else {
                        Err(WeightingError::Method {
                            method: "mgda",
                            detail: format!(
                                "normalization `{}` divides by the loss, which must be positive; \
                                 task {i}'s is {loss}",
                                if self.settings.normalization == Normalization::Loss {
                                    "loss"
                                } else {
                                    "loss+"
                                }
                            ),
                        })
                    }
                };
                let normaliser = match self.settings.normalization {
                    Normalization::None => 1.0,
                    Normalization::L2 => norm,
                    Normalization::Loss => loss()?,
                    Normalization::LossPlus => loss()? * norm,
                };
                Ok(if normaliser > 0.0 {
                    1.0 / normaliser
                } else {
                    1.0
                })
            })
            .collect()
    }
}

impl Weighting for Mgda {
    fn name(&self) -> &'static str {
        "mgda"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, input.tasks())?;
        let raw = input.gradients.gram();
        let inverse = self.inverse_normalisers(input.losses, &raw)?;
        let scaled: Vec<Vec<f64>> = raw
            .iter()
            .enumerate()
            .map(|(i, row)| {
                row.iter()
                    .enumerate()
                    .map(|(j, m)| inverse[i] * inverse[j] * m)
                    .collect()
            })
            .collect();
        let solution = min_norm(&scaled);
        let weights: Vec<f64> = solution
            .alpha
            .iter()
            .zip(&inverse)
            .map(|(a, s)| a * s)
            .collect();
        Ok(Combination {
            shared: input.gradients.combine(&weights),
            head_scale: vec![1.0; weights.len()],
            record: vec![
                ("weights", weights),
                ("alpha", solution.alpha),
                ("gap", vec![solution.gap]),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mtl::weighting::linalg::dot;
    use crate::mtl::weighting::testing::{assert_task_order_independent, combine as step};
    use crate::mtl::weighting::testing::{four_tasks, record};
    use crate::mtl::weighting::TaskGradients;

    fn mgda(normalization: Normalization) -> Mgda {
        Mgda::new(Settings { normalization })
    }

    #[test]
    fn two_gradients_meet_at_the_closed_form_point() {
        // g₁ = (1, 0), g₂ = (0, 2): γ = (g₂·g₂ − g₁·g₂) / ‖g₁ − g₂‖² = 4 / 5, so
        // shared = 0.8 g₁ + 0.2 g₂ = (0.8, 0.4), orthogonal to g₁ − g₂ = (1, −2).
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 2.0]];
        let c = step(&mut mgda(Normalization::None), 0, &[1.0, 1.0], &g, 0);
        assert!((c.shared[0] - 0.8).abs() < 1e-7 && (c.shared[1] - 0.4).abs() < 1e-7);
        let alpha = record(&c, "alpha");
        assert!((alpha[0] - 0.8).abs() < 1e-12 && (alpha[1] - 0.2).abs() < 1e-12);
        assert_eq!(c.head_scale, vec![1.0, 1.0]);
    }

    #[test]
    fn a_gradient_that_is_already_the_min_norm_point_takes_all_the_weight() {
        // g₁ = (1, 0) against g₂ = (1, 1) and g₃ = (2, −1): g₁·g₂ = 1 and g₁·g₃ = 2 are both
        // ≥ ‖g₁‖² = 1, so no convex combination is shorter than g₁ itself.
        let g = vec![vec![1.0f32, 0.0], vec![1.0, 1.0], vec![2.0, -1.0]];
        let c = step(&mut mgda(Normalization::None), 0, &[1.0; 3], &g, 0);
        assert_eq!(record(&c, "alpha"), &[1.0, 0.0, 0.0]);
        assert_eq!(c.shared, vec![1.0, 0.0]);
    }

    #[test]
    fn weights_lie_on_the_simplex_and_satisfy_the_optimality_conditions() {
        let g = four_tasks();
        let c = step(&mut mgda(Normalization::None), 0, &[1.0; 4], &g, 0);
        let alpha = record(&c, "alpha");
        assert!(alpha.iter().all(|&a| a >= 0.0), "{alpha:?}");
        assert!((alpha.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{alpha:?}");
        // The min-norm point v satisfies gᵢ·v ≥ ‖v‖² for every task, with equality wherever
        // αᵢ > 0 (the KKT conditions of min ‖Gᵀα‖² on the simplex).
        let v: Vec<f64> = (0..6)
            .map(|k| (0..4).map(|i| alpha[i] * f64::from(g[i][k])).sum())
            .collect();
        let vv: f64 = v.iter().map(|x| x * x).sum();
        for (i, gi) in g.iter().enumerate() {
            let gv: f64 = gi.iter().zip(&v).map(|(&a, b)| f64::from(a) * b).sum();
            assert!(gv >= vv - 1e-9, "task {i}: {gv} < {vv}");
            if alpha[i] > 1e-9 {
                assert!((gv - vv).abs() < 1e-9, "task {i}: {gv} != {vv}");
            }
        }
        assert!(vv > 1e-3, "the fixture's hull should not hold the origin");
        assert!(
            record(&c, "gap")[0] <= 1e-14 * 4.0,
            "{:?}",
            record(&c, "gap")
        );
    }

    #[test]
    fn does_not_depend_on_task_order() {
        let steps = vec![(vec![1.0, 2.0, 0.5, 1.5], four_tasks())];
        for normalization in [
            Normalization::None,
            Normalization::L2,
            Normalization::Loss,
            Normalization::LossPlus,
        ] {
            assert_task_order_independent(
                || Box::new(mgda(normalization)),
                &steps,
                &[2, 0, 3, 1],
                1e-6,
            );
        }
    }

    #[test]
    fn l2_normalization_weighs_unit_gradients() {
        // g₁ = (2, 0), g₂ = (0, 4) become (1, 0) and (0, 1), whose min-norm point is their
        // midpoint: α = (½, ½), so shared = ½ g₁/2 + ½ g₂/4 = (0.5, 0.5) and the coefficients
        // of the raw gradients are (¼, ⅛).
        let g = vec![vec![2.0f32, 0.0], vec![0.0, 4.0]];
        let c = step(&mut mgda(Normalization::L2), 0, &[1.0, 1.0], &g, 0);
        let weights = record(&c, "weights");
        assert!((weights[0] - 0.25).abs() < 1e-12 && (weights[1] - 0.125).abs() < 1e-12);
        assert!((c.shared[0] - 0.5).abs() < 1e-7 && (c.shared[1] - 0.5).abs() < 1e-7);
    }

    #[test]
    fn loss_normalization_refuses_a_non_positive_loss() {
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        for normalization in [Normalization::Loss, Normalization::LossPlus] {
            let err = mgda(normalization)
                .combine(&StepInput {
                    step: 0,
                    losses: &[1.0, 0.0],
                    gradients: TaskGradients::Dense(&g),
                    rng_key: 0,
                })
                .unwrap_err();
            assert!(
                matches!(&err, WeightingError::Method { detail, .. } if detail.contains("task 1")),
                "{err}"
            );
        }
    }

    #[test]
    fn degenerate_inputs_give_finite_answers() {
        // One task: its own gradient. A zero gradient: the origin is in the hull, so nothing
        // moves. Identical gradients: that gradient.
        let one = step(
            &mut mgda(Normalization::L2),
            0,
            &[1.0],
            &[vec![3.0, 4.0]],
            0,
        );
        assert_eq!(one.shared, vec![0.6, 0.8]);
        let zero = vec![vec![0.0f32, 0.0], vec![1.0, 2.0]];
        let c = step(&mut mgda(Normalization::L2), 0, &[1.0, 1.0], &zero, 0);
        assert_eq!(c.shared, vec![0.0, 0.0]);
        let same = vec![vec![1.0f32, 2.0], vec![1.0, 2.0]];
        let c = step(&mut mgda(Normalization::None), 0, &[1.0, 1.0], &same, 0);
        assert!(
            (dot(&c.shared, &c.shared) - 5.0).abs() < 1e-6,
            "{:?}",
            c.shared
        );
    }

    #[test]
    fn settings_default_to_libmtl_and_parse_its_names() {
        assert_eq!(Settings::default().normalization, Normalization::None);
        let parsed: Settings = toml::from_str("normalization = \"loss+\"").unwrap();
        assert_eq!(parsed.normalization, Normalization::LossPlus);
        assert!(toml::from_str::<Settings>("normalisation = \"l2\"").is_err());
        assert!(toml::from_str::<Settings>("normalization = \"l1\"").is_err());
    }
}
