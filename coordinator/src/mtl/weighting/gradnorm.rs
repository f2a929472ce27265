//! GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
//! Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018 (arXiv:1711.02257).
//!
//! The loss weights `w = T · softmax(ξ)` (LibMTL's parameterisation, which keeps `Σ w_i = T`
//! without the paper's renormalisation) are learned so that each weighted gradient norm
//! `G_i = ‖w_i g_i‖` tracks `Ḡ · r_i^α`, where `r_i = (L_i / L_i(0)) / mean_j(L_j / L_j(0))` is
//! the task's relative inverse training rate and `L_i(0)` its loss at the first step. Each step
//! takes one Adam step on `ξ` along the analytic gradient of `Σ_i |G_i − Ḡ r_i^α|`, the target
//! `Ḡ r_i^α` held constant as in the paper. The shared direction is `Σ w_i g_i` with the weights
//! before that update, and heads are scaled by `w_i`.
//!
//! Departures from LibMTL (`LibMTL/weighting/GradNorm.py`): `G_i` is taken over the whole shared
//! gradient, as LibMTL does without `rep_grad` (the paper uses the last shared layer). LibMTL
//! sums the losses for its whole first epoch, since it takes `L_i(0)` from that epoch's mean;
//! outerloop has no epochs and, like the paper's Algorithm 1, records `L_i(0)` at step 0 and
//! applies GradNorm from that step on (where every `r_i = 1`). LibMTL steps `ξ` with the
//! network's optimizer and leaves heads with unweighted gradients (it back-propagates each task
//! loss alone and only rewrites the shared gradient; its `ξ` is never stepped, in fact);
//! outerloop gives `ξ` its own Adam and
//! scales the heads by `w_i`, as the paper's weighted loss does. Losses must be ≥ 0 and the
//! first ones > 0, since the rule divides by `L_i(0)`. Recorded: `weights` and `loss_ratio`
//! (`r_i`).

use std::collections::BTreeMap;

use super::adam::{Adam, AdamNames};
use super::saved_state::{entry, entry_or_empty};
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The restoring-force strength `α`. Default 1.5: LibMTL's `--alpha` default and the
    /// paper's value for NYUv2.
    pub alpha: f64,
    /// Adam's learning rate for the logits `ξ`. Default 0.025, the rate the Nash-MTL and FAMO
    /// benchmark code gives the learned weights of UW (UW's and FAMO's default here too): the
    /// paper gives no separate rate, and LibMTL's `loss_scale` is a plain tensor that its
    /// trainer never steps, so its GradNorm weights stay at 1.
    pub lr: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            alpha: 1.5,
            lr: 0.025,
        }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(format!(
                "`alpha` must be finite and >= 0, got {}",
                self.alpha
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("`lr` must be finite and > 0, got {}", self.lr));
        }
        Ok(())
    }
}

const LOGITS: &str = "gradnorm.logits";
const INITIAL_LOSSES: &str = "gradnorm.initial_losses";
const ADAM: AdamNames = ["gradnorm.adam_m", "gradnorm.adam_v", "gradnorm.adam_steps"];

pub struct GradNorm {
    alpha: f64,
    logits: Vec<f64>,
    /// `L_i(0)`, empty until the first step.
    initial_losses: Vec<f64>,
    adam: Adam,
}

impl GradNorm {
    pub fn new(settings: Settings, tasks: usize) -> Self {
        GradNorm {
            alpha: settings.alpha,
            // Equal logits: LibMTL starts them at 1, and only their differences matter.
            logits: vec![0.0; tasks],
            initial_losses: Vec::new(),
            adam: Adam::new(settings.lr, 0.0, tasks),
        }
    }

    fn refuse(detail: String) -> WeightingError {
        WeightingError::Method {
            method: "gradnorm",
            detail,
        }
    }
}

/// `T · softmax(ξ)`, shifted by the largest logit so that none overflows.
fn task_weights(logits: &[f64]) -> Vec<f64> {
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|x| (x - top).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter()
        .map(|e| logits.len() as f64 * e / total)
        .collect()
}

/// `∂/∂ξ` of the GradNorm loss `Σ_i |w_i(ξ) n_i − target_i|`, for gradient norms `n_i`.
/// With `a_i = sign(w_i n_i − target_i) n_i` (the derivative in `w_i`; torch's `abs` has
/// derivative 0 at 0) and `∂w_i/∂ξ_j = w_i (δ_ij − z_j)`, it is `w_j (a_j − Σ_i z_i a_i)`
/// where `z = softmax(ξ) = w / T`.
fn logits_gradient(logits: &[f64], norms: &[f64], targets: &[f64]) -> Vec<f64> {
    let weights = task_weights(logits);
    let tasks = logits.len() as f64;
    let a: Vec<f64> = weights
        .iter()
        .zip(norms)
        .zip(targets)
        .map(|((w, n), c)| {
            let gap = w * n - c;
            if gap > 0.0 {
                *n
            } else if gap < 0.0 {
                -n
            } else {
                0.0
            }
        })
        .collect();
    let mean_a: f64 = weights.iter().zip(&a).map(|(w, a)| w / tasks * a).sum();
    weights
        .iter()
        .zip(&a)
        .map(|(w, a)| w * (a - mean_a))
        .collect()
}

impl Weighting for GradNorm {
    fn name(&self) -> &'static str {
        "gradnorm"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        let tasks = self.logits.len();
        check_input(self.name(), input, tasks)?;
        if self.initial_losses.is_empty() {
            if let Some((task, loss)) = input.losses.iter().enumerate().find(|(_, l)| **l <= 0.0) {
                return Err(Self::refuse(format!(
                    "task {task}'s first loss is {loss}: GradNorm divides by each task's \
                     first loss and needs it > 0"
                )));
            }
            self.initial_losses = input.losses.to_vec();
        }
        if let Some((task, loss)) = input.losses.iter().enumerate().find(|(_, l)| **l < 0.0) {
            return Err(Self::refuse(format!(
                "task {task}'s loss is {loss}: GradNorm's training rates need losses >= 0"
            )));
        }

        let weights = task_weights(&self.logits);
        let norms: Vec<f64> = input.gradients.norms();
        let mean_norm = weights.iter().zip(&norms).map(|(w, n)| w * n).sum::<f64>() / tasks as f64;
        let progress: Vec<f64> = input
            .losses
            .iter()
            .zip(&self.initial_losses)
            .map(|(l, l0)| l / l0)
            .collect();
        let mean_progress = progress.iter().sum::<f64>() / tasks as f64;
        // Every loss at 0: all tasks trained alike.
        let ratios: Vec<f64> = if mean_progress > 0.0 {
            progress.iter().map(|p| p / mean_progress).collect()
        } else {
            vec![1.0; tasks]
        };
        let targets: Vec<f64> = ratios
            .iter()
            .map(|r| mean_norm * r.powf(self.alpha))
            .collect();
        let gradient = logits_gradient(&self.logits, &norms, &targets);
        self.adam.step(&mut self.logits, &gradient);

        Ok(Combination::weighted(
            weights,
            input.gradients,
            vec![("loss_ratio", ratios)],
        ))
    }

    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        let mut state = vec![
            (LOGITS, self.logits.clone()),
            (INITIAL_LOSSES, self.initial_losses.clone()),
        ];
        state.extend(self.adam.state(ADAM));
        state
    }

    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        let tasks = self.logits.len();
        let logits = entry(state, LOGITS, tasks)?;
        // Before the first step there are no initial losses yet.
        let initial = entry_or_empty(state, INITIAL_LOSSES, tasks)?;
        if logits.iter().chain(initial).any(|x| !x.is_finite()) {
            return Err(format!("{LOGITS} or {INITIAL_LOSSES} is not finite"));
        }
        if initial.iter().any(|&l| l <= 0.0) {
            return Err(format!("{INITIAL_LOSSES} must be > 0"));
        }
        self.adam.restore(ADAM, state)?;
        self.logits.copy_from_slice(logits);
        self.initial_losses = initial.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::mtl::weighting::testing::saved;
    use crate::mtl::weighting::TaskGradients;

    fn gradnorm(tasks: usize, lr: f64) -> GradNorm {
        GradNorm::new(Settings { alpha: 1.5, lr }, tasks)
    }

    /// The GradNorm loss `Σ_i |w_i(ξ) n_i − target_i|` that `logits_gradient` differentiates.
    fn gradnorm_loss(logits: &[f64], norms: &[f64], targets: &[f64]) -> f64 {
        task_weights(logits)
            .iter()
            .zip(norms)
            .zip(targets)
            .map(|((w, n), c)| (w * n - c).abs())
            .sum()
    }

    #[test]
    fn the_logit_gradient_matches_central_finite_differences() {
        let logits = [0.3, -0.8, 1.1, 0.05];
        let norms = [2.0, 0.5, 1.5, 3.0];
        // Targets away from every kink of |·| so that the loss is smooth near `logits`; two
        // above and two below the weighted norm, so both signs are exercised.
        let weights = task_weights(&logits);
        let targets: Vec<f64> = weights
            .iter()
            .zip(&norms)
            .zip([1.3, 0.6, 1.5, 0.8])
            .map(|((w, n), f)| w * n * f)
            .collect();
        let analytic = logits_gradient(&logits, &norms, &targets);
        let h = 1e-6;
        for j in 0..logits.len() {
            let (mut plus, mut minus) = (logits, logits);
            plus[j] += h;
            minus[j] -= h;
            let numeric = (gradnorm_loss(&plus, &norms, &targets)
                - gradnorm_loss(&minus, &norms, &targets))
                / (2.0 * h);
            assert!(
                (analytic[j] - numeric).abs() < 1e-7 * (1.0 + numeric.abs()),
                "ξ_{j}: analytic {} vs numeric {numeric}",
                analytic[j]
            );
        }
        // A uniform shift of ξ leaves softmax unchanged, so the gradient sums to zero.
        assert!(analytic.iter().sum::<f64>().abs() < 1e-12);
    }

    #[test]
    fn first_step_sums_gradients_and_raises_the_weight_of_the_smaller_gradient() {
        // Step 0: w = (1, 1), r = (1, 1), norms (1, 3), Ḡ = 2, targets (2, 2): task 0 is below
        // its target, task 1 above. a = (−1, 3), Σ z a = 1, ∂/∂ξ = (1·(−1 − 1), 1·(3 − 1))
        // = (−2, 2): Adam's first step moves ξ by (+lr, −lr).
        let mut method = gradnorm(2, 0.01);
        let out = testing::combine(
            &mut method,
            0,
            &[1.0, 2.0],
            &[vec![1.0, 0.0], vec![0.0, 3.0]],
            0,
        );
        assert_eq!(out.head_scale, vec![1.0, 1.0]);
        assert_eq!(out.shared, vec![1.0, 3.0]);
        assert_eq!(out.record[1], ("loss_ratio", vec![1.0, 1.0]));
        let xi = &method.logits;
        assert!(
            (xi[0] - 0.01).abs() < 1e-9 && (xi[1] + 0.01).abs() < 1e-9,
            "{xi:?}"
        );
    }

    #[test]
    fn weights_equalise_the_weighted_gradient_norms() {
        // Losses that keep their initial values give r = 1: the fixed point has w_i n_i equal,
        // so with norms (1, 10) it is w = 2·(10, 1)/11.
        let mut method = gradnorm(2, 0.01);
        let gradients = vec![vec![1.0f32, 0.0], vec![0.0, 10.0]];
        let mut last = Vec::new();
        for step in 0..3000 {
            last = testing::combine(&mut method, step, &[1.0, 5.0], &gradients, 0).head_scale;
        }
        assert!((last[0] - 20.0 / 11.0).abs() < 0.02, "{last:?}");
        assert!((last[0] + last[1] - 2.0).abs() < 1e-12);
    }

    #[test]
    fn a_task_that_trains_slower_gets_more_weight_by_alpha() {
        // Equal norms n = 1; task 0 stays at its first loss, task 1 halves: ratios
        // (1, 0.5)/0.75 = (4/3, 2/3), Ḡ = mean(w) = 1, targets r^1.5 ≈ (1.5396, 0.5443).
        // With w_1 = 2 − w_0 the loss |w_0 − 1.5396| + |1.4557 − w_0| is flat on
        // [1.4557, 1.5396]; α = 1 would instead give w_0 = 4/3.
        let mut method = gradnorm(2, 0.01);
        let gradients = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        testing::combine(&mut method, 0, &[2.0, 2.0], &gradients, 0);
        let mut out = None;
        for step in 1..3000 {
            out = Some(testing::combine(
                &mut method,
                step,
                &[2.0, 1.0],
                &gradients,
                0,
            ));
        }
        let out = out.unwrap();
        let w0 = out.head_scale[0];
        assert!((1.44..=1.56).contains(&w0), "{:?}", out.head_scale);
        let r = &out.record[1].1;
        assert!((r[0] - 4.0 / 3.0).abs() < 1e-12 && (r[1] - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn does_not_depend_on_task_order() {
        let steps: Vec<(Vec<f64>, Vec<Vec<f32>>)> = (0..6)
            .map(|t| {
                let t = t as f64;
                (
                    vec![1.0 + t, 2.0 / (1.0 + t), 3.0 - 0.1 * t],
                    vec![
                        vec![1.0, 2.0, t as f32],
                        vec![-1.0, 0.5, 3.0],
                        vec![0.0, 4.0, -2.0],
                    ],
                )
            })
            .collect();
        testing::assert_task_order_independent(
            || Box::new(gradnorm(3, 0.05)),
            &steps,
            &[2, 0, 1],
            1e-6,
        );
    }

    #[test]
    fn zero_gradients_and_one_task_leave_the_weights_alone() {
        let mut method = gradnorm(2, 0.1);
        let zero = vec![vec![0.0f32; 3]; 2];
        for step in 0..3 {
            let out = testing::combine(&mut method, step, &[1.0, 2.0], &zero, 0);
            assert_eq!(out.head_scale, vec![1.0, 1.0]);
            assert_eq!(out.shared, vec![0.0; 3]);
        }
        let mut single = gradnorm(1, 0.1);
        let g = vec![vec![0.5f32, -2.0]];
        for step in 0..3 {
            let out = testing::combine(&mut single, step, &[1.0 / (1.0 + step as f64)], &g, 0);
            assert_eq!(out.shared, g[0]);
        }
    }

    #[test]
    fn a_non_positive_first_loss_is_refused() {
        let mut method = gradnorm(2, 0.1);
        let err = method
            .combine(&StepInput {
                step: 0,
                losses: &[1.0, 0.0],
                gradients: TaskGradients::Dense(&[vec![1.0], vec![1.0]]),
                rng_key: 0,
            })
            .unwrap_err();
        assert!(err.to_string().contains("task 1's first loss"), "{err}");
    }

    #[test]
    fn a_restored_method_continues_bit_identically() {
        let gradients = vec![vec![1.0f32, -2.0], vec![0.5, 0.5], vec![3.0, 0.0]];
        // Restore before any step (no initial losses yet) and after three.
        for steps in [0u64, 3] {
            let mut original = gradnorm(3, 0.05);
            for step in 0..steps {
                let l = 1.0 / (1.0 + step as f64);
                testing::combine(&mut original, step, &[1.5, l, 2.0 * l], &gradients, 0);
            }
            let mut restored = gradnorm(3, 0.05);
            restored.restore(&saved(&original)).unwrap();
            for step in steps..steps + 2 {
                let losses = [1.0, 0.3, 0.1 * (1 + step) as f64];
                let a = testing::combine(&mut original, step, &losses, &gradients, 0);
                let b = testing::combine(&mut restored, step, &losses, &gradients, 0);
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn restore_refuses_missing_or_misshapen_entries() {
        let mut method = gradnorm(2, 0.05);
        testing::combine(&mut method, 0, &[1.0, 1.0], &[vec![1.0], vec![2.0]], 0);
        let state = saved(&method);
        let err = gradnorm(3, 0.05).restore(&state).unwrap_err();
        assert!(
            err.contains("gradnorm.logits has 2 values, expected 3"),
            "{err}"
        );
        for name in [LOGITS, INITIAL_LOSSES, ADAM[0], ADAM[1], ADAM[2]] {
            let mut partial = state.clone();
            partial.remove(name);
            let err = gradnorm(2, 0.05).restore(&partial).unwrap_err();
            assert!(err.contains(&format!("{name} is missing")), "{err}");
        }
        let mut short = state;
        short.insert(INITIAL_LOSSES.into(), vec![1.0]);
        assert!(gradnorm(2, 0.05)
            .restore(&short)
            .unwrap_err()
            .contains("expected 2"));
    }

    #[test]
    fn check_names_the_field_and_the_allowed_values() {
        assert!(Settings::default().check(3).is_ok());
        let err = Settings {
            alpha: -1.0,
            lr: 1e-4,
        }
        .check(3)
        .unwrap_err();
        assert!(err.contains("`alpha`") && err.contains(">= 0"), "{err}");
        let err = Settings {
            alpha: 1.5,
            lr: 0.0,
        }
        .check(3)
        .unwrap_err();
        assert!(err.contains("`lr`"), "{err}");
    }
}
