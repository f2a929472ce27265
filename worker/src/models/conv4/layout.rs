//! conv4's working layout: the tasks side by side along the channel axis, channels last, so that one grouped convolution serves every task and pooling is fast.

use tch::Tensor;

/// Images `[tasks, points, c, h, w]` as `[points, tasks * c, h, w]` in channels-last memory
/// (`[points, h, w, tasks, c]`): task `t` owns channels `t * c .. (t + 1) * c`, so a grouped
/// convolution with a group per task applies each task's own kernels, and per-channel
/// statistics are per task. libtorch's channels-last kernels are the fast ones on CPU; its
/// NCHW max-pool is an order of magnitude slower.
pub fn images(x: &Tensor) -> Tensor {
    let [tasks, points, c, h, w] = dims(x);
    x.permute([1, 3, 4, 0, 2])
        .contiguous()
        .view([points, h, w, tasks * c])
        .permute([0, 3, 1, 2])
}

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

/// `t` `[n, c, h, w]` in channels-last memory (no copy when it already is).
pub fn channels_last(t: &Tensor) -> Tensor {
    t.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
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
