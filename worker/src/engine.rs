//! The compute engine: owns every libtorch tensor, caches experiments and their parameters, runs chunks.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use outerloop_proto::model::{ParamLayout, ParamSlot};
use outerloop_proto::mtl::MtlSetup;
use outerloop_proto::v1::{ChunkResult, ExperimentSetup, Parameters, Phase, WorkChunk};
use outerloop_proto::work::{Setup, TaskDescriptor};
use outerloop_proto::{f32s_into_bytes, WireError};
use prost::bytes::Bytes;
use tch::{Device, Kind, Tensor};

use crate::algorithms::{self, Algorithm, Context, Path};
use crate::data::{self, DataRoot, ImageCache, TaskSource};
use crate::models::{self, Model};
use crate::mtl::MtlExperiment;

/// Why the engine could not take an experiment's set-up or parameters.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("experiment set-up is invalid: {0}")]
    Setup(#[from] WireError),
    /// The set-up is well formed but no worker can compute it (e.g. its data and tasks differ).
    #[error("experiment set-up is invalid: {0}")]
    Invalid(String),
    /// The worker cannot compute this experiment at all: the work should go elsewhere.
    #[error("{0}")]
    Refused(String),
    #[error("parameters for {0} arrived before its set-up")]
    NoSetup(String),
    #[error("parameters for version {version} have {got} values, the model has {expected}")]
    ParameterCount {
        version: u64,
        got: usize,
        expected: usize,
    },
    #[error("no parameters cached for {experiment} version {version}")]
    NoParameters { experiment: String, version: u64 },
}

/// The experiment the engine holds: meta-learning or multi-task learning.
enum Loaded {
    Meta(Experiment),
    Mtl(Box<MtlExperiment>),
}

impl Loaded {
    fn id(&self) -> &str {
        match self {
            Loaded::Meta(e) => &e.id,
            Loaded::Mtl(e) => e.id(),
        }
    }

    fn layout(&self) -> &ParamLayout {
        match self {
            Loaded::Meta(e) => &e.layout,
            Loaded::Mtl(e) => e.layout(),
        }
    }
}

/// One meta-learning experiment as the engine needs it: where its tasks come from, the model,
/// the algorithm.
struct Experiment {
    id: String,
    layout: ParamLayout,
    source: Box<dyn TaskSource>,
    model: Box<dyn Model>,
    algorithm: Box<dyn Algorithm>,
    inner_lr: f64,
}

impl Experiment {
    fn new(
        setup: &Setup,
        data: &DataRoot,
        cache: &Rc<RefCell<ImageCache>>,
    ) -> Result<Self, EngineError> {
        let model_layout = setup.model.layout();
        let layout = match setup.algorithm {
            outerloop_proto::work::Algorithm::MetaSgd => {
                model_layout.with_inner_lrs(setup.inner_lr)
            }
            _ => model_layout,
        };
        Ok(Experiment {
            id: setup.experiment_id.clone(),
            layout,
            source: data::source(&setup.family, data, cache).map_err(EngineError::Refused)?,
            model: models::build(&setup.model),
            algorithm: algorithms::build(setup.algorithm),
            inner_lr: setup.inner_lr as f64,
        })
    }
}

/// An experiment the engine holds, with the parameter version it holds for it.
struct Cached {
    loaded: Loaded,
    params: Option<(u64, Vec<Tensor>)>,
}

impl Cached {
    /// What its parameters take in memory, the measure the cache is bounded by.
    fn bytes(&self) -> usize {
        self.loaded.layout().param_count() * std::mem::size_of::<f32>()
    }
}

/// Runs chunks on one device. Lives on the compute thread: `tch::Tensor` is not `Sync`.
pub struct Engine {
    device: Device,
    path: Path,
    /// The datasets under this worker's --data-root.
    data: Arc<DataRoot>,
    /// Decoded images, kept across experiments on the same data.
    images: Rc<RefCell<ImageCache>>,
    /// The experiments held, least recently used first: when several experiments share the
    /// worker, switching between them resends nothing it still holds.
    cached: Vec<Cached>,
    /// The most parameter bytes the cache holds; the experiment in use always stays.
    cache_bytes: usize,
}

/// The experiments an engine holds, least recently used first, each with the parameter
/// version held for it (`None`: none yet).
pub type Held = Vec<(String, Option<u64>)>;

/// The most experiments cached, whatever their size: each also holds its data source, and
/// every lease request lists them all.
pub const MAX_CACHED_EXPERIMENTS: usize = 16;

/// The default bound of the experiment cache: 1 GiB of parameters.
pub const DEFAULT_CACHE_BYTES: usize = 1 << 30;

impl Engine {
    pub fn new(device: Device, path: Path, data: Arc<DataRoot>) -> Self {
        Engine {
            device,
            path,
            data,
            images: ImageCache::shared(),
            cached: Vec::new(),
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }

    /// Bounds the experiment cache to `bytes` of parameters.
    pub fn with_cache_bytes(self, bytes: usize) -> Self {
        Engine {
            cache_bytes: bytes,
            ..self
        }
    }

    /// The experiments held, least recently used first, each with the parameter version held
    /// for it (none yet: `None`).
    pub fn held(&self) -> Held {
        self.cached
            .iter()
            .map(|c| {
                let version = c.params.as_ref().map(|(v, _)| *v);
                (c.loaded.id().to_string(), version)
            })
            .collect()
    }

    /// Caches an experiment (replacing what was held for its id); its parameters must follow.
    /// The least recently used others leave while the cache is over its bound.
    pub fn set_experiment(&mut self, setup: &ExperimentSetup) -> Result<(), EngineError> {
        self.cached.retain(|c| c.loaded.id() != setup.experiment_id);
        let loaded = if setup.mtl.is_some() {
            let mtl = MtlSetup::try_from(setup)?;
            Loaded::Mtl(Box::new(MtlExperiment::new(mtl, &self.data)?))
        } else {
            let setup = Setup::try_from(setup)?;
            Loaded::Meta(Experiment::new(&setup, &self.data, &self.images)?)
        };
        self.cached.push(Cached {
            loaded,
            params: None,
        });
        let mut total: usize = self.cached.iter().map(Cached::bytes).sum();
        while (total > self.cache_bytes && self.cached.len() > 1)
            || self.cached.len() > MAX_CACHED_EXPERIMENTS
        {
            let evicted = self.cached.remove(0);
            total -= evicted.bytes();
            tracing::info!(experiment = %evicted.loaded.id(), "dropped from the cache");
        }
        Ok(())
    }

    /// Drops what is cached for `experiment` (it has ended).
    pub fn forget(&mut self, experiment: &str) {
        self.cached.retain(|c| c.loaded.id() != experiment);
    }

    /// The cached `experiment`, marked as the most recently used.
    fn touch(&mut self, experiment: &str) -> Option<&mut Cached> {
        let at = self
            .cached
            .iter()
            .position(|c| c.loaded.id() == experiment)?;
        let cached = self.cached.remove(at);
        self.cached.push(cached);
        self.cached.last_mut()
    }

    /// Caches a parameter version of `experiment` as leaf tensors on the device.
    pub fn set_parameters(
        &mut self,
        experiment: &str,
        params: &Parameters,
    ) -> Result<(), EngineError> {
        let device = self.device;
        let cached = self
            .touch(experiment)
            .ok_or_else(|| EngineError::NoSetup(experiment.to_string()))?;
        let layout = cached.loaded.layout();
        let expected = layout.param_count();
        if params.values.len() != 4 * expected {
            return Err(EngineError::ParameterCount {
                version: params.version,
                got: params.values.len() / 4,
                expected,
            });
        }
        let tensors = leaf_parameters_from_wire(layout, &params.values, device);
        cached.params = Some((params.version, tensors));
        Ok(())
    }

    /// Computes one chunk; a chunk that cannot be computed comes back with its `error` set.
    /// libtorch reports its own errors by panicking: the compute thread catches those.
    pub fn run_chunk(&mut self, chunk: &WorkChunk) -> ChunkResult {
        let started = Instant::now();
        self.touch(&chunk.experiment_id);
        match self.compute(chunk) {
            Ok(mut result) => {
                result.compute_seconds = started.elapsed().as_secs_f64();
                result
            }
            Err(error) => failed_chunk(chunk.chunk_id, error),
        }
    }

    fn compute(&self, chunk: &WorkChunk) -> Result<ChunkResult, String> {
        let cached = self
            .cached
            .iter()
            .find(|c| c.loaded.id() == chunk.experiment_id)
            .ok_or_else(|| {
                format!(
                    "experiment {} is not set up on this worker",
                    chunk.experiment_id
                )
            })?;
        let experiment = &cached.loaded;
        let theta = match &cached.params {
            Some((version, tensors)) if *version == chunk.version => tensors,
            _ => {
                let missing = EngineError::NoParameters {
                    experiment: chunk.experiment_id.clone(),
                    version: chunk.version,
                };
                return Err(missing.to_string());
            }
        };
        match experiment {
            Loaded::Meta(experiment) => self.meta(experiment, theta, chunk),
            Loaded::Mtl(experiment) => Ok(experiment.run(chunk, theta, self.path)?),
        }
    }

    /// A meta-learning chunk: each task adapted from `theta`, the meta-gradient summed.
    fn meta(
        &self,
        experiment: &Experiment,
        theta: &[Tensor],
        chunk: &WorkChunk,
    ) -> Result<ChunkResult, String> {
        let tasks = chunk
            .tasks
            .iter()
            .map(TaskDescriptor::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("a task of chunk {} is invalid: {e}", chunk.chunk_id))?;
        let batch = experiment
            .source
            .materialise(&tasks, Kind::Float, self.device)?;
        let cx = Context {
            model: experiment.model.as_ref(),
            objective: experiment.source.objective(),
            inner_steps: chunk.inner_steps as usize,
            inner_lr: experiment.inner_lr,
            path: self.path,
        };
        let train = chunk.phase == Phase::Train as i32;
        let outcome = experiment.algorithm.run(&cx, theta, &batch, train);
        // The chunk's error is a message.
        let listed = |tensors: &[Tensor]| values(tensors).map_err(|e| e.to_string());
        let grad_sum = match &outcome.grad_sum {
            // A parameter the loss does not depend on gets no gradient from autograd at all:
            // its gradient is zero.
            Some(grads) => {
                let dense: Vec<Tensor> = grads
                    .iter()
                    .zip(theta)
                    .map(|(g, p)| {
                        if g.defined() {
                            g.shallow_clone()
                        } else {
                            p.zeros_like()
                        }
                    })
                    .collect();
                values_bytes(&dense).map_err(|e| e.to_string())?
            }
            None => Default::default(),
        };
        let optional = |t: &Option<Tensor>| match t {
            Some(t) => listed(std::slice::from_ref(t)),
            None => Ok(Vec::new()),
        };
        Ok(ChunkResult {
            chunk_id: chunk.chunk_id,
            grad_sum,
            loss_before: listed(std::slice::from_ref(&outcome.loss_before))?,
            loss_after: listed(std::slice::from_ref(&outcome.loss_after))?,
            accuracy_before: optional(&outcome.accuracy_before)?,
            accuracy_after: optional(&outcome.accuracy_after)?,
            ..ChunkResult::default()
        })
    }
}

/// The flat parameter buffer `values`, cut by `layout` into named-slot tensors of their own
/// shapes on `device`, each a leaf that autograd differentiates with respect to.
pub fn leaf_parameters(layout: &ParamLayout, values: &[f32], device: Device) -> Vec<Tensor> {
    leaves(layout, device, |slot, shape| {
        Tensor::from_slice(slot.values(values)).view(shape)
    })
}

/// [`leaf_parameters`] of little-endian `f32` bytes (`4 × param_count` of them, checked by the
/// caller), each slot's bytes copied once, straight into its tensor's memory: the bytes of a
/// decoded message lie on no particular boundary, so a cast would not do, and decoding to a
/// `Vec` first, then libtorch's zero-fill and copy of a slice, made three passes (about 3 ms
/// a step at a million parameters).
pub fn leaf_parameters_from_wire(
    layout: &ParamLayout,
    bytes: &[u8],
    device: Device,
) -> Vec<Tensor> {
    const { assert!(cfg!(target_endian = "little")) };
    leaves(layout, device, |slot, shape| {
        let values = &bytes[4 * slot.offset..4 * (slot.offset + slot.len())];
        let tensor = Tensor::empty(shape, (Kind::Float, Device::Cpu));
        // SAFETY: a new contiguous `f32` tensor of the slot's shape holds exactly
        // `values.len()` bytes, and nothing else refers to it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                values.as_ptr(),
                tensor.data_ptr().cast::<u8>(),
                values.len(),
            );
        }
        tensor
    })
}

/// Every slot of `layout` as a leaf on `device` that autograd differentiates with respect to,
/// from the CPU tensor `make` gives for the slot and its shape.
fn leaves(
    layout: &ParamLayout,
    device: Device,
    make: impl Fn(&ParamSlot, &[i64]) -> Tensor,
) -> Vec<Tensor> {
    layout
        .slots
        .iter()
        .map(|slot| {
            let shape: Vec<i64> = slot.shape.iter().map(|&d| d as i64).collect();
            let tensor = make(slot, &shape);
            let tensor = if device == Device::Cpu {
                tensor
            } else {
                tensor.to_device(device)
            };
            tensor.set_requires_grad(true)
        })
        .collect()
}

/// Appends a tensor's values to `out` in one copy, from any device and layout: no
/// intermediate tensors, which cost more than the copy at these sizes.
pub(crate) fn append_values(t: &Tensor, out: &mut Vec<f32>) -> Result<(), tch::TchError> {
    let t = if t.kind() == Kind::Float {
        t.shallow_clone()
    } else {
        t.to_kind(Kind::Float)
    };
    let (start, count) = (out.len(), t.numel());
    if count > 0 && t.device() == Device::Cpu && t.is_contiguous() {
        // Straight into `out`'s spare room: zeroing it first cost half as much as the copy.
        out.reserve(count);
        // SAFETY: a contiguous CPU tensor of `Float` holds its `count` values from its data
        // pointer on (the storage offset included); `out` has room for them, and its length
        // covers them only once they are written.
        unsafe {
            std::ptr::copy_nonoverlapping(
                t.data_ptr() as *const f32,
                out.as_mut_ptr().add(start),
                count,
            );
            out.set_len(start + count);
        }
        return Ok(());
    }
    out.resize(start + count, 0.0);
    t.f_copy_data(&mut out[start..], count)
}

/// Tensors' values one after another, in row-major order.
fn values(tensors: &[Tensor]) -> Result<Vec<f32>, tch::TchError> {
    let mut values = Vec::new();
    for t in tensors {
        append_values(t, &mut values)?;
    }
    Ok(values)
}

/// [`values`] as the little-endian bytes that go on the wire: one copy off the tensors, whose
/// values then become the bytes without another.
pub(crate) fn values_bytes(tensors: &[Tensor]) -> Result<Bytes, tch::TchError> {
    values(tensors).map(f32s_into_bytes)
}

/// The result of a chunk that could not be computed, with why.
pub fn failed_chunk(chunk_id: u64, error: String) -> ChunkResult {
    ChunkResult {
        chunk_id,
        error,
        ..ChunkResult::default()
    }
}

/// The result of a chunk this worker will not compute (it cannot compute its experiment at
/// all): the coordinator gives the chunk to another worker.
pub fn refused_chunk(chunk_id: u64, refusal: String) -> ChunkResult {
    ChunkResult {
        chunk_id,
        refusal,
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
    use outerloop_proto::model::{Mlp, Model as Architecture};
    use outerloop_proto::v1::{self, task_descriptor};
    use outerloop_proto::work::{self, Family, SinusoidFamily};
    use outerloop_proto::{f32s_from_bytes, f32s_to_bytes};

    #[test]
    fn values_are_appended_in_row_major_order_from_any_layout() {
        let t = Tensor::arange(12, (Kind::Float, Device::Cpu)).reshape([3, 4]);
        let expect = |t: &Tensor| Vec::<f32>::try_from(t.contiguous().view(-1)).unwrap();
        let mut out = vec![-1.0];
        // Contiguous, with a storage offset, transposed, of another kind, empty.
        let cases = [
            t.shallow_clone(),
            t.narrow(0, 1, 2),
            t.transpose(0, 1),
            t.to_kind(Kind::Double),
            t.narrow(0, 0, 0),
        ];
        let mut want = out.clone();
        for case in &cases {
            append_values(case, &mut out).unwrap();
            want.extend(expect(&case.to_kind(Kind::Float)));
        }
        assert_eq!(out, want);
        assert_eq!(out.len(), 1 + 12 + 8 + 12 + 12);
    }

    fn mlp() -> Mlp {
        Mlp {
            input: 1,
            hidden: vec![8],
            output: 1,
        }
    }

    fn setup() -> ExperimentSetup {
        (&Setup {
            experiment_id: "exp-1".into(),
            family: Family::Sinusoid(SinusoidFamily {
                shots: 5,
                queries: 5,
                x_range: [-5.0, 5.0],
            }),
            model: Architecture::Mlp(mlp()),
            algorithm: work::Algorithm::Maml,
            inner_lr: 0.01,
        })
            .into()
    }

    #[test]
    fn parameters_from_the_wire_are_the_values_sent_in_their_slots_shapes_aligned_or_not() {
        let layout = Architecture::Mlp(mlp()).layout();
        let values = layout.init(3);
        let reference = leaf_parameters(&layout, &values, Device::Cpu);
        let wire = f32s_to_bytes(&values);
        // The same bytes one byte into a buffer: not on a 4-byte boundary.
        let mut shifted = vec![0u8; wire.len() + 1];
        shifted[1..].copy_from_slice(&wire);
        for bytes in [&wire[..], &shifted[1..]] {
            let got = leaf_parameters_from_wire(&layout, bytes, Device::Cpu);
            assert_eq!(got.len(), reference.len());
            for (g, r) in got.iter().zip(&reference) {
                assert_eq!(g.size(), r.size());
                assert!(g.requires_grad() && g.is_leaf());
                let bits = |t: &Tensor| {
                    let flat = Vec::<f32>::try_from(t.detach().flatten(0, -1)).unwrap();
                    flat.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert_eq!(bits(g), bits(r));
            }
        }
        // A copy, not a view: the wire buffer may go as soon as the tensors are made.
        let mut aligned = values.clone();
        let got = {
            // SAFETY: the bytes of `aligned`'s values, read while it is not changed.
            let bytes = unsafe {
                std::slice::from_raw_parts(aligned.as_ptr().cast::<u8>(), 4 * aligned.len())
            };
            leaf_parameters_from_wire(&layout, bytes, Device::Cpu)
        };
        aligned.fill(f32::NAN);
        assert_eq!(
            Vec::<f32>::try_from(got[0].detach().flatten(0, -1)).unwrap(),
            layout.slots[0].values(&values)
        );
    }

    fn chunk(version: u64, phase: Phase) -> WorkChunk {
        let task = |i: u64| v1::TaskDescriptor {
            index: i,
            data_seed: i,
            task: Some(task_descriptor::Task::Sinusoid(v1::SinusoidTask {
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
        let mut engine = Engine::new(Device::Cpu, Path::Batched, Arc::new(DataRoot::empty()));
        engine.set_experiment(&setup()).unwrap();
        let count = mlp().layout().param_count();
        let params = Parameters {
            version: 3,
            values: f32s_to_bytes(&vec![0.1; count]),
        };
        engine.set_parameters("exp-1", &params).unwrap();

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

    fn mtl_setup() -> MtlSetup {
        use outerloop_proto::mtl::{GradNormData, MtlData, MtlTask, Shared, TaskLoss};
        let task = |name: &str| MtlTask {
            name: name.into(),
            loss: TaskLoss::Mse,
            outputs: 4,
        };
        MtlSetup {
            factored: false,
            experiment_id: "mtl-1".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 3,
                inputs: 6,
                outputs: 4,
                sigmas: vec![1.0, 3.0],
                tasks: Vec::new(),
            }),
            shared: Shared::Hard(Mlp {
                input: 6,
                hidden: vec![8, 8],
                output: 5,
            }),
            tasks: vec![task("a"), task("b")],
        }
    }

    #[test]
    fn a_multi_task_chunk_yields_totals_per_task() {
        let setup = mtl_setup();
        let mut engine = Engine::new(Device::Cpu, Path::Batched, Arc::new(DataRoot::empty()));
        engine.set_experiment(&(&setup).into()).unwrap();
        let values = setup.layout().init(1);
        let short = Parameters {
            version: 2,
            values: f32s_to_bytes(&values[1..]),
        };
        assert!(matches!(
            engine.set_parameters("mtl-1", &short),
            Err(EngineError::ParameterCount { expected, .. }) if expected == values.len()
        ));
        engine
            .set_parameters(
                "mtl-1",
                &Parameters {
                    version: 2,
                    values: f32s_to_bytes(&values),
                },
            )
            .unwrap();
        let chunk = WorkChunk {
            chunk_id: 8,
            experiment_id: "mtl-1".into(),
            version: 2,
            phase: Phase::Train as i32,
            inner_steps: 0,
            tasks: vec![v1::TaskDescriptor {
                index: 0,
                data_seed: 12,
                task: Some(task_descriptor::Task::Rows(v1::RowBatch {
                    tasks: vec![0, 1],
                    first: 64,
                    count: 16,
                    split: v1::RowSplit::Train as i32,
                })),
            }],
        };
        let result = engine.run_chunk(&chunk);
        assert_eq!((result.error.as_str(), result.chunk_id), ("", 8));
        assert_eq!(result.task_totals.len(), 2);
        for (t, totals) in result.task_totals.iter().enumerate() {
            assert_eq!(totals.task, t as u32);
            let shared = f32s_from_bytes(&totals.shared_grad).unwrap();
            assert_eq!(shared.len(), setup.shared_len());
            let head = f32s_from_bytes(&totals.head_grad).unwrap();
            assert_eq!(head.len(), setup.head_range(t).len());
            assert!(totals.loss_sum.is_finite() && totals.loss_sum > 0.0);
        }
        assert!(result.grad_sum.is_empty() && result.loss_after.is_empty());
    }

    #[test]
    fn a_multi_task_setup_its_data_cannot_serve_is_invalid() {
        let mut setup = mtl_setup();
        setup.data = outerloop_proto::mtl::MtlData::GradNorm(outerloop_proto::mtl::GradNormData {
            seed: 3,
            inputs: 6,
            outputs: 4,
            sigmas: vec![1.0],
            tasks: Vec::new(),
        });
        let mut engine = Engine::new(Device::Cpu, Path::Batched, Arc::new(DataRoot::empty()));
        assert!(matches!(
            engine.set_experiment(&(&setup).into()),
            Err(EngineError::Invalid(_))
        ));
    }

    /// The sinusoid set-up of `setup()` under another experiment id.
    fn setup_for(experiment: &str) -> ExperimentSetup {
        ExperimentSetup {
            experiment_id: experiment.into(),
            ..setup()
        }
    }

    fn params(version: u64) -> Parameters {
        Parameters {
            version,
            values: f32s_to_bytes(&vec![0.1; mlp().layout().param_count()]),
        }
    }

    #[test]
    fn several_experiments_stay_cached_until_the_bound_evicts_the_least_recently_used() {
        let bytes = mlp().layout().param_count() * 4;
        let mut engine = Engine::new(Device::Cpu, Path::Batched, Arc::new(DataRoot::empty()))
            .with_cache_bytes(2 * bytes);
        for (experiment, version) in [("exp-1", 3), ("exp-2", 5)] {
            engine.set_experiment(&setup_for(experiment)).unwrap();
            engine.set_parameters(experiment, &params(version)).unwrap();
        }
        assert_eq!(
            engine.held(),
            [
                ("exp-1".to_string(), Some(3)),
                ("exp-2".to_string(), Some(5))
            ]
        );
        // Switching back to exp-1 needs nothing new, and makes it the most recently used.
        let result = engine.run_chunk(&chunk(3, Phase::Train));
        assert_eq!(result.error, "");
        assert_eq!(engine.held()[1].0, "exp-1");
        // A third experiment does not fit: exp-2, the least recently used, leaves.
        engine.set_experiment(&setup_for("exp-3")).unwrap();
        let held: Vec<String> = engine.held().into_iter().map(|(e, _)| e).collect();
        assert_eq!(held, ["exp-1", "exp-3"]);
        assert_eq!(
            engine.held()[1].1,
            None,
            "exp-3's parameters have not come yet"
        );
        // Installing a set-up again replaces it, and its parameters must follow.
        engine.set_experiment(&setup_for("exp-1")).unwrap();
        assert_eq!(
            engine.held(),
            [("exp-3".to_string(), None), ("exp-1".to_string(), None)]
        );
        assert!(engine
            .run_chunk(&chunk(3, Phase::Train))
            .error
            .contains("no parameters cached"));
    }

    #[test]
    fn mismatched_parameters_and_versions_are_errors_not_panics() {
        let mut engine = Engine::new(Device::Cpu, Path::Batched, Arc::new(DataRoot::empty()));
        let params = Parameters {
            version: 1,
            values: f32s_to_bytes(&[1.0; 5]),
        };
        assert_eq!(
            engine.set_parameters("exp-1", &params),
            Err(EngineError::NoSetup("exp-1".into()))
        );
        engine.set_experiment(&setup()).unwrap();
        assert!(matches!(
            engine.set_parameters("exp-1", &params),
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
