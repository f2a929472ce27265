//! GradNorm's regression family (Chen et al. 2018, section 4): the fixed matrices and each row's input in pure Rust, each task's target as one product on the device.
//!
//! Definition, so that any implementation can reproduce the rows:
//! - `B` and then `eps_0, eps_1, ...`, each `[outputs, inputs]` row-major, come from one
//!   `ChaCha8Rng::seed_from_u64(seed)`. Every normal value takes two `f64` uniforms `u1`, `u2`
//!   (`rand`'s `random::<f64>()`, in [0, 1)) and is `sqrt(-2 ln(1 - u1)) cos(2 pi u2)`
//!   (Box–Muller's cosine half), times 10 for `B` and 3.5 for each `eps_i`.
//! - Row `r` of stream `s` draws `inputs` uniforms `u` from
//!   `ChaCha8Rng::seed_from_u64(splitmix64(s ^ splitmix64(r)))`, takes `x_j = 2 u_j - 1`, divides
//!   by the L2 norm (all in `f64`) and rounds to `f32`: the network reads that `f32` row.
//! - Task `i`'s target is `sigmas[i] * tanh((B + eps_i) x)`. [`GradNorm::target`] computes it
//!   in `f64` from the `f32` row: the reference. Batches compute it on the worker's device as
//!   one matrix product in the parameters' kind (`f32`), `B + eps_i` rounded to that kind:
//!   generating the targets in Rust cost more than the whole forward and backward pass (tanh
//!   and a matrix-vector product per row and task), and the two agree to `f32` rounding.
//!   Inputs are the same bits on every worker; targets may differ across devices in the last
//!   bits, as every gradient does.

use outerloop_proto::splitmix::splitmix64;
use std::cell::RefCell;

use outerloop_proto::mtl::{GradNormData, RowBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

use super::rows::{tensor, RowSource, Rows};

/// Standard deviations of the shared matrix `B` and of each task's perturbation `eps_i`.
const B_STD: f64 = 10.0;
const EPS_STD: f64 = 3.5;

/// The family of one experiment, its matrices drawn once (they never change).
#[derive(Debug)]
pub struct GradNorm {
    inputs: usize,
    outputs: usize,
    sigmas: Vec<f64>,
    /// The family's index of each of the experiment's tasks.
    family_tasks: Vec<usize>,
    /// `B + eps_i` for each task of the family, `[outputs, inputs]` row-major.
    matrices: Vec<Vec<f64>>,
    /// The matrices and sigmas as tensors, made at the first batch (the engine asks in one kind
    /// on one device).
    on_device: RefCell<Option<OnDevice>>,
}

#[derive(Debug)]
struct OnDevice {
    kind: Kind,
    device: Device,
    /// `[tasks, outputs, inputs]`.
    weights: Tensor,
    /// `[tasks, 1]`.
    sigmas: Tensor,
}

impl GradNorm {
    pub fn new(data: &GradNormData) -> Self {
        let (inputs, outputs) = (data.inputs as usize, data.outputs as usize);
        let mut rng = ChaCha8Rng::seed_from_u64(data.seed);
        let b = normals(&mut rng, inputs * outputs, B_STD);
        let matrices = data
            .sigmas
            .iter()
            .map(|_| {
                let eps = normals(&mut rng, inputs * outputs, EPS_STD);
                b.iter().zip(eps).map(|(b, e)| b + e).collect()
            })
            .collect();
        GradNorm {
            inputs,
            outputs,
            sigmas: data.sigmas.iter().map(|&s| s as f64).collect(),
            family_tasks: data.family_tasks(),
            matrices,
            on_device: RefCell::new(None),
        }
    }

    /// Row `row` of stream `stream`: uniform in [-1, 1]^inputs, scaled to unit L2 norm.
    pub fn input(&self, stream: u64, row: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(splitmix64(stream ^ splitmix64(row)));
        let x: Vec<f64> = (0..self.inputs)
            .map(|_| 2.0 * rng.random::<f64>() - 1.0)
            .collect();
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt();
        // A zero row has probability zero; leave it at zero rather than divide by it.
        let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        x.iter().map(|v| (v * scale) as f32).collect()
    }

    /// Rows `first .. first + count` of `stream`, row-major `[count, inputs]`.
    pub fn inputs(&self, stream: u64, first: u64, count: usize) -> Vec<f32> {
        let mut x = Vec::with_capacity(count * self.inputs);
        for r in 0..count as u64 {
            x.extend(self.input(stream, first.wrapping_add(r)));
        }
        x
    }

    /// Task `task`'s target for the input `x`, in `f64`: the reference the device's product is
    /// tested against.
    pub fn target(&self, task: usize, x: &[f32]) -> Vec<f64> {
        let sigma = self.sigmas[task];
        self.matrices[task]
            .chunks_exact(self.inputs)
            .map(|w| {
                let pre: f64 = w.iter().zip(x).map(|(w, &x)| w * x as f64).sum();
                sigma * pre.tanh()
            })
            .collect()
    }

    /// The matrices `[tasks, outputs, inputs]` and sigmas `[tasks, 1]` in `kind` on `device`.
    fn on_device(&self, kind: Kind, device: Device) -> (Tensor, Tensor) {
        let mut cached = self.on_device.borrow_mut();
        let stale = cached
            .as_ref()
            .is_none_or(|c| c.kind != kind || c.device != device);
        if stale {
            let tasks = self.matrices.len() as i64;
            let weights = Tensor::from_slice(&self.matrices.concat())
                .view([tasks, self.outputs as i64, self.inputs as i64])
                .to_kind(kind)
                .to_device(device);
            let sigmas = Tensor::from_slice(&self.sigmas)
                .view([tasks, 1])
                .to_kind(kind)
                .to_device(device);
            *cached = Some(OnDevice {
                kind,
                device,
                weights,
                sigmas,
            });
        }
        let c = cached.as_ref().expect("cached above");
        (c.weights.shallow_clone(), c.sigmas.shallow_clone())
    }
}

impl RowSource for GradNorm {
    fn rows(
        &self,
        stream: u64,
        batch: &RowBatch,
        tasks: &[usize],
        kind: Kind,
        device: Device,
    ) -> Result<Rows, String> {
        // Generated rows have no end: every split is a stream of its own (`stream`).
        let count = batch.count as usize;
        let x = tensor(
            &self.inputs(stream, batch.first, count),
            &[count, self.inputs],
            kind,
            device,
        );
        let (mut weights, mut sigmas) = self.on_device(kind, device);
        let family: Vec<usize> = tasks.iter().map(|&t| self.family_tasks[t]).collect();
        if !family.iter().copied().eq(0..self.matrices.len()) {
            let picked: Vec<i64> = family.iter().map(|&t| t as i64).collect();
            let picked = Tensor::from_slice(&picked).to_device(device);
            weights = weights.index_select(0, &picked);
            sigmas = sigmas.index_select(0, &picked);
        }
        // Every task's pre-activations in one product: [rows, inputs] x [inputs, tasks * outputs].
        let pre = x.matmul(&weights.view([-1, self.inputs as i64]).tr());
        let (rows, width) = (count as i64, self.outputs as i64);
        let y = pre.view([rows, tasks.len() as i64, width]).tanh() * sigmas;
        Ok(Rows {
            targets: (0..tasks.len() as i64).map(|i| y.select(1, i)).collect(),
            x,
        })
    }
}

/// `count` normal values of standard deviation `std`.
fn normals(rng: &mut ChaCha8Rng, count: usize, std: f64) -> Vec<f64> {
    (0..count)
        .map(|_| {
            let (u1, u2) = (rng.random::<f64>(), rng.random::<f64>());
            // 1 - u1 is in (0, 1]: the logarithm stays finite.
            let radius = (-2.0 * (1.0 - u1).ln()).sqrt();
            std * radius * (std::f64::consts::TAU * u2).cos()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(seed: u64) -> GradNormData {
        GradNormData {
            seed,
            inputs: 50,
            outputs: 40,
            sigmas: vec![1.0, 4.0, 0.5],
            tasks: Vec::new(),
        }
    }

    #[test]
    fn the_same_seed_and_row_give_the_same_values() {
        let (a, b) = (GradNorm::new(&data(3)), GradNorm::new(&data(3)));
        assert_eq!(
            a.matrices, b.matrices,
            "the matrices are a function of the seed"
        );
        assert_eq!(a.inputs(9, 100, 4), b.inputs(9, 100, 4));
        let x = a.input(9, 100);
        assert_eq!(a.target(2, &x), b.target(2, &x));
        assert_ne!(a.matrices, GradNorm::new(&data(4)).matrices);
    }

    #[test]
    fn different_rows_streams_and_tasks_differ() {
        let g = GradNorm::new(&data(1));
        assert_ne!(g.input(5, 0), g.input(5, 1));
        assert_ne!(g.input(5, 0), g.input(6, 0));
        let x = g.input(5, 0);
        assert_ne!(
            g.target(0, &x),
            g.target(1, &x),
            "tasks have their own matrices"
        );
    }

    #[test]
    fn inputs_have_unit_norm_and_targets_stay_within_sigma() {
        let g = GradNorm::new(&data(2));
        for x in g.inputs(0, 0, 20).chunks_exact(50) {
            let norm = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "norm {norm}");
            for (task, sigma) in [1.0, 4.0, 0.5].into_iter().enumerate() {
                let y = g.target(task, x);
                assert_eq!(y.len(), 40);
                assert!(y.iter().all(|v| v.abs() <= sigma));
                // With B ~ N(0, 10^2) on unit-norm inputs, many targets saturate near ±sigma.
                assert!(y.iter().any(|v| v.abs() > 0.9 * sigma));
            }
        }
    }

    #[test]
    fn a_batch_of_rows_is_its_rows_one_by_one() {
        let g = GradNorm::new(&data(7));
        let both = g.inputs(11, 40, 2);
        assert_eq!(both, [g.input(11, 40), g.input(11, 41)].concat());
    }

    fn batch(first: u64, count: u32) -> RowBatch {
        RowBatch {
            tasks: Vec::new(),
            first,
            count,
            split: outerloop_proto::mtl::RowSplit::Train,
        }
    }

    #[test]
    fn an_experiment_of_some_of_the_familys_tasks_gets_their_targets() {
        let all = GradNorm::new(&data(5));
        let some = GradNorm::new(&GradNormData {
            tasks: vec![2, 0],
            ..data(5)
        });
        let full = all
            .rows(9, &batch(3, 4), &[0, 1, 2], Kind::Float, Device::Cpu)
            .unwrap();
        // The experiment's task 0 is the family's task 2, its task 1 the family's task 0.
        let picked = some
            .rows(9, &batch(3, 4), &[0, 1], Kind::Float, Device::Cpu)
            .unwrap();
        assert_eq!(picked.x, full.x);
        assert_eq!(picked.targets[0], full.targets[2]);
        assert_eq!(picked.targets[1], full.targets[0]);
    }

    #[test]
    fn device_targets_are_the_reference_targets() {
        let g = GradNorm::new(&data(8));
        let x = g.inputs(3, 5, 6);
        for (kind, tolerance) in [(Kind::Double, 1e-12), (Kind::Float, 1e-5)] {
            // A subset out of order, then every task in order (the product's two ways).
            for tasks in [vec![2, 0], vec![0, 1, 2]] {
                let rows = g.rows(3, &batch(5, 6), &tasks, kind, Device::Cpu).unwrap();
                assert_eq!(rows.x.size(), [6, 50]);
                let got = Vec::<f32>::try_from(rows.x.to_kind(Kind::Float).flatten(0, -1));
                assert_eq!(got.unwrap(), x);
                for (target, &task) in rows.targets.iter().zip(&tasks) {
                    assert_eq!(target.size(), [6, 40]);
                    let want: Vec<f64> =
                        x.chunks_exact(50).flat_map(|r| g.target(task, r)).collect();
                    let got = Vec::<f64>::try_from(target.to_kind(Kind::Double).flatten(0, -1));
                    for (got, want) in got.unwrap().iter().zip(&want) {
                        assert!(
                            (got - want).abs() <= tolerance * g.sigmas[task],
                            "{kind:?} task {task}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn matrices_have_the_documented_spread() {
        let g = GradNorm::new(&data(5));
        let std = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        // B + eps_i has std sqrt(10^2 + 3.5^2); the difference of two tasks' matrices,
        // eps_0 - eps_1, has std 3.5 * sqrt(2).
        let w = &g.matrices[0];
        let want = (B_STD.powi(2) + EPS_STD.powi(2)).sqrt();
        assert!((std(w) / want - 1.0).abs() < 0.1, "{} vs {want}", std(w));
        let diff: Vec<f64> = w.iter().zip(&g.matrices[1]).map(|(a, b)| a - b).collect();
        let want = EPS_STD * 2f64.sqrt();
        assert!(
            (std(&diff) / want - 1.0).abs() < 0.1,
            "{} vs {want}",
            std(&diff)
        );
    }
}
