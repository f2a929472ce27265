//! The fast path: the shared layers (or every expert) forward once, each head's loss and output gradient, then one explicit backward through the shared layers (or the gates and experts) for every task at once.

use tch::Tensor;

use super::{loss, mmoe, trunk, Body, Scored, Totals};
use crate::algorithms::without_grad;

/// The totals of `tasks` on the rows `x`; gradients when `train`, the shared layers' factored
/// when `factored` (hard sharing only: see [`Totals::shared_inputs`]).
pub fn run(body: &Body, x: &Tensor, tasks: &[Scored], train: bool, factored: bool) -> Totals {
    without_grad(|| {
        if !train {
            return Totals::scores_only(&body.representations(x, tasks), tasks);
        }
        match body {
            Body::Hard(shared) => hard(shared, x, tasks, factored),
            Body::Mmoe(experts) => mixture(experts, x, tasks),
            Body::Conv4(..) => {
                unreachable!("`MtlExperiment::rows` sends conv4 down the per-task path")
            }
        }
    })
}

/// Hard sharing; `factored` stops before the products that form each task's gradient and
/// gives each layer's inputs and every task's deltas at its outputs instead, from which the
/// coordinator works without forming them.
fn hard(shared: &[Tensor], x: &Tensor, tasks: &[Scored], factored: bool) -> Totals {
    let saved = trunk::forward_saving(shared, x);
    let heads: Vec<Head> = tasks
        .iter()
        .map(|task| Head::new(task, &saved.representation))
        .collect();
    let delta = Head::deltas(&heads);
    let shared_grads = if factored {
        trunk::output_deltas(&saved, shared, delta)
    } else {
        trunk::backward(&saved, shared, delta)
    };
    let own = heads.iter().flat_map(|h| h.grads.iter());
    let mut totals = Head::totals(&heads, shared_grads, own);
    if factored {
        totals.shared_inputs = Some(saved.inputs().iter().map(Tensor::shallow_clone).collect());
    }
    totals
}

fn mixture(experts: &[&[Tensor]], x: &Tensor, tasks: &[Scored]) -> Totals {
    let saved = mmoe::forward_saving(experts, x);
    let gates: Vec<Tensor> = tasks.iter().map(|t| mmoe::gate(x, t.gate())).collect();
    let heads: Vec<Head> = tasks
        .iter()
        .zip(&gates)
        .map(|(task, gate)| Head::new(task, &mmoe::mix(gate, &saved.outputs)))
        .collect();
    let gates = Tensor::stack(&gates, 0);
    let (expert_grads, gate_grads) =
        mmoe::backward(&saved, experts, x, &gates, &Head::deltas(&heads));
    // Each task's own block in layout order: its gate, then its head.
    let gate_grads: Vec<Tensor> = (0..tasks.len() as i64).map(|t| gate_grads.get(t)).collect();
    let own = heads
        .iter()
        .zip(&gate_grads)
        .flat_map(|(h, g)| std::iter::once(g).chain(&h.grads));
    Head::totals(&heads, expert_grads, own)
}

/// One task's head on its representation: the sums, the head's gradients, and the gradient at
/// the representation that goes back into the shared part.
struct Head {
    loss_sum: Tensor,
    metric_sum: Tensor,
    /// Weight (flat) then bias.
    grads: [Tensor; 2],
    /// `[rows, width]`.
    delta: Tensor,
}

impl Head {
    fn new(task: &Scored, representation: &Tensor) -> Head {
        let [weight, bias] = task.head;
        let output = representation.linear(weight, Some(bias));
        let losses = loss::row_losses(task.loss, &output, &task.target);
        let (loss_sum, metric_sum) = loss::sums(task.loss, &output, &task.target, &losses);
        // g = dLossSum/dOutput, [rows, outputs]: the head's gradients are g^T representation
        // and g summed over rows; the representation's is g W.
        let g = loss::output_grad(task.loss, &output, &task.target);
        Head {
            loss_sum,
            metric_sum,
            grads: [
                g.transpose(0, 1).matmul(representation).flatten(0, -1),
                g.sum_dim_intlist(0, false, None),
            ],
            delta: g.matmul(weight),
        }
    }

    /// Every task's gradient at its representation: `[tasks, rows, width]`.
    fn deltas(heads: &[Head]) -> Tensor {
        let deltas: Vec<&Tensor> = heads.iter().map(|h| &h.delta).collect();
        Tensor::stack(&deltas, 0)
    }

    /// The totals, from the shared gradients and every task's own, flat, in layout order.
    fn totals<'a>(
        heads: &[Head],
        shared: Vec<Tensor>,
        own: impl Iterator<Item = &'a Tensor>,
    ) -> Totals {
        let (loss_sums, metric_sums): (Vec<&Tensor>, Vec<&Tensor>) =
            heads.iter().map(|h| (&h.loss_sum, &h.metric_sum)).unzip();
        let own: Vec<&Tensor> = own.collect();
        Totals {
            loss_sums: Tensor::stack(&loss_sums, 0),
            metric_sums: Tensor::stack(&metric_sums, 0),
            grads: Some((shared, Tensor::cat(&own, 0))),
            shared_inputs: None,
        }
    }
}
