//! Fixed weights: the classic weighted sum of task losses, `Σ w_i L_i`, with the spec's weights.
//!
//! The shared direction is `Σ w_i g_i` and each head is scaled by its task's weight, which is
//! what back-propagating the weighted loss does. There is no default: a weighted sum is only
//! meaningful with weights chosen for the run's tasks, so the spec must list one per task
//! (equal weights are the `equal` method).

use super::{check_input, Combination, StepInput, Weighting, WeightingError};

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Each task's loss weight, in task order: finite, non-negative, not all zero.
    pub weights: Vec<f64>,
}

impl Settings {
    pub fn check(&self, tasks: usize) -> Result<(), String> {
        if self.weights.len() != tasks {
            return Err(format!(
                "`weights` must list one weight per task ({tasks}), got {}",
                self.weights.len()
            ));
        }
        // The weighted gradients are `f32`: a weight past its largest value overflows them
        // whatever the gradient.
        let largest = f64::from(f32::MAX);
        if let Some((task, w)) = self
            .weights
            .iter()
            .enumerate()
            .find(|(_, w)| !(w.is_finite() && (0.0..=largest).contains(*w)))
        {
            return Err(format!(
                "`weights` must be finite and non-negative, at most {largest:e} (the largest \
                 f32), got {w} for task {task}"
            ));
        }
        if self.weights.iter().all(|&w| w == 0.0) {
            return Err("`weights` must not all be zero".into());
        }
        Ok(())
    }
}

pub struct Fixed {
    weights: Vec<f64>,
}

impl Fixed {
    pub fn new(settings: Settings, _tasks: usize) -> Self {
        Fixed {
            weights: settings.weights,
        }
    }
}

impl Weighting for Fixed {
    fn name(&self) -> &'static str {
        "fixed"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, self.weights.len())?;
        Ok(Combination::weighted(
            self.weights.clone(),
            input.gradients,
            Vec::new(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::mtl::weighting::TaskGradients;

    fn fixed(weights: &[f64]) -> Fixed {
        Fixed::new(
            Settings {
                weights: weights.to_vec(),
            },
            weights.len(),
        )
    }

    #[test]
    fn the_shared_direction_is_the_weighted_sum() {
        // 2·(1, 0) + 0.5·(2, −4) + 0·(9, 9) = (3, −2).
        let mut method = fixed(&[2.0, 0.5, 0.0]);
        let out = testing::combine(
            &mut method,
            0,
            &[1.0, 2.0, 3.0],
            &[vec![1.0, 0.0], vec![2.0, -4.0], vec![9.0, 9.0]],
            0,
        );
        assert_eq!(out.shared, vec![3.0, -2.0]);
        assert_eq!(out.head_scale, vec![2.0, 0.5, 0.0]);
        assert_eq!(out.record, vec![("weights", vec![2.0, 0.5, 0.0])]);
    }

    #[test]
    fn unit_weight_on_one_task_leaves_its_gradient_unchanged() {
        let g = vec![0.1f32, -3.5, 7.25];
        let mut method = fixed(&[1.0]);
        let out = testing::combine(&mut method, 0, &[0.3], std::slice::from_ref(&g), 0);
        assert_eq!(out.shared, g);
    }

    #[test]
    fn does_not_depend_on_task_order() {
        let weights = [0.2, 1.0, 3.0];
        let steps = vec![(
            vec![1.0, 2.0, 3.0],
            vec![vec![1.0, 2.0], vec![-1.0, 0.5], vec![0.0, 4.0]],
        )];
        let permutation = [2, 0, 1];
        // The spec lists weights in task order, so the permuted run gets them permuted too.
        let permuted: Vec<f64> = permutation.iter().map(|&i| weights[i]).collect();
        let (mut a, mut b) = (fixed(&weights), fixed(&permuted));
        let (losses, gradients) = &steps[0];
        let x = testing::combine(&mut a, 0, losses, gradients, 0);
        let p_losses: Vec<f64> = permutation.iter().map(|&i| losses[i]).collect();
        let p_gradients: Vec<Vec<f32>> =
            permutation.iter().map(|&i| gradients[i].clone()).collect();
        let y = testing::combine(&mut b, 0, &p_losses, &p_gradients, 0);
        assert_eq!(x.shared, y.shared);
        // And with symmetric weights the shared checker applies directly.
        testing::assert_task_order_independent(
            || Box::new(fixed(&[0.7, 0.7, 0.7])),
            &steps,
            &permutation,
            1e-6,
        );
    }

    #[test]
    fn check_names_the_field_and_the_allowed_values() {
        let settings = |w: &[f64]| Settings {
            weights: w.to_vec(),
        };
        assert!(settings(&[1.0, 0.0]).check(2).is_ok());
        let err = Settings::default().check(2).unwrap_err();
        assert!(err.contains("`weights`") && err.contains("got 0"), "{err}");
        let err = settings(&[1.0, -0.5]).check(2).unwrap_err();
        assert!(
            err.contains("non-negative") && err.contains("-0.5"),
            "{err}"
        );
        assert!(settings(&[1.0, f64::NAN]).check(2).is_err());
        let err = settings(&[1.0, 1e39]).check(2).unwrap_err();
        assert!(
            err.contains("the largest f32")
                && err.contains("1000000000000000000000000000000000000000 for task 1"),
            "{err}"
        );
        assert!(settings(&[1.0, f64::from(f32::MAX)]).check(2).is_ok());
        let err = settings(&[0.0, 0.0]).check(2).unwrap_err();
        assert!(err.contains("all be zero"), "{err}");
    }

    #[test]
    fn a_step_with_the_wrong_task_count_is_refused() {
        let mut method = fixed(&[1.0, 1.0]);
        let err = method
            .combine(&StepInput {
                step: 0,
                losses: &[1.0],
                gradients: TaskGradients::Dense(&[vec![1.0]]),
                rng_key: 0,
            })
            .unwrap_err();
        assert!(
            matches!(
                err,
                WeightingError::Shape {
                    method: "fixed",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn settings_parse_from_toml_and_refuse_unknown_fields() {
        let s: Settings = toml::from_str("weights = [1.0, 0.5]").unwrap();
        assert_eq!(s.weights, vec![1.0, 0.5]);
        assert!(toml::from_str::<Settings>("weight = [1.0]").is_err());
    }
}
