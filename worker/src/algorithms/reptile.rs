//! Reptile (Nichol et al. 2018): adapt each task with plain SGD, then move the meta-parameters toward the adapted ones.

use tch::Tensor;

use super::{adapt, on_path, query_scores, Algorithm, Context, Outcome, Step, StepSize};
use crate::data::TaskBatch;

/// The result of a chunk is the sum over its tasks of `theta - adapted`: the direction the
/// coordinator steps against, with Reptile's own (scheduled) step size, after dividing by the
/// meta-batch, so its update is `theta + lr * mean(adapted - theta)`. No gradient flows
/// through the inner loop.
pub struct Reptile;

impl Algorithm for Reptile {
    fn run(&self, cx: &Context, theta: &[Tensor], batch: &TaskBatch, train: bool) -> Outcome {
        let before = query_scores(cx, theta, batch);
        let step = |task: &TaskBatch| -> Step {
            let fast = adapt(cx, theta, task, StepSize::Fixed(cx.inner_lr), false);
            let (loss, accuracy) = query_scores(cx, &fast, task);
            let update = train.then(|| {
                super::without_grad(|| {
                    theta
                        .iter()
                        .zip(&fast)
                        .map(|(t, f)| {
                            let moved = t.detach() - f;
                            // Batched adapted weights carry a task axis, summed away here.
                            if moved.dim() > t.dim() {
                                moved.sum_dim_intlist(0, false, None)
                            } else {
                                moved
                            }
                        })
                        .collect()
                })
            });
            (update, loss, accuracy)
        };
        Outcome::new(before, on_path(cx, batch, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::Path;
    use tch::Kind;

    use crate::algorithms::testing::{assert_close, flat, sinusoid_batch, theta};
    use crate::algorithms::without_grad;
    use crate::models::{Mlp, Model};
    use crate::objective::Objective;

    fn mlp() -> Mlp {
        Mlp::new(&outerloop_proto::model::Mlp {
            input: 1,
            hidden: vec![4, 3],
            output: 1,
        })
    }

    fn context(model: &dyn Model, steps: usize, path: Path) -> Context<'_> {
        Context {
            model,
            objective: Objective::Mse,
            inner_steps: steps,
            inner_lr: 0.02,
            path,
        }
    }

    #[test]
    fn one_step_update_is_the_learning_rate_times_the_summed_support_gradients() {
        // With one inner step, theta - adapted = lr * grad L_support(theta) for each task.
        let model = mlp();
        let theta = theta(0, Kind::Double);
        let batch = sinusoid_batch(3, Kind::Double);
        let update = Reptile
            .run(&context(&model, 1, Path::Batched), &theta, &batch, true)
            .grad_sum
            .unwrap();
        let mut want = vec![0.0; flat(&theta).len()];
        for t in 0..3 {
            let task = batch.task(t);
            let loss = Objective::Mse
                .per_task(&model.forward(&theta, &task.support_x), &task.support_y)
                .sum(None);
            let grads = Tensor::run_backward(&[loss], &theta, false, false);
            for (w, g) in want.iter_mut().zip(flat(&grads)) {
                *w += 0.02 * g;
            }
        }
        assert_close(&flat(&update), &want, 1e-10);
    }

    #[test]
    fn batched_updates_match_the_per_task_loop_and_adaptation_helps() {
        let model = mlp();
        let theta = theta(1, Kind::Float);
        let batch = sinusoid_batch(6, Kind::Float);
        let batched = Reptile.run(&context(&model, 5, Path::Batched), &theta, &batch, true);
        let looped = Reptile.run(&context(&model, 5, Path::PerTask), &theta, &batch, true);
        assert_close(
            &flat(&batched.grad_sum.unwrap()),
            &flat(&looped.grad_sum.unwrap()),
            1e-5,
        );
        assert_close(
            &flat(&[batched.loss_after.shallow_clone()]),
            &flat(&[looped.loss_after]),
            1e-5,
        );
        let (before, after) = without_grad(|| {
            (
                batched.loss_before.mean(Kind::Double).double_value(&[]),
                batched.loss_after.mean(Kind::Double).double_value(&[]),
            )
        });
        assert!(after < before, "{after} >= {before}");
    }
}
