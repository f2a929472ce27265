//! The ReLU multi-layer perceptron: `Linear` layers with ReLU between them.

use super::layout::{Init, ParamLayout, Role};

/// `input -> hidden... -> output`, ReLU between layers, none after the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mlp {
    pub input: usize,
    pub hidden: Vec<usize>,
    pub output: usize,
}

impl Mlp {
    /// Widths of every layer boundary, input first.
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(self.input)
            .chain(self.hidden.iter().copied())
            .chain(std::iter::once(self.output))
            .collect()
    }

    /// Laid out as `nn.Sequential(Linear, ReLU, Linear, ...)` names them (`0.weight`, `0.bias`,
    /// `2.weight`, ...), so an exported file loads straight into such a module. PyTorch's
    /// default `nn.Linear` initialisation: weights and biases uniform in `±1/sqrt(fan_in)`.
    pub fn layout(&self) -> ParamLayout {
        let widths = self.widths();
        let layers = widths.len() - 1;
        let mut layout = ParamLayout::default();
        for (layer, pair) in widths.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let role = if layer + 1 == layers {
                Role::Head
            } else {
                Role::Body
            };
            let init = Init::Uniform {
                bound: 1.0 / (fan_in as f32).sqrt(),
            };
            let name = 2 * layer;
            layout.push(format!("{name}.weight"), vec![fan_out, fan_in], role, init);
            layout.push(format!("{name}.bias"), vec![fan_out], role, init);
        }
        layout
    }

    /// Parameters of the network, without building its layout (saturating: widths may come
    /// from the wire).
    pub fn param_count(&self) -> u64 {
        let widths = self.widths();
        widths.windows(2).fold(0u64, |sum, p| {
            let layer = (p[0] as u64).saturating_add(1).saturating_mul(p[1] as u64);
            sum.saturating_add(layer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_pytorch_sequential() {
        let mlp = Mlp {
            input: 1,
            hidden: vec![40, 40],
            output: 1,
        };
        let layout = mlp.layout();
        let names: Vec<&str> = layout.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
        );
        assert_eq!(layout.slots[2].shape, vec![40, 40]);
        assert_eq!(layout.slots[2].offset, 80);
        // 1*40 + 40 + 40*40 + 40 + 40*1 + 1
        assert_eq!(layout.param_count(), 1761);
        assert_eq!(mlp.param_count(), 1761);
        let roles: Vec<Role> = layout.slots.iter().map(|s| s.role).collect();
        assert_eq!(roles[..4], [Role::Body; 4]);
        assert_eq!(roles[4..], [Role::Head; 2]);
    }

    #[test]
    fn init_is_pytorchs_default_bounded_by_fan_in() {
        let layout = Mlp {
            input: 1,
            hidden: vec![40, 40],
            output: 1,
        }
        .layout();
        let values = layout.init(3);
        for slot in &layout.slots {
            let bound = if slot.name.starts_with('0') {
                1.0
            } else {
                1.0 / 40f32.sqrt()
            };
            assert!(
                slot.values(&values).iter().all(|v| v.abs() <= bound),
                "{}",
                slot.name
            );
        }
    }
}
