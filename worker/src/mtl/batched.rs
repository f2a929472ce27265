//! The fast path: the shared layers forward once, each head's loss and output gradient, then one explicit backward through the shared layers for every task at once.

use tch::Tensor;

use super::{loss, trunk, Scored, Totals};
use crate::algorithms::without_grad;

/// The totals of `tasks` on the rows `x`; gradients when `train`.
pub fn run(shared: &[Tensor], x: &Tensor, tasks: &[Scored], train: bool) -> Totals {
    without_grad(|| {
        if !train {
            return Totals::scores_only(&trunk::forward(shared, x), tasks);
        }
        let saved = trunk::forward_saving(shared, x);
        let features = &saved.representation;
        let (mut loss_sums, mut metric_sums) = (Vec::new(), Vec::new());
        let (mut heads, mut deltas) = (Vec::new(), Vec::new());
        for task in tasks {
            let [weight, bias] = task.head;
            let output = features.linear(weight, Some(bias));
            let losses = loss::row_losses(task.loss, &output, &task.target);
            let (loss_sum, metric_sum) = loss::sums(task.loss, &output, &task.target, &losses);
            loss_sums.push(loss_sum);
            metric_sums.push(metric_sum);
            // g = dLossSum/dOutput, [rows, outputs]: the head's gradients are g^T features and
            // g summed over rows; the representation's is g W.
            let g = loss::output_grad(task.loss, &output, &task.target);
            heads.push(g.transpose(0, 1).matmul(features).flatten(0, -1));
            heads.push(g.sum_dim_intlist(0, false, None));
            deltas.push(g.matmul(weight));
        }
        let shared_grads = trunk::backward(&saved, shared, Tensor::stack(&deltas, 0));
        Totals {
            loss_sums: Tensor::stack(&loss_sums, 0),
            metric_sums: Tensor::stack(&metric_sums, 0),
            grads: Some((shared_grads, Tensor::cat(&heads, 0))),
        }
    })
}
