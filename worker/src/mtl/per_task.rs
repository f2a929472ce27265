//! The reference path: the shared layers forward once, then one autograd backward per task, the way a PyTorch multi-task loop collects per-task gradients.

use tch::Tensor;

use super::{loss, trunk, Scored, Totals};
use crate::algorithms::without_grad;

/// The totals of `tasks` on the rows `x`; gradients when `train`. `shared` and the heads must
/// be leaves that require grad.
pub fn run(shared: &[Tensor], x: &Tensor, tasks: &[Scored], train: bool) -> Totals {
    if !train {
        return without_grad(|| Totals::scores_only(&trunk::forward(shared, x), tasks));
    }
    let features = trunk::forward(shared, x);
    let (mut loss_sums, mut metric_sums) = (Vec::new(), Vec::new());
    let (mut shared_grads, mut heads) = (Vec::new(), Vec::new());
    for task in tasks {
        let output = features.linear(task.head[0], Some(task.head[1]));
        let losses = loss::row_losses(task.loss, &output, &task.target);
        let (loss_sum, metric_sum) = loss::sums(task.loss, &output, &task.target, &losses);
        loss_sums.push(loss_sum);
        metric_sums.push(metric_sum);
        let wrt: Vec<&Tensor> = shared.iter().chain(task.head).collect();
        // keep_graph: the next task backpropagates through the same shared forward pass.
        let grads = Tensor::run_backward(&[losses.sum(losses.kind())], &wrt, true, false);
        let flat: Vec<Tensor> = grads
            .iter()
            .zip(&wrt)
            // A parameter the loss does not reach gets no gradient at all: its gradient is zero.
            .map(|(g, p)| {
                if g.defined() {
                    g.flatten(0, -1)
                } else {
                    p.zeros_like().flatten(0, -1)
                }
            })
            .collect();
        let (body, head) = flat.split_at(shared.len());
        shared_grads.push(Tensor::cat(body, 0));
        heads.extend(head.iter().map(Tensor::shallow_clone));
    }
    Totals {
        loss_sums: Tensor::stack(&loss_sums, 0),
        metric_sums: Tensor::stack(&metric_sums, 0),
        grads: Some((
            Tensor::stack(&shared_grads, 0).detach(),
            Tensor::cat(&heads, 0).detach(),
        )),
    }
}
