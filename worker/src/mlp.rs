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
