//! The first block in patch space: the images are data, so each task's batch-norm statistics follow from the mean and covariance of its 3x3 patches, and normalisation folds into the convolution.

use tch::Tensor;

use super::layout::{channels_last, rows};
use super::pool::{relu_pool, relu_pool_backward, relu_pool_saving, Pooled};
use super::weight_grad::input_and_kernel_grads;
use super::{Block, BlockGrads, EPS};

/// Each task's 3x3 patches of its images, zero-padded as the convolution sees them: their
/// mean `[tasks, k]` and covariance `[tasks, k, k]`, `k = channels * 9`. Cheap: the images
/// have few channels, the block's output many.
pub struct Patches {
    mean: Tensor,
    covariance: Tensor,
}

impl Patches {
    /// `x`: the images `[tasks, points, c, h, w]`.
    pub fn of(x: &Tensor) -> Patches {
        let size = x.size();
        let (tasks, points, k) = (size[0], size[1], size[2] * 9);
        let columns = x
            .flatten(0, 1)
            .im2col([3, 3], [1, 1], [1, 1], [1, 1])
            .view([tasks, points, k, -1])
            .transpose(1, 2)
            .reshape([tasks, k, -1]);
        let mean = columns.mean_dim(2, true, None);
        let centred = &columns - &mean;
        let covariance = centred.bmm(&centred.transpose(1, 2)) / columns.size()[2] as f64;
        Patches {
            mean: mean.squeeze_dim(2),
            covariance,
        }
    }
}

/// The folded convolution and what the backward needs besides.
struct Folded {
    /// `[tasks, f, k]`: each kernel as a row over the patch.
    kernels: Tensor,
    /// `w . m`, `[tasks, f]`.
    at_mean: Tensor,
    /// `C w`, `[tasks, f, k]`.
    spread: Tensor,
    inv_std: Tensor,
    factor: Tensor,
    /// The convolution's kernels `factor * w` and bias, grouped.
    weight: Tensor,
    bias: Tensor,
}

/// A kernel `w` (a row over the patch) gives `z = w . patch + b`, so a task's batch statistics
/// are `mean = w . m + b` and `var = w' C w`, and the normalised, scaled and shifted output
/// `gamma * (z - mean) / std + beta` is one convolution with kernels `factor * w`,
/// `factor = gamma / std`, and bias `beta + factor * (b - mean)`: no pass over the block's
/// full-resolution output for batch norm, forward or backward. (`b` cancels; it is kept in
/// the bias so that its gradient is an exact zero rather than missing.)
fn fold(patches: &Patches, p: &Block, tasks: i64) -> Folded {
    let filters = p.weight.size()[0] / tasks;
    let kernels = p.weight.reshape([tasks, filters, -1]);
    let at_mean = kernels.bmm(&patches.mean.unsqueeze(2)).squeeze_dim(2);
    let spread = kernels.bmm(&patches.covariance);
    let var = (&spread * &kernels).sum_dim_intlist(2, false, None);
    let inv_std = (var + EPS).rsqrt();
    let factor = p.scale.view([tasks, filters]) * &inv_std;
    let bias = p.bias.view([tasks, filters]);
    let mean = &at_mean + &bias;
    let shift = p.shift.view([tasks, filters]) + &factor * (&bias - mean);
    let weight = channels_last(&(&kernels * factor.unsqueeze(2)).view(p.weight.size().as_slice()));
    Folded {
        kernels,
        at_mean,
        spread,
        inv_std,
        factor,
        weight,
        bias: shift.view([-1]),
    }
}

fn convolve(x: &Tensor, folded: &Folded, tasks: i64) -> Tensor {
    x.conv2d(
        &folded.weight,
        Some(&folded.bias),
        [1, 1],
        [1, 1],
        [1, 1],
        tasks,
    )
}

/// The block's output on the grouped images `x`.
pub fn forward(x: &Tensor, patches: &Patches, p: &Block, tasks: i64) -> Tensor {
    relu_pool(&convolve(x, &fold(patches, p, tasks), tasks))
}

/// What the backward needs from the forward.
pub struct Saved {
    folded: Folded,
    y: Tensor,
    pooled: Pooled,
}

/// [`forward`], keeping what the backward needs.
pub fn forward_saving(x: &Tensor, patches: &Patches, p: &Block, tasks: i64) -> (Tensor, Saved) {
    let folded = fold(patches, p, tasks);
    let y = convolve(x, &folded, tasks);
    let (out, pooled) = relu_pool_saving(&y);
    (out, Saved { folded, y, pooled })
}

/// The gradients of the block's parameters from the gradient `g` at its output,
/// differentiable. With `G = sum(gy * patch)` (the kernel gradient of the folded convolution),
/// `dbeta = sum(gy)` and `dgamma = sum(gy * zhat) = (w . G - w . m * dbeta) / std`, the
/// kernel gradient `sum(dz * patch)` is `factor * (G - dbeta * m - dgamma / std * C w)`: all
/// in patch space, after one pass over `gy`.
pub fn backward(
    g: &Tensor,
    x: &Tensor,
    saved: &Saved,
    patches: &Patches,
    tasks: i64,
) -> BlockGrads {
    let folded = &saved.folded;
    let (gy, g_pooled) = relu_pool_backward(g, &saved.y, &saved.pooled);
    let shift = rows(&g_pooled)
        .sum_dim_intlist(0, false, None)
        .view([tasks, -1]);
    let (_, folded_grad) = input_and_kernel_grads(&gy, x, &folded.weight, tasks);
    let folded_grad = folded_grad.reshape(folded.kernels.size());
    let scale = &folded.inv_std
        * ((&folded.kernels * &folded_grad).sum_dim_intlist(2, false, None)
            - &folded.at_mean * &shift);
    let weight = folded.factor.unsqueeze(2)
        * (folded_grad
            - shift.unsqueeze(2) * patches.mean.unsqueeze(1)
            - (&scale * &folded.inv_std).unsqueeze(2) * &folded.spread);
    BlockGrads {
        weight,
        scale,
        shift,
    }
}
