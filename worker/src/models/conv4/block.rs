//! A later block (convolution, per-task batch norm, ReLU, max-pool) on grouped activations: forward, and the explicit backward of its shared-weight first inner step.

use tch::Tensor;

use super::layout::{rows, unrows};
use super::pool::{relu_pool, relu_pool_backward, relu_pool_saving, Pooled};
use super::weight_grad::input_and_kernel_grads;
use super::{Block, BlockGrads, EPS};

fn convolve(h: &Tensor, p: &Block, tasks: i64) -> Tensor {
    h.conv2d(&p.weight, Some(&p.bias), [1, 1], [1, 1], [1, 1], tasks)
}

/// The block's output. libtorch's fused batch norm: on the grouped layout its per-channel
/// statistics are per task, and its backward is one fused kernel too.
pub fn forward(h: &Tensor, p: &Block, tasks: i64) -> Tensor {
    let z = convolve(h, p, tasks);
    let y = z.batch_norm(
        Some(&p.scale),
        Some(&p.shift),
        None::<&Tensor>,
        None::<&Tensor>,
        true,
        0.1,
        EPS,
        false,
    );
    relu_pool(&y)
}

/// What the backward needs from the forward.
pub struct Saved {
    input: Tensor,
    z: Tensor,
    mean: Tensor,
    inv_std: Tensor,
    factor: Tensor,
    y: Tensor,
    pooled: Pooled,
}

/// [`forward`] with the statistics written out, so that the backward can use them and
/// autograd can differentiate through both. The variance is `E[z^2] - E[z]^2`: one pass fewer
/// than centring first, and the pre-activations' means are of the order of their spreads.
pub fn forward_saving(h: &Tensor, p: &Block, tasks: i64) -> (Tensor, Saved) {
    let z = convolve(h, p, tasks);
    let z_rows = rows(&z);
    let mean = z_rows.mean_dim(0, false, None);
    let var = (&z_rows * &z_rows).mean_dim(0, false, None) - &mean * &mean;
    let inv_std = (var + EPS).rsqrt();
    let factor = &p.scale * &inv_std;
    let y = unrows(&(&p.shift - &mean * &factor).addcmul(&z_rows, &factor), &z);
    let (out, pooled) = relu_pool_saving(&y);
    let saved = Saved {
        input: h.shallow_clone(),
        z,
        mean,
        inv_std,
        factor,
        y,
        pooled,
    };
    (out, saved)
}

/// The gradients of the block's parameters and of its input from the gradient `g` at its
/// output, differentiable. Batch norm's backward, per channel (here: per task and filter) with
/// `n` values, `dbeta = sum(gy)`, `dgamma = sum(gy * zhat)` and
/// `dz = factor * (gy - dbeta / n - zhat * dgamma / n)`, is affine in `z`:
/// `dz = factor * gy + k1 * z + k0`, two fused passes.
pub fn backward(g: &Tensor, saved: &Saved, p: &Block, tasks: i64) -> (BlockGrads, Tensor) {
    let (gy, g_pooled) = relu_pool_backward(g, &saved.y, &saved.pooled);
    let gy_rows = rows(&gy);
    let z_rows = rows(&saved.z);
    let n = z_rows.size()[0] as f64;
    let shift = rows(&g_pooled).sum_dim_intlist(0, false, None);
    let gy_z = (&gy_rows * &z_rows).sum_dim_intlist(0, false, None);
    let scale = &saved.inv_std * (gy_z - &saved.mean * &shift);
    let k1 = -(&saved.factor * &saved.inv_std * &scale) / n;
    let k0 = -(&saved.factor * &shift) / n - &k1 * &saved.mean;
    let gz = unrows(
        &k0.addcmul(&z_rows, &k1).addcmul(&gy_rows, &saved.factor),
        &saved.z,
    );
    let (input, weight) = input_and_kernel_grads(&gz, &saved.input, &p.weight, tasks);
    let grads = BlockGrads {
        weight,
        scale,
        shift,
    };
    (grads, input)
}
