//! Meta-SGD (Li et al. 2017): MAML with a learned inner learning rate for every parameter value, meta-learned with the weights.

use tch::Tensor;

use super::{adapt, on_path, query_scores, Algorithm, Context, Outcome, Step, StepSize};
use crate::data::TaskBatch;

/// The parameters are the model's, followed by one learned rate per model parameter, shaped
/// alike (`inner_lr.NAME` in the layout). The inner update is `theta - lr * grad`
/// element-wise; the meta-gradient reaches both the weights and the rates through it.
pub struct MetaSgd;

impl Algorithm for MetaSgd {
    fn run(&self, cx: &Context, params: &[Tensor], batch: &TaskBatch, train: bool) -> Outcome {
        let (theta, lrs) = params.split_at(params.len() / 2);
        let before = query_scores(cx, theta, batch);
        let step = |task: &TaskBatch| -> Step {
            let fast = adapt(cx, theta, task, StepSize::Learned(lrs), train);
            if !train {
                let (loss, accuracy) = query_scores(cx, &fast, task);
                return (None, loss, accuracy);
            }
            let out = cx.model.forward(&fast, &task.query_x);
            let loss = cx.objective.per_task(&out, &task.query_y);
            let accuracy = cx.objective.accuracy(&out.detach(), &task.query_y);
            let grad = Tensor::run_backward(&[loss.sum(None)], params, false, false);
            (Some(grad), loss.detach(), accuracy)
        };
        Outcome::new(before, on_path(cx, batch, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::Path;
    use tch::Kind;

    use crate::algorithms::maml::total_loss_after;
    use crate::algorithms::testing::{
        assert_close, finite_differences, flat, params, sinusoid_batch,
    };
    use crate::models::{Mlp, Model};
    use crate::objective::Objective;

    fn mlp() -> Mlp {
        Mlp::new(&outerloop_proto::model::Mlp {
            input: 1,
            hidden: vec![4, 3],
            output: 1,
        })
    }

    /// The 1-4-3-1 network's weights followed by positive learned rates of the same shapes.
    fn weights_and_rates(seed: i64) -> Vec<Tensor> {
        let shapes: [&[i64]; 6] = [&[4, 1], &[4], &[3, 4], &[3], &[1, 3], &[1]];
        let mut all = params(&shapes, seed, Kind::Double);
        let rates: Vec<Tensor> = params(&shapes, seed + 1, Kind::Double)
            .iter()
            .map(|r| (r.detach().abs() * 0.05 + 0.01).set_requires_grad(true))
            .collect();
        all.extend(rates);
        all
    }

    fn context(model: &dyn Model, path: Path) -> Context<'_> {
        Context {
            model,
            objective: Objective::Mse,
            inner_steps: 2,
            inner_lr: 0.0,
            path,
        }
    }

    #[test]
    fn meta_gradient_of_weights_and_rates_matches_finite_differences() {
        let model = mlp();
        let params = weights_and_rates(0);
        let batch = sinusoid_batch(3, Kind::Double);
        for path in [Path::Batched, Path::PerTask] {
            let cx = context(&model, path);
            let grad = MetaSgd.run(&cx, &params, &batch, true).grad_sum.unwrap();
            assert_eq!(grad.len(), 12, "a gradient for every weight and every rate");
            let reference = finite_differences(&params, |p| {
                total_loss_after(&MetaSgd.run(&context(&model, Path::PerTask), p, &batch, false))
            });
            assert_close(&flat(&grad), &reference, 1e-6);
        }
    }

    #[test]
    fn equal_rates_everywhere_are_maml() {
        let model = mlp();
        let mut params = weights_and_rates(1);
        for rate in &mut params[6..] {
            *rate = rate.detach().fill(0.03).set_requires_grad(true);
        }
        let batch = sinusoid_batch(4, Kind::Double);
        let cx = context(&model, Path::Batched);
        let metasgd = MetaSgd.run(&cx, &params, &batch, true);
        let maml_cx = Context {
            inner_lr: 0.03,
            ..cx
        };
        let maml = super::super::Maml {
            order: super::super::Order::Second,
        }
        .run(&maml_cx, &params[..6], &batch, true);
        let weights_grad: Vec<Tensor> = metasgd.grad_sum.unwrap()[..6]
            .iter()
            .map(|t| t.shallow_clone())
            .collect();
        assert_close(&flat(&weights_grad), &flat(&maml.grad_sum.unwrap()), 1e-10);
        assert_close(
            &flat(&[metasgd.loss_after]),
            &flat(&[maml.loss_after]),
            1e-12,
        );
    }
}
