//! Each task's gradient with respect to its convolution kernels, as a differentiable tensor, by way of autograd.

use tch::Tensor;

use super::layout::values;

/// The input gradient of a grouped convolution (`conv_transpose2d` of the output gradient
/// `g` with the kernels) and each task's kernel gradient, both differentiable.
///
/// libtorch's `convolution_backward` computes the kernel gradient directly, but tch does not
/// expose it. Autograd does: the transposed convolution is the adjoint of the convolution,
/// `<conv_transpose(g, w), h> = <g, conv(h, w)>`, so the gradient of the left side with
/// respect to `w` is the kernel gradient `corr(g, h)`. The kernels enter through an alias used
/// nowhere else, so that the gradient flows along that one path; with `create_graph` the
/// result stays differentiable, its backward being two more convolutions. The extra cost is
/// one dot product and one multiply over `h`.
pub fn input_and_kernel_grads(
    g: &Tensor,
    h: &Tensor,
    kernels: &Tensor,
    groups: i64,
) -> (Tensor, Tensor) {
    let alias = kernels.alias();
    let input_grad = g.conv_transpose2d(
        &alias,
        None::<&Tensor>,
        [1, 1],
        [1, 1],
        [0, 0],
        groups,
        [1, 1],
    );
    let inner = values(&input_grad).dot(&values(h));
    let kernel_grad = Tensor::run_backward(&[inner], &[&alias], true, true)
        .pop()
        .expect("one gradient per input");
    (input_grad, kernel_grad)
}
