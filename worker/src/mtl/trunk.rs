//! An MLP with ReLU after every layer, the shared layers of a multi-task model or one expert of a mixture: the forward pass, and one explicit backward pass for all tasks at once.

use tch::Tensor;

/// The representation every head reads: `[rows, width]`.
pub fn forward(shared: &[Tensor], x: &Tensor) -> Tensor {
    shared.chunks_exact(2).fold(x.shallow_clone(), |h, p| {
        h.linear(&p[0], Some(&p[1])).relu()
    })
}

/// A forward pass with what the backward pass needs: each layer's input and ReLU mask.
pub struct Saved {
    inputs: Vec<Tensor>,
    masks: Vec<Tensor>,
    pub representation: Tensor,
}

pub fn forward_saving(shared: &[Tensor], x: &Tensor) -> Saved {
    let layers = shared.len() / 2;
    let (mut inputs, mut masks) = (Vec::with_capacity(layers), Vec::with_capacity(layers));
    let mut h = x.shallow_clone();
    for p in shared.chunks_exact(2) {
        let z = h.linear(&p[0], Some(&p[1]));
        inputs.push(h);
        masks.push(z.gt(0.0).to_kind(z.kind()));
        h = z.relu();
    }
    Saved {
        inputs,
        masks,
        representation: h,
    }
}

impl Saved {
    /// Each layer's input rows, `[rows, in]`, in layer order: with [`output_deltas`], the
    /// factored form of every task's gradient.
    pub fn inputs(&self) -> &[Tensor] {
        &self.inputs
    }
}

/// Each task's gradient at every layer's output before its ReLU, `[tasks, rows, out]` in layer
/// order, from `delta` `[tasks, rows, width]`: every task's gradient of its loss at the
/// representation. A task's gradient of layer `l`'s weight is `deltas[l][t]ᵀ inputs[l]`, of its
/// bias `deltas[l][t]` summed over the rows.
pub fn output_deltas(saved: &Saved, shared: &[Tensor], delta: Tensor) -> Vec<Tensor> {
    let layers = saved.inputs.len();
    let mut deltas = Vec::with_capacity(layers);
    let mut delta = delta;
    for layer in (0..layers).rev() {
        // dLoss/dz of this layer: ReLU passes the gradient where the unit was active.
        let dz = delta * &saved.masks[layer];
        if layer > 0 {
            // [tasks * rows, out] x [out, in] as one product.
            delta = dz.matmul(&shared[2 * layer]);
        } else {
            delta = Tensor::new();
        }
        deltas.push(dz);
    }
    deltas.reverse();
    deltas
}

/// Each task's gradient with respect to the shared layers, from `delta` `[tasks, rows, width]`:
/// every task's gradient of its loss at the representation. Returns one piece per parameter
/// tensor in layout order (weight `[out, in]` then bias, layer after layer), each
/// `[tasks, values]`: side by side they are `[tasks, shared values]`, and they are left apart
/// because joining them would copy every task's gradient once more (megabytes per chunk)
/// before the copy onto the wire.
///
/// The tasks share the forward pass, hence the ReLU masks and layer inputs: propagating all
/// of them together is one matrix product per layer over `tasks * rows` rows, and one batched
/// product for the weight gradients, instead of one autograd backward per task.
pub fn backward(saved: &Saved, shared: &[Tensor], delta: Tensor) -> Vec<Tensor> {
    let tasks = delta.size()[0];
    let deltas = output_deltas(saved, shared, delta);
    deltas
        .iter()
        .zip(&saved.inputs)
        .flat_map(|(dz, input)| {
            // [tasks, out, rows] x [rows, in]: the layer input is the same for every task.
            let weight = dz.transpose(1, 2).matmul(input);
            [
                weight.reshape([tasks, -1]),
                dz.sum_dim_intlist(1, false, None),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::testing::{assert_close, flat, params};
    use tch::{Device, Kind};

    #[test]
    fn the_batched_backward_is_each_tasks_autograd_gradient() {
        let kind = Kind::Double;
        let shared = params(&[&[5, 3], &[5], &[4, 5], &[4]], 3, kind);
        let x = Tensor::randn([6, 3], (kind, Device::Cpu));
        let delta = Tensor::randn([3, 6, 4], (kind, Device::Cpu));
        let explicit = tch::no_grad(|| {
            let saved = forward_saving(&shared, &x);
            Tensor::cat(&backward(&saved, &shared, delta.shallow_clone()), 1)
        });
        let representation = forward(&shared, &x);
        for t in 0..3 {
            let objective = (&representation * delta.get(t)).sum(kind);
            let autograd = Tensor::run_backward(&[objective], &shared, true, false);
            assert_close(&flat(&[explicit.get(t)]), &flat(&autograd), 1e-12);
        }
    }
}
