//! The conv4 network evaluated for many tasks at once, shared or per-task weights alike, with an explicit backward for the first inner step.

mod backward;
mod block;
mod first_block;
mod layout;
mod pool;
mod weight_grad;

use tch::Tensor;

use super::mlp::linear;
use super::Model;
use crate::objective::Objective;
use first_block::Patches;

/// Batch norm's epsilon, PyTorch's default.
const EPS: f64 = 1e-5;

/// Four blocks of [3x3 convolution, batch norm, ReLU, 2x2 max-pool], then a linear head (or
/// none: the flattened features are the output). Parameters per block: convolution weight
/// `[filters, in, 3, 3]` and bias, batch-norm scale and shift `[filters]`; head weight
/// `[classes, features]` and bias.
///
/// Batch norm always normalises with the statistics of the current batch of each task
/// (transductive, as in MAML's reference code): a task's support set and its query set are
/// each normalised with their own statistics, and no running statistics exist.
///
/// Every task is evaluated in one computation: the tasks side by side along the channel axis
/// (see `layout`), one grouped convolution per later block with a group per task, shared
/// weights repeated per task; the first block is one patch-matrix product per task (see
/// `first_block`).
#[derive(Clone, Debug)]
pub struct Conv4;

/// Parameters per convolutional block.
const PER_BLOCK: usize = 4;

/// One block's parameters for every task, grouped (see `layout::grouped`): kernels
/// `[tasks * f, in, 3, 3]` channels last, the rest `[tasks * f]`.
struct Block {
    weight: Tensor,
    bias: Tensor,
    scale: Tensor,
    shift: Tensor,
}

impl Block {
    fn all(body: &[Tensor], tasks: i64) -> Vec<Block> {
        let shared = body[0].dim() == 4;
        body.chunks_exact(PER_BLOCK)
            .map(|p| {
                let grouped = |i: usize| layout::grouped(&p[i], tasks, shared);
                Block {
                    weight: grouped(0),
                    bias: grouped(1),
                    scale: grouped(2),
                    shift: grouped(3),
                }
            })
            .collect()
    }
}

/// The gradients of one block's weight, batch-norm scale and batch-norm shift, per task (any
/// shape with the task's values in order; the convolution bias's gradient is zero).
struct BlockGrads {
    weight: Tensor,
    scale: Tensor,
    shift: Tensor,
}

impl Model for Conv4 {
    fn embed(&self, body: &[Tensor], x: &Tensor) -> Tensor {
        let tasks = x.size()[0];
        let blocks = Block::all(body, tasks);
        let mut h = first_block::forward(&Patches::of(x), &blocks[0], tasks);
        for p in &blocks[1..] {
            h = block::forward(&h, p, tasks);
        }
        layout::features(&h, tasks)
    }

    fn head(&self, head: &[Tensor], features: &Tensor) -> Tensor {
        match head {
            [] => features.shallow_clone(),
            [w, b] => linear(features, w, b),
            _ => panic!(
                "conv4's head has a weight and a bias, got {} tensors",
                head.len()
            ),
        }
    }

    fn body_len(&self) -> usize {
        PER_BLOCK * outerloop_proto::model::conv4::BLOCKS
    }

    /// Only for a differentiable result (second-order MAML's inner step): the kernel gradients
    /// come from autograd (see `weight_grad`), which without a graph to keep is no faster than
    /// autograd through the forward.
    fn loss_and_grads(
        &self,
        params: &[Tensor],
        x: &Tensor,
        target: &Tensor,
        objective: Objective,
        scale: f64,
        want_loss: bool,
        create_graph: bool,
    ) -> Option<(Option<Tensor>, Vec<Tensor>)> {
        let has_head = params.len() > self.body_len();
        (create_graph && has_head)
            .then(|| backward::loss_and_grads(self, params, x, target, objective, scale, want_loss))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    use crate::algorithms::testing::{assert_close, conv4_theta as theta, flat};

    fn images(tasks: i64, points: i64, kind: Kind) -> Tensor {
        tch::manual_seed(11);
        Tensor::rand([tasks, points, 3, 16, 16], (kind, Device::Cpu))
    }

    #[test]
    fn each_task_is_normalised_and_pooled_like_pytorchs_own_modules() {
        let theta = theta(0, Kind::Double);
        let x = images(3, 4, Kind::Double);
        let ours = Conv4.forward(&theta, &x);
        assert_eq!(ours.size(), [3, 4, 2]);
        // Reference: each task alone through libtorch's batch_norm in training mode.
        for t in 0..3 {
            let mut h = x.get(t);
            for block in theta[..16].chunks_exact(4) {
                h = h.conv2d(&block[0], Some(&block[1]), [1, 1], [1, 1], [1, 1], 1);
                h = h.batch_norm(
                    Some(&block[2]),
                    Some(&block[3]),
                    None::<&Tensor>,
                    None::<&Tensor>,
                    true,
                    0.1,
                    EPS,
                    false,
                );
                h = h.relu().max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
            }
            let logits = h.flatten(1, -1).linear(&theta[16], Some(&theta[17]));
            assert_close(&flat(&[ours.get(t)]), &flat(&[logits]), 1e-10);
        }
    }

    #[test]
    fn per_task_weights_through_grouped_convolutions_match_shared_ones() {
        let theta = theta(1, Kind::Double);
        let x = images(5, 3, Kind::Double);
        let shared = Conv4.forward(&theta, &x);
        let per_task: Vec<Tensor> = theta
            .iter()
            .map(|p| {
                let mut shape = p.size();
                shape.insert(0, 5);
                p.unsqueeze(0).expand(&shape, false).contiguous()
            })
            .collect();
        let grouped = Conv4.forward(&per_task, &x);
        assert_close(&flat(&[grouped]), &flat(&[shared.shallow_clone()]), 1e-10);

        // Different weights per task really are applied per task.
        let varied: Vec<Tensor> = per_task.iter().map(|p| p.copy()).collect();
        let _ = varied[0].get(2).g_mul_scalar_(-1.0);
        let out = Conv4.forward(&varied, &x);
        assert_close(&flat(&[out.get(0)]), &flat(&[shared.get(0)]), 1e-10);
        let moved = (out.get(2) - shared.get(2)).abs().max().double_value(&[]);
        assert!(moved > 1e-3, "task 2's own kernels changed its output");
    }

    #[test]
    fn without_a_head_the_output_is_the_flattened_features() {
        let theta = theta(2, Kind::Float);
        let x = images(2, 3, Kind::Float);
        let features = Conv4.forward(&theta[..16], &x);
        assert_eq!(
            features.size(),
            [2, 3, 3],
            "3 filters of 1x1 after four pools of 16"
        );
    }
}
