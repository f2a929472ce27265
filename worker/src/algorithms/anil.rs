//! ANIL (Raghu et al. 2020): almost no inner loop; only the head is adapted, and the body learns through the head's adaptation.

use tch::Tensor;

use super::{
    adapt, on_path, query_scores, without_grad, Algorithm, Context, Outcome, Step, StepSize,
};
use crate::data::TaskBatch;
use crate::models::{Mlp, Model};

/// The body embeds each task's support and query images once, with the shared weights (one
/// big batch); the inner loop adapts only the linear head on those features, per task; the
/// meta-gradient reaches the head through its adaptation (second order) and the body through
/// both the support features the head adapted on and the query features it was scored on.
pub struct Anil {
    /// The head as a model of its own: one linear layer on the body's features.
    head: Mlp,
}

impl Anil {
    pub fn new() -> Self {
        Anil {
            head: Mlp::linear(),
        }
    }
}

impl Default for Anil {
    fn default() -> Self {
        Anil::new()
    }
}

impl Algorithm for Anil {
    fn run(&self, cx: &Context, theta: &[Tensor], batch: &TaskBatch, train: bool) -> Outcome {
        let before = query_scores(cx, theta, batch);
        let (body, head) = theta.split_at(cx.model.body_len());
        let head_cx = Context {
            model: &self.head as &dyn Model,
            ..*cx
        };
        let step = |task: &TaskBatch| -> Step {
            let embed = || TaskBatch {
                support_x: cx.model.embed(body, &task.support_x),
                support_y: task.support_y.shallow_clone(),
                query_x: cx.model.embed(body, &task.query_x),
                query_y: task.query_y.shallow_clone(),
            };
            let features = if train { embed() } else { without_grad(embed) };
            let fast = adapt(
                &head_cx,
                head,
                &features,
                StepSize::Fixed(cx.inner_lr),
                train,
            );
            if !train {
                let (loss, accuracy) = query_scores(&head_cx, &fast, &features);
                return (None, loss, accuracy);
            }
            let out = self.head.forward(&fast, &features.query_x);
            let loss = cx.objective.per_task(&out, &task.query_y);
            let accuracy = cx.objective.accuracy(&out.detach(), &task.query_y);
            let grad = Tensor::run_backward(&[loss.sum(None)], theta, false, false);
            (Some(grad), loss.detach(), accuracy)
        };
        Outcome::new(before, on_path(cx, batch, step))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::Path;
    use tch::{Device, Kind};

    use crate::algorithms::maml::total_loss_after;
    use crate::algorithms::testing::{assert_close, finite_differences, flat, params};
    use crate::models::Mlp;
    use crate::objective::Objective;

    /// A 6 -> 5 -> 4 -> 3 classifier and a batch of 3-way tasks on random 6-d inputs.
    fn setup() -> (Mlp, Vec<Tensor>, TaskBatch) {
        let model = Mlp::new(&outerloop_proto::model::Mlp {
            input: 6,
            hidden: vec![5, 4],
            output: 3,
        });
        let theta = params(
            &[&[5, 6], &[5], &[4, 5], &[4], &[3, 4], &[3]],
            0,
            Kind::Double,
        );
        tch::manual_seed(5);
        let opts = (Kind::Double, Device::Cpu);
        let labels = |per_class: i64| {
            Tensor::arange(3, (Kind::Int64, Device::Cpu))
                .repeat_interleave_self_int(per_class, None, None)
                .unsqueeze(0)
                .repeat([4, 1])
        };
        let batch = TaskBatch {
            support_x: Tensor::randn([4, 6, 6], opts),
            support_y: labels(2),
            query_x: Tensor::randn([4, 9, 6], opts),
            query_y: labels(3),
        };
        (model, theta, batch)
    }

    fn context(model: &dyn Model, path: Path) -> Context<'_> {
        Context {
            model,
            objective: Objective::CrossEntropy,
            inner_steps: 2,
            inner_lr: 0.5,
            path,
        }
    }

    #[test]
    fn meta_gradient_matches_finite_differences_on_both_paths() {
        let (model, theta, batch) = setup();
        let anil = Anil::new();
        for path in [Path::Batched, Path::PerTask] {
            let grad = anil
                .run(&context(&model, path), &theta, &batch, true)
                .grad_sum
                .unwrap();
            let reference = finite_differences(&theta, |t| {
                total_loss_after(&anil.run(&context(&model, Path::PerTask), t, &batch, false))
            });
            assert_close(&flat(&grad), &reference, 1e-6);
        }
    }

    #[test]
    fn adapting_only_the_head_differs_from_adapting_everything() {
        let (model, theta, batch) = setup();
        let cx = context(&model, Path::Batched);
        let anil = Anil::new().run(&cx, &theta, &batch, false);
        let maml = super::super::Maml {
            order: super::super::Order::First,
        }
        .run(&cx, &theta, &batch, false);
        let gap = (anil.loss_after - maml.loss_after)
            .abs()
            .max()
            .double_value(&[]);
        assert!(
            gap > 1e-6,
            "adapting everything differs from adapting the head: {gap}"
        );
        let before = anil.loss_before.mean(Kind::Double).double_value(&[]);
        let after = anil
            .accuracy_after
            .unwrap()
            .mean(Kind::Double)
            .double_value(&[]);
        assert!(before.is_finite() && (0.0..=1.0).contains(&after));
    }
}
