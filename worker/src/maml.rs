//! MAML and first-order MAML: the inner loop on support sets and the meta-gradient through it.

use tch::Tensor;

use crate::batch::TaskBatch;
use crate::mlp::{forward, mse_and_grad_batched, mse_per_task};

/// How meta-gradients flow through the inner loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Differentiate through the inner updates (`create_graph = true`): true MAML.
    Second,
    /// Treat the inner gradients as constants: FOMAML.
    First,
}

/// `steps` plain SGD steps with learning rate `lr` on each task's support loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InnerLoop {
    pub steps: usize,
    pub lr: f64,
    pub order: Order,
}

/// Batched: all tasks of a chunk in one computation, with explicit inner gradients.
/// PerTask: a loop over tasks with autograd's inner gradients, the straightforward reference
/// the batched path is tested against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Batched,
    PerTask,
}

/// What one chunk of tasks yields.
#[derive(Debug)]
pub struct Outcome {
    /// Meta-gradient summed over the chunk's tasks, one tensor per parameter (train only).
    pub grad_sum: Option<Vec<Tensor>>,
    /// Query loss of each task at the meta-parameters, before adaptation: `[tasks]`.
    pub loss_before: Tensor,
    /// Query loss of each task after adaptation: `[tasks]`.
    pub loss_after: Tensor,
}

/// Runs the inner loop on every task of `batch` from `theta` and, when `with_grad`, the
/// meta-gradient of the summed post-adaptation query losses with respect to `theta`.
/// `theta` must require grad when `with_grad` and the order is second.
pub fn run(
    theta: &[Tensor],
    batch: &TaskBatch,
    inner: InnerLoop,
    with_grad: bool,
    path: Path,
) -> Outcome {
    let loss_before =
        without_grad(|| mse_per_task(&forward(theta, &batch.query_x), &batch.query_y));
    match path {
        Path::Batched => {
            // The first inner step starts from the shared weights; the explicit gradient
            // gives each task its own fast weights from there.
            let start = theta.iter().map(Tensor::shallow_clone).collect();
            let (grad_sum, loss_after) = meta_step(theta, start, batch, inner, with_grad, path);
            Outcome {
                grad_sum,
                loss_before,
                loss_after,
            }
        }
        Path::PerTask => {
            let mut grad_sum: Option<Vec<Tensor>> = None;
            let mut losses = Vec::with_capacity(batch.tasks());
            for t in 0..batch.tasks() {
                let task = batch.task(t);
                let start = theta.iter().map(Tensor::shallow_clone).collect();
                let (grad, loss) = meta_step(theta, start, &task, inner, with_grad, path);
                losses.push(loss);
                grad_sum = match (grad_sum, grad) {
                    (Some(sum), Some(g)) => Some(sum.iter().zip(&g).map(|(s, g)| s + g).collect()),
                    (None, g) => g,
                    (sum, None) => sum,
                };
            }
            Outcome {
                grad_sum,
                loss_before,
                loss_after: Tensor::cat(&losses, 0),
            }
        }
    }
}

/// Adapts `start` (`theta` itself, shared by the batch's tasks) and returns the
/// meta-gradient (summed over tasks, shaped like `theta`) and the per-task query losses.
fn meta_step(
    theta: &[Tensor],
    start: Vec<Tensor>,
    batch: &TaskBatch,
    inner: InnerLoop,
    with_grad: bool,
    path: Path,
) -> (Option<Vec<Tensor>>, Tensor) {
    let second_order = with_grad && inner.order == Order::Second;
    let fast = adapt(start, batch, inner, second_order, path);
    if second_order {
        let query_loss = mse_per_task(&forward(&fast, &batch.query_x), &batch.query_y);
        let grad = Tensor::run_backward(&[query_loss.sum(None)], theta, false, false);
        return (Some(grad), query_loss.detach());
    }
    if !with_grad {
        let loss = without_grad(|| mse_per_task(&forward(&fast, &batch.query_x), &batch.query_y));
        return (None, loss);
    }
    // FOMAML: the query gradient at the adapted weights stands in for the meta-gradient; with
    // per-task copies it carries a task axis that is summed away.
    let (query_loss, grad) = match path {
        Path::Batched => {
            let (loss, grads) = without_grad(|| {
                mse_and_grad_batched(&fast, &batch.query_x, &batch.query_y, 1.0, true)
            });
            (
                loss.expect("asked for the loss"),
                grads
                    .iter()
                    .map(|g| g.sum_dim_intlist(0, false, None))
                    .collect(),
            )
        }
        Path::PerTask => {
            let fast: Vec<Tensor> = fast
                .iter()
                .map(|w| w.detach().set_requires_grad(true))
                .collect();
            let loss = mse_per_task(&forward(&fast, &batch.query_x), &batch.query_y);
            let grads = Tensor::run_backward(&[loss.sum(None)], &fast, false, false);
            (loss.detach(), grads)
        }
    };
    (Some(grad), query_loss)
}

/// `tch::no_grad`, but restoring gradient tracking even when `f` panics. libtorch reports
/// errors by panicking and the compute thread survives them; `tch::no_grad` would leave the
/// thread with tracking off, and the next second-order step would crash in autograd.
fn without_grad<T>(f: impl FnOnce() -> T) -> T {
    let _restore_on_drop = tch::no_grad_guard();
    f()
}

/// `inner.steps` SGD steps on the support loss. With `create_graph` the updates stay
/// differentiable with respect to `start`; otherwise the returned weights are detached.
fn adapt(
    start: Vec<Tensor>,
    batch: &TaskBatch,
    inner: InnerLoop,
    create_graph: bool,
    path: Path,
) -> Vec<Tensor> {
    let step = |fast: &[Tensor]| -> Vec<Tensor> {
        match path {
            Path::Batched => {
                let (_, steps) =
                    mse_and_grad_batched(fast, &batch.support_x, &batch.support_y, inner.lr, false);
                fast.iter().zip(&steps).map(|(w, s)| w - s).collect()
            }
            Path::PerTask => {
                let loss =
                    mse_per_task(&forward(fast, &batch.support_x), &batch.support_y).sum(None);
                let grads = Tensor::run_backward(&[loss], fast, create_graph, create_graph);
                fast.iter()
                    .zip(&grads)
                    .map(|(w, g)| w - g * inner.lr)
                    .collect()
            }
        }
    };
    let mut fast = start;
    for _ in 0..inner.steps {
        fast = match (create_graph, path) {
            (true, _) => step(&fast),
            // Explicit gradients need no autograd graph at all when nothing differentiates them.
            (false, Path::Batched) => without_grad(|| step(&fast)),
            (false, Path::PerTask) => {
                let leaves: Vec<Tensor> = fast
                    .iter()
                    .map(|w| w.detach().set_requires_grad(true))
                    .collect();
                step(&leaves).iter().map(Tensor::detach).collect()
            }
        };
    }
    fast
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinusoid::{SinusoidFamily, SinusoidTask};
    use tch::{Device, Kind};

    /// A tiny 1 -> 4 -> 3 -> 1 network in f64, so finite differences are accurate.
    fn theta(seed: i64) -> Vec<Tensor> {
        tch::manual_seed(seed);
        [
            vec![4, 1],
            vec![4],
            vec![3, 4],
            vec![3],
            vec![1, 3],
            vec![1],
        ]
        .into_iter()
        .map(|shape| {
            (Tensor::randn(shape, (Kind::Double, Device::Cpu)) * 0.7).set_requires_grad(true)
        })
        .collect()
    }

    fn batch(tasks: usize, kind: Kind) -> TaskBatch {
        let family = SinusoidFamily {
            shots: 5,
            queries: 6,
            x_range: [-5.0, 5.0],
        };
        let tasks: Vec<SinusoidTask> = (0..tasks)
            .map(|i| SinusoidTask {
                amplitude: 0.5 + i as f32,
                phase: 0.3 * i as f32,
                data_seed: 100 + i as u64,
            })
            .collect();
        family.materialise(&tasks, kind, Device::Cpu)
    }

    fn flat(tensors: &[Tensor]) -> Vec<f64> {
        let parts: Vec<Tensor> = tensors
            .iter()
            .map(|t| t.detach().flatten(0, -1).to_kind(Kind::Double))
            .collect();
        Vec::<f64>::try_from(Tensor::cat(&parts, 0)).unwrap()
    }

    /// Central differences of `f` with respect to every coordinate of `theta`.
    fn finite_differences(theta: &[Tensor], f: impl Fn(&[Tensor]) -> f64) -> Vec<f64> {
        let eps = 1e-6;
        let mut out = Vec::new();
        for (i, p) in theta.iter().enumerate() {
            for j in 0..p.numel() as i64 {
                let shifted = |delta: f64| {
                    let moved: Vec<Tensor> = theta.iter().map(|t| t.detach().copy()).collect();
                    let flat = moved[i].view([-1]);
                    let _ = flat.get(j).g_add_scalar_(delta);
                    f(&moved)
                };
                out.push((shifted(eps) - shifted(-eps)) / (2.0 * eps));
            }
        }
        out
    }

    fn assert_close(got: &[f64], want: &[f64], rel: f64) {
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rel * scale,
                "coordinate {i}: {g} vs {w} (scale {scale})"
            );
        }
    }

    fn post_adaptation_loss(theta: &[Tensor], batch: &TaskBatch, inner: InnerLoop) -> f64 {
        let out = run(
            theta,
            batch,
            InnerLoop {
                order: Order::First,
                ..inner
            },
            false,
            Path::PerTask,
        );
        out.loss_after.sum(Kind::Double).double_value(&[])
    }

    #[test]
    fn second_order_meta_gradient_matches_finite_differences() {
        let theta = theta(0);
        let batch = batch(3, Kind::Double);
        for steps in [1, 3] {
            let inner = InnerLoop {
                steps,
                lr: 0.05,
                order: Order::Second,
            };
            for path in [Path::Batched, Path::PerTask] {
                let grad = run(&theta, &batch, inner, true, path).grad_sum.unwrap();
                let reference =
                    finite_differences(&theta, |t| post_adaptation_loss(t, &batch, inner));
                assert_close(&flat(&grad), &reference, 1e-6);
            }
        }
    }

    #[test]
    fn second_order_differs_from_first_order() {
        let theta = theta(1);
        let batch = batch(3, Kind::Double);
        let inner = InnerLoop {
            steps: 1,
            lr: 0.1,
            order: Order::Second,
        };
        let second = flat(
            &run(&theta, &batch, inner, true, Path::Batched)
                .grad_sum
                .unwrap(),
        );
        let first = flat(
            &run(
                &theta,
                &batch,
                InnerLoop {
                    order: Order::First,
                    ..inner
                },
                true,
                Path::Batched,
            )
            .grad_sum
            .unwrap(),
        );
        let gap = second
            .iter()
            .zip(&first)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(gap > 1e-4, "the second-order term is missing: gap {gap}");
    }

    #[test]
    fn first_order_gradient_is_the_query_gradient_at_the_adapted_weights() {
        let theta = theta(2);
        let batch = batch(3, Kind::Double);
        let inner = InnerLoop {
            steps: 2,
            lr: 0.05,
            order: Order::First,
        };
        let got = flat(
            &run(&theta, &batch, inner, true, Path::Batched)
                .grad_sum
                .unwrap(),
        );
        // Definition: sum over tasks of d L_query / d phi at phi_t = adapt(theta), phi_t held fixed.
        let mut want = vec![0.0; got.len()];
        for t in 0..batch.tasks() {
            let task = batch.task(t);
            let phi: Vec<Tensor> = adapt(
                theta.iter().map(Tensor::shallow_clone).collect(),
                &task,
                inner,
                false,
                Path::PerTask,
            )
            .iter()
            .map(|w| w.detach().set_requires_grad(true))
            .collect();
            let query_loss = |w: &[Tensor]| {
                tch::no_grad(|| {
                    mse_per_task(&forward(w, &task.query_x), &task.query_y).double_value(&[0])
                })
            };
            for (w, d) in want.iter_mut().zip(finite_differences(&phi, query_loss)) {
                *w += d;
            }
        }
        assert_close(&got, &want, 1e-6);
    }

    #[test]
    fn batched_path_matches_the_per_task_loop_in_f32() {
        let theta: Vec<Tensor> = theta(3)
            .iter()
            .map(|t| t.detach().to_kind(Kind::Float).set_requires_grad(true))
            .collect();
        let batch = batch(7, Kind::Float);
        for order in [Order::Second, Order::First] {
            let inner = InnerLoop {
                steps: 2,
                lr: 0.02,
                order,
            };
            let batched = run(&theta, &batch, inner, true, Path::Batched);
            let looped = run(&theta, &batch, inner, true, Path::PerTask);
            assert_close(
                &flat(&batched.grad_sum.unwrap()),
                &flat(&looped.grad_sum.unwrap()),
                1e-5,
            );
            assert_close(
                &flat(&[batched.loss_after]),
                &flat(&[looped.loss_after]),
                1e-5,
            );
            assert_close(
                &flat(&[batched.loss_before]),
                &flat(&[looped.loss_before]),
                1e-6,
            );
        }
    }

    #[test]
    fn adaptation_lowers_the_support_and_query_loss_on_average() {
        let theta = theta(4);
        let batch = batch(5, Kind::Double);
        let inner = InnerLoop {
            steps: 5,
            lr: 0.01,
            order: Order::First,
        };
        let out = run(&theta, &batch, inner, false, Path::Batched);
        assert!(out.grad_sum.is_none());
        let before = out.loss_before.mean(Kind::Double).double_value(&[]);
        let after = out.loss_after.mean(Kind::Double).double_value(&[]);
        assert!(after < before, "{after} >= {before}");
    }
}
