//! Flat parameter layouts: named tensors in one f32 buffer, their roles, and their seeded initialisation.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// What a parameter is for, which decides who adapts it and how it is exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Part of the feature extractor (everything below the last layer).
    Body,
    /// Part of the output layer, the only part ANIL adapts in its inner loop.
    Head,
    /// A learned inner-loop learning rate (Meta-SGD), one per model parameter value.
    InnerLr,
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in `±bound`, drawn from the experiment's seed (PyTorch's default for Linear and
    /// Conv2d layers, where `bound = 1/sqrt(fan_in)`).
    Uniform { bound: f32 },
    /// Every value the same (batch-norm scales and shifts, Meta-SGD's learning rates).
    Constant(f32),
}

/// One named tensor of the flat parameter buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSlot {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub role: Role,
    pub init: Init,
}

impl ParamSlot {
    /// Values in the tensor; saturates, so that a shape from the wire whose product overflows
    /// reads as too large (and is refused) rather than wrapping or panicking.
    pub fn len(&self) -> usize {
        self.shape.iter().fold(1, |len, &d| len.saturating_mul(d))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This slot's values in a flat buffer laid out by the same layout.
    pub fn values<'a>(&self, flat: &'a [f32]) -> &'a [f32] {
        &flat[self.offset..self.offset + self.len()]
    }
}

/// The parameters of a model, in the order the model uses them, packed into one buffer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ParamLayout {
    pub slots: Vec<ParamSlot>,
}

impl ParamLayout {
    /// Appends a tensor after the ones already laid out.
    pub fn push(&mut self, name: impl Into<String>, shape: Vec<usize>, role: Role, init: Init) {
        let offset = self.param_count();
        self.slots.push(ParamSlot {
            name: name.into(),
            shape,
            offset,
            role,
            init,
        });
    }

    /// Values of every slot together (saturating, as [`ParamSlot::len`]).
    pub fn param_count(&self) -> usize {
        self.slots
            .last()
            .map_or(0, |s| s.offset.saturating_add(s.len()))
    }

    /// The same layout followed by one learned inner learning rate per model parameter value,
    /// named `inner_lr.NAME` and starting at `lr` (Meta-SGD, as learn2learn initialises it).
    pub fn with_inner_lrs(&self, lr: f32) -> ParamLayout {
        let mut layout = self.clone();
        for slot in &self.slots {
            let name = format!("inner_lr.{}", slot.name);
            layout.push(name, slot.shape.clone(), Role::InnerLr, Init::Constant(lr));
        }
        layout
    }

    /// Initial values, drawn from `seed`: one random stream over the slots in order, so a
    /// layout and a seed always give the same parameters.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::with_capacity(self.param_count());
        for slot in &self.slots {
            match slot.init {
                Init::Uniform { bound } => {
                    params.extend((0..slot.len()).map(|_| rng.random_range(-bound..bound)))
                }
                Init::Constant(value) => params.extend(std::iter::repeat_n(value, slot.len())),
            }
        }
        params
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        let mut layout = ParamLayout::default();
        layout.push(
            "0.weight",
            vec![40, 2],
            Role::Body,
            Init::Uniform { bound: 0.5 },
        );
        layout.push("0.norm", vec![40], Role::Body, Init::Constant(1.0));
        layout.push(
            "1.weight",
            vec![3, 40],
            Role::Head,
            Init::Uniform { bound: 0.1 },
        );
        layout
    }

    #[test]
    fn slots_are_packed_in_order() {
        let layout = layout();
        let offsets: Vec<usize> = layout.slots.iter().map(|s| s.offset).collect();
        assert_eq!(offsets, [0, 80, 120]);
        assert_eq!(layout.param_count(), 240);
    }

    #[test]
    fn init_is_seeded_and_follows_each_slots_rule() {
        let layout = layout();
        let a = layout.init(3);
        assert_eq!(a, layout.init(3));
        assert_ne!(a, layout.init(4));
        assert_eq!(a.len(), 240);
        let [weight, norm, head] = [0, 1, 2].map(|i| layout.slots[i].values(&a));
        assert!(weight.iter().all(|v| v.abs() <= 0.5));
        assert!(
            weight.iter().fold(0f32, |m, v| m.max(v.abs())) > 0.4,
            "spans its range"
        );
        assert!(norm.iter().all(|&v| v == 1.0));
        assert!(head.iter().all(|v| v.abs() <= 0.1));
    }

    #[test]
    fn inner_learning_rates_mirror_the_model_slots() {
        let with = layout().with_inner_lrs(0.4);
        let names: Vec<&str> = with.slots.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "0.weight",
                "0.norm",
                "1.weight",
                "inner_lr.0.weight",
                "inner_lr.0.norm",
                "inner_lr.1.weight"
            ]
        );
        assert_eq!(with.param_count(), 480);
        let values = with.init(1);
        assert!(values[240..].iter().all(|&v| v == 0.4));
        assert_eq!(
            &values[..240],
            &layout().init(1)[..],
            "the model part is unchanged"
        );
    }
}
