//! Multi-task experiments: each step's rows cut into chunks, every task's gradients reduced in chunk order, combined by the weighting method, then one update of shared layers and heads.

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use outerloop_proto::f32s_into_bytes;
use outerloop_proto::model::ParamLayout;
use outerloop_proto::mtl::{MtlSetup, RowBatch, RowSplit};
use outerloop_proto::v1::{self, ChunkResult, ExperimentSetup, Phase};
use outerloop_proto::work::{Task, TaskDescriptor};
use serde_json::json;

use super::checkpoint::{self, Checkpoint, RunState};
use super::{chunk_sizes, critical_compute, RunError};
use crate::dispatch::{Dispatcher, ResultCheck, RoundInput, RoundOutput};
use crate::finite::all_finite;
use crate::mtl::delta_m::delta_m_percent;
use crate::mtl::reduce::{
    check_chunk, factored_gradients, reduce_tasks, Expected, Factoring, TaskSums,
};
use crate::mtl::weighting::{Combination, StepInput, TaskGradients, Weighting, WeightingError};
use crate::optimizer::OuterOptimizer;
use crate::registry::{Job, Registry};
use crate::sampling::{self, Split};
use crate::spec::MtlSpec;
use crate::store::{EvalRecord, MetricsWriter, TaskScore};

/// Checkpoint metadata key of the weighting method's state.
const WEIGHTING_STATE: &str = "weighting_state";

/// Runs a multi-task experiment from its checkpoint (if any) to its final evaluation.
pub(super) async fn train(
    job: &Job,
    spec: &MtlSpec,
    registry: &Registry,
    dispatcher: &Dispatcher,
) -> Result<(), RunError> {
    Run::new(job, spec, registry, dispatcher)
        .await?
        .train()
        .await
}

/// The state of one multi-task run.
struct Run<'a> {
    job: &'a Job,
    spec: &'a MtlSpec,
    registry: &'a Registry,
    dispatcher: &'a Dispatcher,
    setup: MtlSetup,
    /// The set-up in its wire form, built once: every round carries it.
    wire_setup: ExperimentSetup,
    layout: ParamLayout,
    /// Where each part of the model sits, shared with the checks of results and the updates.
    shape: Arc<Shape>,
    /// Rows of the validation and test splits when the data has an end (a table's).
    held_out_rows: Option<[u64; 2]>,
    /// Away only while a step's update runs on a blocking thread.
    learner: Option<Learner>,
    /// Steps done; also the parameter version workers cache by.
    step: u64,
    train_seconds: f64,
    /// `train_seconds` at the last checkpoint (or the start).
    checkpointed_at: f64,
    metrics: MetricsWriter,
}

impl<'a> Run<'a> {
    async fn new(
        job: &'a Job,
        spec: &'a MtlSpec,
        registry: &'a Registry,
        dispatcher: &'a Dispatcher,
    ) -> Result<Self, RunError> {
        let manifest = registry.store().manifest(&job.id)?;
        let setup = spec
            .setup(&job.id, manifest.as_ref())
            .map_err(RunError::Sampling)?;
        let held_out_rows = spec
            .held_out_rows(manifest.as_ref())
            .map_err(RunError::Sampling)?;
        let layout = setup.layout();
        let start = match resume(job, spec, registry, &layout) {
            Ok(Some(start)) => start,
            Ok(None) => Start::fresh(spec, &layout),
            Err(e) => {
                // Starting over gives the same result (everything is deterministic), only later.
                tracing::warn!(id = %job.id, error = %e, "unusable checkpoint; starting from step 0");
                Start::fresh(spec, &layout)
            }
        };
        let (step, seconds, rows) = (start.step, start.train_seconds, spec.train.batch as u64);
        let metrics = super::begin(registry, &job.id, step, move |r, last_eval| {
            r.step = step;
            r.tasks_done = step * rows;
            r.train_seconds = seconds;
            r.last_eval = last_eval;
        })
        .await?;
        Ok(Run {
            job,
            spec,
            registry,
            dispatcher,
            wire_setup: (&setup).into(),
            shape: Arc::new(Shape::of(&setup, &layout, spec.task_names())),
            held_out_rows,
            learner: Some(Learner {
                params: Arc::new(start.params),
                optimizer: start.optimizer,
                weighting: start.weighting,
            }),
            step: start.step,
            train_seconds: start.train_seconds,
            checkpointed_at: start.train_seconds,
            metrics,
            setup,
            layout,
        })
    }

    async fn train(&mut self) -> Result<(), RunError> {
        let spec = self.spec;
        if self.step == 0 {
            self.evaluate(Split::Eval).await?;
        } else {
            tracing::info!(id = %self.job.id, step = self.step, "resuming from the checkpoint");
        }
        let batch = spec.train.batch as u64;
        let sizes = chunk_sizes(batch, spec.train.chunk_rows as u64);
        while self.step < spec.train.steps {
            match self.train_step(&sizes).await {
                // A step stops only in its round, before anything of it was applied: the
                // checkpoint is of the last whole step.
                Err(RunError::Stopping) => {
                    self.checkpoint().await?;
                    return Err(RunError::Stopping);
                }
                done => done?,
            }
            let evaluated = self.step.is_multiple_of(spec.eval.every);
            if evaluated {
                self.evaluate(Split::Eval).await?;
            }
            let since = self.train_seconds - self.checkpointed_at;
            if checkpoint::due(&spec.checkpoint, self.step, evaluated, since) {
                self.checkpoint().await?;
            }
        }
        let last = self.evaluate(Split::Final).await?;
        let extra = last
            .delta_m_percent
            .map(|d| ("final_eval_delta_m_percent", d.to_string()));
        super::export_final(
            self.registry,
            &self.job.id,
            &spec.name,
            &self.state(),
            &last,
            extra,
        )
        .await
    }

    /// One step: the batch's chunks computed, each task's sums reduced, the tasks combined by
    /// the weighting method, the update applied and recorded.
    async fn train_step(&mut self, sizes: &[usize]) -> Result<(), RunError> {
        let spec = self.spec;
        let batch = spec.train.batch as u64;
        let started = Instant::now();
        // Step s trains on rows [s * batch, (s + 1) * batch) of the training stream.
        let chunks = self.descriptors(Split::Train, self.step * batch, sizes);
        let out = self.round(Phase::Train, chunks, sizes).await?;
        let round_seconds = started.elapsed().as_secs_f64();
        let (workers, critical) = critical_compute(&out);
        let compute_seconds = out.results.iter().map(|r| r.compute_seconds).sum::<f64>();
        let plan = UpdatePlan {
            shape: self.shape.clone(),
            sizes: sizes.to_vec(),
            step: self.step,
            lr: spec.train.lr,
            batch,
            rng_key: sampling::task_key(spec.seed, Split::Train, self.step, u64::MAX),
        };
        let values = self.shape.param_count;
        let updated = super::update_off_runtime(&mut self.learner, values, move |learner| {
            plan.apply(learner, &out.results)
        })
        .await?;
        let Updated {
            losses,
            metrics,
            record,
            reduce_seconds,
            weighting_seconds,
        } = updated?;
        self.step += 1;
        let step_seconds = started.elapsed().as_secs_f64();
        self.train_seconds += step_seconds;
        let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let record: serde_json::Map<String, serde_json::Value> = record
            .iter()
            .map(|(name, values)| (name.to_string(), json!(values)))
            .collect();
        let line = json!({
            "kind": "train",
            "step": self.step,
            "loss": mean_loss,
            "task_losses": losses,
            "task_metrics": metrics,
            "weighting": record,
            "lr": spec.train.lr,
            "step_seconds": step_seconds,
            // Where the step went: the chunks out and back, their reduction, the method.
            "round_seconds": round_seconds,
            "reduce_seconds": reduce_seconds,
            "weighting_seconds": weighting_seconds,
            "compute_seconds": compute_seconds,
            "critical_compute_seconds": critical,
            "workers": workers,
        });
        super::append_metrics(&mut self.metrics, &self.job.id, &line).await?;
        let (step, train_seconds) = (self.step, self.train_seconds);
        self.registry.update(&self.job.id, |r| {
            r.step = step;
            r.tasks_done = step * batch;
            r.train_seconds = train_seconds;
            r.meta_loss = Some(mean_loss);
        });
        Ok(())
    }

    fn learner(&self) -> &Learner {
        self.learner
            .as_ref()
            .expect("the learner is home between steps")
    }

    /// Scores the validation rows (`Split::Eval`, the same rows every time) or the test rows
    /// (`Split::Final`) and records each task's loss and metric.
    async fn evaluate(&mut self, split: Split) -> Result<EvalRecord, RunError> {
        let spec = self.spec;
        let (asked, available) = match split {
            Split::Final => (spec.eval.final_rows, self.held_out_rows.map(|r| r[1])),
            _ => (spec.eval.rows, self.held_out_rows.map(|r| r[0])),
        };
        // A table's split has an end: all of it unless the spec asks for fewer rows.
        let rows = match (asked, available) {
            (Some(asked), Some(available)) => (asked as u64).min(available),
            (None, Some(available)) => available,
            (Some(asked), None) => asked as u64,
            (None, None) => {
                return Err(RunError::Sampling(
                    "generated data needs eval.rows and eval.final_rows".into(),
                ))
            }
        };
        let sizes = chunk_sizes(rows, spec.eval.chunk_rows as u64);
        let chunks = self.descriptors(split, 0, &sizes);
        let out = self.round(Phase::Eval, chunks, &sizes).await?;
        let sums = reduce_tasks(&out.results, self.shape.expected(false, 1.0, &sizes))?;
        let (losses, metrics) = means(&sums, rows);
        let names = spec.task_names();
        let delta_m_percent = spec.eval.baselines.as_ref().map(|baselines| {
            let base: Vec<f64> = names.iter().map(|n| baselines[n]).collect();
            let higher: Vec<bool> = self
                .setup
                .tasks
                .iter()
                .map(|t| t.loss.higher_is_better())
                .collect();
            delta_m_percent(&metrics, &base, &higher)
        });
        let mean_loss = losses.iter().sum::<f64>() / losses.len() as f64;
        let record = EvalRecord {
            step: self.step,
            loss_mean: mean_loss,
            loss_ci95: f64::NAN,
            tasks: rows,
            loss_before_mean: f64::NAN,
            r#final: split == Split::Final,
            accuracy_mean: None,
            accuracy_ci95: None,
            accuracy_before_mean: None,
            task_scores: Some(
                names
                    .into_iter()
                    .zip(losses.iter().zip(&metrics))
                    .map(|(task, (&loss, &metric))| TaskScore { task, loss, metric })
                    .collect(),
            ),
            delta_m_percent,
        };
        tracing::info!(id = %self.job.id, step = self.step, loss = mean_loss, delta_m = ?delta_m_percent, rows, final_eval = record.r#final, "evaluated");
        super::record_eval(&mut self.metrics, self.registry, &self.job.id, &record).await?;
        Ok(record)
    }

    /// Chunks of `sizes` rows from row `first` of `split`'s stream, each scored for every task.
    fn descriptors(
        &self,
        split: Split,
        first: u64,
        sizes: &[usize],
    ) -> Vec<Vec<v1::TaskDescriptor>> {
        let stream = sampling::row_stream(self.spec.seed, split);
        let row_split = match split {
            Split::Train => RowSplit::Train,
            Split::Eval => RowSplit::Val,
            Split::Final => RowSplit::Test,
        };
        let tasks: Vec<u32> = (0..self.setup.tasks.len() as u32).collect();
        let mut next = first;
        sizes
            .iter()
            .enumerate()
            .map(|(index, &count)| {
                let descriptor = TaskDescriptor {
                    index: index as u64,
                    data_seed: stream,
                    task: Task::Rows(RowBatch {
                        tasks: tasks.clone(),
                        first: next,
                        count: count as u32,
                        split: row_split,
                    }),
                };
                next += count as u64;
                vec![(&descriptor).into()]
            })
            .collect()
    }

    async fn round(
        &self,
        phase: Phase,
        chunks: Vec<Vec<v1::TaskDescriptor>>,
        sizes: &[usize],
    ) -> Result<RoundOutput, RunError> {
        // Each result is checked as it arrives: what the reduction will read, finite values.
        let train = phase == Phase::Train;
        let (shape, chunk_rows) = (self.shape.clone(), sizes.to_vec());
        let check = ResultCheck::new(move |index, result| {
            let expected = shape.expected(train, 1.0, &chunk_rows);
            check_chunk(index, result, &expected).map_err(|e| e.to_string())
        });
        let input = RoundInput {
            setup: self.wire_setup.clone(),
            dataset: None,
            version: self.step,
            params: f32s_into_bytes(Arc::clone(&self.learner().params)),
            phase,
            inner_steps: 0,
            chunks,
            check,
            weight: self.job.spec.weight(),
        };
        super::round(self.job, self.dispatcher, input).await
    }

    /// Saves what resuming needs: parameters, optimizer and weighting state, step and time.
    async fn checkpoint(&mut self) -> Result<(), RunError> {
        // Metrics up to this step must be on disk before the checkpoint claims them.
        super::flush_metrics(&mut self.metrics, &self.job.id).await?;
        // The weighting state is f64 and must resume bit-exactly: its values travel as bits.
        let weighting: BTreeMap<&str, Vec<u64>> = (self.learner().weighting)
            .state()
            .into_iter()
            .map(|(name, values)| (name, values.iter().map(|v| v.to_bits()).collect()))
            .collect();
        let weighting = serde_json::to_string(&weighting).map_err(io::Error::other)?;
        checkpoint::write(
            self.registry.store(),
            &self.job.id,
            self.state(),
            self.spec.checkpoint.keep,
            [(WEIGHTING_STATE.to_string(), weighting)],
        )
        .await?;
        self.checkpointed_at = self.train_seconds;
        Ok(())
    }

    /// Where the run is: what a checkpoint and the final export write.
    fn state(&self) -> RunState<'_> {
        RunState {
            layout: &self.layout,
            params: &self.learner().params,
            optimizer: &self.learner().optimizer,
            step: self.step,
            train_seconds: self.train_seconds,
        }
    }
}

/// What every step changes: the parameters, the outer optimizer's state and the weighting
/// method's.
struct Learner {
    /// Shared with the round's lease replies, whose bytes are these values (no copy a step);
    /// the round is over and the replies gone before the optimizer writes them again.
    params: Arc<Vec<f32>>,
    optimizer: OuterOptimizer,
    weighting: Box<dyn Weighting>,
}

/// Where each part of a multi-task model sits, fixed for the run.
struct Shape {
    shared_len: usize,
    /// The values of each task's head, in task order.
    head_lens: Vec<usize>,
    /// Where each task's head sits in the parameters.
    head_ranges: Vec<Range<usize>>,
    param_count: usize,
    /// The shared MLP's layers (inputs, outputs) when training chunks send their gradients
    /// factored (`MtlSetup::factored`).
    factored_layers: Option<Vec<(usize, usize)>>,
    /// Each task's name, in task order, for messages.
    task_names: Vec<String>,
}

impl Shape {
    fn of(setup: &MtlSetup, layout: &ParamLayout, task_names: Vec<String>) -> Shape {
        let head_ranges: Vec<Range<usize>> = (0..setup.tasks.len())
            .map(|t| setup.head_range(t))
            .collect();
        Shape {
            shared_len: setup.shared_len(),
            head_lens: head_ranges.iter().map(Range::len).collect(),
            head_ranges,
            param_count: layout.param_count(),
            factored_layers: setup.factored.then(|| {
                let widths = setup.shared.mlp().widths();
                widths.windows(2).map(|w| (w[0], w[1])).collect()
            }),
            task_names,
        }
    }

    /// What a round's chunks of `sizes` rows must hold; training factored when the run is.
    fn expected<'s>(&'s self, train: bool, shared_scale: f32, sizes: &'s [usize]) -> Expected<'s> {
        Expected {
            shared_len: self.shared_len,
            head_lens: &self.head_lens,
            train,
            shared_scale,
            factored: self.factoring(sizes).filter(|_| train),
            task_names: &self.task_names,
        }
    }

    /// The shapes of a factored training round of chunks of `sizes` rows.
    fn factoring<'s>(&'s self, sizes: &'s [usize]) -> Option<Factoring<'s>> {
        self.factored_layers.as_ref().map(|layers| Factoring {
            layers,
            chunk_rows: sizes,
        })
    }
}

/// One step's update, with everything it reads of the run owned, so that it can run on a
/// blocking thread.
struct UpdatePlan {
    shape: Arc<Shape>,
    /// Rows of each chunk of the step.
    sizes: Vec<usize>,
    /// The step being taken (0-based).
    step: u64,
    lr: f32,
    batch: u64,
    /// The step's counter-based key, the weighting method's only randomness.
    rng_key: u64,
}

/// What a step's update leaves for the metrics.
struct Updated {
    losses: Vec<f64>,
    metrics: Vec<f64>,
    record: Vec<(&'static str, Vec<f64>)>,
    reduce_seconds: f64,
    weighting_seconds: f64,
}

impl UpdatePlan {
    /// Reduces the round's `results` per task, combines the tasks by the weighting method and
    /// applies the outer optimizer to `learner`. Diverged values never reach the parameters.
    fn apply(&self, learner: &mut Learner, results: &[ChunkResult]) -> Result<Updated, RunError> {
        let started = Instant::now();
        let failed = |source| RunError::Weighting {
            step: self.step + 1,
            source,
        };
        // The mean loss's gradients: every sum is over the batch's rows, and the reduction
        // divides the shared ones in its last pass over them.
        let scale = 1.0 / self.batch as f32;
        let mut sums = reduce_tasks(results, self.shape.expected(true, scale, &self.sizes))?;
        let factored = match self.shape.factoring(&self.sizes) {
            // The heads' gradients follow the shared direction in the update's gradient.
            Some(factoring) => Some(
                factored_gradients(results, factoring, scale)?
                    .with_room_after(self.shape.param_count - self.shape.shared_len),
            ),
            None => None,
        };
        let (losses, metrics) = means(&sums, self.batch);
        let reduce_seconds = started.elapsed().as_secs_f64();
        let dense: Vec<Vec<f32>> = sums
            .iter_mut()
            .map(|s| std::mem::take(&mut s.shared_grad))
            .collect();
        let gradients = match &factored {
            Some(factored) => TaskGradients::Factored(factored),
            None => TaskGradients::Dense(&dense),
        };
        let weighting_started = Instant::now();
        let input = StepInput {
            step: self.step,
            losses: &losses,
            gradients,
            rng_key: self.rng_key,
        };
        let mut combination = learner.weighting.combine(&input).map_err(failed)?;
        let weighting_seconds = weighting_started.elapsed().as_secs_f64();
        let (shared_len, tasks) = (self.shape.shared_len, sums.len());
        if combination.shared.len() != shared_len || combination.head_scale.len() != tasks {
            // A method's bug, refused before it could shift the heads' gradients.
            return Err(failed(WeightingError::Shape {
                method: learner.weighting.name(),
                detail: format!(
                    "returned a direction of {} values and {} head scales for {shared_len} shared values and {tasks} tasks",
                    combination.shared.len(),
                    combination.head_scale.len()
                ),
            }));
        }
        let shared = std::mem::take(&mut combination.shared);
        let grad = self.full_gradient(shared, &combination.head_scale, &sums, scale);
        // Checked before the update, so that diverged values never reach the parameters.
        if !all_finite(&grad) {
            let index = grad.iter().position(|g| !g.is_finite()).unwrap_or(0);
            return Err(self.blame(
                index,
                grad[index],
                input.gradients,
                &combination,
                learner.weighting.name(),
            ));
        }
        (learner.optimizer)
            // A copy only if some reply still held the values (it does not, the round over).
            .step(
                Arc::<Vec<f32>>::make_mut(&mut learner.params),
                &grad,
                self.lr,
            )
            .map_err(|o| {
                super::overflowed(
                    self.step + 1,
                    o,
                    "an absurd gradient, or try a smaller train.lr",
                )
            })?;
        Ok(Updated {
            losses,
            metrics,
            record: combination.record,
            reduce_seconds,
            weighting_seconds,
        })
    }

    /// The error for value `index` of the update's gradient, not finite: it names the task
    /// whose term made it (the weight the method gave the task, and the task's own value
    /// there; every task's gradient was finite when it arrived) and what to change.
    fn blame(
        &self,
        index: usize,
        value: f32,
        gradients: TaskGradients,
        combination: &Combination,
        method: &str,
    ) -> RunError {
        let name = |t: usize| &self.shape.task_names[t];
        let what = match (self.shape.head_ranges.iter()).position(|r| r.contains(&index)) {
            Some(t) => format!(
                "the combined gradient's value {index}, in task `{}`'s head (its loss weighted {:.3e})",
                name(t),
                combination.head_scale[t]
            ),
            None => {
                let weights = (combination.record.iter())
                    .find(|(key, _)| *key == "weights")
                    .map(|(_, w)| w.as_slice());
                // The task whose term is largest (or not finite) at the value: with the
                // method's weights where it reports them, else the gradients alone.
                let term = |t: usize| {
                    let g = gradients.value(t, index);
                    let w = weights.and_then(|w| w.get(t)).copied().unwrap_or(1.0);
                    let size = (w * g).abs();
                    (if size.is_nan() { f64::INFINITY } else { size }, w, g)
                };
                let tasks = self.shape.task_names.len();
                let (t, (_, w, g)) = (0..tasks)
                    .map(|t| (t, term(t)))
                    .max_by(|(_, a), (_, b)| a.0.total_cmp(&b.0))
                    .expect("a multi-task run has tasks");
                match weights {
                    Some(_) => format!(
                        "the combined gradient's shared value {index} (task `{}` weighted {w:.3e}, its gradient there {g:.3e})",
                        name(t)
                    ),
                    None => format!(
                        "the combined gradient's shared value {index} (largest in task `{}`, {g:.3e})",
                        name(t)
                    ),
                }
            }
        };
        let hint = match method {
            "fixed" => "check weighting.weights, or try a smaller train.lr",
            "uw" | "gradnorm" | "famo" => "try a smaller weighting.lr or train.lr",
            _ => "try a smaller train.lr",
        };
        RunError::Diverged {
            step: self.step + 1,
            what,
            value: f64::from(value),
            hint,
        }
    }

    /// The update's gradient in layout order: the weighting's shared direction, then each
    /// task's head gradient (a mean over the batch) scaled as the method says.
    fn full_gradient(
        &self,
        shared: Vec<f32>,
        head_scale: &[f64],
        sums: &[TaskSums],
        scale: f32,
    ) -> Vec<f32> {
        // The shared layers come first in the layout: the heads extend their gradient (in
        // place where the direction was formed with room for them).
        let mut grad = shared;
        grad.resize(self.shape.param_count, 0.0);
        for ((sum, &weight), range) in sums.iter().zip(head_scale).zip(&self.shape.head_ranges) {
            let factor = (weight * scale as f64) as f32;
            for (g, &h) in grad[range.clone()].iter_mut().zip(&sum.head_grad) {
                *g = h * factor;
            }
        }
        grad
    }
}

/// Where a run starts: from scratch, or from the last checkpoint of an interrupted run.
struct Start {
    params: Vec<f32>,
    optimizer: OuterOptimizer,
    weighting: Box<dyn Weighting>,
    step: u64,
    train_seconds: f64,
}

impl Start {
    fn fresh(spec: &MtlSpec, layout: &ParamLayout) -> Start {
        let train = &spec.train;
        Start {
            params: layout.init(sampling::init_seed(spec.seed)),
            optimizer: OuterOptimizer::with(
                train.optimizer,
                train.momentum,
                train.betas,
                train.eps,
                layout.param_count(),
            ),
            weighting: spec.weighting.build(spec.task_names().len()),
            step: 0,
            train_seconds: 0.0,
        }
    }
}

/// The state saved by the last checkpoint of `job`, if it has one.
fn resume(
    job: &Job,
    spec: &MtlSpec,
    registry: &Registry,
    layout: &ParamLayout,
) -> Result<Option<Start>, String> {
    let Some(saved) = Checkpoint::read(registry.store(), &job.id, layout)? else {
        return Ok(None);
    };
    let mut start = Start::fresh(spec, layout);
    saved.restore_optimizer(&mut start.optimizer)?;
    let bits: BTreeMap<String, Vec<u64>> =
        serde_json::from_str(saved.metadata(WEIGHTING_STATE)?)
            .map_err(|e| format!("checkpoint weighting state: {e}"))?;
    let state = bits
        .into_iter()
        .map(|(name, values)| (name, values.into_iter().map(f64::from_bits).collect()))
        .collect();
    start.weighting.restore(&state)?;
    start.params = saved.params;
    start.step = saved.step;
    start.train_seconds = saved.train_seconds;
    Ok(Some(start))
}

/// Each task's mean loss and metric over `rows` rows.
fn means(sums: &[TaskSums], rows: u64) -> (Vec<f64>, Vec<f64>) {
    let rows = rows as f64;
    sums.iter()
        .map(|s| (s.loss_sum / rows, s.metric_sum / rows))
        .unzip()
}
