//! Meta-learning algorithms: one module per algorithm, each turning a chunk of tasks into losses and a summed meta-gradient.

mod anil;
mod inner_loop;
mod maml;
mod metasgd;
mod protonet;
mod reptile;
#[cfg(test)]
pub(crate) mod testing;

use outerloop_proto::work;
use tch::Tensor;

pub use anil::Anil;
pub use inner_loop::{adapt, task_grads, without_grad, StepSize};
pub use maml::{Maml, Order};
pub use metasgd::MetaSgd;
pub use protonet::ProtoNet;
pub use reptile::Reptile;

use crate::data::TaskBatch;
use crate::models::Model;
use crate::objective::Objective;

/// Batched: all tasks of a chunk in one computation. PerTask: a loop over tasks with autograd's
/// gradients, the straightforward reference the batched path is tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Batched,
    PerTask,
}

/// Everything an algorithm runs with, besides the parameters and the tasks.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub model: &'a dyn Model,
    pub objective: Objective,
    /// Inner-loop SGD steps for this chunk (training and evaluation may differ).
    pub inner_steps: usize,
    pub inner_lr: f64,
    pub path: Path,
}

/// What one chunk of tasks yields.
#[derive(Debug)]
pub struct Outcome {
    /// Meta-gradient summed over the chunk's tasks, one tensor per parameter in layout order
    /// (training only).
    pub grad_sum: Option<Vec<Tensor>>,
    /// Query loss of each task at the meta-parameters, before adaptation: `[tasks]`.
    pub loss_before: Tensor,
    /// Query loss of each task after adaptation: `[tasks]`.
    pub loss_after: Tensor,
    /// Query accuracy before and after adaptation, for classification: `[tasks]`.
    pub accuracy_before: Option<Tensor>,
    pub accuracy_after: Option<Tensor>,
}

impl Outcome {
    /// The outcome of a chunk scored `before` adaptation (loss and accuracy) and adapted into
    /// `after`.
    pub fn new(before: (Tensor, Option<Tensor>), after: Step) -> Outcome {
        let (grad_sum, loss_after, accuracy_after) = after;
        Outcome {
            grad_sum,
            loss_before: before.0,
            loss_after,
            accuracy_before: before.1,
            accuracy_after,
        }
    }
}

/// What adapting one batch of tasks yields: the meta-gradient summed over its tasks (training
/// only), and each task's query loss and accuracy after adaptation.
pub type Step = (Option<Vec<Tensor>>, Tensor, Option<Tensor>);

/// Runs `step` on the whole batch (the batched path) or on each task alone, combining the
/// results: gradients summed, losses and accuracies concatenated in task order (the per-task
/// reference path).
pub fn on_path(cx: &Context, batch: &TaskBatch, mut step: impl FnMut(&TaskBatch) -> Step) -> Step {
    if cx.path == Path::Batched {
        return step(batch);
    }
    let mut grad_sum: Option<Vec<Tensor>> = None;
    let (mut losses, mut accuracies) = (Vec::new(), Vec::new());
    for t in 0..batch.tasks() {
        let (grad, loss, accuracy) = step(&batch.task(t));
        losses.push(loss);
        accuracies.extend(accuracy);
        grad_sum = match (grad_sum, grad) {
            (Some(sum), Some(g)) => Some(sum.iter().zip(&g).map(|(s, g)| s + g).collect()),
            (None, g) => g,
            (sum, None) => sum,
        };
    }
    let accuracy = (!accuracies.is_empty()).then(|| Tensor::cat(&accuracies, 0));
    (grad_sum, Tensor::cat(&losses, 0), accuracy)
}

/// A meta-learning algorithm.
pub trait Algorithm {
    /// Runs the chunk's tasks from the meta-parameters `params` (leaves that require grad, in
    /// layout order) and, when `train`, computes the summed meta-gradient.
    fn run(&self, cx: &Context, params: &[Tensor], batch: &TaskBatch, train: bool) -> Outcome;
}

/// The worker-side implementation of an algorithm.
pub fn build(algorithm: work::Algorithm) -> Box<dyn Algorithm> {
    match algorithm {
        work::Algorithm::Maml => Box::new(Maml {
            order: Order::Second,
        }),
        work::Algorithm::Fomaml => Box::new(Maml {
            order: Order::First,
        }),
        work::Algorithm::MetaSgd => Box::new(MetaSgd),
        work::Algorithm::Anil => Box::new(Anil::new()),
        work::Algorithm::Reptile => Box::new(Reptile),
        work::Algorithm::ProtoNet => Box::new(ProtoNet),
    }
}

/// The query loss and accuracy of every task at `params` (shared or per task), without
/// building a graph.
pub fn query_scores(
    cx: &Context,
    params: &[Tensor],
    batch: &TaskBatch,
) -> (Tensor, Option<Tensor>) {
    without_grad(|| {
        let out = cx.model.forward(params, &batch.query_x);
        (
            cx.objective.per_task(&out, &batch.query_y),
            cx.objective.accuracy(&out, &batch.query_y),
        )
    })
}
