//! Uncertainty weighting (UW): Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to
//! Weigh Losses for Scene Geometry and Semantics", CVPR 2018 (arXiv:1705.07115).
//!
//! Each task has a learned log variance `s_i`; the loss is `Σ L_i / (2 e^{s_i}) + s_i / 2` in
//! LibMTL's form (`LibMTL/weighting/UW.py`), with its initialisation `s_i = −0.5`. The task
//! weights `w_i = 1 / (2 e^{s_i})` scale the shared gradient and the heads. The `s_i` take one
//! step of the method's own Adam per outer step along the analytic gradient
//! `∂/∂s_i = 1/2 − L_i / (2 e^{s_i})`, whose fixed point is `e^{s_i} = L_i`.
//!
//! Departures: LibMTL trains `s` in the network's optimizer; outerloop steps it apart, so its
//! learning rate is its own setting (see [`Settings::lr`]) and no weight decay reaches it. As
//! in LibMTL, where the network and `s` descend one loss together, the weights used at step `t`
//! are the ones before that step's update of `s`. Recorded: `weights` and `log_variance`
//! (both as used at this step).

use std::collections::BTreeMap;

use super::adam::{Adam, AdamNames};
use super::saved_state::entry;
use super::{check_input, Combination, StepInput, Weighting, WeightingError};

#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Adam's learning rate for the log variances. Default 0.025: the learning rate the
    /// Nash-MTL benchmark code (Navon et al. 2022, `experiments/utils.py`,
    /// `--method-params-lr`, also used by FAMO's code) gives UW's parameters in their own Adam
    /// group. LibMTL instead shares the network's rate (1e-4 by default), which over a few
    /// thousand outer steps would leave `s` near its initial value.
    pub lr: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { lr: 0.025 }
    }
}

impl Settings {
    pub fn check(&self, _tasks: usize) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("`lr` must be finite and > 0, got {}", self.lr));
        }
        Ok(())
    }
}

/// LibMTL's initial log variance (`UW.init_param`): weights start at `e^{0.5}/2 ≈ 0.82`.
const INITIAL_LOG_VARIANCE: f64 = -0.5;
const LOG_VARIANCE: &str = "uw.log_variance";
const ADAM: AdamNames = ["uw.adam_m", "uw.adam_v", "uw.adam_steps"];

pub struct Uncertainty {
    log_variance: Vec<f64>,
    adam: Adam,
}

impl Uncertainty {
    pub fn new(settings: Settings, tasks: usize) -> Self {
        Uncertainty {
            log_variance: vec![INITIAL_LOG_VARIANCE; tasks],
            adam: Adam::new(settings.lr, 0.0, tasks),
        }
    }
}

impl Weighting for Uncertainty {
    fn name(&self) -> &'static str {
        "uw"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, self.log_variance.len())?;
        let weights: Vec<f64> = self.log_variance.iter().map(|s| 0.5 * (-s).exp()).collect();
        let used = self.log_variance.clone();
        let gradient: Vec<f64> = input
            .losses
            .iter()
            .zip(&weights)
            .map(|(loss, w)| 0.5 - loss * w)
            .collect();
        self.adam.step(&mut self.log_variance, &gradient);
        Ok(Combination::weighted(
            weights,
            input.gradients,
            vec![("log_variance", used)],
        ))
    }

    fn state(&self) -> Vec<(&'static str, Vec<f64>)> {
        let mut state = vec![(LOG_VARIANCE, self.log_variance.clone())];
        state.extend(self.adam.state(ADAM));
        state
    }

    fn restore(&mut self, state: &BTreeMap<String, Vec<f64>>) -> Result<(), String> {
        let log_variance = entry(state, LOG_VARIANCE, self.log_variance.len())?;
        if log_variance.iter().any(|s| !s.is_finite()) {
            return Err(format!("{LOG_VARIANCE} is not finite"));
        }
        self.adam.restore(ADAM, state)?;
        self.log_variance.copy_from_slice(log_variance);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::mtl::weighting::testing::saved;

    fn uw(tasks: usize) -> Uncertainty {
        Uncertainty::new(Settings::default(), tasks)
    }

    #[test]
    fn first_step_uses_libmtl_initial_weights_and_moves_s_toward_log_loss() {
        // w = 1/(2e^{−0.5}) = e^{0.5}/2 ≈ 0.8244 for every task.
        let w0 = 0.5f64.exp() / 2.0;
        let mut method = uw(2);
        let out = testing::combine(
            &mut method,
            0,
            &[4.0, 0.1],
            &[vec![1.0, 0.0], vec![0.0, 2.0]],
            0,
        );
        assert!(out.head_scale.iter().all(|w| (w - w0).abs() < 1e-15));
        assert_eq!(out.shared, vec![w0 as f32, (2.0 * w0) as f32]);
        assert_eq!(out.record[1], ("log_variance", vec![-0.5, -0.5]));
        // ∂/∂s = 1/2 − L·w: task 0: 0.5 − 3.30 < 0, task 1: 0.5 − 0.08 > 0. Adam's first step
        // moves each by lr against the sign: s = (−0.475, −0.525).
        let s = &method.log_variance;
        assert!(
            (s[0] + 0.475).abs() < 1e-9 && (s[1] + 0.525).abs() < 1e-9,
            "{s:?}"
        );
        // The next step uses the updated weights 1/(2e^{s}).
        let out = testing::combine(
            &mut method,
            1,
            &[4.0, 0.1],
            &[vec![1.0, 0.0], vec![0.0, 2.0]],
            0,
        );
        assert!((out.head_scale[0] - 0.5 * 0.475f64.exp()).abs() < 1e-9);
        assert!((out.head_scale[1] - 0.5 * 0.525f64.exp()).abs() < 1e-9);
    }

    #[test]
    fn log_variances_converge_to_log_losses() {
        // The UW loss is minimised in s at e^{s} = L, i.e. weight 1/(2L).
        let mut method = Uncertainty::new(Settings { lr: 0.05 }, 3);
        let losses = [0.2, 1.0, 5.0];
        let gradients = vec![vec![1.0f32]; 3];
        for step in 0..4000 {
            testing::combine(&mut method, step, &losses, &gradients, 0);
        }
        for (s, l) in method.log_variance.iter().zip(losses) {
            assert!((s - f64::ln(l)).abs() < 0.02, "{s} vs ln {l}");
        }
    }

    #[test]
    fn does_not_depend_on_task_order() {
        let steps: Vec<(Vec<f64>, Vec<Vec<f32>>)> = (0..5)
            .map(|t| {
                let t = t as f64;
                (
                    vec![1.0 + t, 0.5, 3.0 / (1.0 + t)],
                    vec![
                        vec![1.0, 2.0, t as f32],
                        vec![-1.0, 0.5, 3.0],
                        vec![0.0, 4.0, -2.0],
                    ],
                )
            })
            .collect();
        testing::assert_task_order_independent(|| Box::new(uw(3)), &steps, &[2, 0, 1], 1e-6);
    }

    #[test]
    fn a_restored_method_continues_bit_identically() {
        let gradients = vec![vec![1.0f32, -2.0], vec![0.5, 0.5]];
        let mut original = uw(2);
        for step in 0..3 {
            testing::combine(&mut original, step, &[1.5, 0.2], &gradients, 0);
        }
        let mut restored = uw(2);
        restored.restore(&saved(&original)).unwrap();
        let a = testing::combine(&mut original, 3, &[1.0, 0.3], &gradients, 0);
        let b = testing::combine(&mut restored, 3, &[1.0, 0.3], &gradients, 0);
        assert_eq!(a, b);
        assert_eq!(original.state(), restored.state());
    }

    #[test]
    fn restore_refuses_missing_or_misshapen_entries() {
        let state = saved(&uw(2));
        let err = uw(3).restore(&state).unwrap_err();
        assert!(
            err.contains("uw.log_variance has 2 values, expected 3"),
            "{err}"
        );
        for name in [LOG_VARIANCE, ADAM[0], ADAM[1], ADAM[2]] {
            let mut partial = state.clone();
            partial.remove(name);
            let err = uw(2).restore(&partial).unwrap_err();
            assert!(err.contains(&format!("{name} is missing")), "{err}");
        }
    }

    #[test]
    fn check_refuses_a_non_positive_rate() {
        assert!(Settings::default().check(2).is_ok());
        let err = Settings { lr: 0.0 }.check(2).unwrap_err();
        assert!(err.contains("`lr`") && err.contains("> 0"), "{err}");
        assert!(Settings { lr: f64::INFINITY }.check(2).is_err());
    }
}
