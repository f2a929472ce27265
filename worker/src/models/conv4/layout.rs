//! conv4's working layout: the tasks side by side along the channel axis, channels last, so that one grouped convolution serves every task and pooling is fast.

use tch::Tensor;

/// A parameter of every task, flattened over tasks (`[tasks * f, ...]`): shared parameters
/// (`[f, ...]`) are repeated, per-task ones (`[tasks, f, ...]`) taken as they are. Convolution
/// kernels come out channels last, the layout the convolutions want.
pub fn grouped(p: &Tensor, tasks: i64, shared: bool) -> Tensor {
    let per_task = if shared {
        let mut shape = p.size();
        shape.insert(0, tasks);
        p.unsqueeze(0).expand(&shape, false)
    } else {
        p.shallow_clone()
    };
    if per_task.dim() < 5 {
        return per_task.reshape([-1]);
    }
    let [t, f, c, kh, kw] = dims(&per_task);
    per_task
        .permute([0, 1, 3, 4, 2])
        .contiguous()
        .view([t * f, kh, kw, c])
        .permute([0, 3, 1, 2])
}

/// The network's output `[points, tasks * f, s, s]` as each task's flattened features
/// `[tasks, points, f * s * s]`, in PyTorch's channel-major order.
pub fn features(h: &Tensor, tasks: i64) -> Tensor {
    let [points, channels, s, _] = dims(h);
    h.view([points, tasks, channels / tasks, s, s])
        .transpose(0, 1)
        .reshape([tasks, points, -1])
}

/// The inverse of [`features`], for gradients: `[tasks, points, f * s * s]` back to
/// `[points, tasks * f, s, s]`, channels last.
pub fn unflatten_features(g: &Tensor, like: &Tensor) -> Tensor {
    let [points, channels, s, _] = dims(like);
    let tasks = g.size()[0];
    g.view([tasks, points, channels / tasks, s, s])
        .permute([1, 3, 4, 0, 2])
        .contiguous()
        .view([points, s, s, channels])
        .permute([0, 3, 1, 2])
}

/// A task-major batch `[tasks * points, f, h, w]` (channels last) in the grouped layout
/// `[points, tasks * f, h, w]`.
pub fn grouped_from_batch(a: &Tensor, tasks: i64) -> Tensor {
    let [batch, f, h, w] = dims(a);
    let points = batch / tasks;
    a.permute([0, 2, 3, 1])
        .reshape([tasks, points, h, w, f])
        .permute([1, 2, 3, 0, 4])
        .contiguous()
        .view([points, h, w, tasks * f])
        .permute([0, 3, 1, 2])
}

/// The inverse of [`grouped_from_batch`].
pub fn batch_from_grouped(a: &Tensor, tasks: i64) -> Tensor {
    let [points, channels, h, w] = dims(a);
    let f = channels / tasks;
    a.permute([0, 2, 3, 1])
        .reshape([points, h, w, tasks, f])
        .permute([3, 0, 1, 2, 4])
        .contiguous()
        .view([tasks * points, h, w, f])
        .permute([0, 3, 1, 2])
}

/// A channels-last activation `[points, channels, h, w]` as the matrix `[points * h * w,
/// channels]` it is in memory (a view): per-channel statistics are column reductions, and
/// per-channel factors broadcast along rows, which libtorch vectorises.
pub fn rows(a: &Tensor) -> Tensor {
    let channels = a.size()[1];
    a.permute([0, 2, 3, 1]).reshape([-1, channels])
}

/// The inverse of [`rows`]: the matrix back as an activation shaped like `like`.
pub fn unrows(m: &Tensor, like: &Tensor) -> Tensor {
    let [points, channels, h, w] = dims(like);
    m.view([points, h, w, channels]).permute([0, 3, 1, 2])
}

/// Every value of a channels-last activation, in memory order (a view).
pub fn values(a: &Tensor) -> Tensor {
    a.permute([0, 2, 3, 1]).reshape([-1])
}

fn dims<const N: usize>(t: &Tensor) -> [i64; N] {
    t.size()
        .try_into()
        .unwrap_or_else(|s: Vec<i64>| panic!("expected a {N}-d tensor, got shape {s:?}"))
}
