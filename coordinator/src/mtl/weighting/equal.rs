//! Equal weighting (EW): the plain sum of task losses, the baseline every MTL paper reports.
//!
//! Every task's weight is 1, as in LibMTL's `EW` (whose docstring says `1/T` but whose code
//! sums the losses with weight 1; we follow the code, so the step size means the same as
//! there). The shared direction is `Σ g_i`; heads are not scaled.

use super::{check_input, Combination, StepInput, Weighting, WeightingError};

pub struct Equal;

impl Weighting for Equal {
    fn name(&self) -> &'static str {
        "ew"
    }

    fn combine(&mut self, input: &StepInput) -> Result<Combination, WeightingError> {
        check_input(self.name(), input, input.tasks())?;
        let weights = vec![1.0; input.tasks()];
        Ok(Combination::weighted(weights, input.gradients, Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing;
    use super::*;
    use crate::mtl::weighting::TaskGradients;

    #[test]
    fn the_shared_direction_is_the_sum() {
        // (1, 2) + (−3, 0.5) + (0, 1) = (−2, 3.5).
        let out = testing::combine(
            &mut Equal,
            0,
            &[1.0, 5.0, 0.1],
            &[vec![1.0, 2.0], vec![-3.0, 0.5], vec![0.0, 1.0]],
            0,
        );
        assert_eq!(out.shared, vec![-2.0, 3.5]);
        assert_eq!(out.head_scale, vec![1.0; 3]);
        assert_eq!(out.record, vec![("weights", vec![1.0; 3])]);
    }

    #[test]
    fn one_task_is_left_unchanged() {
        let g = vec![0.25f32, -1e-3, 42.0];
        let out = testing::combine(&mut Equal, 3, &[2.0], std::slice::from_ref(&g), 0);
        assert_eq!(out.shared, g);
    }

    #[test]
    fn does_not_depend_on_task_order() {
        let steps = vec![(
            vec![1.0, 2.0, 3.0, 4.0],
            vec![
                vec![1.0, 2.0, 0.0],
                vec![-1.0, 0.5, 3.0],
                vec![0.0, 4.0, -2.0],
                vec![0.3, 0.3, 0.3],
            ],
        )];
        testing::assert_task_order_independent(|| Box::new(Equal), &steps, &[3, 1, 0, 2], 1e-6);
    }

    #[test]
    fn refuses_non_finite_gradients_and_mismatched_counts() {
        let err = Equal
            .combine(&StepInput {
                step: 0,
                losses: &[1.0, 1.0],
                gradients: TaskGradients::Dense(&[vec![1.0], vec![f32::NAN]]),
                rng_key: 0,
            })
            .unwrap_err();
        assert_eq!(
            err,
            WeightingError::NonFinite {
                task: 1,
                what: "shared-layer gradient"
            }
        );
        let err = Equal
            .combine(&StepInput {
                step: 0,
                losses: &[1.0, 1.0],
                gradients: TaskGradients::Dense(&[vec![1.0]]),
                rng_key: 0,
            })
            .unwrap_err();
        assert!(
            matches!(err, WeightingError::Shape { method: "ew", .. }),
            "{err}"
        );
    }
}
