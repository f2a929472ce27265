//! The first block in patch space: the images are data, so each task's batch-norm statistics follow from the mean and covariance of its 3x3 patches, and the normalised convolution is one matrix product per task.

use tch::Tensor;

use super::layout::{batch_from_grouped, grouped_from_batch, rows};
use super::pool::{relu_pool, relu_pool_backward, relu_pool_saving, Pooled};
use super::{Block, BlockGrads, EPS};

/// Each task's 3x3 patches of its images, zero-padded as the convolution sees them, as rows
/// `[tasks, points * h * w, k]` (`k = channels * 9`), with their mean `[tasks, k]` and
/// covariance `[tasks, k, k]`. Cheap: the images have few channels, the block's output many.
pub struct Patches {
    rows: Tensor,
    /// The rows with a column of ones appended, which carries the bias through the product.
    with_ones: Tensor,
    mean: Tensor,
    covariance: Tensor,
    /// Points, height and width of the images.
    shape: [i64; 3],
}

impl Patches {
    /// `x`: the images `[tasks, points, c, h, w]`.
    pub fn of(x: &Tensor) -> Patches {
        let size = x.size();
        let (tasks, points, k) = (size[0], size[1], size[2] * 9);
        let rows = x
            .flatten(0, 1)
            .im2col([3, 3], [1, 1], [1, 1], [1, 1])
            .view([tasks, points, k, -1])
            .transpose(2, 3)
            .reshape([tasks, -1, k]);
        let n = rows.size()[1];
        let mean = rows.mean_dim(1, true, None);
        let centred = &rows - &mean;
        let covariance = centred.transpose(1, 2).bmm(&centred) / n as f64;
        let ones = Tensor::ones([tasks, n, 1], (x.kind(), x.device()));
        Patches {
            with_ones: Tensor::cat(&[&rows, &ones], 2),
            rows,
            mean: mean.squeeze_dim(1),
            covariance,
            shape: [points, size[3], size[4]],
        }
    }
}

/// The normalised convolution as one matrix per task, and what the backward needs besides.
struct Folded {
    /// `[tasks, f, k]`: each kernel as a row over the patch.
    kernels: Tensor,
    /// `w . m`, `[tasks, f]`.
    at_mean: Tensor,
    /// `C w`, `[tasks, f, k]`.
    spread: Tensor,
    inv_std: Tensor,
    factor: Tensor,
    /// `[tasks, k + 1, f]`: the scaled kernels as columns over the patch, the bias below.
    matrix: Tensor,
}

/// A kernel `w` (a row over the patch) gives `z = w . patch + b`, so a task's batch statistics
/// are `mean = w . m + b` and `var = w' C w`, and the normalised, scaled and shifted output
/// `gamma * (z - mean) / std + beta` is the patch times `factor * w`, `factor = gamma / std`,
/// plus `beta + factor * (b - mean)`: no pass over the block's full-resolution output for
/// batch norm, forward or backward. (`b` cancels; it is kept in the bias so that its gradient
/// is an exact zero rather than missing.)
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
    let scaled = (&kernels * factor.unsqueeze(2)).transpose(1, 2);
    let matrix = Tensor::cat(&[scaled, shift.unsqueeze(1)], 1);
    Folded {
        kernels,
        at_mean,
        spread,
        inv_std,
        factor,
        matrix,
    }
}

/// The block's pre-pool output as a task-major batch `[tasks * points, f, h, w]`, channels
/// last: one product per task with `k + 1` terms per value, at the speed of writing it.
fn normalised(patches: &Patches, folded: &Folded, tasks: i64) -> Tensor {
    let [points, h, w] = patches.shape;
    patches
        .with_ones
        .bmm(&folded.matrix)
        .view([tasks * points, h, w, -1])
        .permute([0, 3, 1, 2])
}

/// The block's output, grouped.
pub fn forward(patches: &Patches, p: &Block, tasks: i64) -> Tensor {
    let y = normalised(patches, &fold(patches, p, tasks), tasks);
    grouped_from_batch(&relu_pool(&y), tasks)
}

/// What the backward needs from the forward.
pub struct Saved {
    folded: Folded,
    y: Tensor,
    pooled: Pooled,
}

/// [`forward`], keeping what the backward needs.
pub fn forward_saving(patches: &Patches, p: &Block, tasks: i64) -> (Tensor, Saved) {
    let folded = fold(patches, p, tasks);
    let y = normalised(patches, &folded, tasks);
    let (out, pooled) = relu_pool_saving(&y);
    (grouped_from_batch(&out, tasks), Saved { folded, y, pooled })
}

/// The gradients of the block's parameters from the gradient `g` at its (grouped) output,
/// differentiable. With `G = sum(gy * patch)`, one product per task, `dbeta = sum(gy)` and
/// `dgamma = sum(gy * zhat) = (w . G - w . m * dbeta) / std`, the kernel gradient
/// `sum(dz * patch)` is `factor * (G - dbeta * m - dgamma / std * C w)`: all in patch space,
/// after one pass over `gy`.
pub fn backward(g: &Tensor, saved: &Saved, patches: &Patches, tasks: i64) -> BlockGrads {
    let folded = &saved.folded;
    let (gy, g_pooled) = relu_pool_backward(&batch_from_grouped(g, tasks), &saved.y, &saved.pooled);
    let per_task_rows = |a: &Tensor| rows(a).view([tasks, -1, a.size()[1]]);
    let shift = per_task_rows(&g_pooled).sum_dim_intlist(1, false, None);
    // As `(patch' gy)'`: the product's gradient then comes back in `gy`'s own layout.
    let patch_grad = patches
        .rows
        .transpose(1, 2)
        .bmm(&per_task_rows(&gy))
        .transpose(1, 2);
    let scale = &folded.inv_std
        * ((&folded.kernels * &patch_grad).sum_dim_intlist(2, false, None)
            - &folded.at_mean * &shift);
    let weight = folded.factor.unsqueeze(2)
        * (patch_grad
            - shift.unsqueeze(2) * patches.mean.unsqueeze(1)
            - (&scale * &folded.inv_std).unsqueeze(2) * &folded.spread);
    BlockGrads {
        weight,
        scale,
        shift,
    }
}
