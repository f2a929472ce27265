//! The inner loop: SGD on each task's support loss, batched over tasks or one task at a time, optionally differentiable.

use tch::Tensor;

use super::{Context, Path, TaskBatch};

/// The inner-loop step size: one number, or one learned rate per parameter value (Meta-SGD).
#[derive(Clone, Copy)]
pub enum StepSize<'a> {
    Fixed(f64),
    Learned(&'a [Tensor]),
}

/// `tch::no_grad`, but restoring gradient tracking even when `f` panics. libtorch reports
/// errors by panicking and the compute thread survives them; `tch::no_grad` would leave the
/// thread with tracking off, and the next second-order step would crash in autograd.
pub fn without_grad<T>(f: impl FnOnce() -> T) -> T {
    let _restore_on_drop = tch::no_grad_guard();
    f()
}

/// Each task's gradient of its loss on (`x`, `target`) with respect to `params`, task axis
/// first, times `scale`. `params` may be shared by the tasks (shaped like `theta`: each task
/// still gets its own gradient) or per task. With `create_graph` the gradients stay
/// differentiable.
///
/// The model's explicit backward is used where it has one; otherwise autograd runs on
/// per-task views of the parameters, which separates the tasks' gradients because each
/// task's loss depends only on its own view.
pub fn task_grads(
    cx: &Context,
    params: &[Tensor],
    theta: &[Tensor],
    x: &Tensor,
    target: &Tensor,
    scale: f64,
    create_graph: bool,
) -> Vec<Tensor> {
    let explicit = || {
        cx.model
            .loss_and_grads(params, x, target, cx.objective, scale, false, create_graph)
    };
    let explicit = if create_graph {
        explicit()
    } else {
        without_grad(explicit)
    };
    if let Some((_, grads)) = explicit {
        return grads;
    }
    let shared = params[0].dim() == theta[0].dim();
    let tasks = x.size()[0];
    let views: Vec<Tensor> = params
        .iter()
        .map(|p| {
            if !shared {
                return p.shallow_clone();
            }
            let mut shape = p.size();
            shape.insert(0, tasks);
            p.unsqueeze(0).expand(&shape, false)
        })
        .collect();
    autograd_grads(cx, &views, x, target, scale, create_graph)
}

/// The gradient of the summed task losses with respect to `params` by autograd, times `scale`.
fn autograd_grads(
    cx: &Context,
    params: &[Tensor],
    x: &Tensor,
    target: &Tensor,
    scale: f64,
    create_graph: bool,
) -> Vec<Tensor> {
    // Without a graph to keep, differentiate with respect to fresh leaves, which also works
    // for parameters that do not require grad (evaluation).
    let leaves: Vec<Tensor>;
    let wrt = if create_graph {
        params
    } else {
        leaves = params
            .iter()
            .map(|p| p.detach().set_requires_grad(true))
            .collect();
        &leaves
    };
    let loss = cx
        .objective
        .per_task(&cx.model.forward(wrt, x), target)
        .sum(None);
    Tensor::run_backward(&[loss], wrt, create_graph, create_graph)
        .into_iter()
        .map(|g| if scale == 1.0 { g } else { g * scale })
        .collect()
}

/// `cx.inner_steps` SGD steps on the support loss from `theta`, for every task of `batch`.
/// Batched, the result carries a task axis; per task, `batch` holds one task and the result
/// has `theta`'s shapes. With `create_graph` the adapted weights stay differentiable with
/// respect to `theta` (and the learned step sizes); otherwise they carry no graph.
pub fn adapt(
    cx: &Context,
    theta: &[Tensor],
    batch: &TaskBatch,
    step_size: StepSize,
    create_graph: bool,
) -> Vec<Tensor> {
    // A fixed step size is folded into the gradient (one op fewer per parameter).
    let scale = match step_size {
        StepSize::Fixed(lr) => lr,
        StepSize::Learned(_) => 1.0,
    };
    let (x, y) = (&batch.support_x, &batch.support_y);
    let mut fast: Vec<Tensor> = theta.iter().map(Tensor::shallow_clone).collect();
    for _ in 0..cx.inner_steps {
        let grads = match cx.path {
            Path::Batched => task_grads(cx, &fast, theta, x, y, scale, create_graph),
            Path::PerTask => autograd_grads(cx, &fast, x, y, scale, create_graph),
        };
        let update = || -> Vec<Tensor> {
            fast.iter()
                .zip(&grads)
                .enumerate()
                .map(|(i, (w, g))| match step_size {
                    StepSize::Fixed(_) => w - g,
                    StepSize::Learned(lrs) => w - g * &lrs[i],
                })
                .collect()
        };
        fast = if create_graph {
            update()
        } else {
            without_grad(update)
        };
    }
    fast
}
