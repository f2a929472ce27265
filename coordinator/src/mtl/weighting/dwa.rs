//! Dynamic Weight Average (DWA): Liu, Johns & Davison, "End-to-End Multi-Task Learning with
//! Attention", CVPR 2019 (arXiv:1803.10704).
//!
//! Each task's weight follows how fast its loss has been falling:
//! `w_i = K · softmax(r / T)_i` with `r_i = L̄_i(t−1) / L̄_i(t−2)`, and `w = 1` until there is
//! enough history. The shared direction is `Σ w_i g_i` and heads are scaled by `w_i`.
//!
//! Departure: the paper and LibMTL (`LibMTL/weighting/DWA.py`) average losses over epochs, and
//! outerloop has only steps. `L̄_i(t−1)` is the mean of the `window` steps before this one and
//! `L̄_i(t−2)` the mean of the `window` steps before those; the default `window = 1` compares
//! the two previous steps' losses. Setting `window` to the steps in an epoch recovers LibMTL's
//! rule except at epoch boundaries (a sliding, not a tumbling, window). The first `2·window`
//! steps use `w = 1`, as LibMTL's first two epochs do. The ratio needs positive past losses; a
//! step that would divide by a mean loss ≤ 0 is refused. Recorded: `weights`.

use std::collections::BTreeMap;

use super::saved_state::entry;
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The softmax temperature `T`. Default 2: the paper's value and LibMTL's `--T` default.
    pub temperature: f64,
    /// How many steps each loss average spans (an outerloop stand-in for an epoch).
    /// Default 1: the previous two steps' losses.
    pub window: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            temperature: 2.0,
            window: 1,
        }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!(
                "`temperature` must be finite and > 0, got {}",
                self.temperature
            ));
        }
        if self.window == 0 {
            return Err("`window` must be at least 1 step, got 0".into());
        }
        Ok(())
    }
}

const HISTORY: &str = "dwa.loss_history";
const HISTORY_LEN: &str = "dwa.loss_history_steps";

pub struct Dwa {
    settings: Settings,
    tasks: usize,
    /// The losses of the last (up to) `2·window` steps, oldest first.
    history: Vec<Vec<f64>>,
}

impl Dwa {
    pub fn new(settings: Settings, tasks: usize) -> Self {
        Dwa {
            settings,
            tasks,
            history: Vec::new(),
        }
    }

    fn weights(&self) -> Result<Vec<f64>, WeightingError> {
        let window = self.settings.window;
        if self.history.len() < 2 * window {
            return Ok(vec![1.0; self.tasks]);
        }
        let mean = |steps: &[Vec<f64>], task: usize| {
            steps.iter().map(|l| l[task]).sum::<f64>() / window as f64
        };
        let (older, newer) = self.history.split_at(window);
        let mut ratios = Vec::with_capacity(self.tasks);
        for task in 0..self.tasks {
            let (before, after) = (mean(older, task), mean(newer, task));
            if !(before > 0.0 && after >= 0.0) {
                return Err(WeightingError::Method {
                    method: "dwa",
                    detail: format!(
                        "task {task}'s mean losses {before} then {after}: DWA divides loss \
                         averages and needs them positive"
                    ),
                });
            }
            ratios.push(after / before / self.settings.temperature);
        }
        // Softmax shifted by the largest logit so that a steep ratio cannot overflow.
        let top = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exps: Vec<f64> = ratios.iter().map(|r| (r - top).exp()).collect();
        let total: f64 = exps.iter().sum();
        Ok(exps.iter().map(|e| self.tasks as f64 * e / total).collect())
    }
}

impl Weighting for Dwa {
    fn name(&self) -> &'static str {
        "dwa"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, self.tasks)?;
        let weights = self.weights()?;
        if self.history.len() == 2 * self.settings.window {
            self.history.remove(0);
        }
        self.history.push(input.losses.to_vec());
        Ok(Combination::weighted(weights, input.gradients, Vec::new()))
    }

    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        vec![
            (HISTORY, self.history.concat()),
            (HISTORY_LEN, vec![self.history.len() as f64]),
        ]
    }

    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        let steps = entry(state, HISTORY_LEN, 1)?[0];
        let most = 2 * self.settings.window;
        if !(steps >= 0.0 && steps.fract() == 0.0 && steps <= most as f64) {
            return Err(format!(
                "{HISTORY_LEN} must be a whole number of steps in [0, {most}], got {steps}"
            ));
        }
        let steps = steps as usize;
        let flat = entry(state, HISTORY, steps * self.tasks)?;
        if flat.iter().any(|l| !l.is_finite()) {
            return Err(format!("{HISTORY} is not finite"));
        }
        self.history = flat
            .chunks(self.tasks.max(1))
            .map(<[f64]>::to_vec)
            .collect();
        // With no tasks the chunks above are empty: keep the step count all the same.
        self.history.resize(steps, Vec::new());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::mtl::weighting::testing::saved;
    use crate::mtl::weighting::TaskGradients;

    fn dwa(tasks: usize) -> Dwa {
        Dwa::new(Settings::default(), tasks)
    }

    #[test]
    fn the_first_two_steps_weigh_equally_then_follow_the_loss_ratios() {
        let mut method = dwa(2);
        let g = vec![vec![1.0f32, 0.0], vec![0.0, 1.0]];
        for step in 0..2 {
            let out = testing::combine(&mut method, step, &[2.0 - step as f64, 4.0], &g, 0);
            assert_eq!(out.head_scale, vec![1.0, 1.0]);
            assert_eq!(out.shared, vec![1.0, 1.0]);
        }
        // r = (1/2, 4/4) = (0.5, 1); softmax(r/2) = (e^0.25, e^0.5)/(e^0.25 + e^0.5);
        // w = 2·softmax: w_0 = 2/(1 + e^0.25) ≈ 0.8756, w_1 = 2 − w_0 ≈ 1.1244.
        let out = testing::combine(&mut method, 2, &[7.0, 7.0], &g, 0);
        let w0 = 2.0 / (1.0 + 0.25f64.exp());
        assert!(
            (out.head_scale[0] - w0).abs() < 1e-12,
            "{:?}",
            out.head_scale
        );
        assert!((out.head_scale[1] - (2.0 - w0)).abs() < 1e-12);
        assert_eq!(out.shared, vec![w0 as f32, (2.0 - w0) as f32]);
        assert_eq!(out.record, vec![("weights", out.head_scale.clone())]);
        // Step 3 compares step 2 (7, 7) with step 1 (1, 4): r = (7, 7/4), so task 0, whose
        // loss grew more, gets w_0 = 2·e^{(7 − 7/4)/2} / (1 + e^{(7 − 7/4)/2}) ≈ 1.86.
        let out = testing::combine(&mut method, 3, &[1.0, 1.0], &g, 0);
        let e = ((7.0 - 7.0 / 4.0) / 2.0f64).exp();
        assert!((out.head_scale[0] - 2.0 * e / (1.0 + e)).abs() < 1e-12);
    }

    #[test]
    fn a_window_averages_losses_over_several_steps() {
        let mut method = Dwa::new(
            Settings {
                temperature: 2.0,
                window: 2,
            },
            2,
        );
        let g = vec![vec![1.0f32], vec![1.0]];
        let history = [[1.0, 2.0], [3.0, 2.0], [1.0, 1.0], [1.0, 3.0]];
        for (step, losses) in history.iter().enumerate() {
            let out = testing::combine(&mut method, step as u64, losses, &g, 0);
            assert_eq!(out.head_scale, vec![1.0, 1.0], "step {step}");
        }
        // Means: older (2, 2), newer (1, 2); r = (0.5, 1) as in the one-step case above.
        let out = testing::combine(&mut method, 4, &[1.0, 1.0], &g, 0);
        assert!((out.head_scale[0] - 2.0 / (1.0 + 0.25f64.exp())).abs() < 1e-12);
    }

    #[test]
    fn equal_loss_ratios_leave_the_sum_unchanged() {
        let mut method = dwa(3);
        let g = vec![vec![1.0f32, 2.0], vec![-1.0, 0.5], vec![0.25, 0.0]];
        for (step, scale) in [1.0, 0.5, 0.25].into_iter().enumerate() {
            let out = testing::combine(
                &mut method,
                step as u64,
                &[scale, 2.0 * scale, 9.0 * scale],
                &g,
                0,
            );
            assert_eq!(out.shared, vec![0.25, 2.5]);
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
        testing::assert_task_order_independent(|| Box::new(dwa(3)), &steps, &[1, 2, 0], 1e-6);
    }

    #[test]
    fn a_zero_past_loss_is_refused_not_divided_by() {
        let mut method = dwa(2);
        let g = vec![vec![1.0f32], vec![1.0]];
        testing::combine(&mut method, 0, &[0.0, 1.0], &g, 0);
        testing::combine(&mut method, 1, &[0.0, 1.0], &g, 0);
        let err = method
            .combine(&StepInput {
                step: 2,
                losses: &[0.0, 1.0],
                gradients: TaskGradients::Dense(&g),
                rng_key: 0,
            })
            .unwrap_err();
        assert!(err.to_string().contains("task 0"), "{err}");
    }

    #[test]
    fn a_restored_method_continues_bit_identically() {
        let g = vec![vec![1.0f32, 2.0], vec![-1.0, 0.5], vec![0.25, 0.0]];
        let settings = Settings {
            temperature: 2.0,
            window: 2,
        };
        // Restore both mid-warm-up (1 step of history) and with a full history (5 steps).
        for steps in [1u64, 5] {
            let mut original = Dwa::new(settings.clone(), 3);
            for step in 0..steps {
                let l = 1.0 + step as f64;
                testing::combine(&mut original, step, &[l, 1.0 / l, 2.0], &g, 0);
            }
            let mut restored = Dwa::new(settings.clone(), 3);
            restored.restore(&saved(&original)).unwrap();
            for step in steps..steps + 4 {
                let losses = [0.3 * step as f64, 0.7, 1.0 + step as f64];
                let a = testing::combine(&mut original, step, &losses, &g, 0);
                let b = testing::combine(&mut restored, step, &losses, &g, 0);
                assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn restore_refuses_missing_or_misshapen_entries() {
        let mut method = dwa(2);
        let g = vec![vec![1.0f32], vec![1.0]];
        testing::combine(&mut method, 0, &[1.0, 1.0], &g, 0);
        let state = saved(&method);
        let err = dwa(3).restore(&state).unwrap_err();
        assert!(
            err.contains("dwa.loss_history has 2 values, expected 3"),
            "{err}"
        );
        for name in [HISTORY, HISTORY_LEN] {
            let mut partial = state.clone();
            partial.remove(name);
            let err = dwa(2).restore(&partial).unwrap_err();
            assert!(err.contains(&format!("{name} is missing")), "{err}");
        }
        let mut too_long = state;
        too_long.insert(HISTORY_LEN.into(), vec![3.0]);
        assert!(dwa(2).restore(&too_long).unwrap_err().contains("[0, 2]"));
    }

    #[test]
    fn check_names_the_field_and_the_allowed_values() {
        assert!(Settings::default().check(2).is_ok());
        let err = Settings {
            temperature: 0.0,
            window: 1,
        }
        .check(2)
        .unwrap_err();
        assert!(err.contains("`temperature`"), "{err}");
        let err = Settings {
            temperature: 2.0,
            window: 0,
        }
        .check(2)
        .unwrap_err();
        assert!(err.contains("`window`"), "{err}");
    }
}
