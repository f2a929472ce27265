//! How a multi-task head's outputs on a batch of rows are scored: per-row losses and metrics, their sums, and the output gradient of the loss sum.
//!
//! Each row is treated as a task of one point, so `Objective`'s per-task means become the
//! per-row values (MSE: the mean over the task's outputs; cross-entropy: the row's own).

use outerloop_proto::mtl::TaskLoss;
use tch::{Kind, Tensor};

use crate::objective::Objective;

/// The meta-learning objective with the same per-point loss, for the losses that have one.
fn objective(loss: TaskLoss) -> Option<Objective> {
    match loss {
        TaskLoss::Mse => Some(Objective::Mse),
        TaskLoss::CrossEntropy => Some(Objective::CrossEntropy),
        TaskLoss::BinaryCrossEntropy => None,
    }
}

/// Binary cross-entropy with logits of each row, the mean over its labels: `[rows]`.
/// `max(z, 0) - z y + log(1 + exp(-|z|))` is the stable form (no overflow for large |z|).
fn bce_row_losses(output: &Tensor, target: &Tensor) -> Tensor {
    let stable = output.clamp_min(0.0) - output * target + (-output.abs()).exp().log1p();
    stable.mean_dim(1, false, None)
}

/// Outputs `[rows, outputs]` and targets (`[rows, outputs]` values or `[rows]` labels) as
/// `Objective` reads them: `[rows, 1, ...]`.
fn as_points(output: &Tensor, target: &Tensor) -> (Tensor, Tensor) {
    (output.unsqueeze(1), target.unsqueeze(1))
}

/// Each row's loss: `[rows]`, differentiable.
pub fn row_losses(loss: TaskLoss, output: &Tensor, target: &Tensor) -> Tensor {
    let Some(objective) = objective(loss) else {
        return bce_row_losses(output, target);
    };
    let (output, target) = as_points(output, target);
    objective.per_task(&output, &target)
}

/// The sums over the rows of the loss and of the metric (the MSE itself, or accuracy), as
/// `f64` scalars, from the row losses already computed.
pub fn sums(loss: TaskLoss, output: &Tensor, target: &Tensor, losses: &Tensor) -> (Tensor, Tensor) {
    let loss_sum = losses.detach().sum(Kind::Double);
    let metric_sum = match loss {
        TaskLoss::Mse => loss_sum.shallow_clone(),
        TaskLoss::CrossEntropy => {
            let (output, target) = as_points(&output.detach(), target);
            Objective::CrossEntropy
                .accuracy(&output, &target)
                .expect("cross-entropy has an accuracy")
                .sum(Kind::Double)
        }
        // Each row's share of its labels on the right side of 0.5 (a logit of 0).
        TaskLoss::BinaryCrossEntropy => output
            .detach()
            .gt(0.0)
            .eq_tensor(&target.gt(0.5))
            .to_kind(Kind::Double)
            .mean_dim(1, false, None)
            .sum(Kind::Double),
    };
    (loss_sum, metric_sum)
}

/// The gradient of the sum of the row losses with respect to `output`: `[rows, outputs]`.
pub fn output_grad(loss: TaskLoss, output: &Tensor, target: &Tensor) -> Tensor {
    let Some(objective) = objective(loss) else {
        // d/dz of the mean over the labels: (sigmoid(z) - y) / labels.
        let labels = output.size()[1] as f64;
        return (output.sigmoid() - target) / labels;
    };
    let (points, target) = as_points(output, target);
    objective.output_grad(&points, &target, 1.0).squeeze_dim(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn cross_entropy_and_accuracy_match_hand_computation() {
        // Three rows of three classes; labels 0, 2, 1; argmaxes 0, 1, 1: two right.
        let logits =
            Tensor::from_slice(&[2.0f64, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 3.0, 1.0]).view([3, 3]);
        let labels = Tensor::from_slice(&[0i64, 2, 1]);
        let losses = row_losses(TaskLoss::CrossEntropy, &logits, &labels);
        let e = std::f64::consts::E;
        let want = [
            -(e.powi(2) / (e.powi(2) + 2.0)).ln(),
            -(1.0 / (e + 2.0)).ln(),
            -(e.powi(3) / (e.powi(3) + e + 1.0)).ln(),
        ];
        let got = Vec::<f64>::try_from(&losses).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        let (loss_sum, metric_sum) = sums(TaskLoss::CrossEntropy, &logits, &labels, &losses);
        assert!((loss_sum.double_value(&[]) - want.iter().sum::<f64>()).abs() < 1e-12);
        assert_eq!(metric_sum.double_value(&[]), 2.0);
    }

    #[test]
    fn binary_cross_entropy_and_label_accuracy_match_hand_computation() {
        // Two rows of two labels. Row 0: logits (0, 2), labels (1, 1); row 1: (-1, 30), (0, 0).
        let logits = Tensor::from_slice(&[0.0f64, 2.0, -1.0, 30.0]).view([2, 2]);
        let labels = Tensor::from_slice(&[1.0f64, 1.0, 0.0, 0.0]).view([2, 2]);
        let losses = row_losses(TaskLoss::BinaryCrossEntropy, &logits, &labels);
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let want = [
            (-(sigmoid(0.0)).ln() - sigmoid(2.0).ln()) / 2.0,
            // -log(1 - sigmoid(30)) = 30 + log(1 + e^-30): finite, no cancellation.
            (-(1.0 - sigmoid(-1.0)).ln() + 30.0 + (-30.0f64).exp().ln_1p()) / 2.0,
        ];
        let got = Vec::<f64>::try_from(&losses).unwrap();
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{g} vs {w}");
        }
        // Row 0: logit 0 is not above 0, so label 1 is missed; 2 is right: 1/2. Row 1: -1
        // right, 30 wrong: 1/2.
        let (_, metric) = sums(TaskLoss::BinaryCrossEntropy, &logits, &labels, &losses);
        assert_eq!(metric.double_value(&[]), 1.0);
    }

    #[test]
    fn mse_is_the_mean_over_outputs_and_its_own_metric() {
        let output = Tensor::from_slice(&[1.0f64, 2.0, 0.0, 0.0]).view([2, 2]);
        let target = Tensor::from_slice(&[0.0f64, 0.0, 3.0, -1.0]).view([2, 2]);
        let losses = row_losses(TaskLoss::Mse, &output, &target);
        assert_eq!(Vec::<f64>::try_from(&losses).unwrap(), [2.5, 5.0]);
        let (loss_sum, metric_sum) = sums(TaskLoss::Mse, &output, &target, &losses);
        assert_eq!(
            (loss_sum.double_value(&[]), metric_sum.double_value(&[])),
            (7.5, 7.5)
        );
    }

    #[test]
    fn output_gradients_are_those_of_the_loss_sum() {
        let output = Tensor::randn([5, 3], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::from_slice(&[0i64, 1, 2, 2, 0]);
        let values = Tensor::randn([5, 3], (Kind::Double, Device::Cpu));
        let binary = Tensor::randn([5, 3], (Kind::Double, Device::Cpu))
            .gt(0.0)
            .to_kind(Kind::Double);
        for (loss, target) in [
            (TaskLoss::CrossEntropy, labels),
            (TaskLoss::Mse, values),
            (TaskLoss::BinaryCrossEntropy, binary),
        ] {
            let sum = row_losses(loss, &output, &target).sum(Kind::Double);
            let autograd = Tensor::run_backward(&[sum], &[&output], false, false);
            let gap = (&autograd[0] - output_grad(loss, &output, &target))
                .abs()
                .max()
                .double_value(&[]);
            assert!(gap < 1e-12, "{loss:?}: {gap}");
        }
    }
}
