//! Multi-gate mixture of experts (Ma et al., KDD 2018): each task's softmax gate mixes the experts' outputs into its representation; the forward pass, and one explicit backward through every task's gate and, with `trunk::backward`, every expert.

use tch::Tensor;

use super::trunk;

/// A task's mixing weights over the experts for each row of `x`: `[rows, experts]`.
pub fn gate(x: &Tensor, [weight, bias]: [&Tensor; 2]) -> Tensor {
    x.linear(weight, Some(bias)).softmax(-1, x.kind())
}

/// Every expert's output on `x`, stacked: `[experts, rows, width]`.
pub fn forward(experts: &[&[Tensor]], x: &Tensor) -> Tensor {
    let outputs: Vec<Tensor> = experts.iter().map(|p| trunk::forward(p, x)).collect();
    Tensor::stack(&outputs, 0)
}

/// The representation of a task whose mixing weights are `gate` `[rows, experts]`: each
/// row's weighted sum of the experts' outputs `[experts, rows, width]`, `[rows, width]`.
pub fn mix(gate: &Tensor, outputs: &Tensor) -> Tensor {
    // Row by row, [1, experts] x [experts, width].
    gate.unsqueeze(1)
        .matmul(&outputs.transpose(0, 1))
        .squeeze_dim(1)
}

/// A forward pass of every expert with what the backward pass needs.
pub struct Saved {
    experts: Vec<trunk::Saved>,
    /// `[experts, rows, width]`, as [`forward`] returns it.
    pub outputs: Tensor,
}

pub fn forward_saving(experts: &[&[Tensor]], x: &Tensor) -> Saved {
    let experts: Vec<trunk::Saved> = experts
        .iter()
        .map(|p| trunk::forward_saving(p, x))
        .collect();
    let outputs: Vec<&Tensor> = experts.iter().map(|s| &s.representation).collect();
    Saved {
        outputs: Tensor::stack(&outputs, 0),
        experts,
    }
}

/// Each task's gradients from `gates` `[tasks, rows, experts]` (its mixing weights) and
/// `delta` `[tasks, rows, width]` (its gradient of its loss at its representation), on the
/// rows `x`. Returns the experts' gradients as pieces `[tasks, values]` that side by side
/// are `[tasks, shared values]` (expert after expert, each in layout order; see
/// `trunk::backward`), and the gates' `[tasks, experts * (input + 1)]` (weight
/// `[experts, input]` then bias).
pub fn backward(
    saved: &Saved,
    experts: &[&[Tensor]],
    x: &Tensor,
    gates: &Tensor,
    delta: &Tensor,
) -> (Vec<Tensor>, Tensor) {
    // Expert e's output reaches task t's representation scaled row by row by g_{t,e}, so its
    // gradient there is g_{t,e} delta_t: every task's at once through the expert's layers.
    let expert_grads: Vec<Tensor> = experts
        .iter()
        .zip(&saved.experts)
        .enumerate()
        .flat_map(|(e, (params, forward))| {
            let upstream = gates.narrow(2, e as i64, 1) * delta;
            trunk::backward(forward, params, upstream)
        })
        .collect();
    // s_{t,e} = <delta_t, expert_e(x)> per row, [tasks, rows, experts]: row by row,
    // [tasks, width] x [width, experts].
    let s = delta
        .transpose(0, 1)
        .matmul(&saved.outputs.permute([1, 2, 0]))
        .transpose(0, 1);
    // Through the softmax: d/dlogit_e = g_e (s_e - sum_k g_k s_k).
    let mean = (gates * &s).sum_dim_intlist(-1, true, None);
    let dlogits = gates * (s - mean);
    let tasks = gates.size()[0];
    // [tasks, experts, rows] x [rows, input]: the gates all read the same input.
    let weight = dlogits.transpose(1, 2).matmul(x).reshape([tasks, -1]);
    let bias = dlogits.sum_dim_intlist(1, false, None);
    (expert_grads, Tensor::cat(&[weight, bias], 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::testing::{assert_close, flat, params};
    use tch::{Device, Kind};

    #[test]
    fn the_batched_backward_is_each_tasks_autograd_gradient() {
        let kind = Kind::Double;
        // Two experts 3 -> 5 -> 4, and two tasks' gates 3 -> 2.
        let all = params(
            &[
                &[5, 3],
                &[5],
                &[4, 5],
                &[4],
                &[5, 3],
                &[5],
                &[4, 5],
                &[4],
                &[2, 3],
                &[2],
                &[2, 3],
                &[2],
            ],
            4,
            kind,
        );
        let experts = [&all[0..4], &all[4..8]];
        let x = Tensor::randn([6, 3], (kind, Device::Cpu));
        let delta = Tensor::randn([2, 6, 4], (kind, Device::Cpu));
        let task_gates = [[&all[8], &all[9]], [&all[10], &all[11]]];
        let (expert_grads, gate_grads) = tch::no_grad(|| {
            let saved = forward_saving(&experts, &x);
            let gates: Vec<Tensor> = task_gates.iter().map(|g| gate(&x, *g)).collect();
            let gates = Tensor::stack(&gates, 0);
            backward(&saved, &experts, &x, &gates, &delta)
        });
        let outputs = forward(&experts, &x);
        for (t, task_gate) in task_gates.iter().enumerate() {
            let representation = mix(&gate(&x, *task_gate), &outputs);
            let objective = (&representation * delta.get(t as i64)).sum(kind);
            let wrt: Vec<&Tensor> = all[..8].iter().chain(*task_gate).collect();
            let autograd = Tensor::run_backward(&[objective], &wrt, true, false);
            let explicit = [
                Tensor::cat(&expert_grads, 1).get(t as i64),
                gate_grads.get(t as i64),
            ];
            assert_close(&flat(&explicit), &flat(&autograd), 1e-12);
        }
    }
}
