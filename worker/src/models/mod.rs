//! Functional models: forward passes over explicit parameter tensors, for all tasks of a chunk at once.

mod conv4;
mod mlp;

use outerloop_proto::model::Model as Architecture;
use tch::Tensor;

pub use conv4::Conv4;
pub use mlp::Mlp;

use crate::objective::Objective;

/// A network evaluated from explicit parameters, in the layout's order.
///
/// Parameters are either shared by every task (the layout's shapes) or carry a leading task
/// axis (per-task fast weights, `[tasks, ...]`); inputs are `[tasks, points, ...]` and outputs
/// `[tasks, points, outputs]`. Evaluating all tasks in one batched computation, instead of one
/// small computation per task, is what makes the inner loop fast.
pub trait Model {
    /// The outputs: the head applied to the body's features.
    fn forward(&self, params: &[Tensor], x: &Tensor) -> Tensor {
        let (body, head) = params.split_at(self.body_len());
        self.head(head, &self.embed(body, x))
    }

    /// The body's features `[tasks, points, features]`.
    fn embed(&self, body: &[Tensor], x: &Tensor) -> Tensor;

    /// The head (the last layer) applied to features; the features themselves when the model
    /// has no head.
    fn head(&self, head: &[Tensor], features: &Tensor) -> Tensor;

    /// How many leading parameters form the body; the rest is the head.
    fn body_len(&self) -> usize;

    /// Each task's loss (when `want_loss`) and `scale` times its gradient with respect to
    /// `params`, per task (task axis first), written in differentiable ops. Differentiating
    /// through such an explicit gradient (second-order MAML) is one ordinary backward pass,
    /// much cheaper than autograd's double backward. `create_graph` says whether the caller
    /// will differentiate through the result (it runs without gradient tracking otherwise).
    /// `None` where the model has no explicit backward, or none that pays for this call;
    /// callers then use autograd.
    #[allow(clippy::too_many_arguments)]
    fn loss_and_grads(
        &self,
        _params: &[Tensor],
        _x: &Tensor,
        _target: &Tensor,
        _objective: Objective,
        _scale: f64,
        _want_loss: bool,
        _create_graph: bool,
    ) -> Option<(Option<Tensor>, Vec<Tensor>)> {
        None
    }
}

/// The worker-side model of an architecture.
pub fn build(architecture: &Architecture) -> Box<dyn Model> {
    match architecture {
        Architecture::Mlp(mlp) => Box::new(Mlp::new(mlp)),
        Architecture::Conv4(_) => Box::new(Conv4),
    }
}
