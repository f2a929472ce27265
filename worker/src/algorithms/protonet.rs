//! Prototypical networks (Snell et al. 2017): classify queries by the nearest class mean of the support embeddings.

use tch::{Kind, Tensor};

use super::{on_path, without_grad, Algorithm, Context, Outcome, Step};
use crate::data::TaskBatch;

/// No inner loop: the model (without a head) embeds each task's support and query images in
/// one forward pass (so batch norm sees the whole episode, as in the paper's implementation);
/// each class's prototype is the mean of its support embeddings, and the logits of a query
/// are its negative squared Euclidean distances to the prototypes. The meta-gradient is the
/// ordinary gradient of the query cross-entropy.
pub struct ProtoNet;

/// Logits `[tasks, queries, ways]` of the queries against the class means of the support
/// embeddings, for `ways` classes labelled `0..ways`.
pub fn prototype_logits(support: &Tensor, labels: &Tensor, query: &Tensor, ways: i64) -> Tensor {
    let one_hot = labels.one_hot(ways).to_kind(support.kind()); // [tasks, support, ways]
    let counts = one_hot.sum_dim_intlist(1, false, None).unsqueeze(-1); // [tasks, ways, 1]
    let prototypes = one_hot.transpose(1, 2).bmm(support) / counts; // [tasks, ways, features]
                                                                    // -|q - p|^2 = 2 q.p - |q|^2 - |p|^2, as one batched matrix product.
    let cross = query.bmm(&prototypes.transpose(1, 2));
    let q2 = query.square().sum_dim_intlist(-1, true, None);
    let p2 = prototypes
        .square()
        .sum_dim_intlist(-1, false, None)
        .unsqueeze(1);
    cross * 2.0 - q2 - p2
}

impl Algorithm for ProtoNet {
    fn run(&self, cx: &Context, theta: &[Tensor], batch: &TaskBatch, train: bool) -> Outcome {
        let ways = without_grad(|| batch.support_y.max().int64_value(&[])) + 1;
        let step = |task: &TaskBatch| -> Step {
            let forward = || {
                let shots = task.support_x.size()[1];
                let episode = Tensor::cat(&[&task.support_x, &task.query_x], 1);
                let embedded = cx.model.forward(theta, &episode);
                let queries = embedded.size()[1] - shots;
                let parts = embedded.split_with_sizes([shots, queries], 1);
                prototype_logits(&parts[0], &task.support_y, &parts[1], ways)
            };
            let logits = if train {
                forward()
            } else {
                without_grad(forward)
            };
            let loss = cx.objective.per_task(&logits, &task.query_y);
            let accuracy = cx.objective.accuracy(&logits.detach(), &task.query_y);
            let grad =
                train.then(|| Tensor::run_backward(&[loss.sum(Kind::Float)], theta, false, false));
            (grad, loss.detach(), accuracy)
        };
        let (grad_sum, loss, accuracy) = on_path(cx, batch, step);
        // Nothing is adapted: the scores before and after adaptation are the same.
        Outcome {
            grad_sum,
            loss_before: loss.shallow_clone(),
            loss_after: loss,
            accuracy_before: accuracy.as_ref().map(Tensor::shallow_clone),
            accuracy_after: accuracy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::Path;
    use tch::Device;

    use crate::algorithms::maml::total_loss_after;
    use crate::algorithms::testing::{assert_close, finite_differences, flat, params};
    use crate::models::{Mlp, Model};
    use crate::objective::Objective;

    #[test]
    fn logits_are_negative_squared_distances_to_class_means_by_hand() {
        // Two classes in 2-d: class 0 at (0,0) and (2,0) -> mean (1,0); class 1 at (0,2).
        let support = Tensor::from_slice(&[0.0f64, 0.0, 2.0, 0.0, 0.0, 2.0]).view([1, 3, 2]);
        let labels = Tensor::from_slice(&[0i64, 0, 1]).view([1, 3]);
        let query = Tensor::from_slice(&[1.0f64, 1.0]).view([1, 1, 2]);
        let logits = prototype_logits(&support, &labels, &query, 2);
        // |(1,1) - (1,0)|^2 = 1, |(1,1) - (0,2)|^2 = 2.
        assert_close(&flat(&[logits]), &[-1.0, -2.0], 1e-12);
    }

    fn setup() -> (Mlp, Vec<Tensor>, TaskBatch) {
        // An embedding MLP 5 -> 4 -> 3 (no head) and 3-way tasks.
        let model = Mlp::new(&outerloop_proto::model::Mlp {
            input: 5,
            hidden: vec![4],
            output: 3,
        });
        let theta = params(&[&[4, 5], &[4], &[3, 4], &[3]], 3, Kind::Double);
        tch::manual_seed(9);
        let opts = (Kind::Double, Device::Cpu);
        let labels = |per_class: i64| {
            Tensor::arange(3, (Kind::Int64, Device::Cpu))
                .repeat_interleave_self_int(per_class, None, None)
                .unsqueeze(0)
                .repeat([2, 1])
        };
        let batch = TaskBatch {
            support_x: Tensor::randn([2, 6, 5], opts),
            support_y: labels(2),
            query_x: Tensor::randn([2, 3, 5], opts),
            query_y: labels(1),
        };
        (model, theta, batch)
    }

    fn context(model: &dyn Model, path: Path) -> Context<'_> {
        Context {
            model,
            objective: Objective::CrossEntropy,
            inner_steps: 0,
            inner_lr: 0.0,
            path,
        }
    }

    #[test]
    fn gradient_matches_finite_differences_and_the_per_task_path() {
        let (model, theta, batch) = setup();
        let batched = ProtoNet.run(&context(&model, Path::Batched), &theta, &batch, true);
        let looped = ProtoNet.run(&context(&model, Path::PerTask), &theta, &batch, true);
        let reference = finite_differences(&theta, |t| {
            total_loss_after(&ProtoNet.run(&context(&model, Path::Batched), t, &batch, false))
        });
        assert_close(&flat(&batched.grad_sum.unwrap()), &reference, 1e-6);
        assert_close(&flat(&looped.grad_sum.unwrap()), &reference, 1e-6);
        assert_close(
            &flat(&[batched.loss_after]),
            &flat(&[batched.loss_before]),
            0.0,
        );
    }
}
