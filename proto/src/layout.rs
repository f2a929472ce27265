//! The flat parameter layout of an MLP: names and shapes in PyTorch's convention, shared by coordinator and workers.

/// One named tensor of the flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
}

impl ParamSlot {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The parameters of a ReLU MLP, laid out as `nn.Sequential(Linear, ReLU, Linear, ...)` would
/// name them (`0.weight`, `0.bias`, `2.weight`, ...), so an exported file loads straight into
/// such a module with `load_state_dict`.
#[derive(Clone, Debug, PartialEq)]
pub struct MlpLayout {
    pub widths: Vec<usize>,
    pub slots: Vec<ParamSlot>,
}

impl MlpLayout {
    pub fn new(input: usize, hidden: &[usize], output: usize) -> Self {
        let widths: Vec<usize> = std::iter::once(input)
            .chain(hidden.iter().copied())
            .chain(std::iter::once(output))
            .collect();
        let mut slots = Vec::new();
        let mut offset = 0;
        for (layer, pair) in widths.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            for (kind, shape) in [("weight", vec![fan_out, fan_in]), ("bias", vec![fan_out])] {
                let slot = ParamSlot {
                    name: format!("{}.{kind}", 2 * layer),
                    shape,
                    offset,
                };
                offset += slot.len();
                slots.push(slot);
            }
        }
        MlpLayout { widths, slots }
    }

    pub fn param_count(&self) -> usize {
        self.slots.last().map_or(0, |s| s.offset + s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_pytorch_sequential() {
        let layout = MlpLayout::new(1, &[40, 40], 1);
        let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
        );
        assert_eq!(layout.slots[2].shape, vec![40, 40]);
        assert_eq!(layout.slots[2].offset, 80);
        // 1*40 + 40 + 40*40 + 40 + 40*1 + 1
        assert_eq!(layout.param_count(), 1761);
    }
}
