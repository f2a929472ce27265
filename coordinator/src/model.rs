//! Initial model parameters: PyTorch's default initialisation, drawn from the experiment seed.

use outerloop_proto::MlpLayout;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// PyTorch's default `nn.Linear` initialisation: weights and biases uniform in
/// `±1/sqrt(fan_in)` (kaiming_uniform with a = sqrt(5)), drawn from `seed`.
pub fn init(layout: &MlpLayout, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut params = Vec::with_capacity(layout.param_count());
    for pair in layout.widths.windows(2) {
        let (fan_in, fan_out) = (pair[0], pair[1]);
        let bound = 1.0 / (fan_in as f32).sqrt();
        // weight [fan_out, fan_in], then bias [fan_out], as in `slots`.
        params.extend((0..fan_out * (fan_in + 1)).map(|_| rng.random_range(-bound..bound)));
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_seeded_and_bounded_by_fan_in() {
        let layout = MlpLayout::new(1, &[40, 40], 1);
        let a = init(&layout, 3);
        assert_eq!(a, init(&layout, 3));
        assert_ne!(a, init(&layout, 4));
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
