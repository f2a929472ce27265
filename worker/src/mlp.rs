//! The ReLU MLP, evaluated for many tasks at once, each with its own weights.

use tch::Tensor;

/// Forward pass of a ReLU MLP whose parameters are laid out as `nn.Linear` layers
/// (`weight [out, in]`, `bias [out]`, layer after layer).
///
/// `params` either carry a leading task axis (`[tasks, out, in]`, `[tasks, out]`: per-task
/// fast weights) or not (shared weights); `x` is `[tasks, points, in]`. The batched form is one
/// `baddbmm` per layer for all tasks, instead of one small matmul per task.
pub fn forward(params: &[Tensor], x: &Tensor) -> Tensor {
    let layers = params.len() / 2;
    let mut h = x.shallow_clone();
    for (layer, pair) in params.chunks_exact(2).enumerate() {
        let (w, b) = (&pair[0], &pair[1]);
        h = if w.dim() == 3 {
            b.unsqueeze(1).baddbmm(&h, &w.transpose(1, 2), 1, 1)
        } else {
            h.linear(w, Some(b))
        };
        if layer + 1 < layers {
            h = h.relu();
        }
    }
    h
}

/// Mean squared error of each task: `[tasks]`.
pub fn mse_per_task(prediction: &Tensor, target: &Tensor) -> Tensor {
    (prediction - target)
        .square()
        .flatten(1, -1)
        .mean_dim(1, false, None)
}

/// Per-task MSE and its gradient with respect to the weights, by explicit backpropagation in
/// batched ops. Weights are either per-task (`[tasks, out, in]`, `[tasks, out]`) or shared by
/// all tasks (`[out, in]`, `[out]`: the first inner step, which needs no per-task copies);
/// the gradients always carry the task axis.
///
/// The gradient is built from ordinary differentiable ops, so differentiating through it
/// (second-order MAML) is one plain backward pass: much cheaper than asking autograd for a
/// `create_graph` gradient, whose double-backward nodes dominate small models. The per-task
/// path keeps autograd's gradient and serves as the reference this is tested against.
///
/// The gradients come out multiplied by `scale` (the inner learning rate), which folds the
/// step size into the backward pass instead of costing one more op per parameter. The loss
/// itself is only computed when `want_loss`.
pub fn mse_and_grad_batched(
    params: &[Tensor],
    x: &Tensor,
    y: &Tensor,
    scale: f64,
    want_loss: bool,
) -> (Option<Tensor>, Vec<Tensor>) {
    let layers = params.len() / 2;
    // Forward, keeping each layer's input and ReLU mask.
    let mut inputs = Vec::with_capacity(layers);
    let mut active = Vec::with_capacity(layers);
    let mut h = x.shallow_clone();
    for (layer, pair) in params.chunks_exact(2).enumerate() {
        let (w, b) = (&pair[0], &pair[1]);
        // One fused op per layer either way: the op count, not the arithmetic, is what a
        // step of a small model costs.
        let z = if w.dim() == 3 {
            b.unsqueeze(1).baddbmm(&h, &w.transpose(1, 2), 1, 1)
        } else {
            h.linear(w, Some(b))
        };
        inputs.push(h);
        h = if layer + 1 < layers {
            active.push(z.gt(0.0));
            z.relu()
        } else {
            z
        };
    }
    let residual = &h - y;
    let per_point = (residual.size()[1] * residual.size()[2]) as f64;
    let loss = want_loss.then(|| {
        residual
            .square()
            .mean_dim([1i64, 2].as_slice(), false, None)
    });
    // Backward: delta is scale * dLoss/dz of the current layer, [tasks, points, out].
    let mut delta = residual * (2.0 * scale / per_point);
    let mut grads: Vec<Tensor> = (0..params.len()).map(|_| Tensor::new()).collect();
    for layer in (0..layers).rev() {
        grads[2 * layer] = delta.transpose(1, 2).bmm(&inputs[layer]);
        grads[2 * layer + 1] = delta.sum_dim_intlist(1, false, None);
        if layer > 0 {
            // ReLU's derivative is a 0/1 mask; its own derivative is zero almost everywhere.
            delta = delta.matmul(&params[2 * layer]) * &active[layer - 1];
        }
    }
    (loss, grads)
}
