//! FAMO: Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023
//! (arXiv:2306.03792; official code Cranial-XIX/FAMO).
//!
//! FAMO descends the weighted log-losses `Σ z_i log D_i / c`, with `z = softmax(ξ)`,
//! `D_i = L_i − min_loss_i + 1e-8` (the official minimum losses are 0) and `c = Σ z_i / D_i`
//! held constant, so the shared direction is `Σ_i z_i / (c D_i) g_i`: weights on the simplex
//! that favour tasks with small losses and large `z_i`. The logits learn from how much each
//! log-loss fell since the previous step, `δ = log D(prev) − log D(curr)`, back-propagated
//! through the softmax (`∂/∂ξ_j = z_j (δ_j − Σ_i z_i δ_i)`) and stepped by Adam with the
//! official learning rate and coupled weight decay `γ`, so that tasks whose losses fall fast
//! lose weight. Heads are scaled by the same weights, as back-propagating the weighted loss does.
//!
//! Departure: the official code (and LibMTL's port) re-evaluates the losses on the same batch
//! after the network's update and updates `ξ` from that second forward pass. outerloop saves the
//! pass: at each step it first updates `ξ` from the previous step's losses to this step's (a new
//! batch), then weighs this step, so the update lands at the same point in the sequence but
//! measures the fall across batches. The official `max_norm` clipping of the shared gradient is
//! left to the outer optimizer. Losses must be >= 0 (their logarithm is taken above the minimum
//! loss 0). Recorded: `weights` (`z_i / (c D_i)`) and `softmax` (`z`).

use std::collections::BTreeMap;

use super::adam::{Adam, AdamNames};
use super::saved_state::{entry, entry_or_empty};
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Adam's learning rate for the logits (the official `w_lr`). Default 0.025: the official
    /// code's `w_lr` and LibMTL's `FAMO_w_lr` default.
    #[serde(alias = "w_lr")]
    pub lr: f64,
    /// Adam's weight decay on the logits, `γ`. Default 1e-3: LibMTL's `FAMO_w_gamma` default
    /// and the official QM9 script's value (the official example file uses 0.01).
    pub gamma: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            lr: 0.025,
            gamma: 1e-3,
        }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("`lr` must be finite and > 0, got {}", self.lr));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return Err(format!(
                "`gamma` must be finite and >= 0, got {}",
                self.gamma
            ));
        }
        Ok(())
    }
}

/// Keeps `log D` finite for a task at its minimum loss (the official constant).
const LOSS_FLOOR: f64 = 1e-8;
const LOGITS: &str = "famo.logits";
const PREVIOUS_LOSSES: &str = "famo.previous_losses";
const ADAM: AdamNames = ["famo.adam_m", "famo.adam_v", "famo.adam_steps"];

pub struct Famo {
    logits: Vec<f64>,
    /// The previous step's losses, empty before the first step.
    previous: Vec<f64>,
    adam: Adam,
}

impl Famo {
    pub fn new(settings: Settings, tasks: usize) -> Self {
        Famo {
            logits: vec![0.0; tasks],
            previous: Vec::new(),
            adam: Adam::new(settings.lr, settings.gamma, tasks),
        }
    }
}

fn softmax(logits: &[f64]) -> Vec<f64> {
    let top = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = logits.iter().map(|x| (x - top).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|e| e / total).collect()
}

fn gap(loss: f64) -> f64 {
    loss + LOSS_FLOOR
}

impl Weighting for Famo {
    fn name(&self) -> &'static str {
        "famo"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        let tasks = self.logits.len();
        check_input(self.name(), input, tasks)?;
        let refuse = |detail| WeightingError::Method {
            method: "famo",
            detail,
        };
        if let Some((task, loss)) = input.losses.iter().enumerate().find(|(_, l)| **l < 0.0) {
            return Err(refuse(format!(
                "task {task}'s loss is {loss}: FAMO weighs log-losses above 0 and needs \
                 losses >= 0"
            )));
        }

        if !self.previous.is_empty() {
            let z = softmax(&self.logits);
            let fall: Vec<f64> = self
                .previous
                .iter()
                .zip(input.losses)
                .map(|(&before, &now)| gap(before).ln() - gap(now).ln())
                .collect();
            let mean_fall: f64 = z.iter().zip(&fall).map(|(z, d)| z * d).sum();
            let gradient: Vec<f64> = z
                .iter()
                .zip(&fall)
                .map(|(z, d)| z * (d - mean_fall))
                .collect();
            self.adam.step(&mut self.logits, &gradient);
        }
        self.previous = input.losses.to_vec();

        let z = softmax(&self.logits);
        let c: f64 = z.iter().zip(input.losses).map(|(z, &l)| z / gap(l)).sum();
        let weights: Vec<f64> = z
            .iter()
            .zip(input.losses)
            .map(|(z, &l)| z / (c * gap(l)))
            .collect();
        Ok(Combination::weighted(
            weights,
            input.gradients,
            vec![("softmax", z)],
        ))
    }

    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        let mut state = vec![
            (LOGITS, self.logits.clone()),
            (PREVIOUS_LOSSES, self.previous.clone()),
        ];
        state.extend(self.adam.state(ADAM));
        state
    }

    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        let tasks = self.logits.len();
        let logits = entry(state, LOGITS, tasks)?;
        // Before the first step there are no previous losses yet.
        let previous = entry_or_empty(state, PREVIOUS_LOSSES, tasks)?;
        if logits.iter().any(|x| !x.is_finite()) {
            return Err(format!("{LOGITS} is not finite"));
        }
        if previous.iter().any(|l| !(l.is_finite() && *l >= 0.0)) {
            return Err(format!("{PREVIOUS_LOSSES} must be finite and >= 0"));
        }
        self.adam.restore(ADAM, state)?;
        self.logits.copy_from_slice(logits);
        self.previous = previous.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::mtl::weighting::testing::saved;
    use crate::mtl::weighting::TaskGradients;

    fn famo(tasks: usize) -> Famo {
        Famo::new(Settings::default(), tasks)
    }

    fn close(a: &[f64], b: &[f64], tolerance: f64) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance)
    }

    #[test]
    fn hand_computed_first_two_steps() {
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        let mut method = famo(2);
        // Step 0: z = (1/2, 1/2), D ≈ (1, 4), c = 1/2 + 1/8 = 5/8, weights = (0.8, 0.2).
        let out = testing::combine(&mut method, 0, &[1.0, 4.0], &g, 0);
        assert!(
            close(&out.head_scale, &[0.8, 0.2], 1e-8),
            "{:?}",
            out.head_scale
        );
        assert_eq!(out.shared, vec![0.8, 0.2]);
        assert_eq!(method.logits, vec![0.0, 0.0]);
        // Step 1, losses (0.5, 4): δ ≈ (ln 2, 0), Σ z δ = ln2/2, ∂/∂ξ = (ln2/4, −ln2/4); with
        // ξ = 0 the decay adds nothing and Adam's first step gives ξ = (−0.025, 0.025) (to
        // within Adam's eps: lr·eps/|g| ≈ 1.4e-9): task 0, whose loss halved, loses logit.
        // Then z = (1, e^0.05)/(1 + e^0.05), D = (0.5, 4) and weights ∝ (z_0/0.5, z_1/4)
        // = (2, e^0.05/4)/(2 + e^0.05/4).
        let out = testing::combine(&mut method, 1, &[0.5, 4.0], &g, 0);
        assert!(
            close(&method.logits, &[-0.025, 0.025], 1e-8),
            "{:?}",
            method.logits
        );
        let e = 0.05f64.exp();
        let z = [1.0 / (1.0 + e), e / (1.0 + e)];
        assert!(close(&out.record[1].1, &z, 1e-8));
        let total = 2.0 + e / 4.0;
        assert!(close(
            &out.head_scale,
            &[2.0 / total, e / 4.0 / total],
            1e-8
        ));
    }

    #[test]
    fn weights_stay_on_the_simplex_and_ignore_a_common_loss_scale() {
        // FAMO works on log-losses: multiplying every loss by 1000 at every step changes
        // neither δ nor the normalised weights (up to the 1e-8 floor).
        let g = vec![vec![1.0f32], vec![2.0], vec![-1.0]];
        let (mut a, mut b) = (famo(3), famo(3));
        for step in 0..20 {
            let t = step as f64;
            let losses = [1.0 / (1.0 + t), 2.0 * 0.9f64.powf(t), 0.5 + 0.01 * t];
            let scaled: Vec<f64> = losses.iter().map(|l| 1000.0 * l).collect();
            let x = testing::combine(&mut a, step, &losses, &g, 0);
            let y = testing::combine(&mut b, step, &scaled, &g, 0);
            assert!((x.head_scale.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            assert!(x.head_scale.iter().all(|&w| w > 0.0));
            assert!(close(&x.head_scale, &y.head_scale, 1e-6), "step {step}");
        }
    }

    #[test]
    fn one_task_is_left_unchanged() {
        let g = vec![vec![0.5f32, -2.0, 8.0]];
        let mut method = famo(1);
        for step in 0..3 {
            let out = testing::combine(&mut method, step, &[1.0 / (1.0 + step as f64)], &g, 0);
            assert_eq!(out.shared, g[0]);
        }
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
        testing::assert_task_order_independent(|| Box::new(famo(3)), &steps, &[1, 2, 0], 1e-6);
    }

    #[test]
    fn a_negative_loss_is_refused() {
        let err = famo(2)
            .combine(&StepInput {
                step: 0,
                losses: &[1.0, -0.5],
                gradients: TaskGradients::Dense(&[vec![1.0], vec![1.0]]),
                rng_key: 0,
            })
            .unwrap_err();
        assert!(err.to_string().contains("task 1"), "{err}");
    }

    #[test]
    fn a_restored_method_continues_bit_identically() {
        let g = vec![vec![1.0f32, -2.0], vec![0.5, 0.5], vec![3.0, 0.0]];
        for steps in [0u64, 4] {
            let mut original = famo(3);
            for step in 0..steps {
                let l = 1.0 / (1.0 + step as f64);
                testing::combine(&mut original, step, &[1.5, l, 2.0 * l], &g, 0);
            }
            let mut restored = famo(3);
            restored.restore(&saved(&original)).unwrap();
            for step in steps..steps + 2 {
                let losses = [1.0, 0.3, 0.1 * (1 + step) as f64];
                let a = testing::combine(&mut original, step, &losses, &g, 0);
                let b = testing::combine(&mut restored, step, &losses, &g, 0);
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn restore_refuses_missing_or_misshapen_entries() {
        let mut method = famo(2);
        testing::combine(&mut method, 0, &[1.0, 1.0], &[vec![1.0], vec![2.0]], 0);
        let state = saved(&method);
        let err = famo(3).restore(&state).unwrap_err();
        assert!(
            err.contains("famo.logits has 2 values, expected 3"),
            "{err}"
        );
        for name in [LOGITS, PREVIOUS_LOSSES, ADAM[0], ADAM[1], ADAM[2]] {
            let mut partial = state.clone();
            partial.remove(name);
            let err = famo(2).restore(&partial).unwrap_err();
            assert!(err.contains(&format!("{name} is missing")), "{err}");
        }
    }

    #[test]
    fn settings_accept_the_official_name_and_check_their_ranges() {
        let s: Settings = toml::from_str("w_lr = 0.01").unwrap();
        assert_eq!(
            s,
            Settings {
                lr: 0.01,
                gamma: 1e-3
            }
        );
        assert!(Settings::default().check(2).is_ok());
        let err = Settings {
            lr: 0.025,
            gamma: -1.0,
        }
        .check(2)
        .unwrap_err();
        assert!(err.contains("`gamma`") && err.contains(">= 0"), "{err}");
        let err = Settings {
            lr: 0.0,
            gamma: 1e-3,
        }
        .check(2)
        .unwrap_err();
        assert!(err.contains("`lr`"), "{err}");
    }
}
