//! The ReLU MLP, evaluated for many tasks at once, each with its own weights, with an explicit batched backward pass.

use tch::Tensor;

use super::Model;
use crate::objective::Objective;

/// A ReLU MLP whose parameters are laid out as `nn.Linear` layers (`weight [out, in]`,
/// `bias [out]`, layer after layer).
#[derive(Clone, Debug)]
pub struct Mlp {
    layers: usize,
}

impl Mlp {
    pub fn new(architecture: &outerloop_proto::model::Mlp) -> Self {
        Mlp {
            layers: architecture.hidden.len() + 1,
        }
    }

    /// A single linear layer (a head on features: ANIL's inner loop).
    pub fn linear() -> Self {
        Mlp { layers: 1 }
    }
}

/// One linear layer for every task: `baddbmm` with per-task weights `[tasks, out, in]`, or one
/// `linear` with shared weights. One fused op per layer either way: at these sizes the op
/// count, not the arithmetic, is what a step costs.
pub(super) fn linear(h: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    if w.dim() == 3 {
        b.unsqueeze(1).baddbmm(h, &w.transpose(1, 2), 1, 1)
    } else {
        h.linear(w, Some(b))
    }
}

/// Inputs as `[tasks, points, values]`: images `[tasks, points, c, h, w]` are flattened.
fn flat_inputs(x: &Tensor) -> Tensor {
    if x.dim() > 3 {
        x.flatten(2, -1)
    } else {
        x.shallow_clone()
    }
}

impl Model for Mlp {
    fn embed(&self, body: &[Tensor], x: &Tensor) -> Tensor {
        let mut h = flat_inputs(x);
        for pair in body.chunks_exact(2) {
            h = linear(&h, &pair[0], &pair[1]).relu();
        }
        h
    }

    fn head(&self, head: &[Tensor], features: &Tensor) -> Tensor {
        linear(features, &head[0], &head[1])
    }

    fn body_len(&self) -> usize {
        2 * (self.layers - 1)
    }

    /// Explicit backpropagation in batched ops, from the objective's output gradient. Weights
    /// may be shared (the first inner step, which needs no per-task copies) or per task; the
    /// gradients always carry the task axis. The inner learning rate is folded in as `scale`,
    /// which saves one op per parameter.
    fn loss_and_grads(
        &self,
        params: &[Tensor],
        x: &Tensor,
        target: &Tensor,
        objective: Objective,
        scale: f64,
        want_loss: bool,
        _create_graph: bool,
    ) -> Option<(Option<Tensor>, Vec<Tensor>)> {
        let layers = self.layers;
        // Forward, keeping each layer's input and ReLU mask.
        let mut inputs = Vec::with_capacity(layers);
        let mut active = Vec::with_capacity(layers);
        let mut h = flat_inputs(x);
        for (layer, pair) in params.chunks_exact(2).enumerate() {
            let z = linear(&h, &pair[0], &pair[1]);
            inputs.push(h);
            h = if layer + 1 < layers {
                active.push(z.gt(0.0));
                z.relu()
            } else {
                z
            };
        }
        let loss = want_loss.then(|| objective.per_task(&h, target));
        // Backward: delta is scale * dLoss/dz of the current layer, [tasks, points, out].
        let mut delta = objective.output_grad(&h, target, scale);
        let mut grads: Vec<Tensor> = (0..params.len()).map(|_| Tensor::new()).collect();
        for layer in (0..layers).rev() {
            grads[2 * layer] = delta.transpose(1, 2).bmm(&inputs[layer]);
            grads[2 * layer + 1] = delta.sum_dim_intlist(1, false, None);
            if layer > 0 {
                // ReLU's derivative is a 0/1 mask; its own derivative is zero almost everywhere.
                delta = delta.matmul(&params[2 * layer]) * &active[layer - 1];
            }
        }
        Some((loss, grads))
    }
}
