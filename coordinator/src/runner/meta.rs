//! Meta-learning experiments: the outer loop over meta-batches, the outer update, evaluations and results.

use std::time::Instant;

use outerloop_proto::f32s_to_bytes;
use outerloop_proto::model::ParamLayout;
use outerloop_proto::v1::{self, ChunkResult, ExperimentSetup, Phase};
use serde_json::json;

use super::checkpoint::{self, Checkpoint, RunState};
use super::{chunk_sizes, critical_compute, RunError};
use crate::aggregate::{check_chunk, reduce, RoundTotals};
use crate::dispatch::{DatasetVersion, Dispatcher, ResultCheck, RoundInput};
use crate::finite::all_finite;
use crate::optimizer::OuterOptimizer;
use crate::registry::{Job, Registry};
use crate::sampling::{self, Sampler, Split};
use crate::spec::Spec;
use crate::stats::MeanCi;
use crate::store::{EvalRecord, MetricsWriter};

/// Runs a meta-learning experiment from its checkpoint (if any) to its final evaluation.
pub(super) async fn train(
    job: &Job,
    spec: &Spec,
    registry: &Registry,
    dispatcher: &Dispatcher,
) -> Result<(), RunError> {
    Run::new(job, spec, registry, dispatcher)
        .await?
        .train()
        .await
}

/// The state of one experiment's outer loop.
struct Run<'a> {
    job: &'a Job,
    spec: &'a Spec,
    registry: &'a Registry,
    dispatcher: &'a Dispatcher,
    layout: ParamLayout,
    sampler: Box<dyn Sampler>,
    /// The set-up in its wire form, built once: every round carries it.
    setup: ExperimentSetup,
    /// The dataset (and version) a worker must hold to compute this experiment's rounds.
    dataset: Option<DatasetVersion>,
    /// Away on a blocking thread while a step's update runs, home otherwise.
    learner: Option<Learner>,
    /// Outer steps done; also the parameter version workers cache by.
    step: u64,
    train_seconds: f64,
    /// `train_seconds` at the last checkpoint (or the start).
    checkpointed_at: f64,
    metrics: MetricsWriter,
}

/// Where a run starts: from scratch, or from the last checkpoint of an interrupted run.
struct Start {
    params: Vec<f32>,
    optimizer: OuterOptimizer,
    step: u64,
    train_seconds: f64,
}

impl<'a> Run<'a> {
    async fn new(
        job: &'a Job,
        spec: &'a Spec,
        registry: &'a Registry,
        dispatcher: &'a Dispatcher,
    ) -> Result<Self, RunError> {
        let layout = spec.layout();
        let fresh = || Start {
            params: layout.init(sampling::init_seed(spec.seed)),
            optimizer: OuterOptimizer::new(&spec.meta, layout.param_count()),
            step: 0,
            train_seconds: 0.0,
        };
        let start = match resume(job, spec, registry, &layout) {
            Ok(Some(start)) => start,
            Ok(None) => fresh(),
            Err(e) => {
                // Starting over gives the same result (everything is deterministic), only later.
                tracing::warn!(id = %job.id, error = %e, "unusable checkpoint; starting from step 0");
                fresh()
            }
        };
        let manifest = registry.store().manifest(&job.id)?;
        let sampler = sampling::for_spec(spec, manifest.as_ref()).map_err(RunError::Sampling)?;
        let meta_batch = spec.meta.meta_batch as u64;
        let (step, seconds) = (start.step, start.train_seconds);
        let metrics = super::begin(registry, &job.id, step, move |r, last_eval| {
            r.step = step;
            r.tasks_done = step * meta_batch;
            r.train_seconds = seconds;
            r.last_eval = last_eval;
        })
        .await?;
        Ok(Run {
            job,
            spec,
            registry,
            dispatcher,
            setup: (&spec.setup(&job.id)).into(),
            dataset: spec.task.images().map(|i| DatasetVersion {
                name: i.dataset.clone(),
                fingerprint: i.fingerprint.clone().unwrap_or_default(),
            }),
            sampler,
            learner: Some(Learner {
                params: start.params,
                optimizer: start.optimizer,
            }),
            step: start.step,
            train_seconds: start.train_seconds,
            checkpointed_at: start.train_seconds,
            metrics,
            layout,
        })
    }

    fn spec(&self) -> &Spec {
        self.spec
    }

    async fn train(&mut self) -> Result<(), RunError> {
        let spec = self.spec().clone();
        let (meta_batch, every) = (spec.meta.meta_batch as u64, spec.eval.every);
        if self.step == 0 {
            self.evaluate(Split::Eval, spec.eval.tasks).await?;
        } else {
            tracing::info!(id = %self.job.id, step = self.step, "resuming from the checkpoint");
        }
        // Every meta-batch is cut the same way.
        let sizes = chunk_sizes(meta_batch, spec.meta.chunk_tasks as u64);
        while self.step < spec.meta.steps {
            let started = Instant::now();
            let chunks = self.descriptors(Split::Train, self.step, &sizes);
            let out = match self
                .round(Phase::Train, spec.meta.inner_steps(), chunks)
                .await
            {
                // Nothing of this step was applied: the checkpoint is of the last whole one.
                Err(RunError::Stopping) => {
                    self.checkpoint().await?;
                    return Err(RunError::Stopping);
                }
                out => out?,
            };
            let (workers, critical) = critical_compute(&out);
            let lr = spec.meta.lr_at(self.step);
            let update = OuterUpdate {
                sizes: sizes.clone(),
                param_count: self.layout.param_count(),
                meta_batch,
                step: self.step,
                lr,
            };
            let values = self.layout.param_count();
            let stepped = super::update_off_runtime(&mut self.learner, values, move |learner| {
                update.apply(learner, &out.results)
            })
            .await?;
            let Stepped { totals, meta_loss } = stepped?;
            self.step += 1;
            let step_seconds = started.elapsed().as_secs_f64();
            self.train_seconds += step_seconds;
            let meta_accuracy = (!totals.accuracy_after.is_empty())
                .then(|| MeanCi::of(&totals.accuracy_after).mean);
            let mut line = json!({
                "kind": "train",
                "step": self.step,
                "meta_loss": meta_loss,
                "loss_before": MeanCi::of(&totals.loss_before).mean,
                "lr": lr,
                "step_seconds": step_seconds,
                "compute_seconds": totals.compute_seconds,
                "critical_compute_seconds": critical,
                "workers": workers,
            });
            if let Some(accuracy) = meta_accuracy {
                line["accuracy"] = json!(accuracy);
                line["accuracy_before"] = json!(MeanCi::of(&totals.accuracy_before).mean);
            }
            super::append_metrics(&mut self.metrics, &self.job.id, &line).await?;
            let (step, train_seconds) = (self.step, self.train_seconds);
            self.registry.update(&self.job.id, |r| {
                r.step = step;
                r.tasks_done = step * meta_batch;
                r.train_seconds = train_seconds;
                r.meta_loss = Some(meta_loss);
                r.meta_accuracy = meta_accuracy;
            });
            let evaluated = self.step.is_multiple_of(every);
            if evaluated {
                self.evaluate(Split::Eval, spec.eval.tasks).await?;
            }
            let since = self.train_seconds - self.checkpointed_at;
            if checkpoint::due(&spec.checkpoint, self.step, evaluated, since) {
                self.checkpoint().await?;
            }
        }
        let last = self.evaluate(Split::Final, spec.eval.final_tasks).await?;
        let extra = last
            .accuracy_mean
            .map(|a| ("final_eval_accuracy_mean", a.to_string()));
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

    fn learner(&self) -> &Learner {
        self.learner
            .as_ref()
            .expect("the learner is home between steps")
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

    /// Saves what resuming needs: parameters, optimizer state, step and training time.
    async fn checkpoint(&mut self) -> Result<(), RunError> {
        // Metrics up to this step must be on disk before the checkpoint claims them.
        super::flush_metrics(&mut self.metrics, &self.job.id).await?;
        let keep = self.spec.checkpoint.keep;
        checkpoint::write(self.registry.store(), &self.job.id, self.state(), keep, []).await?;
        self.checkpointed_at = self.train_seconds;
        Ok(())
    }

    /// Adapts on `tasks` held-out tasks of `split` and records the post-adaptation loss.
    async fn evaluate(&mut self, split: Split, tasks: u32) -> Result<EvalRecord, RunError> {
        let (spec, step) = (self.spec().clone(), self.step);
        let sizes = chunk_sizes(tasks as u64, spec.eval.chunk_tasks.unwrap_or(1) as u64);
        // Periodic evaluations reuse the same held-out tasks (step 0 of their split), so that
        // the learning curve compares like with like.
        let chunks = self.descriptors(split, 0, &sizes);
        let out = self
            .round(Phase::Eval, spec.eval_inner_steps(), chunks)
            .await?;
        let totals = reduce(&out.results, &sizes, None)?;
        let after = MeanCi::of(&totals.loss_after);
        let classified = !totals.accuracy_after.is_empty();
        let accuracy = MeanCi::of(&totals.accuracy_after);
        let record = EvalRecord {
            step,
            loss_mean: after.mean,
            loss_ci95: after.ci95,
            tasks: tasks as u64,
            loss_before_mean: MeanCi::of(&totals.loss_before).mean,
            r#final: split == Split::Final,
            accuracy_mean: classified.then_some(accuracy.mean),
            accuracy_ci95: classified.then_some(accuracy.ci95),
            accuracy_before_mean: classified.then(|| MeanCi::of(&totals.accuracy_before).mean),
            task_scores: None,
            delta_m_percent: None,
        };
        tracing::info!(id = %self.job.id, step, loss = record.loss_mean, ci95 = record.loss_ci95, accuracy = ?record.accuracy_mean, tasks, final_eval = record.r#final, "evaluated");
        super::record_eval(&mut self.metrics, self.registry, &self.job.id, &record).await?;
        Ok(record)
    }

    fn descriptors(
        &self,
        split: Split,
        step: u64,
        sizes: &[usize],
    ) -> Vec<Vec<v1::TaskDescriptor>> {
        let mut next = 0u64;
        sizes
            .iter()
            .map(|&size| {
                let chunk = (next..next + size as u64)
                    .map(|i| (&self.sampler.draw(split, step, i)).into())
                    .collect();
                next += size as u64;
                chunk
            })
            .collect()
    }

    /// Dispatches one round at the current parameters; stops early when cancelled.
    async fn round(
        &self,
        phase: Phase,
        inner_steps: u32,
        chunks: Vec<Vec<v1::TaskDescriptor>>,
    ) -> Result<crate::dispatch::RoundOutput, RunError> {
        // Each result is checked as it arrives: what `reduce` will read, and finite values.
        let tasks: Vec<usize> = chunks.iter().map(Vec::len).collect();
        let params = (phase == Phase::Train).then(|| self.layout.param_count());
        let check = ResultCheck::new(move |index, result| {
            check_chunk(index, result, tasks[index], params).map_err(|e| e.to_string())
        });
        let input = RoundInput {
            setup: self.setup.clone(),
            dataset: self.dataset.clone(),
            version: self.step,
            params: f32s_to_bytes(&self.learner().params),
            phase,
            inner_steps,
            chunks,
            check,
            weight: self.job.spec.weight(),
        };
        super::round(self.job, self.dispatcher, input).await
    }
}

/// What every step changes: the meta-parameters and the outer optimizer's state.
struct Learner {
    params: Vec<f32>,
    optimizer: OuterOptimizer,
}

/// One outer update, with everything it reads of the run owned, so that it can run on a
/// blocking thread.
struct OuterUpdate {
    /// Tasks of each chunk of the meta-batch.
    sizes: Vec<usize>,
    param_count: usize,
    meta_batch: u64,
    /// The step being taken (0-based).
    step: u64,
    lr: f32,
}

/// What an outer update leaves for the metrics: the round's totals (their gradient spent) and
/// the meta-loss.
struct Stepped {
    totals: RoundTotals,
    meta_loss: f64,
}

impl OuterUpdate {
    /// Reduces the round's `results` and applies the mean meta-gradient to `learner`.
    /// Diverged values never reach the parameters.
    fn apply(&self, learner: &mut Learner, results: &[ChunkResult]) -> Result<Stepped, RunError> {
        let mut totals = reduce(results, &self.sizes, Some(self.param_count))?;
        // The meta-gradient is the mean over the meta-batch, as in MAML's outer update (for
        // Reptile, the mean of the tasks' updates `theta - adapted`).
        let scale = 1.0 / self.meta_batch as f32;
        let mut grad = std::mem::take(&mut totals.grad_sum);
        for g in &mut grad {
            *g *= scale;
        }
        let meta_loss = MeanCi::of(&totals.loss_after).mean;
        // Checked before the update, so diverged values never reach the parameters.
        if !meta_loss.is_finite() || !all_finite(&grad) {
            return Err(RunError::Diverged {
                step: self.step + 1,
                what: "meta-loss".into(),
                value: meta_loss,
                hint: "try a smaller meta.meta_lr or meta.inner_lr",
            });
        }
        (learner.optimizer)
            .step(&mut learner.params, &grad, self.lr)
            .map_err(|o| {
                super::overflowed(
                    self.step + 1,
                    o,
                    "an absurd gradient, or try a smaller meta.meta_lr",
                )
            })?;
        Ok(Stepped { totals, meta_loss })
    }
}

/// The state saved by the last checkpoint of `job`, if it has one.
fn resume(
    job: &Job,
    spec: &Spec,
    registry: &Registry,
    layout: &ParamLayout,
) -> Result<Option<Start>, String> {
    let Some(saved) = Checkpoint::read(registry.store(), &job.id, layout)? else {
        return Ok(None);
    };
    let mut optimizer = OuterOptimizer::new(&spec.meta, layout.param_count());
    saved.restore_optimizer(&mut optimizer)?;
    Ok(Some(Start {
        params: saved.params,
        optimizer,
        step: saved.step,
        train_seconds: saved.train_seconds,
    }))
}
