//! conv4's four blocks as the shared layers of a multi-task model: rows read as images, features every head reads.

use outerloop_proto::model::Conv4 as Shape;
use tch::Tensor;

use crate::models::{Conv4, Model};

/// Tensors of the four blocks, in layout order (weight, bias, norm scale, norm shift, per block).
pub const TENSORS: usize = 4 * outerloop_proto::model::conv4::BLOCKS;

/// The features `[rows, features]` of the rows `x` `[rows, channels * size * size]`, each row
/// an image, row-major. Batch norm uses the statistics of these rows: the rows of one
/// descriptor are one batch, as conv4's rows of one task are in few-shot learning.
pub fn forward(blocks: &[Tensor], shape: &Shape, x: &Tensor) -> Tensor {
    let (channels, size) = (shape.channels as i64, shape.image_size as i64);
    // The few-shot model's batched layout: one "task" holding every row.
    let images = x.view([1, -1, channels, size, size]);
    Conv4.embed(blocks, &images).squeeze_dim(0)
}

/// The shapes of the blocks' tensors, in layout order.
#[cfg(test)]
pub(super) fn block_shapes(shape: &Shape) -> Vec<Vec<i64>> {
    shape
        .layout()
        .slots
        .iter()
        .map(|s| s.shape.iter().map(|&d| d as i64).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::testing::{assert_close, flat, params};
    use tch::{Device, Kind};

    /// The same network written plainly with libtorch's own layers: the reference.
    fn plain(blocks: &[Tensor], shape: &Shape, x: &Tensor) -> Tensor {
        let (c, s) = (shape.channels as i64, shape.image_size as i64);
        let mut h = x.view([-1, c, s, s]);
        for p in blocks.chunks_exact(4) {
            let y = h.conv2d(&p[0], Some(&p[1]), [1, 1], [1, 1], [1, 1], 1);
            let y = y.batch_norm(
                Some(&p[2]),
                Some(&p[3]),
                None::<&Tensor>,
                None::<&Tensor>,
                true,
                0.1,
                1e-5,
                false,
            );
            h = y.relu().max_pool2d([2, 2], [2, 2], [0, 0], [1, 1], false);
        }
        h.flatten(1, -1)
    }

    #[test]
    fn the_features_are_those_of_plain_conv_batch_norm_relu_and_pool_layers() {
        let shape = Shape {
            channels: 2,
            image_size: 17,
            filters: 3,
            output: 0,
        };
        let kind = Kind::Double;
        let shapes = block_shapes(&shape);
        let shapes: Vec<&[i64]> = shapes.iter().map(Vec::as_slice).collect();
        let blocks = params(&shapes, 4, kind);
        let x = Tensor::randn([5, 2 * 17 * 17], (kind, Device::Cpu));
        let features = forward(&blocks, &shape, &x);
        assert_eq!(features.size(), [5, shape.features() as i64]);
        let expected = plain(&blocks, &shape, &x);
        assert_close(&flat(&[features]), &flat(&[expected]), 1e-10);
    }
}
