//! The reference path: the shared layers (or every expert and each task's gate) forward once, then one autograd backward per task, the way a PyTorch multi-task loop collects per-task gradients.

use tch::Tensor;

use super::{loss, Body, Scored, Totals};
use crate::algorithms::without_grad;

/// The totals of `tasks` on the rows `x`; gradients when `train`. The shared tensors and the
/// tasks' own must be leaves that require grad.
pub fn run(body: &Body, x: &Tensor, tasks: &[Scored], train: bool) -> Totals {
    if !train {
        return without_grad(|| Totals::scores_only(&body.representations(x, tasks), tasks));
    }
    let representations = body.representations(x, tasks);
    let shared = body.params();
    let (mut loss_sums, mut metric_sums) = (Vec::new(), Vec::new());
    let (mut shared_grads, mut own_grads) = (Vec::new(), Vec::new());
    for (task, features) in tasks.iter().zip(&representations) {
        let output = features.linear(task.head[0], Some(task.head[1]));
        let losses = loss::row_losses(task.loss, &output, &task.target);
        let (loss_sum, metric_sum) = loss::sums(task.loss, &output, &task.target, &losses);
        loss_sums.push(loss_sum);
        metric_sums.push(metric_sum);
        let wrt: Vec<&Tensor> = shared.iter().copied().chain(task.own()).collect();
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
        let (body, own) = flat.split_at(shared.len());
        shared_grads.push(Tensor::cat(body, 0));
        own_grads.extend(own.iter().map(Tensor::shallow_clone));
    }
    Totals {
        loss_sums: Tensor::stack(&loss_sums, 0),
        metric_sums: Tensor::stack(&metric_sums, 0),
        grads: Some((
            vec![Tensor::stack(&shared_grads, 0).detach()],
            Tensor::cat(&own_grads, 0).detach(),
        )),
        shared_inputs: None,
    }
}
