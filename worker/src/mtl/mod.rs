//! Multi-task learning on the worker: one experiment's shared layers, heads and data, turning a chunk of rows into each task's loss and metric sums and gradients.

mod batched;
mod gradnorm;
mod loss;
mod per_task;
mod rows;
mod table;
mod trunk;

use outerloop_proto::f32s_to_bytes;
use outerloop_proto::model::ParamLayout;
use outerloop_proto::mtl::{MtlSetup, RowBatch, TaskLoss};
use outerloop_proto::v1::{self, Phase, WorkChunk};
use outerloop_proto::work::{Task, TaskDescriptor};
use tch::Tensor;

pub use gradnorm::GradNorm;
pub use rows::{RowSource, Rows};

use crate::algorithms::Path;
use crate::data::DataRoot;
use crate::engine::{append_values, EngineError};

/// Input values one descriptor may ask for (1 GiB of `f32`): a larger batch of rows is a
/// coordinator bug, reported rather than allocated.
const MAX_INPUT_VALUES: u64 = 1 << 28;

/// A multi-task experiment as the engine caches it.
pub struct MtlExperiment {
    setup: MtlSetup,
    layout: ParamLayout,
    source: Box<dyn RowSource>,
}

/// One task as one descriptor scores it: its loss, its head (weight, bias), its targets.
pub(crate) struct Scored<'a> {
    loss: TaskLoss,
    head: [&'a Tensor; 2],
    target: Tensor,
}

/// What either path yields for the tasks of one descriptor.
pub(crate) struct Totals {
    /// `f64` `[tasks]`: the sums over the rows of each task's loss and metric.
    loss_sums: Tensor,
    metric_sums: Tensor,
    /// Training only: each task's gradient with respect to the shared layers,
    /// `[tasks, shared values]`, and its head's (weight then bias), flat and concatenated in
    /// task order.
    grads: Option<(Tensor, Tensor)>,
}

impl Totals {
    /// The loss and metric sums of `tasks` on the representation `features`, no gradients.
    fn scores_only(features: &Tensor, tasks: &[Scored]) -> Totals {
        let (loss_sums, metric_sums): (Vec<Tensor>, Vec<Tensor>) = tasks
            .iter()
            .map(|task| {
                let output = features.linear(task.head[0], Some(task.head[1]));
                let losses = loss::row_losses(task.loss, &output, &task.target);
                loss::sums(task.loss, &output, &task.target, &losses)
            })
            .unzip();
        Totals {
            loss_sums: Tensor::stack(&loss_sums, 0),
            metric_sums: Tensor::stack(&metric_sums, 0),
            grads: None,
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

    /// The totals of every task each of the chunk's descriptors names, descriptor after
    /// descriptor, in the order each names its tasks. `params` are the layout's tensors (leaves
    /// that require grad); `path` picks the batched backward or the per-task autograd loop.
    pub fn run(
        &self,
        chunk: &WorkChunk,
        params: &[Tensor],
        path: Path,
    ) -> Result<Vec<v1::TaskTotals>, String> {
        let train = chunk.phase == Phase::Train as i32;
        let mut totals = Vec::new();
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
            totals.extend(self.rows(descriptor.data_seed, batch, &tasks, params, path, train)?);
        }
        Ok(totals)
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
            || batch.count as u64 * self.setup.shared.input as u64 > MAX_INPUT_VALUES
        {
            return Err(format!(
                "task {index}: {} rows from row {} are more than a worker computes at once",
                batch.count, batch.first
            ));
        }
        Ok(batch.tasks.iter().map(|&t| t as usize).collect())
    }

    /// The totals of `tasks` on one batch of rows of `stream`.
    fn rows(
        &self,
        stream: u64,
        batch: &RowBatch,
        tasks: &[usize],
        params: &[Tensor],
        path: Path,
        train: bool,
    ) -> Result<Vec<v1::TaskTotals>, String> {
        let (kind, device) = (params[0].kind(), params[0].device());
        let rows = self.source.rows(stream, batch, tasks, kind, device)?;
        let shared = &params[..2 * (self.setup.shared.hidden.len() + 1)];
        let heads = &params[shared.len()..];
        let scored: Vec<Scored> = tasks
            .iter()
            .zip(rows.targets)
            .map(|(&t, target)| Scored {
                loss: self.setup.tasks[t].loss,
                head: [&heads[2 * t], &heads[2 * t + 1]],
                target,
            })
            .collect();
        let totals = match path {
            Path::Batched => batched::run(shared, &rows.x, &scored, train),
            Path::PerTask => per_task::run(shared, &rows.x, &scored, train),
        };
        let head_lens: Vec<usize> = tasks
            .iter()
            .map(|&t| self.setup.head_range(t).len())
            .collect();
        wire(totals, tasks, self.setup.shared_len(), &head_lens)
    }
}

/// The wire form of `totals`, one entry per task in `tasks` order; each task's gradients are
/// `shared_len` values and its entry of `head_lens`. Three copies off the device in all.
fn wire(
    totals: Totals,
    tasks: &[usize],
    shared_len: usize,
    head_lens: &[usize],
) -> Result<Vec<v1::TaskTotals>, String> {
    let f64s = |t: &Tensor| Vec::<f64>::try_from(t).map_err(|e| e.to_string());
    let (losses, metrics) = (f64s(&totals.loss_sums)?, f64s(&totals.metric_sums)?);
    let (mut shared, mut heads) = (Vec::new(), Vec::new());
    if let Some((s, h)) = &totals.grads {
        append_values(s, &mut shared).map_err(|e| e.to_string())?;
        append_values(h, &mut heads).map_err(|e| e.to_string())?;
        if shared.len() != tasks.len() * shared_len
            || heads.len() != head_lens.iter().sum::<usize>()
        {
            return Err(format!(
                "gradients of {} and {} values for {} tasks: the parameters do not fit the layout",
                shared.len(),
                heads.len(),
                tasks.len()
            ));
        }
    }
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
            entry.shared_grad = f32s_to_bytes(&shared[i * shared_len..(i + 1) * shared_len]);
            entry.head_grad = f32s_to_bytes(&heads[head_start..head_end]);
            head_start = head_end;
        }
        out.push(entry);
    }
    Ok(out)
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
            experiment_id: "mtl-1".into(),
            data: MtlData::GradNorm(GradNormData {
                seed: 17,
                inputs: 4,
                outputs: 3,
                sigmas: vec![1.0, 2.0, 0.5],
                tasks: Vec::new(),
            }),
            shared: Mlp {
                input: 4,
                hidden: vec![6],
                output: 5,
            },
            tasks: vec![task("a"), task("b"), task("c")],
        }
    }

    fn experiment_and_params() -> (MtlExperiment, Vec<Tensor>) {
        let experiment = MtlExperiment::new(setup(), &DataRoot::empty()).unwrap();
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

    /// Shared layers 3 -> 4 -> 3 and two heads: 2 regression outputs and 3 classes.
    fn tiny(kind: Kind) -> (Vec<Tensor>, Tensor, [TaskLoss; 2], [Tensor; 2]) {
        let params = params(
            &[&[4, 3], &[4], &[3, 4], &[3], &[2, 3], &[2], &[3, 3], &[3]],
            11,
            kind,
        );
        let x = Tensor::randn([7, 3], (kind, Device::Cpu));
        let values = Tensor::randn([7, 2], (kind, Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 2, 1, 1, 0, 2, 2]);
        (
            params,
            x,
            [TaskLoss::Mse, TaskLoss::CrossEntropy],
            [values, labels],
        )
    }

    fn scored<'a>(heads: &'a [Tensor], losses: &[TaskLoss], targets: &[Tensor]) -> Vec<Scored<'a>> {
        losses
            .iter()
            .zip(targets)
            .enumerate()
            .map(|(t, (&loss, target))| Scored {
                loss,
                head: [&heads[2 * t], &heads[2 * t + 1]],
                target: target.shallow_clone(),
            })
            .collect()
    }

    fn all(totals: &Totals) -> [Vec<f64>; 4] {
        let (shared, heads) = totals.grads.as_ref().unwrap();
        [
            flat(&[totals.loss_sums.shallow_clone()]),
            flat(&[totals.metric_sums.shallow_clone()]),
            flat(&[shared.shallow_clone()]),
            flat(&[heads.shallow_clone()]),
        ]
    }

    #[test]
    fn the_batched_path_equals_per_task_autograd() {
        let (params, x, losses, targets) = tiny(Kind::Float);
        let tasks = scored(&params[4..], &losses, &targets);
        let batched = batched::run(&params[..4], &x, &tasks, true);
        let per_task = per_task::run(&params[..4], &x, &tasks, true);
        for (got, want) in all(&batched).iter().zip(&all(&per_task)) {
            assert_close(got, want, 1e-5);
        }
        let (shared, heads) = batched.grads.as_ref().unwrap();
        assert_eq!(shared.size(), [2, 16 + 15]);
        assert_eq!(heads.size(), [(6 + 2) + (9 + 3)]);
    }

    #[test]
    fn per_task_gradients_match_finite_differences() {
        let (params, x, losses, targets) = tiny(Kind::Double);
        let tasks = scored(&params[4..], &losses, &targets);
        let totals = per_task::run(&params[..4], &x, &tasks, true);
        let (shared, heads) = totals.grads.as_ref().unwrap();
        let head_grads = [heads.narrow(0, 0, 8), heads.narrow(0, 8, 12)];
        for t in 0..2 {
            // The task's loss sum as a function of the shared layers and its own head.
            let theta: Vec<Tensor> = params[..4]
                .iter()
                .chain(&params[4 + 2 * t..6 + 2 * t])
                .map(Tensor::shallow_clone)
                .collect();
            let loss_sum = |theta: &[Tensor]| {
                let task = Scored {
                    loss: losses[t],
                    head: [&theta[4], &theta[5]],
                    target: targets[t].shallow_clone(),
                };
                let totals = per_task::run(&theta[..4], &x, &[task], false);
                totals.loss_sums.double_value(&[0])
            };
            let want = finite_differences(&theta, loss_sum);
            let got = flat(&[shared.get(t as i64), head_grads[t].shallow_clone()]);
            assert_close(&got, &want, 1e-6);
        }
    }

    #[test]
    fn two_chunks_of_rows_sum_to_one_chunk() {
        let (experiment, params) = experiment_and_params();
        for path in [Path::Batched, Path::PerTask] {
            let whole = experiment
                .run(
                    &chunk(Phase::Train, vec![rows(vec![2, 0], 10, 9)]),
                    &params,
                    path,
                )
                .unwrap();
            let parts = experiment
                .run(
                    &chunk(
                        Phase::Train,
                        vec![rows(vec![2, 0], 10, 4), rows(vec![2, 0], 14, 5)],
                    ),
                    &params,
                    path,
                )
                .unwrap();
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
        let (experiment, params) = experiment_and_params();
        let setup = setup();
        let train = experiment
            .run(
                &chunk(Phase::Train, vec![rows(vec![1, 2], 0, 6)]),
                &params,
                Path::Batched,
            )
            .unwrap();
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
            .unwrap();
        for (e, t) in eval.iter().zip(&train) {
            assert!(e.shared_grad.is_empty() && e.head_grad.is_empty());
            assert!((e.loss_sum - t.loss_sum).abs() < 1e-6 * t.loss_sum);
        }
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
        wide.shared.input = 7;
        assert!(invalid(wide).contains("7 inputs"));
        let mut no_sigma = setup();
        no_sigma.tasks.push(no_sigma.tasks[0].clone());
        assert!(invalid(no_sigma).contains("names 3 of its tasks for 4 tasks"));
    }
}
