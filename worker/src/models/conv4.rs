//! The conv4 network evaluated for many tasks at once: shared weights as one big batch, per-task weights through grouped convolutions.

use tch::Tensor;

use super::mlp::linear;
use super::Model;

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
#[derive(Clone, Debug)]
pub struct Conv4;

/// Parameters per convolutional block.
const PER_BLOCK: usize = 4;

/// Per-task batch norm of `z` laid out `[tasks, points, filters, h, w]` (as a view of
/// `[tasks * points, ...]`): statistics over each task's points and positions.
fn norm(z: &Tensor, dims: &[i64], scale: &Tensor, shift: &Tensor) -> Tensor {
    let mean = z.mean_dim(dims, true, None);
    let centred = z - mean;
    let var = centred.square().mean_dim(dims, true, None);
    centred * (var + EPS).rsqrt() * scale + shift
}

fn pool(h: &Tensor) -> Tensor {
    h.max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false)
}

impl Conv4 {
    /// Shared weights: all tasks' images as one batch `[tasks * points, c, h, w]`, which is
    /// what convolution kernels are fastest on.
    fn embed_shared(&self, body: &[Tensor], x: &Tensor) -> Tensor {
        let size = x.size();
        let (tasks, points) = (size[0], size[1]);
        let mut h = x.flatten(0, 1);
        for block in body.chunks_exact(PER_BLOCK) {
            let z = h.conv2d(&block[0], Some(&block[1]), [1, 1], [1, 1], [1, 1], 1);
            let [f, zh, zw] = [z.size()[1], z.size()[2], z.size()[3]];
            let z = z.view([tasks, points, f, zh, zw]);
            let channel = |p: &Tensor| p.view([1, 1, f, 1, 1]);
            let z = norm(&z, &[1, 3, 4], &channel(&block[2]), &channel(&block[3]));
            h = pool(&z.view([tasks * points, f, zh, zw]).relu());
        }
        h.view([tasks, points, -1])
    }

    /// Per-task weights (leading task axis): the tasks side by side along the channel axis,
    /// `[points, tasks * c, h, w]`, so one grouped convolution (a group per task) applies each
    /// task's own kernels, and batch norm's per-channel statistics are per task.
    fn embed_per_task(&self, body: &[Tensor], x: &Tensor) -> Tensor {
        let size = x.size();
        let (tasks, points) = (size[0], size[1]);
        let mut h = x
            .transpose(0, 1)
            .reshape([points, tasks * size[2], size[3], size[4]]);
        for block in body.chunks_exact(PER_BLOCK) {
            let weight = block[0].flatten(0, 1);
            let bias = block[1].flatten(0, 1);
            let z = h.conv2d(&weight, Some(&bias), [1, 1], [1, 1], [1, 1], tasks);
            let channel = |p: &Tensor| p.reshape([1, -1, 1, 1]);
            let z = norm(&z, &[0, 2, 3], &channel(&block[2]), &channel(&block[3]));
            h = pool(&z.relu());
        }
        // [points, tasks * filters, s, s] to [tasks, points, filters * s * s], flattened in
        // PyTorch's channel-major order.
        h.view([points, tasks, -1]).transpose(0, 1)
    }
}

impl Model for Conv4 {
    fn embed(&self, body: &[Tensor], x: &Tensor) -> Tensor {
        if body[0].dim() == 5 {
            self.embed_per_task(body, x)
        } else {
            self.embed_shared(body, x)
        }
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
                h = pool(&h.relu());
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
