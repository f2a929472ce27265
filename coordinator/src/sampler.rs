//! Task sampling: every task descriptor is a pure function of (seed, split, step, task index).

use outerloop_proto::v1::{task_descriptor, SinusoidTask, TaskDescriptor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::spec::{Family, Spec};

/// Which stream of tasks a descriptor comes from. Held-out splits never share a key with
/// meta-training, so evaluation tasks are never trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train = 0,
    /// The held-out tasks of the periodic evaluations (the same tasks each time).
    Eval = 1,
    /// The held-out tasks of the final evaluation.
    Final = 2,
}

/// SplitMix64's finaliser: a bijective mix with full avalanche.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The counter-based key of one task: a hash of the full coordinate, so tasks can be drawn
/// in any order, by any process, and come out the same.
pub fn task_key(seed: u64, split: Split, step: u64, index: u64) -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    [split as u64, step, index]
        .into_iter()
        .fold(mix(seed ^ GOLDEN), |acc, part| {
            mix(acc ^ mix(part.wrapping_add(GOLDEN)))
        })
}

/// The seed of an experiment's initial parameters, kept apart from every task stream.
pub fn init_seed(seed: u64) -> u64 {
    mix(seed ^ 0x696e_6974_5f70_6172) // "init_par"
}

/// Draws the descriptor of task `index` of `split` at `step`.
pub fn descriptor(spec: &Spec, split: Split, step: u64, index: u64) -> TaskDescriptor {
    let mut rng = ChaCha8Rng::seed_from_u64(task_key(spec.seed, split, step, index));
    let uniform =
        |rng: &mut ChaCha8Rng, [low, high]: [f32; 2]| low + (high - low) * rng.random::<f32>();
    let task = match spec.task.family {
        Family::Sinusoid => task_descriptor::Task::Sinusoid(SinusoidTask {
            amplitude: uniform(&mut rng, spec.task.amplitude),
            phase: uniform(&mut rng, spec.task.phase),
        }),
    };
    TaskDescriptor {
        index,
        data_seed: rng.random(),
        task: Some(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SPEC;

    fn spec() -> Spec {
        Spec::parse(SPEC, "spec.toml", &[]).unwrap()
    }

    fn sinusoid(d: &TaskDescriptor) -> (f32, f32) {
        match d.task {
            Some(task_descriptor::Task::Sinusoid(s)) => (s.amplitude, s.phase),
            None => panic!("no task"),
        }
    }

    #[test]
    fn descriptors_are_pure_functions_of_their_coordinate() {
        let spec = spec();
        assert_eq!(
            descriptor(&spec, Split::Train, 5, 3),
            descriptor(&spec, Split::Train, 5, 3)
        );
        assert_ne!(
            descriptor(&spec, Split::Train, 5, 3),
            descriptor(&spec, Split::Train, 5, 4)
        );
        assert_ne!(
            descriptor(&spec, Split::Train, 5, 3),
            descriptor(&spec, Split::Train, 6, 3)
        );
        assert_ne!(
            descriptor(&spec, Split::Train, 5, 3),
            descriptor(&spec, Split::Eval, 5, 3)
        );
    }

    #[test]
    fn keys_do_not_collide_across_nearby_coordinates() {
        let mut keys = std::collections::HashSet::new();
        for split in [Split::Train, Split::Eval, Split::Final] {
            for step in 0..50 {
                for index in 0..50 {
                    assert!(keys.insert(task_key(1, split, step, index)));
                }
            }
        }
    }

    #[test]
    fn sinusoid_parameters_cover_their_ranges_uniformly() {
        let spec = spec();
        let draws: Vec<(f32, f32)> = (0..20_000)
            .map(|i| sinusoid(&descriptor(&spec, Split::Train, 0, i)))
            .collect();
        let (lo, hi) = (spec.task.amplitude[0], spec.task.amplitude[1]);
        assert!(draws
            .iter()
            .all(|&(a, p)| (lo..hi).contains(&a) && (0.0..std::f32::consts::PI).contains(&p)));
        let mean_amp = draws.iter().map(|d| d.0 as f64).sum::<f64>() / draws.len() as f64;
        let mean_phase = draws.iter().map(|d| d.1 as f64).sum::<f64>() / draws.len() as f64;
        // Uniform means: 2.55 and pi/2; the standard errors are about 0.01.
        assert!((mean_amp - 2.55).abs() < 0.05, "{mean_amp}");
        assert!(
            (mean_phase - std::f64::consts::FRAC_PI_2).abs() < 0.05,
            "{mean_phase}"
        );
    }
}
