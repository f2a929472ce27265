//! conv4's explicit backward: each task's loss gradient written in differentiable ops, so that second-order MAML is one ordinary backward pass instead of autograd's double backward.

use tch::Tensor;

use super::first_block::{self, Patches};
use super::{block, layout, Block, BlockGrads, Conv4, PER_BLOCK};
use crate::models::mlp::linear;
use crate::models::Model;
use crate::objective::Objective;

/// Each task's loss (when `want_loss`) and `scale` times its gradient with respect to
/// `params` (the body and a linear head, shared or per task), task axis first.
///
/// The forward keeps each block's statistics, pooling positions and pre-pool activations;
/// the backward then runs block by block from the objective's output gradient: the head by
/// batched products, each later block by `block::backward`, the first in patch space. The
/// convolution biases get exact zeros: batch norm subtracts each task's mean right after the
/// convolution, so they change nothing.
pub fn loss_and_grads(
    model: &Conv4,
    params: &[Tensor],
    x: &Tensor,
    target: &Tensor,
    objective: Objective,
    scale: f64,
    want_loss: bool,
) -> (Option<Tensor>, Vec<Tensor>) {
    let tasks = x.size()[0];
    let (body, head) = params.split_at(model.body_len());
    let blocks = Block::all(body, tasks);
    let patches = Patches::of(x);

    let (mut h, first) = first_block::forward_saving(&patches, &blocks[0], tasks);
    let mut later = Vec::with_capacity(blocks.len() - 1);
    for p in &blocks[1..] {
        let (out, saved) = block::forward_saving(&h, p, tasks);
        later.push(saved);
        h = out;
    }
    let features = layout::features(&h, tasks);
    let output = linear(&features, &head[0], &head[1]);
    let loss = want_loss.then(|| objective.per_task(&output, target));

    // Head: `delta` is `scale` times the gradient at the output, `[tasks, points, classes]`.
    let delta = objective.output_grad(&output, target, scale);
    let head_weight = if head[0].dim() == 3 {
        head[0].shallow_clone()
    } else {
        head[0].unsqueeze(0).expand([tasks, -1, -1], false)
    };
    let mut g = layout::unflatten_features(&delta.bmm(&head_weight), &h);
    let head_grads = [
        delta.transpose(1, 2).bmm(&features),
        delta.sum_dim_intlist(1, false, None),
    ];

    let mut block_grads = Vec::with_capacity(blocks.len());
    for (saved, p) in later.iter().zip(&blocks[1..]).rev() {
        let (grads, input) = block::backward(&g, saved, p, tasks);
        block_grads.push(grads);
        g = input;
    }
    block_grads.push(first_block::backward(&g, &first, &patches, tasks));
    block_grads.reverse();

    // Every gradient with a leading task axis, in the parameters' own layout.
    let shared = body[0].dim() == 4;
    let per_task = |p: &Tensor| {
        let mut shape = p.size();
        if shared {
            shape.insert(0, tasks);
        }
        shape
    };
    let mut grads = Vec::with_capacity(params.len());
    for (g, p) in block_grads.into_iter().zip(body.chunks_exact(PER_BLOCK)) {
        let BlockGrads {
            weight,
            scale,
            shift,
        } = g;
        grads.push(weight.reshape(per_task(&p[0])));
        grads.push(Tensor::zeros(per_task(&p[1]), (p[1].kind(), p[1].device())));
        grads.push(scale.reshape(per_task(&p[2])));
        grads.push(shift.reshape(per_task(&p[3])));
    }
    grads.extend(head_grads);
    (loss, grads)
}
