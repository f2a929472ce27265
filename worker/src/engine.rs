//! The compute engine: owns every libtorch tensor, caches the experiment and its parameters, runs chunks.

use std::time::Instant;

use outerloop_proto::v1::{
    experiment_setup, task_descriptor, Algorithm, ChunkResult, ExperimentSetup, Parameters, Phase,
    WorkChunk,
};
use outerloop_proto::{f32s_from_bytes, f32s_to_bytes, MlpLayout};
use tch::{Device, Kind, Tensor};

use crate::maml::{self, InnerLoop, Order, Path};
use crate::sinusoid::{SinusoidFamily, SinusoidTask};

/// Why the engine could not take an experiment's set-up or parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("experiment set-up is incomplete: {0}")]
    Setup(&'static str),
    #[error("parameters for version {version} have {got} values, the model has {expected}")]
    ParameterCount {
        version: u64,
        got: usize,
        expected: usize,
    },
    #[error("no parameters cached for {experiment} version {version}")]
    NoParameters { experiment: String, version: u64 },
}

/// One experiment as the engine needs it.
#[derive(Debug)]
struct Experiment {
    id: String,
    family: SinusoidFamily,
    layout: MlpLayout,
    order: Order,
    inner_lr: f64,
}

/// Runs chunks on one device. Lives on the compute thread: `tch::Tensor` is not `Sync`.
#[derive(Debug)]
pub struct Engine {
    device: Device,
    path: Path,
    experiment: Option<Experiment>,
    params: Option<(u64, Vec<Tensor>)>,
}

impl Engine {
    pub fn new(device: Device, path: Path) -> Self {
        Engine {
            device,
            path,
            experiment: None,
            params: None,
        }
    }

    /// Caches a new experiment; its parameters must follow.
    pub fn set_experiment(&mut self, setup: &ExperimentSetup) -> Result<(), EngineError> {
        let model = setup.model.as_ref().ok_or(EngineError::Setup("no model"))?;
        let family = match &setup.family {
            Some(experiment_setup::Family::Sinusoid(s)) => SinusoidFamily {
                shots: s.shots as usize,
                queries: s.queries as usize,
                x_range: [s.x_min, s.x_max],
            },
            None => return Err(EngineError::Setup("no task family")),
        };
        let order = match Algorithm::try_from(setup.algorithm) {
            Ok(Algorithm::Maml) => Order::Second,
            Ok(Algorithm::Fomaml) => Order::First,
            _ => return Err(EngineError::Setup("unknown algorithm")),
        };
        let hidden: Vec<usize> = model.hidden.iter().map(|&w| w as usize).collect();
        self.experiment = Some(Experiment {
            id: setup.experiment_id.clone(),
            family,
            layout: MlpLayout::new(model.input as usize, &hidden, model.output as usize),
            order,
            inner_lr: setup.inner_lr as f64,
        });
        self.params = None;
        Ok(())
    }

    /// Caches a parameter version as leaf tensors on the device.
    pub fn set_parameters(&mut self, params: &Parameters) -> Result<(), EngineError> {
        let experiment = self
            .experiment
            .as_ref()
            .ok_or(EngineError::Setup("parameters before set-up"))?;
        let values = f32s_from_bytes(&params.values).unwrap_or_default();
        let expected = experiment.layout.param_count();
        if values.len() != expected {
            return Err(EngineError::ParameterCount {
                version: params.version,
                got: values.len(),
                expected,
            });
        }
        let tensors = experiment
            .layout
            .slots
            .iter()
            .map(|slot| {
                let shape: Vec<i64> = slot.shape.iter().map(|&d| d as i64).collect();
                let tensor = Tensor::from_slice(&values[slot.offset..slot.offset + slot.len()])
                    .view(shape.as_slice());
                let tensor = if self.device == Device::Cpu {
                    tensor
                } else {
                    tensor.to_device(self.device)
                };
                tensor.set_requires_grad(true)
            })
            .collect();
        self.params = Some((params.version, tensors));
        Ok(())
    }

    /// Computes one chunk; a chunk that cannot be computed comes back with its `error` set.
    /// libtorch reports its own errors by panicking: the compute thread catches those.
    pub fn run_chunk(&mut self, chunk: &WorkChunk) -> ChunkResult {
        let started = Instant::now();
        match self.compute(chunk) {
            Ok(mut result) => {
                result.compute_seconds = started.elapsed().as_secs_f64();
                result
            }
            Err(error) => failed_chunk(chunk.chunk_id, error),
        }
    }

    fn compute(&self, chunk: &WorkChunk) -> Result<ChunkResult, String> {
        let experiment = self
            .experiment
            .as_ref()
            .filter(|e| e.id == chunk.experiment_id)
            .ok_or_else(|| {
                format!(
                    "experiment {} is not set up on this worker",
                    chunk.experiment_id
                )
            })?;
        let theta = match &self.params {
            Some((version, tensors)) if *version == chunk.version => tensors,
            _ => {
                let missing = EngineError::NoParameters {
                    experiment: chunk.experiment_id.clone(),
                    version: chunk.version,
                };
                return Err(missing.to_string());
            }
        };
        let tasks = chunk
            .tasks
            .iter()
            .map(|d| match d.task {
                Some(task_descriptor::Task::Sinusoid(s)) => Ok(SinusoidTask {
                    amplitude: s.amplitude,
                    phase: s.phase,
                    data_seed: d.data_seed,
                }),
                None => Err(format!("task {} has no descriptor", d.index)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let batch = experiment
            .family
            .materialise(&tasks, Kind::Float, self.device);
        let train = chunk.phase == Phase::Train as i32;
        let inner = InnerLoop {
            steps: chunk.inner_steps as usize,
            lr: experiment.inner_lr,
            order: experiment.order,
        };
        let outcome = maml::run(theta, &batch, inner, train, self.path);
        let values = |tensors: &[Tensor]| -> Result<Vec<f32>, String> {
            let mut out = Vec::new();
            for t in tensors {
                append_values(t, &mut out).map_err(|e| e.to_string())?;
            }
            Ok(out)
        };
        let grad_sum = match &outcome.grad_sum {
            Some(grads) => f32s_to_bytes(&values(grads)?),
            None => Default::default(),
        };
        Ok(ChunkResult {
            chunk_id: chunk.chunk_id,
            grad_sum,
            loss_before: values(std::slice::from_ref(&outcome.loss_before))?,
            loss_after: values(std::slice::from_ref(&outcome.loss_after))?,
            compute_seconds: 0.0,
            error: String::new(),
        })
    }
}

/// Appends a tensor's values to `out` in one copy, from any device and layout: no
/// intermediate tensors, which cost more than the copy at these sizes.
fn append_values(t: &Tensor, out: &mut Vec<f32>) -> Result<(), tch::TchError> {
    let t = if t.kind() == Kind::Float {
        t.shallow_clone()
    } else {
        t.to_kind(Kind::Float)
    };
    let (start, count) = (out.len(), t.numel());
    out.resize(start + count, 0.0);
    t.f_copy_data(&mut out[start..], count)
}

/// The result of a chunk that could not be computed, with why.
pub fn failed_chunk(chunk_id: u64, error: String) -> ChunkResult {
    ChunkResult {
        chunk_id,
        error,
        ..ChunkResult::default()
    }
}

/// The text of a caught panic (libtorch errors arrive as panics with their message).
pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the compute thread panicked".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::v1::{
        ModelSpec, SinusoidFamily as WireFamily, SinusoidTask as WireTask, TaskDescriptor,
    };

    fn setup() -> ExperimentSetup {
        ExperimentSetup {
            experiment_id: "exp-1".into(),
            family: Some(experiment_setup::Family::Sinusoid(WireFamily {
                shots: 5,
                queries: 5,
                x_min: -5.0,
                x_max: 5.0,
            })),
            model: Some(ModelSpec {
                input: 1,
                hidden: vec![8],
                output: 1,
            }),
            algorithm: Algorithm::Maml as i32,
            inner_lr: 0.01,
        }
    }

    fn chunk(version: u64, phase: Phase) -> WorkChunk {
        let task = |i: u64| TaskDescriptor {
            index: i,
            data_seed: i,
            task: Some(task_descriptor::Task::Sinusoid(WireTask {
                amplitude: 1.0,
                phase: 0.5,
            })),
        };
        WorkChunk {
            chunk_id: 7,
            experiment_id: "exp-1".into(),
            version,
            phase: phase as i32,
            inner_steps: 1,
            tasks: vec![task(0), task(1), task(2)],
        }
    }

    #[test]
    fn a_chunk_yields_a_gradient_per_parameter_and_a_loss_per_task() {
        let mut engine = Engine::new(Device::Cpu, Path::Batched);
        engine.set_experiment(&setup()).unwrap();
        let count = MlpLayout::new(1, &[8], 1).param_count();
        let params = Parameters {
            version: 3,
            values: f32s_to_bytes(&vec![0.1; count]),
        };
        engine.set_parameters(&params).unwrap();

        let train = engine.run_chunk(&chunk(3, Phase::Train));
        assert_eq!(train.error, "");
        assert_eq!(f32s_from_bytes(&train.grad_sum).unwrap().len(), count);
        assert_eq!((train.loss_before.len(), train.loss_after.len()), (3, 3));
        let eval = engine.run_chunk(&chunk(3, Phase::Eval));
        assert_eq!(
            (
                eval.grad_sum.len(),
                eval.loss_before.len(),
                eval.loss_after.len()
            ),
            (0, 3, 3)
        );
    }

    #[test]
    fn mismatched_parameters_and_versions_are_errors_not_panics() {
        let mut engine = Engine::new(Device::Cpu, Path::Batched);
        let params = Parameters {
            version: 1,
            values: f32s_to_bytes(&[1.0; 5]),
        };
        assert_eq!(
            engine.set_parameters(&params),
            Err(EngineError::Setup("parameters before set-up"))
        );
        engine.set_experiment(&setup()).unwrap();
        assert!(matches!(
            engine.set_parameters(&params),
            Err(EngineError::ParameterCount { got: 5, .. })
        ));
        let stale = engine.run_chunk(&chunk(9, Phase::Train));
        assert!(
            stale
                .error
                .contains("no parameters cached for exp-1 version 9"),
            "{}",
            stale.error
        );
    }
}
