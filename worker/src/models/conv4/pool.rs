//! ReLU and 2x2 max-pooling, pooled first: the same values, a quarter of the ReLU's work, and a backward that routes each window's gradient exactly as autograd's.

use tch::Tensor;

const WINDOW: [i64; 2] = [2, 2];

/// `max_pool(relu(y))`, computed as `relu(max_pool(y))` (ReLU is monotone, so the two agree).
pub fn relu_pool(y: &Tensor) -> Tensor {
    y.max_pool2d(WINDOW, WINDOW, [0, 0], [1, 1], false).relu()
}

/// What the backward needs: the pooled maxima before the ReLU and where each came from.
pub struct Pooled {
    pub maxima: Tensor,
    pub indices: Tensor,
}

/// [`relu_pool`] keeping the maxima and their positions.
pub fn relu_pool_saving(y: &Tensor) -> (Tensor, Pooled) {
    let (maxima, indices) = y.max_pool2d_with_indices(WINDOW, WINDOW, [0, 0], [1, 1], false);
    (maxima.relu(), Pooled { maxima, indices })
}

/// The gradient at `y` from the gradient `g` at the output, differentiable in `g`, and the
/// same gradient at the pooled resolution (its sums are the full one's, at a quarter of the
/// cost). Each window's gradient goes to the position its maximum came from (the first of
/// tied maxima, as libtorch's max-pool backward picks), and only where that maximum is
/// positive: where ReLU zeroes a window, tied zeros included, nothing flows.
pub fn relu_pool_backward(g: &Tensor, y: &Tensor, pooled: &Pooled) -> (Tensor, Tensor) {
    let g = g * pooled.maxima.gt(0.0);
    // `y` only gives the shape; detached, so autograd adds no (zero) gradient path to it.
    let full = y.detach().max_pool2d_with_indices_backward(
        &g,
        WINDOW,
        WINDOW,
        [0, 0],
        [1, 1],
        false,
        &pooled.indices,
    );
    (full, g)
}
