//! MAML and first-order MAML: the inner loop on support sets and the meta-gradient through it.

use tch::Tensor;

use super::{
    adapt, on_path, query_scores, task_grads, Algorithm, Context, Outcome, Step, StepSize,
};
use crate::data::TaskBatch;

/// How meta-gradients flow through the inner loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Differentiate through the inner updates (`create_graph = true`): true MAML.
    Second,
    /// Treat the inner gradients as constants: FOMAML.
    First,
}

/// MAML (Finn et al. 2017): every parameter is adapted by `inner_steps` SGD steps on the
/// support set; the meta-objective is the query loss at the adapted parameters.
pub struct Maml {
    pub order: Order,
}

impl Algorithm for Maml {
    fn run(&self, cx: &Context, theta: &[Tensor], batch: &TaskBatch, train: bool) -> Outcome {
        let before = query_scores(cx, theta, batch);
        let after = on_path(cx, batch, |task| self.meta_step(cx, theta, task, train));
        Outcome::new(before, after)
    }
}

impl Maml {
    fn meta_step(&self, cx: &Context, theta: &[Tensor], batch: &TaskBatch, train: bool) -> Step {
        let second_order = train && self.order == Order::Second;
        let fast = adapt(cx, theta, batch, StepSize::Fixed(cx.inner_lr), second_order);
        if second_order {
            let out = cx.model.forward(&fast, &batch.query_x);
            let loss = cx.objective.per_task(&out, &batch.query_y);
            let accuracy = cx.objective.accuracy(&out.detach(), &batch.query_y);
            let grad = Tensor::run_backward(&[loss.sum(None)], theta, false, false);
            return (Some(grad), loss.detach(), accuracy);
        }
        let (loss, accuracy) = query_scores(cx, &fast, batch);
        if !train {
            return (None, loss, accuracy);
        }
        // FOMAML: the query gradient at the adapted weights stands in for the meta-gradient;
        // it carries a task axis that is summed away.
        let grads = task_grads(cx, &fast, theta, &batch.query_x, &batch.query_y, 1.0, false);
        let grad = grads
            .iter()
            .map(|g| g.sum_dim_intlist(0, false, None))
            .collect();
        (Some(grad), loss, accuracy)
    }
}

/// The summed post-adaptation query loss, in f64 (for finite-difference references).
#[cfg(test)]
pub(super) fn total_loss_after(outcome: &Outcome) -> f64 {
    outcome.loss_after.sum(tch::Kind::Double).double_value(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::Path;
    use tch::Kind;

    use crate::algorithms::inner_loop::without_grad;
    use crate::algorithms::testing::{
        assert_close, conv4_theta, finite_differences, flat, image_batch, sinusoid_batch, theta,
    };
    use crate::models::{Conv4, Mlp, Model};
    use crate::objective::Objective;

    fn mlp() -> Mlp {
        Mlp::new(&outerloop_proto::model::Mlp {
            input: 1,
            hidden: vec![4, 3],
            output: 1,
        })
    }

    fn context(model: &dyn Model, inner_steps: usize, inner_lr: f64, path: Path) -> Context<'_> {
        Context {
            model,
            objective: Objective::Mse,
            inner_steps,
            inner_lr,
            path,
        }
    }

    /// The same model without its explicit backward: the inner loop falls back to autograd on
    /// per-task views of the parameters.
    struct AutogradOnly<'a>(&'a dyn Model);

    impl Model for AutogradOnly<'_> {
        fn embed(&self, body: &[Tensor], x: &Tensor) -> Tensor {
            self.0.embed(body, x)
        }

        fn head(&self, head: &[Tensor], features: &Tensor) -> Tensor {
            self.0.head(head, features)
        }

        fn body_len(&self) -> usize {
            self.0.body_len()
        }
    }

    fn post_adaptation_loss(cx: &Context, theta: &[Tensor], batch: &TaskBatch) -> f64 {
        let cx = Context {
            path: Path::PerTask,
            ..*cx
        };
        let out = Maml {
            order: Order::First,
        }
        .run(&cx, theta, batch, false);
        total_loss_after(&out)
    }

    #[test]
    fn second_order_meta_gradient_matches_finite_differences() {
        let model = mlp();
        let theta = theta(0, Kind::Double);
        let batch = sinusoid_batch(3, Kind::Double);
        let maml = Maml {
            order: Order::Second,
        };
        for steps in [1, 3] {
            for path in [Path::Batched, Path::PerTask] {
                let cx = context(&model, steps, 0.05, path);
                let grad = maml.run(&cx, &theta, &batch, true).grad_sum.unwrap();
                let reference =
                    finite_differences(&theta, |t| post_adaptation_loss(&cx, t, &batch));
                assert_close(&flat(&grad), &reference, 1e-6);
            }
        }
    }

    #[test]
    fn second_order_differs_from_first_order() {
        let model = mlp();
        let theta = theta(1, Kind::Double);
        let batch = sinusoid_batch(3, Kind::Double);
        let cx = context(&model, 1, 0.1, Path::Batched);
        let run = |order| {
            flat(
                &Maml { order }
                    .run(&cx, &theta, &batch, true)
                    .grad_sum
                    .unwrap(),
            )
        };
        let (second, first) = (run(Order::Second), run(Order::First));
        let gap = second
            .iter()
            .zip(&first)
            .map(|(a, b)| (a - b).abs())
            .fold(0f64, f64::max);
        assert!(gap > 1e-4, "the second-order term is missing: gap {gap}");
    }

    #[test]
    fn first_order_gradient_is_the_query_gradient_at_the_adapted_weights() {
        let model = mlp();
        let theta = theta(2, Kind::Double);
        let batch = sinusoid_batch(3, Kind::Double);
        let cx = context(&model, 2, 0.05, Path::Batched);
        let got = flat(
            &Maml {
                order: Order::First,
            }
            .run(&cx, &theta, &batch, true)
            .grad_sum
            .unwrap(),
        );
        // Definition: sum over tasks of d L_query / d phi at phi_t = adapt(theta), phi_t held fixed.
        let per_task = Context {
            path: Path::PerTask,
            ..cx
        };
        let mut want = vec![0.0; got.len()];
        for t in 0..batch.tasks() {
            let task = batch.task(t);
            let phi = adapt(&per_task, &theta, &task, StepSize::Fixed(0.05), false);
            let query_loss = |w: &[Tensor]| {
                without_grad(|| {
                    Objective::Mse
                        .per_task(&model.forward(w, &task.query_x), &task.query_y)
                        .double_value(&[0])
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
        let model = mlp();
        let theta = theta(3, Kind::Float);
        let batch = sinusoid_batch(7, Kind::Float);
        for order in [Order::Second, Order::First] {
            let maml = Maml { order };
            let batched = maml.run(
                &context(&model, 2, 0.02, Path::Batched),
                &theta,
                &batch,
                true,
            );
            let looped = maml.run(
                &context(&model, 2, 0.02, Path::PerTask),
                &theta,
                &batch,
                true,
            );
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
    fn autograd_on_per_task_views_matches_the_explicit_backward() {
        let model = mlp();
        let autograd = AutogradOnly(&model);
        let theta = theta(5, Kind::Double);
        let batch = sinusoid_batch(4, Kind::Double);
        for order in [Order::Second, Order::First] {
            let maml = Maml { order };
            let explicit = maml.run(
                &context(&model, 2, 0.03, Path::Batched),
                &theta,
                &batch,
                true,
            );
            let generic = maml.run(
                &context(&autograd, 2, 0.03, Path::Batched),
                &theta,
                &batch,
                true,
            );
            assert_close(
                &flat(&generic.grad_sum.unwrap()),
                &flat(&explicit.grad_sum.unwrap()),
                1e-10,
            );
            assert_close(
                &flat(&[generic.loss_after]),
                &flat(&[explicit.loss_after]),
                1e-12,
            );
        }
    }

    fn conv4_context(model: &dyn Model, path: Path) -> Context<'_> {
        Context {
            model,
            objective: Objective::CrossEntropy,
            inner_steps: 2,
            inner_lr: 0.3,
            path,
        }
    }

    #[test]
    fn conv4_second_order_meta_gradient_matches_finite_differences() {
        let theta = conv4_theta(4, Kind::Double);
        let batch = image_batch(2, 2, 2, 3, Kind::Double);
        let maml = Maml {
            order: Order::Second,
        };
        let grad = maml
            .run(&conv4_context(&Conv4, Path::Batched), &theta, &batch, true)
            .grad_sum
            .unwrap();
        let reference = finite_differences(&theta, |t| {
            post_adaptation_loss(&conv4_context(&Conv4, Path::PerTask), t, &batch)
        });
        assert_close(&flat(&grad), &reference, 1e-5);
    }

    #[test]
    fn conv4_batched_path_matches_the_per_task_loop_in_f32() {
        let theta = conv4_theta(5, Kind::Float);
        let batch = image_batch(5, 2, 1, 2, Kind::Float);
        for order in [Order::Second, Order::First] {
            let maml = Maml { order };
            let batched = maml.run(&conv4_context(&Conv4, Path::Batched), &theta, &batch, true);
            let looped = maml.run(&conv4_context(&Conv4, Path::PerTask), &theta, &batch, true);
            assert_close(
                &flat(&batched.grad_sum.unwrap()),
                &flat(&looped.grad_sum.unwrap()),
                1e-4,
            );
            assert_close(
                &flat(&[batched.loss_after]),
                &flat(&[looped.loss_after]),
                1e-5,
            );
            assert_close(
                &flat(&[batched.accuracy_after.unwrap()]),
                &flat(&[looped.accuracy_after.unwrap()]),
                0.0,
            );
        }
    }

    #[test]
    fn adaptation_lowers_the_query_loss_on_average() {
        let model = mlp();
        let theta = theta(4, Kind::Double);
        let batch = sinusoid_batch(5, Kind::Double);
        let cx = context(&model, 5, 0.01, Path::Batched);
        let out = Maml {
            order: Order::First,
        }
        .run(&cx, &theta, &batch, false);
        assert!(out.grad_sum.is_none());
        let before = out.loss_before.mean(Kind::Double).double_value(&[]);
        let after = out.loss_after.mean(Kind::Double).double_value(&[]);
        assert!(after < before, "{after} >= {before}");
    }
}
