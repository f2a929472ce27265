//! Multi-task learning on the worker: one experiment's shared layers (or experts), gates, heads and data, turning a chunk of rows into each task's loss and metric sums and gradients.

mod batched;
mod conv_body;
mod gradnorm;
mod loss;
mod mmoe;
pub mod pareto_toy;
mod per_task;
mod rows;
mod table;
mod trunk;

use outerloop_proto::model::{Conv4, ParamLayout};
use outerloop_proto::mtl::{MtlSetup, RowBatch, Shared, TaskLoss};
use outerloop_proto::v1::{self, Phase, WorkChunk};
use outerloop_proto::work::{Task, TaskDescriptor};
use outerloop_proto::{f32s_into_bytes, f32s_to_bytes};
use prost::bytes::Bytes;
use tch::Tensor;

pub use gradnorm::GradNorm;
pub use rows::{RowSource, Rows};

use crate::algorithms::Path;
use crate::data::DataRoot;
use crate::engine::{append_values, values_bytes, EngineError};

/// Input values one descriptor may ask for (1 GiB of `f32`): a larger batch of rows is a
/// coordinator bug, reported rather than allocated.
const MAX_INPUT_VALUES: u64 = 1 << 28;

/// A multi-task experiment as the engine caches it.
pub struct MtlExperiment {
    setup: MtlSetup,
    layout: ParamLayout,
    source: Box<dyn RowSource>,
}

/// The shared parameters as both paths read them.
pub(crate) enum Body<'a> {
    /// Hard sharing: one MLP's tensors (weight, bias, layer after layer), read by every head.
    Hard(&'a [Tensor]),
    /// MMoE: each expert's tensors, like `Hard`'s, expert after expert; every task has a gate.
    Mmoe(Vec<&'a [Tensor]>),
    /// conv4's blocks (weight, bias, norm scale, norm shift, block after block), reading each
    /// row as an image of this shape.
    Conv4(&'a [Tensor], Conv4),
}

impl Body<'_> {
    /// Every shared tensor, in layout order.
    fn params(&self) -> Vec<&Tensor> {
        match self {
            Body::Hard(shared) | Body::Conv4(shared, _) => shared.iter().collect(),
            Body::Mmoe(experts) => experts.iter().flat_map(|e| e.iter()).collect(),
        }
    }

    /// Each task's representation of the rows `x`, `[rows, width]`, in `tasks` order.
    fn representations(&self, x: &Tensor, tasks: &[Scored]) -> Vec<Tensor> {
        match self {
            Body::Hard(shared) => {
                let features = trunk::forward(shared, x);
                tasks.iter().map(|_| features.shallow_clone()).collect()
            }
            Body::Conv4(blocks, shape) => {
                let features = conv_body::forward(blocks, shape, x);
                tasks.iter().map(|_| features.shallow_clone()).collect()
            }
            Body::Mmoe(experts) => {
                let outputs = mmoe::forward(experts, x);
                tasks
                    .iter()
                    .map(|task| mmoe::mix(&mmoe::gate(x, task.gate()), &outputs))
                    .collect()
            }
        }
    }
}

/// One task as one descriptor scores it: its loss, its own parameters (gate, head), its
/// targets.
pub(crate) struct Scored<'a> {
    loss: TaskLoss,
    /// MMoE: the gate (weight `[experts, input]`, bias) that mixes the experts for this task.
    gate: Option<[&'a Tensor; 2]>,
    head: [&'a Tensor; 2],
    target: Tensor,
}

impl<'a> Scored<'a> {
    /// The task's gate, which every task of an MMoE has (`MtlExperiment::split` gives it).
    fn gate(&self) -> [&'a Tensor; 2] {
        self.gate
            .expect("a task of a mixture of experts has a gate")
    }

    /// The task's own tensors in layout order: its gate if it has one, then its head.
    fn own(&self) -> impl Iterator<Item = &'a Tensor> {
        self.gate.into_iter().flatten().chain(self.head)
    }
}

/// What either path yields for the tasks of one descriptor.
pub(crate) struct Totals {
    /// `f64` `[tasks]`: the sums over the rows of each task's loss and metric.
    loss_sums: Tensor,
    metric_sums: Tensor,
    /// Training only: each task's gradient with respect to the shared layers (MMoE: the
    /// experts), as pieces `[tasks, values]` that side by side are `[tasks, shared values]`,
    /// and with respect to its own parameters (its gate if it has one, then its head; weight
    /// then bias), flat and concatenated in task order.
    grads: Option<(Vec<Tensor>, Tensor)>,
    /// Training with the shared layers' gradients factored: each layer's input rows `[rows,
    /// in]`, and then the shared pieces of `grads` are each layer's deltas at its outputs,
    /// `[tasks, rows, out]`, instead of every task's gradient.
    shared_inputs: Option<Vec<Tensor>>,
}

impl Totals {
    /// The loss and metric sums of `tasks`, each on its representation, no gradients.
    fn scores_only(representations: &[Tensor], tasks: &[Scored]) -> Totals {
        let (loss_sums, metric_sums): (Vec<Tensor>, Vec<Tensor>) = tasks
            .iter()
            .zip(representations)
            .map(|(task, features)| {
                let output = features.linear(task.head[0], Some(task.head[1]));
                let losses = loss::row_losses(task.loss, &output, &task.target);
                loss::sums(task.loss, &output, &task.target, &losses)
            })
            .unzip();
        Totals {
            loss_sums: Tensor::stack(&loss_sums, 0),
            metric_sums: Tensor::stack(&metric_sums, 0),
            grads: None,
            shared_inputs: None,
        }
    }
}

impl MtlExperiment {
    /// The experiment, or why this set-up cannot be computed: by any worker (invalid), or by
    /// this one, whose copy of the data is missing or differs (refused).
    pub fn new(setup: MtlSetup, data: &DataRoot) -> Result<Self, EngineError> {
        if setup.tasks.is_empty() {
            return Err(EngineError::Invalid(
                "a multi-task experiment needs at least one task".into(),
            ));
        }
        let source = rows::source(&setup, data)?;
        Ok(MtlExperiment {
            layout: setup.layout(),
            source,
            setup,
        })
    }

    pub fn id(&self) -> &str {
        &self.setup.experiment_id
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// The chunk's result: the totals of every task each of its descriptors names, descriptor
    /// after descriptor, in the order each names its tasks (and, factored, the shared layers'
    /// inputs). `params` are the layout's tensors (leaves that require grad); `path` picks the
    /// batched backward or the per-task autograd loop.
    pub fn run(
        &self,
        chunk: &WorkChunk,
        params: &[Tensor],
        path: Path,
    ) -> Result<v1::ChunkResult, String> {
        let train = chunk.phase == Phase::Train as i32;
        let factored = train && self.setup.factored;
        if factored && chunk.tasks.len() != 1 {
            return Err(format!(
                "chunk {} holds {} batches of rows; a chunk whose gradients go factored holds one",
                chunk.chunk_id,
                chunk.tasks.len()
            ));
        }
        let mut result = v1::ChunkResult {
            chunk_id: chunk.chunk_id,
            ..Default::default()
        };
        for wire in &chunk.tasks {
            let descriptor = TaskDescriptor::try_from(wire).map_err(|e| {
                format!(
                    "task {} of chunk {} is invalid: {e}",
                    wire.index, chunk.chunk_id
                )
            })?;
            let Task::Rows(batch) = &descriptor.task else {
                return Err(format!(
                    "task {} of chunk {} is not a batch of rows, which a multi-task experiment needs",
                    descriptor.index, chunk.chunk_id
                ));
            };
            let tasks = self.check(batch, descriptor.index)?;
            let (totals, inputs) =
                self.rows(descriptor.data_seed, batch, &tasks, params, path, train)?;
            result.task_totals.extend(totals);
            result.shared_inputs = inputs;
        }
        Ok(result)
    }

    /// The batch's task indices, or what is wrong with it.
    fn check(&self, batch: &RowBatch, index: u64) -> Result<Vec<usize>, String> {
        let known = self.setup.tasks.len();
        if batch.count == 0 {
            return Err(format!(
                "task {index}: a batch of rows needs a count above 0"
            ));
        }
        if batch.tasks.is_empty() {
            return Err(format!("task {index}: the batch of rows names no task"));
        }
        if let Some(t) = batch.tasks.iter().find(|&&t| t as usize >= known) {
            return Err(format!(
                "task {index}: the rows name task {t}, the experiment has {known} tasks (0 to {})",
                known - 1
            ));
        }
        if batch.first.checked_add(batch.count as u64).is_none()
            || batch.count as u64 * self.setup.shared.input() as u64 > MAX_INPUT_VALUES
        {
            return Err(format!(
                "task {index}: {} rows from row {} are more than a worker computes at once",
                batch.count, batch.first
            ));
        }
        Ok(batch.tasks.iter().map(|&t| t as usize).collect())
    }

    /// The totals of `tasks` on one batch of rows of `stream`, and when the shared layers'
    /// gradients go factored, the layers' inputs as wire bytes.
    fn rows(
        &self,
        stream: u64,
        batch: &RowBatch,
        tasks: &[usize],
        params: &[Tensor],
        path: Path,
        train: bool,
    ) -> Result<(Vec<v1::TaskTotals>, Bytes), String> {
        if let Shared::Point { .. } = self.setup.shared {
            return Ok((
                point_totals(params, batch.count, tasks, train)?,
                Bytes::new(),
            ));
        }
        let factored = train && self.setup.factored;
        let (kind, device) = (params[0].kind(), params[0].device());
        let rows = self.source.rows(stream, batch, tasks, kind, device)?;
        let (body, scored) = self.split(params, tasks, rows.targets);
        // The explicit batched backward covers MLPs; conv4 takes autograd, one task at a time.
        // Factored gradients come from the batched path's last step; the set-up has them
        // only for hard sharing of an MLP, which that path covers.
        let path = match body {
            Body::Conv4(..) => Path::PerTask,
            _ if factored => Path::Batched,
            _ => path,
        };
        let totals = match path {
            Path::Batched => batched::run(&body, &rows.x, &scored, train, factored),
            Path::PerTask => per_task::run(&body, &rows.x, &scored, train),
        };
        let head_lens: Vec<usize> = tasks
            .iter()
            .map(|&t| self.setup.head_range(t).len())
            .collect();
        let shared_len = if factored {
            // Each task's deltas: every row's gradient at every layer's outputs.
            batch.count as usize * self.setup.shared.mlp().widths()[1..].iter().sum::<usize>()
        } else {
            self.setup.shared_len()
        };
        let inputs = match &totals.shared_inputs {
            // The shared layers' inputs `[rows, in]`, layer after layer.
            Some(inputs) => values_bytes(inputs).map_err(|e| e.to_string())?,
            None => Bytes::new(),
        };
        Ok((wire(totals, tasks, shared_len, &head_lens)?, inputs))
    }

    /// The layout's tensors `params` as the shared body and, for each of `tasks` with its
    /// targets, its own tensors.
    fn split<'a>(
        &self,
        params: &'a [Tensor],
        tasks: &[usize],
        targets: Vec<Tensor>,
    ) -> (Body<'a>, Vec<Scored<'a>>) {
        let per_mlp = 2 * (self.setup.shared.mlp().hidden.len() + 1);
        let (body, own, per_task) = match self.setup.shared {
            Shared::Hard(_) => {
                let (shared, own) = params.split_at(per_mlp);
                (Body::Hard(shared), own, 2)
            }
            Shared::Mmoe { experts, .. } => {
                let (shared, own) = params.split_at(experts * per_mlp);
                (Body::Mmoe(shared.chunks_exact(per_mlp).collect()), own, 4)
            }
            Shared::Conv4(ref shape) => {
                let (blocks, own) = params.split_at(conv_body::TENSORS);
                (Body::Conv4(blocks, shape.clone()), own, 2)
            }
            Shared::Point { .. } => unreachable!("a point is scored by `point_totals`"),
        };
        let scored = tasks
            .iter()
            .zip(targets)
            .map(|(&t, target)| {
                let own = &own[per_task * t..per_task * (t + 1)];
                let (gate, head) = own.split_at(per_task - 2);
                Scored {
                    loss: self.setup.tasks[t].loss,
                    gate: (!gate.is_empty()).then(|| [&gate[0], &gate[1]]),
                    head: [&head[0], &head[1]],
                    target,
                }
            })
            .collect();
        (body, scored)
    }
}

/// The wire form of `totals`, one entry per task in `tasks` order; each task's gradients are
/// `shared_len` values (its deltas, factored) and its entry of `head_lens`. Three copies off
/// the device in all.
fn wire(
    totals: Totals,
    tasks: &[usize],
    shared_len: usize,
    head_lens: &[usize],
) -> Result<Vec<v1::TaskTotals>, String> {
    let f64s = |t: &Tensor| Vec::<f64>::try_from(t).map_err(|e| e.to_string());
    let (losses, metrics) = (f64s(&totals.loss_sums)?, f64s(&totals.metric_sums)?);
    let (mut shared, mut heads) = (Vec::new(), Vec::new());
    if let Some((pieces, h)) = &totals.grads {
        shared = shared_bytes(pieces, tasks.len()).map_err(|e| e.to_string())?;
        append_values(h, &mut heads).map_err(|e| e.to_string())?;
        if shared.iter().any(|s| s.len() != 4 * shared_len)
            || heads.len() != head_lens.iter().sum::<usize>()
        {
            return Err(format!(
                "gradients of {} and {} values for {} tasks: the parameters do not fit the layout",
                shared.first().map_or(0, |s| s.len() / 4),
                heads.len(),
                tasks.len()
            ));
        }
    }
    let mut shared = shared.into_iter();
    let heads = f32s_into_bytes(heads);
    let mut head_start = 0;
    let mut out = Vec::with_capacity(tasks.len());
    for (i, &task) in tasks.iter().enumerate() {
        let mut entry = v1::TaskTotals {
            task: task as u32,
            loss_sum: losses[i],
            metric_sum: metrics[i],
            ..Default::default()
        };
        if totals.grads.is_some() {
            let head_end = head_start + head_lens[i];
            let shared = shared.next().unwrap_or_default().into();
            if totals.shared_inputs.is_some() {
                entry.shared_deltas = shared;
            } else {
                entry.shared_grad = shared;
            }
            entry.head_grad = heads.slice(4 * head_start..4 * head_end);
            head_start = head_end;
        }
        out.push(entry);
    }
    Ok(out)
}

/// The toy problem's totals at the point `params` (`point.x1`, `point.x2`): every one of the
/// `rows` scores the same losses, so the sums are `rows` times each task's loss (shifted by
/// [`pareto_toy::LOSS_SHIFT`]; the metric is the unshifted loss) and, when training, its
/// gradient. Exact, in `f64`.
fn point_totals(
    params: &[Tensor],
    rows: u32,
    tasks: &[usize],
    train: bool,
) -> Result<Vec<v1::TaskTotals>, String> {
    let coordinate = |p: &Tensor| p.f_double_value(&[0]).map_err(|e| e.to_string());
    let x = [coordinate(&params[0])?, coordinate(&params[1])?];
    let (f, g) = pareto_toy::losses(x);
    let n = rows as f64;
    tasks
        .iter()
        .map(|&t| {
            let task = f
                .get(t)
                .ok_or_else(|| format!("the toy problem has two tasks; task {t} was asked for"))?;
            let mut entry = v1::TaskTotals {
                task: t as u32,
                loss_sum: n * (task + pareto_toy::LOSS_SHIFT),
                metric_sum: n * task,
                ..Default::default()
            };
            if train {
                entry.shared_grad = f32s_to_bytes(&g[t].map(|d| (n * d) as f32));
            }
            Ok(entry)
        })
        .collect()
}

/// Each task's shared-layer gradient (or deltas) as little-endian `f32` bytes, from `pieces`
/// `[tasks, ...]` (each task's values row-major) laid side by side: one copy from the tensors
/// into the bytes that go on the wire.
fn shared_bytes(pieces: &[Tensor], tasks: usize) -> Result<Vec<Vec<u8>>, tch::TchError> {
    let pieces: Vec<Tensor> = pieces
        .iter()
        .map(|p| {
            p.to_device(tch::Device::Cpu)
                .to_kind(tch::Kind::Float)
                .contiguous()
                .reshape([tasks as i64, -1])
        })
        .collect();
    let len: usize = pieces.iter().map(|p| p.size()[1] as usize).sum();
    // The wire is little-endian; so are the machines outerloop runs on.
    const { assert!(cfg!(target_endian = "little")) };
    (0..tasks as i64)
        .map(|t| {
            // Written by libtorch straight into the allocation, never zeroed first: at 40 MB a
            // chunk, zeroing cost as much as the copy.
            let mut bytes = Vec::<u8>::with_capacity(4 * len);
            // A byte vector is only promised byte alignment; every allocator this binary links
            // (mimalloc, glibc) gives at least 8, and one that did not would be refused here
            // rather than have libtorch write misaligned floats.
            if len > 0 && bytes.as_ptr().align_offset(std::mem::align_of::<f32>()) != 0 {
                return Err(tch::TchError::Kind(
                    "the allocator returned a result buffer not aligned for f32".into(),
                ));
            }
            {
                // SAFETY: the allocation is aligned for f32 (checked above); the tensor views
                // its `4 * len` bytes as `len` f32s and is dropped before `bytes` is touched
                // again; libtorch only writes to it.
                let wire = unsafe {
                    Tensor::f_from_blob(
                        bytes.as_mut_ptr(),
                        &[len as i64],
                        &[1],
                        tch::Kind::Float,
                        tch::Device::Cpu,
                    )?
                };
                let mut at = 0;
                for piece in &pieces {
                    let values = piece.size()[1];
                    wire.narrow(0, at, values).f_copy_(&piece.get(t))?;
                    at += values;
                }
            }
            // SAFETY: the pieces' widths add up to `len`, so every byte was written above.
            unsafe { bytes.set_len(4 * len) };
            Ok(bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithms::testing::{assert_close, finite_differences, flat, params};
    use crate::engine::leaf_parameters;
    use outerloop_proto::f32s_from_bytes;
    use outerloop_proto::model::Mlp;
    use outerloop_proto::mtl::{GradNormData, MtlData, MtlTask};
    use outerloop_proto::v1::task_descriptor;
    use tch::{Device, Kind};

    /// 4 inputs -> 6 -> 5, three regression tasks of 3 outputs.
    fn setup() -> MtlSetup {
        let task = |name: &str| MtlTask {
            name: name.into(),
            loss: TaskLoss::Mse,
            outputs: 3,
        };
        MtlSetup {
            factored: false,
            experiment_id: "mtl-1".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 17,
                inputs: 4,
                outputs: 3,
                sigmas: vec![1.0, 2.0, 0.5],
                tasks: Vec::new(),
            }),
            shared: Shared::Hard(Mlp {
                input: 4,
                hidden: vec![6],
                output: 5,
            }),
            tasks: vec![task("a"), task("b"), task("c")],
        }
    }

    /// The same tasks on a mixture of two experts shaped as `setup`'s shared layers.
    fn mmoe_setup() -> MtlSetup {
        let setup = setup();
        MtlSetup {
            factored: false,
            shared: Shared::Mmoe {
                experts: 2,
                mlp: setup.shared.mlp().clone(),
            },
            ..setup
        }
    }

    fn experiment_and_params() -> (MtlExperiment, Vec<Tensor>) {
        experiment_and_params_of(setup())
    }

    fn experiment_and_params_of(setup: MtlSetup) -> (MtlExperiment, Vec<Tensor>) {
        let experiment = MtlExperiment::new(setup, &DataRoot::empty()).unwrap();
        let values = experiment.layout().init(5);
        let params = leaf_parameters(experiment.layout(), &values, Device::Cpu);
        (experiment, params)
    }

    fn rows(tasks: Vec<u32>, first: u64, count: u32) -> v1::TaskDescriptor {
        v1::TaskDescriptor {
            index: first,
            data_seed: 99,
            task: Some(task_descriptor::Task::Rows(v1::RowBatch {
                tasks,
                first,
                count,
                split: v1::RowSplit::Train as i32,
            })),
        }
    }

    fn chunk(phase: Phase, tasks: Vec<v1::TaskDescriptor>) -> WorkChunk {
        WorkChunk {
            chunk_id: 3,
            experiment_id: "mtl-1".into(),
            version: 0,
            phase: phase as i32,
            inner_steps: 0,
            tasks,
        }
    }

    /// A tiny network on 7 rows of 3 inputs: shared layers 3 -> 4 -> 3 (with `experts`, that
    /// many experts of that shape), then per task its gate over the experts (if any) and its
    /// head. Two tasks: 2 regression outputs and 3 classes.
    struct Tiny {
        params: Vec<Tensor>,
        experts: Option<usize>,
        x: Tensor,
        losses: [TaskLoss; 2],
        targets: [Tensor; 2],
    }

    impl Tiny {
        fn new(kind: Kind, experts: Option<usize>) -> Tiny {
            let mut shapes: Vec<Vec<i64>> = Vec::new();
            for _ in 0..experts.unwrap_or(1) {
                shapes.extend([vec![4, 3], vec![4], vec![3, 4], vec![3]]);
            }
            for outputs in [2, 3] {
                if let Some(e) = experts {
                    shapes.extend([vec![e as i64, 3], vec![e as i64]]);
                }
                shapes.extend([vec![outputs, 3], vec![outputs]]);
            }
            let shapes: Vec<&[i64]> = shapes.iter().map(Vec::as_slice).collect();
            Tiny {
                params: params(&shapes, 11, kind),
                experts,
                x: Tensor::randn([7, 3], (kind, Device::Cpu)),
                losses: [TaskLoss::Mse, TaskLoss::CrossEntropy],
                targets: [
                    Tensor::randn([7, 2], (kind, Device::Cpu)),
                    Tensor::from_slice(&[0i64, 2, 1, 1, 0, 2, 2]),
                ],
            }
        }

        /// Tensors of the shared part, which come first.
        fn shared_count(&self) -> usize {
            4 * self.experts.unwrap_or(1)
        }

        /// Tensors of each task's own part.
        fn own_count(&self) -> usize {
            if self.experts.is_some() {
                4
            } else {
                2
            }
        }

        fn body<'a>(&self, shared: &'a [Tensor]) -> Body<'a> {
            match self.experts {
                None => Body::Hard(shared),
                Some(_) => Body::Mmoe(shared.chunks_exact(4).collect()),
            }
        }

        /// `tasks` of the two, each scored with its own tensors, the next of `own`.
        fn scored<'a>(&self, own: &'a [Tensor], tasks: &[usize]) -> Vec<Scored<'a>> {
            let n = self.own_count();
            tasks
                .iter()
                .zip(own.chunks_exact(n))
                .map(|(&t, own)| Scored {
                    loss: self.losses[t],
                    gate: self.experts.map(|_| [&own[0], &own[1]]),
                    head: [&own[n - 2], &own[n - 1]],
                    target: self.targets[t].shallow_clone(),
                })
                .collect()
        }

        /// Both paths' totals of both tasks.
        fn totals(&self, path: Path) -> Totals {
            let (shared, own) = self.params.split_at(self.shared_count());
            let (body, tasks) = (self.body(shared), self.scored(own, &[0, 1]));
            match path {
                Path::Batched => batched::run(&body, &self.x, &tasks, true, false),
                Path::PerTask => per_task::run(&body, &self.x, &tasks, true),
            }
        }
    }

    #[test]
    fn the_toy_problems_rows_each_score_the_points_exact_losses() {
        let task = |name: &str| MtlTask {
            name: name.into(),
            loss: TaskLoss::Mse,
            outputs: 0,
        };
        let setup = MtlSetup {
            factored: false,
            experiment_id: "mtl-1".into(),
            data: MtlData::ParetoToy,
            shared: Shared::Point { start: [2.0, 0.7] },
            tasks: vec![task("f1"), task("f2")],
        };
        let experiment = MtlExperiment::new(setup, &DataRoot::empty()).unwrap();
        let values = experiment.layout().init(0);
        assert_eq!(values, [2.0, 0.7]);
        let params = leaf_parameters(experiment.layout(), &values, Device::Cpu);
        let totals = experiment
            .run(
                &chunk(Phase::Train, vec![rows(vec![1, 0], 0, 3)]),
                &params,
                Path::Batched,
            )
            .unwrap()
            .task_totals;
        let (f, g) = pareto_toy::losses([2.0f32 as f64, 0.7f32 as f64]);
        for (entry, t) in totals.iter().zip([1, 0]) {
            assert_eq!(entry.task, t as u32);
            assert!((entry.metric_sum - 3.0 * f[t]).abs() < 1e-9);
            assert!((entry.loss_sum - 3.0 * (f[t] + pareto_toy::LOSS_SHIFT)).abs() < 1e-9);
            let grad = f32s_from_bytes(&entry.shared_grad).unwrap();
            assert_eq!(grad, g[t].map(|d| (3.0 * d) as f32));
            assert!(entry.head_grad.is_empty());
        }
    }

    #[test]
    fn a_factored_chunk_carries_inputs_and_deltas_whose_products_are_the_dense_gradients() {
        let dense_setup = setup();
        let (dense, params) = experiment_and_params_of(dense_setup.clone());
        let factored = MtlExperiment::new(
            MtlSetup {
                factored: true,
                ..dense_setup.clone()
            },
            &DataRoot::empty(),
        )
        .unwrap();
        let (tasks, count) = (vec![2, 0], 7usize);
        for path in [Path::Batched, Path::PerTask] {
            let train = chunk(Phase::Train, vec![rows(tasks.clone(), 3, count as u32)]);
            let want = dense.run(&train, &params, path).unwrap();
            let got = factored.run(&train, &params, path).unwrap();
            // 4 -> 6 -> 5: inputs of 4 and 6 values per row, deltas of 6 and 5.
            let inputs = f32s_from_bytes(&got.shared_inputs).unwrap();
            assert_eq!(inputs.len(), count * (4 + 6));
            assert!(want.shared_inputs.is_empty());
            for (w, g) in want.task_totals.iter().zip(&got.task_totals) {
                assert_eq!(
                    (g.task, g.loss_sum, g.head_grad.clone()),
                    (w.task, w.loss_sum, w.head_grad.clone())
                );
                assert!(g.shared_grad.is_empty() && w.shared_deltas.is_empty());
                let deltas = f32s_from_bytes(&g.shared_deltas).unwrap();
                assert_eq!(deltas.len(), count * (6 + 5));
                // Per layer: weight[o][i] = Σ_r delta[r][o] input[r][i]; bias[o] = Σ_r delta[r][o].
                let mut expanded = Vec::new();
                let (mut input_at, mut delta_at) = (0, 0);
                for (fan_in, fan_out) in [(4, 6), (6, 5)] {
                    let input = &inputs[input_at..input_at + count * fan_in];
                    let delta = &deltas[delta_at..delta_at + count * fan_out];
                    for o in 0..fan_out {
                        for i in 0..fan_in {
                            expanded.push(
                                (0..count)
                                    .map(|r| {
                                        delta[r * fan_out + o] as f64 * input[r * fan_in + i] as f64
                                    })
                                    .sum::<f64>(),
                            );
                        }
                    }
                    for o in 0..fan_out {
                        expanded.push((0..count).map(|r| delta[r * fan_out + o] as f64).sum());
                    }
                    (input_at, delta_at) = (input_at + count * fan_in, delta_at + count * fan_out);
                }
                let dense_grad: Vec<f64> = f32s_from_bytes(&w.shared_grad)
                    .unwrap()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                assert_close(&expanded, &dense_grad, 1e-5);
            }
            // Evaluation carries no gradients in either form.
            let eval = factored
                .run(
                    &chunk(Phase::Eval, vec![rows(tasks.clone(), 3, 4)]),
                    &params,
                    path,
                )
                .unwrap();
            assert!(eval.shared_inputs.is_empty());
            assert!(eval.task_totals.iter().all(|t| t.shared_deltas.is_empty()));
        }
        // One batch of rows per factored chunk: the inputs are the chunk's rows.
        let two = chunk(Phase::Train, vec![rows(vec![0], 0, 2), rows(vec![0], 2, 2)]);
        let error = factored.run(&two, &params, Path::Batched).unwrap_err();
        assert!(error.contains("holds 2 batches of rows"), "{error}");
    }

    #[test]
    fn each_tasks_wire_bytes_are_its_rows_of_the_pieces_in_order() {
        let a = Tensor::from_slice(&[1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0]).view([2, 3]);
        let b = Tensor::from_slice(&[7.0f32, 8.0, 9.0, 10.0]).view([2, 2]);
        let bytes = shared_bytes(&[a, b], 2).unwrap();
        let values: Vec<Vec<f32>> = bytes.iter().map(|b| f32s_from_bytes(b).unwrap()).collect();
        assert_eq!(
            values,
            [[1.0, 2.0, 3.0, 7.0, 8.0], [4.0, 5.0, 6.0, 9.0, 10.0]]
        );
    }

    /// The shared-layer pieces side by side: `[tasks, shared values]`.
    fn joined(pieces: &[Tensor]) -> Tensor {
        Tensor::cat(pieces, 1)
    }

    fn all(totals: &Totals) -> [Vec<f64>; 4] {
        let (shared, heads) = totals.grads.as_ref().unwrap();
        [
            flat(&[totals.loss_sums.shallow_clone()]),
            flat(&[totals.metric_sums.shallow_clone()]),
            flat(&[joined(shared)]),
            flat(&[heads.shallow_clone()]),
        ]
    }

    #[test]
    fn the_batched_path_equals_per_task_autograd() {
        // Shared values of one MLP: (3+1)*4 + (4+1)*3 = 31; heads (3+1)*2 and (3+1)*3; a gate
        // over three experts (3+1)*3.
        for (experts, shared, own) in [(None, 31, 8 + 12), (Some(3), 3 * 31, 2 * 12 + 8 + 12)] {
            let tiny = Tiny::new(Kind::Float, experts);
            let batched = tiny.totals(Path::Batched);
            let per_task = tiny.totals(Path::PerTask);
            for (got, want) in all(&batched).iter().zip(&all(&per_task)) {
                assert_close(got, want, 1e-5);
            }
            let (shared_grads, own_grads) = batched.grads.as_ref().unwrap();
            assert_eq!(joined(shared_grads).size(), [2, shared], "{experts:?}");
            assert_eq!(own_grads.size(), [own], "{experts:?}");
        }
    }

    #[test]
    fn per_task_gradients_match_finite_differences() {
        for experts in [None, Some(2), Some(3)] {
            let tiny = Tiny::new(Kind::Double, experts);
            let totals = tiny.totals(Path::PerTask);
            let (shared_grads, own_grads) = totals.grads.as_ref().unwrap();
            let (shared_count, n) = (tiny.shared_count(), tiny.own_count());
            let mut start = 0;
            for t in 0..2 {
                // The task's loss sum as a function of the shared tensors and its own.
                let own = &tiny.params[shared_count + n * t..shared_count + n * (t + 1)];
                let theta: Vec<Tensor> = tiny.params[..shared_count]
                    .iter()
                    .chain(own)
                    .map(Tensor::shallow_clone)
                    .collect();
                let loss_sum = |theta: &[Tensor]| {
                    let (shared, own) = theta.split_at(shared_count);
                    let tasks = tiny.scored(own, &[t]);
                    let totals = per_task::run(&tiny.body(shared), &tiny.x, &tasks, false);
                    totals.loss_sums.double_value(&[0])
                };
                let want = finite_differences(&theta, loss_sum);
                let own_len: i64 = own.iter().map(Tensor::numel).sum::<usize>() as i64;
                let got = flat(&[
                    joined(shared_grads).get(t as i64),
                    own_grads.narrow(0, start, own_len),
                ]);
                start += own_len;
                assert_close(&got, &want, 1e-6);
            }
        }
    }

    #[test]
    fn conv4_per_task_gradients_match_finite_differences() {
        let shape = Conv4 {
            channels: 1,
            image_size: 16,
            filters: 2,
            output: 0,
        };
        let kind = Kind::Double;
        let mut shapes = conv_body::block_shapes(&shape);
        let features = shape.features() as i64;
        for _ in 0..2 {
            shapes.extend([vec![3, features], vec![3]]);
        }
        let shapes: Vec<&[i64]> = shapes.iter().map(Vec::as_slice).collect();
        let params = params(&shapes, 11, kind);
        let (blocks, heads) = params.split_at(conv_body::TENSORS);
        let x = Tensor::randn([6, 256], (kind, Device::Cpu));
        let targets: Vec<Tensor> = (0..2)
            .map(|_| Tensor::randn([6, 3], (kind, Device::Cpu)))
            .collect();
        fn scored<'a>(heads: &'a [Tensor], targets: &[Tensor], tasks: &[usize]) -> Vec<Scored<'a>> {
            tasks
                .iter()
                .map(|&t| Scored {
                    loss: TaskLoss::Mse,
                    gate: None,
                    head: [&heads[2 * t], &heads[2 * t + 1]],
                    target: targets[t].shallow_clone(),
                })
                .collect()
        }
        let body = Body::Conv4(blocks, shape.clone());
        let totals = per_task::run(&body, &x, &scored(heads, &targets, &[0, 1]), true);
        let (shared_grads, own_grads) = totals.grads.as_ref().unwrap();
        let own_len = 3 * features + 3;
        for t in 0..2 {
            let theta: Vec<Tensor> = blocks
                .iter()
                .chain(&heads[2 * t..2 * t + 2])
                .map(Tensor::shallow_clone)
                .collect();
            let loss_sum = |theta: &[Tensor]| {
                let (blocks, head) = theta.split_at(conv_body::TENSORS);
                let mut heads: Vec<Tensor> = heads.iter().map(Tensor::shallow_clone).collect();
                heads[2 * t] = head[0].shallow_clone();
                heads[2 * t + 1] = head[1].shallow_clone();
                let body = Body::Conv4(blocks, shape.clone());
                let totals = per_task::run(&body, &x, &scored(&heads, &targets, &[t]), false);
                totals.loss_sums.double_value(&[0])
            };
            let want = finite_differences(&theta, loss_sum);
            let got = flat(&[
                joined(shared_grads).get(t as i64),
                own_grads.narrow(0, own_len * t as i64, own_len),
            ]);
            assert_close(&got, &want, 1e-6);
        }
    }

    #[test]
    fn two_chunks_of_rows_sum_to_one_chunk() {
        for (setup, path) in [
            (setup(), Path::Batched),
            (setup(), Path::PerTask),
            (mmoe_setup(), Path::Batched),
            (mmoe_setup(), Path::PerTask),
        ] {
            let (experiment, params) = experiment_and_params_of(setup);
            let whole = experiment
                .run(
                    &chunk(Phase::Train, vec![rows(vec![2, 0], 10, 9)]),
                    &params,
                    path,
                )
                .unwrap()
                .task_totals;
            let parts = experiment
                .run(
                    &chunk(
                        Phase::Train,
                        vec![rows(vec![2, 0], 10, 4), rows(vec![2, 0], 14, 5)],
                    ),
                    &params,
                    path,
                )
                .unwrap()
                .task_totals;
            assert_eq!(parts.len(), 4);
            for (i, w) in whole.iter().enumerate() {
                let (a, b) = (&parts[i], &parts[i + 2]);
                assert_eq!((a.task, b.task), (w.task, w.task));
                let sum = a.loss_sum + b.loss_sum;
                assert!(
                    (sum - w.loss_sum).abs() < 1e-5 * w.loss_sum.abs(),
                    "{path:?}"
                );
                let sum = a.metric_sum + b.metric_sum;
                assert!((sum - w.metric_sum).abs() < 1e-5 * w.metric_sum.abs());
                for grad in [
                    |t: &v1::TaskTotals| t.shared_grad.clone(),
                    |t: &v1::TaskTotals| t.head_grad.clone(),
                ] {
                    let values = |t| -> Vec<f64> {
                        f32s_from_bytes(&grad(t))
                            .unwrap()
                            .iter()
                            .map(|&v| v as f64)
                            .collect()
                    };
                    let summed: Vec<f64> = values(a)
                        .iter()
                        .zip(values(b))
                        .map(|(a, b)| a + b)
                        .collect();
                    assert_close(&summed, &values(w), 1e-5);
                }
            }
        }
    }

    #[test]
    fn totals_have_the_layouts_lengths_and_eval_has_no_gradients() {
        for setup in [setup(), mmoe_setup()] {
            let (experiment, params) = experiment_and_params_of(setup.clone());
            // What the wire carries must be what the coordinator cuts the parameters into.
            assert_eq!(params.len(), setup.layout().slots.len());
            let train = experiment
                .run(
                    &chunk(Phase::Train, vec![rows(vec![1, 2], 0, 6)]),
                    &params,
                    Path::Batched,
                )
                .unwrap()
                .task_totals;
            assert_eq!(train.iter().map(|t| t.task).collect::<Vec<_>>(), [1, 2]);
            for t in &train {
                assert_eq!(
                    f32s_from_bytes(&t.shared_grad).unwrap().len(),
                    setup.shared_len()
                );
                assert_eq!(
                    f32s_from_bytes(&t.head_grad).unwrap().len(),
                    setup.head_range(t.task as usize).len()
                );
                assert!(t.loss_sum > 0.0 && t.loss_sum == t.metric_sum);
            }
            let eval = experiment
                .run(
                    &chunk(Phase::Eval, vec![rows(vec![1, 2], 0, 6)]),
                    &params,
                    Path::Batched,
                )
                .unwrap()
                .task_totals;
            for (e, t) in eval.iter().zip(&train) {
                assert!(e.shared_grad.is_empty() && e.head_grad.is_empty());
                assert!((e.loss_sum - t.loss_sum).abs() < 1e-6 * t.loss_sum);
            }
        }
        // Two experts of (4+1)*6 + (6+1)*5 = 65 values; each task's gate (4+1)*2, head (5+1)*3.
        let mmoe = mmoe_setup();
        assert_eq!(mmoe.shared_len(), 130);
        assert_eq!(mmoe.head_range(1), 130 + 28..130 + 56);
    }

    #[test]
    fn bad_batches_of_rows_are_errors_not_panics() {
        let (experiment, params) = experiment_and_params();
        let error = |descriptor| {
            experiment
                .run(
                    &chunk(Phase::Train, vec![descriptor]),
                    &params,
                    Path::Batched,
                )
                .unwrap_err()
        };
        let unknown = error(rows(vec![0, 99], 0, 4));
        assert!(
            unknown.contains("task 99") && unknown.contains("3 tasks"),
            "{unknown}"
        );
        assert!(error(rows(vec![0], 0, 0)).contains("count above 0"));
        assert!(error(rows(vec![], 0, 4)).contains("names no task"));
        assert!(error(rows(vec![0], u64::MAX, 4)).contains("more than a worker"));
        let sinusoid = v1::TaskDescriptor {
            index: 4,
            data_seed: 1,
            task: Some(task_descriptor::Task::Sinusoid(v1::SinusoidTask {
                amplitude: 1.0,
                phase: 0.0,
            })),
        };
        assert!(error(sinusoid).contains("not a batch of rows"));
    }

    #[test]
    fn setups_the_data_cannot_serve_are_refused() {
        let mut classifier = setup();
        classifier.tasks[1].loss = TaskLoss::CrossEntropy;
        let invalid = |setup| match MtlExperiment::new(setup, &DataRoot::empty()) {
            Err(EngineError::Invalid(message)) => message,
            Err(other) => panic!("not invalid: {other}"),
            Ok(_) => panic!("accepted"),
        };
        assert!(invalid(classifier).contains("\"b\""));
        let mut wide = setup();
        wide.shared = Shared::Hard(Mlp {
            input: 7,
            ..wide.shared.mlp().clone()
        });
        assert!(invalid(wide).contains("7 inputs"));
        let mut no_sigma = setup();
        no_sigma.tasks.push(no_sigma.tasks[0].clone());
        assert!(invalid(no_sigma).contains("names 3 of its tasks for 4 tasks"));
    }
}
