//! What a task's predictions are scored by: mean squared error for regression, cross-entropy (and accuracy) for classification.

use tch::{Kind, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    /// Targets `[tasks, points, outputs]`, the loss is the mean squared error per task.
    Mse,
    /// Targets are class indices `[tasks, points]` (int64), outputs are logits
    /// `[tasks, points, classes]`; the loss is the mean cross-entropy per task.
    CrossEntropy,
}

impl Objective {
    /// The loss of each task: `[tasks]`.
    pub fn per_task(self, output: &Tensor, target: &Tensor) -> Tensor {
        match self {
            Objective::Mse => (output - target)
                .square()
                .flatten(1, -1)
                .mean_dim(1, false, None),
            Objective::CrossEntropy => {
                let log_p = output.log_softmax(-1, None);
                -log_p
                    .gather(-1, &target.unsqueeze(-1), false)
                    .squeeze_dim(-1)
                    .mean_dim(1, false, None)
            }
        }
    }

    /// The fraction of each task's points classified correctly (`None` for regression).
    pub fn accuracy(self, output: &Tensor, target: &Tensor) -> Option<Tensor> {
        match self {
            Objective::Mse => None,
            Objective::CrossEntropy => Some(
                output
                    .argmax(-1, false)
                    .eq_tensor(target)
                    .to_kind(Kind::Float)
                    .mean_dim(1, false, None),
            ),
        }
    }

    /// `scale` times the gradient of each task's loss with respect to `output`, written in
    /// differentiable ops so that explicit backward passes can start from it.
    pub fn output_grad(self, output: &Tensor, target: &Tensor, scale: f64) -> Tensor {
        let points = output.size()[1] as f64;
        match self {
            Objective::Mse => {
                let per_point = points * output.size()[2] as f64;
                (output - target) * (2.0 * scale / per_point)
            }
            Objective::CrossEntropy => {
                let classes = output.size()[2];
                let one_hot = target.one_hot(classes).to_kind(output.kind());
                (output.softmax(-1, None) - one_hot) * (scale / points)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn cross_entropy_and_accuracy_match_hand_computation() {
        // One task, two points; logits favour class 0 then class 1; targets 0 and 0.
        let logits = Tensor::from_slice(&[2.0f64, 0.0, 0.0, 1.0]).view([1, 2, 2]);
        let target = Tensor::from_slice(&[0i64, 0]).view([1, 2]);
        let loss = Objective::CrossEntropy
            .per_task(&logits, &target)
            .double_value(&[0]);
        let want = ((1.0 + (-2f64).exp()).ln() + (1.0 + 1f64.exp()).ln()) / 2.0;
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
        let accuracy = Objective::CrossEntropy.accuracy(&logits, &target).unwrap();
        assert_eq!(accuracy.double_value(&[0]), 0.5);
    }

    #[test]
    fn output_gradients_are_the_autograd_gradients() {
        let output = Tensor::randn([3, 4, 5], (Kind::Double, Device::Cpu)).set_requires_grad(true);
        let labels = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]).view([3, 4]);
        let values = Tensor::randn([3, 4, 5], (Kind::Double, Device::Cpu));
        for (objective, target) in [(Objective::CrossEntropy, labels), (Objective::Mse, values)] {
            let loss = objective.per_task(&output, &target).sum(Kind::Double);
            let autograd = Tensor::run_backward(&[loss], &[&output], false, false);
            let explicit = objective.output_grad(&output, &target, 0.5);
            let gap = (&autograd[0] * 0.5 - explicit)
                .abs()
                .max()
                .double_value(&[]);
            assert!(gap < 1e-12, "{objective:?}: {gap}");
        }
    }
}
