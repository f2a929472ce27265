//! The four-block convolutional network of few-shot learning: [conv 3x3, batch norm, ReLU, 2x2 max-pool] x 4, then a linear head.

use super::layout::{Init, ParamLayout, Role};

/// Vinyals et al. (2016) and Finn et al. (2017)'s "conv4" for `channels x image_size x image_size`
/// inputs. `output` is the number of classes of the linear head; 0 means no head, and the
/// flattened features are the output (an embedding, as prototypical networks use it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv4 {
    pub channels: usize,
    pub image_size: usize,
    pub filters: usize,
    pub output: usize,
}

/// The number of convolutional blocks.
pub const BLOCKS: usize = 4;

impl Conv4 {
    /// Width and height of the last block's output: four 2x2 max-pools, each rounding down
    /// (PyTorch's `MaxPool2d(2)`). 0 when the input does not survive them.
    pub fn final_size(image_size: usize) -> usize {
        (0..BLOCKS).fold(image_size, |size, _| size / 2)
    }

    /// Values per example after the four blocks, flattened (saturating: sizes may come from
    /// the wire).
    pub fn features(&self) -> usize {
        let side = Self::final_size(self.image_size);
        self.filters.saturating_mul(side.saturating_mul(side))
    }

    /// Values of one input example, `channels x image_size x image_size` (saturating).
    pub fn input_len(&self) -> usize {
        let side = self.image_size;
        self.channels.saturating_mul(side.saturating_mul(side))
    }

    /// Laid out as the `nn.Sequential` below names its parameters, so an exported file loads
    /// into it with `load_state_dict` (batch norm without running statistics, since it always
    /// normalises with the statistics of the current batch):
    /// `[Conv2d, BatchNorm2d(track_running_stats=False), ReLU, MaxPool2d(2)] x 4, Flatten, Linear`,
    /// i.e. `0.weight`, `0.bias`, `1.weight`, `1.bias`, `4.weight`, ..., `17.weight`, `17.bias`.
    /// PyTorch's default initialisation: convolution and linear weights and biases uniform in
    /// `±1/sqrt(fan_in)`, batch-norm scales 1 and shifts 0.
    pub fn layout(&self) -> ParamLayout {
        let mut layout = ParamLayout::default();
        let mut fan_in_channels = self.channels;
        for block in 0..BLOCKS {
            let (conv, norm) = (4 * block, 4 * block + 1);
            let bound = 1.0 / ((fan_in_channels * 9) as f32).sqrt();
            let shape = vec![self.filters, fan_in_channels, 3, 3];
            layout.push(
                format!("{conv}.weight"),
                shape,
                Role::Body,
                Init::Uniform { bound },
            );
            layout.push(
                format!("{conv}.bias"),
                vec![self.filters],
                Role::Body,
                Init::Uniform { bound },
            );
            layout.push(
                format!("{norm}.weight"),
                vec![self.filters],
                Role::Body,
                Init::Constant(1.0),
            );
            layout.push(
                format!("{norm}.bias"),
                vec![self.filters],
                Role::Body,
                Init::Constant(0.0),
            );
            fan_in_channels = self.filters;
        }
        if self.output > 0 {
            let features = self.features();
            let init = Init::Uniform {
                bound: 1.0 / (features as f32).sqrt(),
            };
            let head = 4 * BLOCKS + 1;
            layout.push(
                format!("{head}.weight"),
                vec![self.output, features],
                Role::Head,
                init,
            );
            layout.push(format!("{head}.bias"), vec![self.output], Role::Head, init);
        }
        layout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_four_floor_halvings() {
        assert_eq!(Conv4::final_size(28), 1);
        assert_eq!(Conv4::final_size(84), 5);
        assert_eq!(Conv4::final_size(16), 1);
        assert_eq!(Conv4::final_size(15), 0);
        let mini = Conv4 {
            channels: 3,
            image_size: 84,
            filters: 32,
            output: 5,
        };
        // MAML's mini-ImageNet network: 32 * 5 * 5 = 800 features.
        assert_eq!(mini.features(), 800);
    }

    #[test]
    fn layout_names_match_the_sequential_module() {
        let omniglot = Conv4 {
            channels: 1,
            image_size: 28,
            filters: 64,
            output: 5,
        };
        let layout = omniglot.layout();
        let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(&names[..4], ["0.weight", "0.bias", "1.weight", "1.bias"]);
        assert_eq!(&names[4..6], ["4.weight", "4.bias"]);
        assert_eq!(&names[16..], ["17.weight", "17.bias"]);
        assert_eq!(layout.slots[0].shape, vec![64, 1, 3, 3]);
        assert_eq!(layout.slots[4].shape, vec![64, 64, 3, 3]);
        assert_eq!(layout.slots[16].shape, vec![5, 64]);
        // 4 blocks of conv and norm, then the head: the count PyTorch reports for this module.
        let expected = (64 * 9 + 64 + 128) + 3 * (64 * 64 * 9 + 64 + 128) + (5 * 64 + 5);
        assert_eq!(layout.param_count(), expected);
        let roles = layout.slots.iter().filter(|s| s.role == Role::Head).count();
        assert_eq!(roles, 2);

        let embedding = Conv4 {
            output: 0,
            ..omniglot
        };
        assert_eq!(embedding.layout().slots.len(), 16, "no head");
    }

    #[test]
    fn batch_norm_starts_as_the_identity() {
        let layout = Conv4 {
            channels: 3,
            image_size: 84,
            filters: 8,
            output: 2,
        }
        .layout();
        let values = layout.init(1);
        assert!(layout.slots[2].values(&values).iter().all(|&v| v == 1.0));
        assert!(layout.slots[3].values(&values).iter().all(|&v| v == 0.0));
        let bound = 1.0 / 27f32.sqrt();
        assert!(layout.slots[0]
            .values(&values)
            .iter()
            .all(|v| v.abs() <= bound));
    }
}
