//! The sinusoid task family (Finn et al. 2017): materialises tasks from their descriptors.

use outerloop_proto::work::{self, Task, TaskDescriptor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::{TaskBatch, TaskSource};
use crate::objective::Objective;

/// Shape of every task of the family: `shots` support and `queries` query points, x uniform.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinusoidFamily {
    pub shots: usize,
    pub queries: usize,
    pub x_range: [f32; 2],
}

/// One sinusoid `y = amplitude * sin(x - phase)`, with the seed its points are drawn from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SinusoidTask {
    pub amplitude: f32,
    pub phase: f32,
    pub data_seed: u64,
}

impl From<&work::SinusoidFamily> for SinusoidFamily {
    fn from(family: &work::SinusoidFamily) -> Self {
        SinusoidFamily {
            shots: family.shots as usize,
            queries: family.queries as usize,
            x_range: family.x_range,
        }
    }
}

impl TaskSource for SinusoidFamily {
    fn materialise(
        &self,
        tasks: &[TaskDescriptor],
        kind: Kind,
        device: Device,
    ) -> Result<TaskBatch, String> {
        let tasks = tasks
            .iter()
            .map(|d| match d.task {
                Task::Sinusoid(s) => Ok(SinusoidTask {
                    amplitude: s.amplitude,
                    phase: s.phase,
                    data_seed: d.data_seed,
                }),
                _ => Err(format!("task {} is not a sinusoid", d.index)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.points(&tasks, kind, device))
    }

    fn objective(&self) -> Objective {
        Objective::Mse
    }
}

impl SinusoidFamily {
    /// The points of `tasks` as one batch `[tasks, points, 1]` on `device`, in `kind`.
    /// Support points are drawn before query points from the task's own seed, so a task's data
    /// never depends on which chunk or worker it landed in.
    pub fn points(&self, tasks: &[SinusoidTask], kind: Kind, device: Device) -> TaskBatch {
        let (k, q) = (self.shots, self.queries);
        let mut xs = [
            Vec::with_capacity(tasks.len() * k),
            Vec::with_capacity(tasks.len() * q),
        ];
        let mut ys = [
            Vec::with_capacity(tasks.len() * k),
            Vec::with_capacity(tasks.len() * q),
        ];
        let [low, high] = self.x_range;
        for task in tasks {
            let mut rng = ChaCha8Rng::seed_from_u64(task.data_seed);
            for (part, count) in [k, q].into_iter().enumerate() {
                for _ in 0..count {
                    let x = low + (high - low) * rng.random::<f32>();
                    xs[part].push(x);
                    ys[part].push(task.amplitude * (x - task.phase).sin());
                }
            }
        }
        let t = tasks.len() as i64;
        let tensor = |v: &[f32], points: usize| {
            let x = Tensor::from_slice(v).view([t, points as i64, 1]);
            // Skip no-op conversions: each op call costs microseconds at this size.
            let x = if kind == Kind::Float {
                x
            } else {
                x.to_kind(kind)
            };
            if device == Device::Cpu {
                x
            } else {
                x.to_device(device)
            }
        };
        TaskBatch {
            support_x: tensor(&xs[0], k),
            support_y: tensor(&ys[0], k),
            query_x: tensor(&xs[1], q),
            query_y: tensor(&ys[1], q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family() -> SinusoidFamily {
        SinusoidFamily {
            shots: 5,
            queries: 7,
            x_range: [-5.0, 5.0],
        }
    }

    #[test]
    fn points_follow_the_sinusoid_and_stay_in_range() {
        let task = SinusoidTask {
            amplitude: 2.0,
            phase: 0.5,
            data_seed: 11,
        };
        let b = family().points(&[task], Kind::Float, Device::Cpu);
        assert_eq!(b.support_x.size(), vec![1, 5, 1]);
        assert_eq!(b.query_y.size(), vec![1, 7, 1]);
        let x = Vec::<f32>::try_from(b.query_x.flatten(0, -1)).unwrap();
        let y = Vec::<f32>::try_from(b.query_y.flatten(0, -1)).unwrap();
        for (x, y) in x.iter().zip(&y) {
            assert!((-5.0..5.0).contains(x));
            assert!((y - 2.0 * (x - 0.5).sin()).abs() < 1e-6);
        }
    }

    #[test]
    fn a_task_has_the_same_points_whatever_batch_it_is_in() {
        let a = SinusoidTask {
            amplitude: 1.0,
            phase: 0.0,
            data_seed: 1,
        };
        let b = SinusoidTask {
            amplitude: 3.0,
            phase: 1.0,
            data_seed: 2,
        };
        let alone = family().points(&[b], Kind::Float, Device::Cpu);
        let paired = family().points(&[a, b], Kind::Float, Device::Cpu);
        assert!(alone.support_x.equal(&paired.support_x.get(1).unsqueeze(0)));
        assert!(alone.query_y.equal(&paired.query_y.get(1).unsqueeze(0)));
        assert!(!paired.support_x.get(0).equal(&paired.support_x.get(1)));
    }
}
