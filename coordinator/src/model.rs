//! Model parameter layout (names and shapes, PyTorch's convention) and initialisation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

    /// PyTorch's default `nn.Linear` initialisation: weights and biases uniform in
    /// `±1/sqrt(fan_in)` (kaiming_uniform with a = sqrt(5)), drawn from `seed`.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::with_capacity(self.param_count());
        for pair in self.widths.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            // weight [fan_out, fan_in], then bias [fan_out], as in `slots`.
            params.extend((0..fan_out * (fan_in + 1)).map(|_| rng.random_range(-bound..bound)));
        }
        params
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

    #[test]
    fn init_is_seeded_and_bounded_by_fan_in() {
        let layout = MlpLayout::new(1, &[40, 40], 1);
        let a = layout.init(3);
        assert_eq!(a, layout.init(3));
        assert_ne!(a, layout.init(4));
        assert_eq!(a.len(), layout.param_count());
        for slot in &layout.slots {
            let bound = if slot.name.starts_with('0') {
                1.0
            } else {
                1.0 / 40f32.sqrt()
            };
            let values = &a[slot.offset..slot.offset + slot.len()];
            assert!(values.iter().all(|v| v.abs() <= bound), "{}", slot.name);
            assert_eq!(values.len(), slot.len());
            let max = values.iter().fold(0f32, |m, v| m.max(v.abs()));
            if values.len() >= 40 {
                assert!(max > 0.8 * bound, "{} spans its range", slot.name);
            }
        }
    }
}
