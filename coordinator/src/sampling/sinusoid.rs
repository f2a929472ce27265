//! Sinusoid tasks: amplitude and phase drawn uniformly from the spec's ranges.

use outerloop_proto::work::{SinusoidTask, Task, TaskDescriptor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{task_key, Sampler, Split};
use crate::spec::SinusoidSpec;

pub struct SinusoidSampler {
    seed: u64,
    amplitude: [f32; 2],
    phase: [f32; 2],
}

impl SinusoidSampler {
    pub fn new(seed: u64, task: &SinusoidSpec) -> Self {
        SinusoidSampler {
            seed,
            amplitude: task.amplitude,
            phase: task.phase,
        }
    }
}

impl Sampler for SinusoidSampler {
    fn draw(&self, split: Split, step: u64, index: u64) -> TaskDescriptor {
        let mut rng = ChaCha8Rng::seed_from_u64(task_key(self.seed, split, step, index));
        let mut uniform = |[low, high]: [f32; 2]| low + (high - low) * rng.random::<f32>();
        let task = SinusoidTask {
            amplitude: uniform(self.amplitude),
            phase: uniform(self.phase),
        };
        TaskDescriptor {
            index,
            data_seed: rng.random(),
            task: Task::Sinusoid(task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler() -> SinusoidSampler {
        let spec = SinusoidSpec {
            shots: 10,
            queries: 10,
            amplitude: [0.1, 5.0],
            phase: [0.0, std::f32::consts::PI],
            x: [-5.0, 5.0],
        };
        SinusoidSampler::new(7, &spec)
    }

    fn sinusoid(d: &TaskDescriptor) -> (f32, f32) {
        match d.task {
            Task::Sinusoid(s) => (s.amplitude, s.phase),
            _ => panic!("not a sinusoid"),
        }
    }

    #[test]
    fn descriptors_are_pure_functions_of_their_coordinate() {
        let s = sampler();
        assert_eq!(s.draw(Split::Train, 5, 3), s.draw(Split::Train, 5, 3));
        assert_ne!(s.draw(Split::Train, 5, 3), s.draw(Split::Train, 5, 4));
        assert_ne!(s.draw(Split::Train, 5, 3), s.draw(Split::Train, 6, 3));
        assert_ne!(s.draw(Split::Train, 5, 3), s.draw(Split::Eval, 5, 3));
    }

    #[test]
    fn sinusoid_parameters_cover_their_ranges_uniformly() {
        let s = sampler();
        let draws: Vec<(f32, f32)> = (0..20_000)
            .map(|i| sinusoid(&s.draw(Split::Train, 0, i)))
            .collect();
        assert!(draws
            .iter()
            .all(|&(a, p)| (0.1..5.0).contains(&a) && (0.0..std::f32::consts::PI).contains(&p)));
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
