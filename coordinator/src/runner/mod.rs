//! Runs one experiment to its end: the loop that every kind shares (rounds of chunks, cancellation, how a run ends), with each kind's plan, reduction and update in its own module.

mod checkpoint;
mod meta;
mod mtl;
mod retry;

use std::collections::HashMap;
use std::io;

use outerloop_proto::ExperimentState;

use crate::aggregate::AggregateError;
use crate::dispatch::{Dispatcher, RoundError, RoundInput, RoundOutput};
use crate::registry::{Job, Registry};
use crate::spec::ExperimentSpec;
use crate::store::{EvalRecord, ExperimentRecord, MetricsWriter};

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("cancelled")]
    Cancelled,
    #[error("stopped by the coordinator's shutdown")]
    Stopping,
    #[error(transparent)]
    Round(#[from] RoundError),
    #[error("a worker returned a malformed result: {0}")]
    Aggregate(#[from] AggregateError),
    #[error("{what} became {value} at step {step}; the run diverged ({hint})")]
    Diverged {
        step: u64,
        what: String,
        value: f64,
        hint: &'static str,
    },
    #[error("the weighting method refused step {step}: {source}; the run diverged or a worker sent bad values (try a smaller train.lr)")]
    Weighting {
        step: u64,
        source: crate::mtl::weighting::WeightingError,
    },
    #[error("the coordinator refused {round}'s results: {source}; the run diverged or workers send bad values (try a smaller learning rate)")]
    Refused { round: String, source: RoundError },
    #[error("could not write results: {0}")]
    Io(#[from] io::Error),
    #[error("cannot sample its tasks: {0}")]
    Sampling(String),
}

/// The error of an update the optimizer refused (`step` is the one it would have made);
/// `hint` says what to try.
fn overflowed(step: u64, overflow: crate::optimizer::Overflow, hint: &'static str) -> RunError {
    RunError::Diverged {
        step,
        what: format!("{} at index {}", overflow.what, overflow.index),
        value: overflow.value as f64,
        hint,
    }
}

/// Tells the dispatcher that a run has ended when it is dropped: however the run ends (a
/// panic included), its round does not linger, leasing chunks whose results go nowhere.
struct Ended<'a> {
    dispatcher: &'a Dispatcher,
    id: &'a str,
    /// Whether workers hear of it (not when the run stops for the shutdown, to resume).
    over: bool,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.dispatcher.experiment_ended(self.id, self.over);
    }
}

/// Runs `job` to its end and records how it ended.
pub async fn run(job: Job, registry: &Registry, dispatcher: &Dispatcher) {
    let id = job.id.clone();
    tracing::info!(%id, "experiment started");
    let mut ended = Ended {
        dispatcher,
        id: &id,
        over: true,
    };
    let outcome = match &job.spec {
        ExperimentSpec::Meta(spec) => meta::train(&job, spec, registry, dispatcher).await,
        ExperimentSpec::Mtl(spec) => mtl::train(&job, spec, registry, dispatcher).await,
    };
    ended.over = !matches!(outcome, Err(RunError::Stopping));
    drop(ended);
    if let Err(RunError::Stopping) = outcome {
        // Still running as far as the store knows: the next start queues it again and it
        // resumes from its checkpoint.
        tracing::info!(%id, "stopped by the shutdown; resumes at the next start");
        return;
    }
    let (state, error) = match &outcome {
        Ok(()) => (ExperimentState::Finished, None),
        Err(RunError::Cancelled) => (ExperimentState::Cancelled, None),
        // The run itself is sound; the state directory is not (full, failing, read-only):
        // nothing is lost, and once that is fixed the run continues from its checkpoint.
        Err(e @ RunError::Io(_)) => (
            ExperimentState::Paused,
            Some(format!(
                "{e}; paused: fix the state directory, then `outerloop resume {id}` continues from the last checkpoint"
            )),
        ),
        Err(e) => (ExperimentState::Failed, Some(e.to_string())),
    };
    match (&error, state) {
        (Some(e), ExperimentState::Paused) => tracing::error!(%id, error = %e, "experiment paused"),
        (Some(e), _) => tracing::error!(%id, error = %e, "experiment failed"),
        (None, _) => tracing::info!(%id, %state, "experiment ended"),
    }
    // The run is over either way: its end stands even if it cannot be written.
    let ended = write_record(registry, &id, move |r| {
        r.state = state;
        r.error = error;
    });
    if let Err(e) = ended.await {
        tracing::error!(%id, error = %e, "could not record the end of the experiment");
    }
}

/// Applies `change` to experiment `id`'s record in its turn among the record's writes (never
/// between a cancellation's write and its application), then writes the record, on a
/// blocking thread (its fsync may wait behind a large checkpoint's), tried again on failure.
/// The change stands even if the write fails.
async fn write_record(
    registry: &Registry,
    id: &str,
    change: impl FnOnce(&mut ExperimentRecord) + Send + 'static,
) -> Result<(), RunError> {
    let writer = registry.writer(id).map_err(io::Error::other)?;
    let id = id.to_string();
    off_runtime(move || {
        writer.apply(change);
        retry::retrying_blocking(&id, "state.json", || writer.persist())
    })
    .await??;
    Ok(())
}

/// Runs `work` on a blocking thread and returns what it returns: a step's update is vector
/// work over every parameter (tens of milliseconds at a million, seconds at tens of
/// millions), and the async runtime must meanwhile answer heartbeats and leases and run other
/// experiments' rounds. A panic in `work` goes on unwinding here, as if it had run inline.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RunError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => Ok(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled: the runtime is shutting down.
        Err(e) => Err(RunError::Io(io::Error::other(e))),
    }
}

/// Runs `update` on the learner in `slot` with [`off_runtime`], the learner moved to the
/// blocking thread and back: it is home again whenever a step is not under way. `values`: the
/// model's parameters, what the update's vector work is the size of.
async fn update_off_runtime<L: Send + 'static, R: Send + 'static>(
    slot: &mut Option<L>,
    values: usize,
    update: impl FnOnce(&mut L) -> R + Send + 'static,
) -> Result<R, RunError> {
    let mut learner = slot.take().expect("the learner is home between steps");
    let (learner, updated) = off_runtime(move || {
        // Every worker waits for the update: the cores are the vector threads' until it ends
        // (a model too small to spread leaves them asleep).
        let _awake = crate::parallel::worth_it(values).then(crate::parallel::awake);
        let updated = update(&mut learner);
        (learner, updated)
    })
    .await?;
    *slot = Some(learner);
    Ok(updated)
}

/// Dispatches one round of `job`; stops early when the job is cancelled.
async fn round(
    job: &Job,
    dispatcher: &Dispatcher,
    input: RoundInput,
) -> Result<RoundOutput, RunError> {
    let round = match input.phase {
        outerloop_proto::v1::Phase::Train => format!("step {}", input.version + 1),
        _ => format!("the evaluation at step {}", input.version),
    };
    tokio::select! {
        out = dispatcher.run_round(input) => match out {
            Err(source @ RoundError::Refused { .. }) => Err(RunError::Refused { round, source }),
            out => Ok(out?),
        },
        _ = job.cancel.cancelled() => {
            dispatcher.abandon_round(&job.id);
            Err(RunError::Cancelled)
        }
        _ = job.stop.cancelled() => {
            dispatcher.abandon_round(&job.id);
            Err(RunError::Stopping)
        }
    }
}

/// Opens experiment `id`'s `metrics.jsonl` for a run that starts at `step` (keeping the lines
/// up to it), then records where the run starts: `start` sets the record, given the last
/// evaluation kept. Each write runs on a blocking thread (cutting `metrics.jsonl` back on a
/// resume rewrites it) and is tried again before the run pauses, as every later one is.
async fn begin(
    registry: &Registry,
    id: &str,
    step: u64,
    start: impl FnOnce(&mut ExperimentRecord, Option<EvalRecord>) + Send + 'static,
) -> Result<MetricsWriter, RunError> {
    let (store, owned_id) = (registry.store().clone(), id.to_string());
    let open = move || store.metrics_writer(&owned_id, step);
    begin_with(registry, id, open, start).await
}

/// [`begin`], with `open` opening `metrics.jsonl`.
async fn begin_with(
    registry: &Registry,
    id: &str,
    mut open: impl FnMut() -> io::Result<(MetricsWriter, Option<EvalRecord>)> + Send + 'static,
    start: impl FnOnce(&mut ExperimentRecord, Option<EvalRecord>) + Send + 'static,
) -> Result<MetricsWriter, RunError> {
    let owned_id = id.to_string();
    let (metrics, last_eval) =
        off_runtime(move || retry::retrying_blocking(&owned_id, "metrics.jsonl", &mut open))
            .await??;
    write_record(registry, id, move |r| start(r, last_eval)).await?;
    Ok(metrics)
}

/// Adds `line` to experiment `id`'s `metrics.jsonl`, written once a buffer's worth is
/// pending; a failed write is tried again before its error is returned.
async fn append_metrics(
    metrics: &mut MetricsWriter,
    id: &str,
    line: &serde_json::Value,
) -> io::Result<()> {
    metrics.push(line);
    retry::retrying(id, "metrics.jsonl", || metrics.write_if_full()).await
}

/// Writes every pending line of experiment `id`'s `metrics.jsonl`, tried again on failure.
async fn flush_metrics(metrics: &mut MetricsWriter, id: &str) -> io::Result<()> {
    retry::retrying(id, "metrics.jsonl", || metrics.flush()).await
}

/// Records an evaluation: a `metrics.jsonl` line of kind `eval` or `final_eval` (flushed, so
/// that `watch` sees it at once), then the experiment's record (`last_eval`, and `final_eval`
/// for the final one). Failed writes are tried again.
async fn record_eval(
    metrics: &mut MetricsWriter,
    registry: &Registry,
    id: &str,
    record: &EvalRecord,
) -> Result<(), RunError> {
    let mut line = serde_json::to_value(record).map_err(io::Error::other)?;
    line["kind"] = serde_json::json!(if record.r#final { "final_eval" } else { "eval" });
    line.as_object_mut().map(|l| l.remove("final"));
    metrics.push(&line);
    flush_metrics(metrics, id).await?;
    let stored = record.clone();
    write_record(registry, id, move |r| {
        if stored.r#final {
            r.final_eval = Some(stored.clone());
        }
        r.last_eval = Some(stored);
    })
    .await
}

/// Writes the final parameters of `state` to `final.safetensors`, their metadata saying which
/// experiment and step they are and how the final evaluation went (its mean loss, and the
/// kind's own headline figure in `extra`). The file is written on a blocking thread (it is
/// the model's size), tried again on failure.
async fn export_final(
    registry: &Registry,
    id: &str,
    name: &str,
    state: &checkpoint::RunState<'_>,
    last: &EvalRecord,
    extra: Option<(&str, String)>,
) -> Result<(), RunError> {
    let mut metadata = std::collections::BTreeMap::from([
        ("experiment".to_string(), id.to_string()),
        ("name".to_string(), name.to_string()),
        ("step".to_string(), state.step.to_string()),
        (
            "final_eval_loss_mean".to_string(),
            last.loss_mean.to_string(),
        ),
    ]);
    if let Some((key, value)) = extra {
        metadata.insert(key.to_string(), value);
    }
    let tensors = crate::safetensors_file::model_tensors(state.layout, state.params);
    let bytes = crate::safetensors_file::encode(&tensors, &metadata);
    let (store, owned_id) = (registry.store().clone(), id.to_string());
    let path = off_runtime(move || {
        retry::retrying_blocking(&owned_id, "final.safetensors", || {
            store.write_file(&owned_id, "final.safetensors", &bytes)
        })
    })
    .await??;
    tracing::info!(%id, path = %path.display(), "final parameters written");
    Ok(())
}

/// The compute seconds of each worker in a round, and the largest of them: the slowest
/// worker's share is what the round could not take less than.
fn critical_compute(out: &RoundOutput) -> (usize, f64) {
    let mut per_worker: HashMap<u64, f64> = HashMap::new();
    for (result, worker) in out.results.iter().zip(&out.workers) {
        *per_worker.entry(*worker).or_default() += result.compute_seconds;
    }
    let critical = per_worker.values().copied().fold(0.0, f64::max);
    (per_worker.len(), critical)
}

/// Sizes of the chunks a batch of `items` is cut into: `chunk` each, the last one smaller.
fn chunk_sizes(items: u64, chunk: u64) -> Vec<usize> {
    (0..items)
        .step_by(chunk as usize)
        .map(|start| chunk.min(items - start) as usize)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SPEC;
    use crate::store::Store;

    #[tokio::test]
    async fn a_run_begins_once_its_first_writes_succeed_on_a_later_try() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Registry::open(Store::open(dir.path()).unwrap()).unwrap();
        let no_datasets = |name: &str, _: Option<&str>| Err(format!("no dataset {name}"));
        let id = registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
        // The first try to open `metrics.jsonl` fails (a descriptor shortage, say).
        let (store, owned_id) = (registry.store().clone(), id.clone());
        let mut tries = 0;
        let open = move || {
            tries += 1;
            match tries {
                1 => Err(io::Error::other("too many open files")),
                _ => store.metrics_writer(&owned_id, 0),
            }
        };
        let begun = begin_with(&registry, &id, open, |r, last_eval| {
            r.train_seconds = 7.0;
            r.last_eval = last_eval;
        });
        let mut metrics = begun.await.unwrap();
        metrics.push(&serde_json::json!({"step": 1}));
        metrics.flush().unwrap();
        let written = registry.store().dir(&id).join("metrics.jsonl");
        assert_eq!(std::fs::read_to_string(&written).unwrap(), "{\"step\":1}\n");
        let stored: serde_json::Value = serde_json::from_slice(
            &std::fs::read(registry.store().dir(&id).join("state.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(stored["train_seconds"], 7.0);
    }

    #[test]
    fn batches_are_cut_into_fixed_size_chunks() {
        assert_eq!(chunk_sizes(25, 10), [10, 10, 5]);
        assert_eq!(chunk_sizes(25, 25), [25]);
        assert_eq!(chunk_sizes(3, 5), [3]);
        assert_eq!(chunk_sizes(4, 1), [1, 1, 1, 1]);
    }
}
