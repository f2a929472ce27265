//! The experiments the coordinator knows: submission, the run queue, status and cancellation.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use outerloop_proto::dataset::Manifest;
use outerloop_proto::ExperimentState;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::spec::{ExperimentSpec, SpecError};
use crate::store::{ExperimentRecord, Store};

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    InvalidSpec(#[from] SpecError),
    #[error("no experiment with id `{id}`{}", known_hint(.known))]
    UnknownId { id: String, known: Vec<String> },
    #[error("could not store the experiment: {0}")]
    Storage(#[from] io::Error),
    #[error("{0}")]
    Limit(String),
    #[error("experiment `{id}` is {state}; only a paused experiment can be resumed")]
    NotPaused { id: String, state: ExperimentState },
}

/// What one submission may ask of the coordinator.
#[derive(Clone, Copy, Debug)]
pub struct SubmitLimits {
    /// Experiments waiting to run at once.
    pub max_queued: usize,
    /// Parameters of one experiment's model: the coordinator holds them, their gradients and
    /// the optimizer's state in memory.
    pub max_parameters: u64,
    /// The largest message a worker may send: an experiment whose chunk results would not fit
    /// is refused at submission rather than left to hang.
    pub max_result_bytes: usize,
}

/// What a chunk's results carry beside their gradients (losses, accuracies, framing), at most.
const RESULT_OVERHEAD_BYTES: u64 = 1 << 16;

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_queued: 1000,
            max_parameters: 1 << 26,
            max_result_bytes: outerloop_proto::transport::MAX_MESSAGE_BYTES,
        }
    }
}

fn known_hint(known: &[String]) -> String {
    match known {
        [] => "; no experiments have been submitted".to_string(),
        ids => format!("; known ids: {}", ids.join(", ")),
    }
}

/// Finds the manifest of a dataset by name and, when the spec pins one, fingerprint; the
/// error says what is known instead.
pub type ManifestLookup<'a> = dyn Fn(&str, Option<&str>) -> Result<Arc<Manifest>, String> + 'a;

/// An experiment handed to the runner.
#[derive(Debug)]
pub struct Job {
    pub id: String,
    pub spec: ExperimentSpec,
    pub cancel: CancellationToken,
    /// The coordinator is shutting down: the run checkpoints where it is and stops, to resume
    /// at the next start (the scheduler gives it the coordinator's token).
    pub stop: CancellationToken,
}

#[derive(Debug)]
struct Entry {
    record: ExperimentRecord,
    spec: ExperimentSpec,
    cancel: CancellationToken,
    /// Held while the record is written: the experiment's writes take turns.
    turn: Arc<Mutex<()>>,
}

impl Entry {
    fn new(record: ExperimentRecord, spec: ExperimentSpec) -> Entry {
        Entry {
            record,
            spec,
            cancel: CancellationToken::new(),
            turn: Arc::default(),
        }
    }
}

type Entries = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// All experiments, in memory and mirrored to the store on every change of state.
///
/// The `entries` lock is only ever held for moments, never while a file is written: the async
/// runtime takes it (status, a run's progress), and a write that waits on a slow disk (an
/// fsync behind a large checkpoint's) would stall every call. Writes happen on blocking
/// threads through a [`RecordWriter`], one experiment's writes taking turns.
#[derive(Debug)]
pub struct Registry {
    store: Store,
    entries: Entries,
    /// Sequence number of the next submission (ids are `exp-{seq}`); advanced under
    /// `submitting`.
    next_seq: AtomicU64,
    /// Held by a submission from its limit check until its experiment is in `entries`, so
    /// that submissions take turns without holding `entries` while they write.
    submitting: Mutex<()>,
    submitted: Notify,
    limits: SubmitLimits,
}

/// Locks `mutex`, whose data stays sound even if a holder panicked (every change to it is
/// one assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes one experiment's record to the store, without holding the registry's lock while it
/// writes. The experiment's writes take turns, each with the record as it is when its turn
/// comes, so the last write leaves the latest record on disk. It blocks on the disk: call it
/// from a blocking thread.
#[derive(Clone, Debug)]
pub struct RecordWriter {
    id: String,
    store: Store,
    entries: Entries,
    turn: Arc<Mutex<()>>,
}

impl RecordWriter {
    /// The record as it is now (`None` once the experiment is gone: never, today).
    fn snapshot(&self) -> Option<ExperimentRecord> {
        let mut entries = lock(&self.entries);
        entry_mut(&mut entries, &self.id)
            .ok()
            .map(|e| e.record.clone())
    }

    /// Writes the record as it is now.
    pub fn persist(&self) -> io::Result<()> {
        let _turn = lock(&self.turn);
        match self.snapshot() {
            Some(record) => self.store.save(&record),
            None => Ok(()),
        }
    }

    /// Applies `change` to the record everyone sees, in its turn among the writes (so never
    /// between a [`RecordWriter::change`]'s write and its application), without writing it:
    /// for a change that stands even if it cannot be written (a run's end: the run is over
    /// either way); [`RecordWriter::persist`] writes it.
    pub fn apply(&self, change: impl FnOnce(&mut ExperimentRecord)) {
        let _turn = lock(&self.turn);
        if let Ok(entry) = entry_mut(&mut lock(&self.entries), &self.id) {
            change(&mut entry.record);
        }
    }

    /// Applies `change` to a copy of the record and writes the copy, then applies it to the
    /// record everyone sees: a failed write changes nothing. Between the two, a run may have
    /// moved its progress fields, never its state (every change of state happens in a turn
    /// among the writes), so `change` sets what it sets the same way both times. Returns what
    /// its first application returned; an error from it writes nothing.
    pub fn change<R>(
        &self,
        change: impl Fn(&mut ExperimentRecord) -> Result<R, RegistryError>,
    ) -> Result<R, RegistryError> {
        let _turn = lock(&self.turn);
        let Some(current) = self.snapshot() else {
            return Err(RegistryError::UnknownId {
                id: self.id.clone(),
                known: Vec::new(),
            });
        };
        let mut updated = current.clone();
        let out = change(&mut updated)?;
        if updated != current {
            self.store.save(&updated)?;
            let mut entries = lock(&self.entries);
            if let Ok(entry) = entry_mut(&mut entries, &self.id) {
                // The same state as the copy's, so the same outcome: it was written.
                let _ = change(&mut entry.record);
            }
        }
        Ok(out)
    }
}

/// A queued experiment's id, and what its submitter should know (see
/// [`Registry::submit_noting`]).
#[derive(Debug)]
pub struct Submitted {
    pub id: String,
    pub notes: Vec<String>,
}

impl Registry {
    /// Loads the stored experiments. Those that were queued or running when the coordinator
    /// stopped are queued again; a running one restarts from step 0 (its result is the same,
    /// since every task and every sum is deterministic).
    pub fn open(store: Store) -> io::Result<Registry> {
        let mut entries = BTreeMap::new();
        for (mut record, spec_text) in store.load_all()? {
            let spec = match ExperimentSpec::parse(&spec_text, "spec.toml", &[]) {
                Ok(spec) => spec,
                Err(e) => {
                    tracing::error!(id = %record.id, error = %e, "stored spec no longer parses; skipped");
                    continue;
                }
            };
            if record.state == ExperimentState::Running && record.cancel_requested {
                tracing::info!(id = %record.id, "was cancelled while running; stays cancelled");
                record.state = ExperimentState::Cancelled;
                store.save(&record)?;
            } else if record.state == ExperimentState::Running {
                tracing::info!(id = %record.id, "was running when the coordinator stopped; queued to resume");
                record =
                    ExperimentRecord::queued(record.seq, &record.name, record.kind, record.steps);
                store.save(&record)?;
            }
            entries.insert(record.seq, Entry::new(record, spec));
        }
        let next_seq = AtomicU64::new(store.highest_seq()? + 1);
        Ok(Registry {
            store,
            entries: Arc::new(Mutex::new(entries)),
            next_seq,
            submitting: Mutex::new(()),
            submitted: Notify::new(),
            limits: SubmitLimits::default(),
        })
    }

    pub fn with_limits(self, limits: SubmitLimits) -> Self {
        Registry { limits, ..self }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Entry>> {
        lock(&self.entries)
    }

    /// What writes experiment `id`'s record (from a blocking thread).
    pub fn writer(&self, id: &str) -> Result<RecordWriter, RegistryError> {
        let mut entries = self.lock();
        let turn = entry_mut(&mut entries, id)?.turn.clone();
        Ok(RecordWriter {
            id: id.to_string(),
            store: self.store.clone(),
            entries: self.entries.clone(),
            turn,
        })
    }

    /// Validates and queues a spec; a refused spec leaves no trace. A spec on a dataset is
    /// checked against the dataset's manifest, which `datasets` finds by name (and pinned
    /// fingerprint, if the spec has one): the experiment is pinned to that version and keeps
    /// the manifest beside its results. It writes: call it from a blocking thread.
    pub fn submit(
        &self,
        text: &str,
        source_name: &str,
        overrides: &[String],
        datasets: &ManifestLookup,
    ) -> Result<String, RegistryError> {
        self.submit_noting(text, source_name, overrides, datasets)
            .map(|submitted| submitted.id)
    }

    /// [`submit`](Self::submit), with what the submitter should know about how the spec
    /// was read (a number of rows larger than the data has).
    pub fn submit_noting(
        &self,
        text: &str,
        source_name: &str,
        overrides: &[String],
        datasets: &ManifestLookup,
    ) -> Result<Submitted, RegistryError> {
        let mut spec = ExperimentSpec::parse(text, source_name, overrides)?;
        let blame = |invalid| SpecError::blame(text, source_name, overrides, invalid);
        let manifest = match spec.dataset() {
            Some(dataset) => {
                let pinned = dataset.pinned.as_deref();
                let manifest = datasets(&dataset.name, pinned).map_err(|message| {
                    let field = if pinned.is_some() {
                        dataset.pin_field
                    } else {
                        dataset.name_field
                    };
                    blame((field.to_string(), message))
                })?;
                spec.check_dataset(&manifest).map_err(blame)?;
                Some(manifest)
            }
            None => None,
        };
        // A table's columns decide a multi-task model's size: counted with its manifest. A
        // chunk's results carry the gradient of every parameter, and in multi-task learning
        // one of the shared layers per task.
        let (parameters, gradient_values) = match &spec {
            ExperimentSpec::Meta(spec) => {
                let count = spec.layout().param_count() as u64;
                (count, count)
            }
            ExperimentSpec::Mtl(spec) => spec.setup("", manifest.as_deref()).map_or((0, 0), |s| {
                let (count, shared) = (s.layout().param_count() as u64, s.shared_len() as u64);
                (count, s.tasks.len() as u64 * shared + (count - shared))
            }),
        };
        if parameters > self.limits.max_parameters {
            return Err(RegistryError::Limit(format!(
                "the model has {parameters} parameters, more than this coordinator's limit of {} (--max-parameters)",
                self.limits.max_parameters
            )));
        }
        let result_bytes = gradient_values.saturating_mul(4) + RESULT_OVERHEAD_BYTES;
        if result_bytes > self.limits.max_result_bytes as u64 {
            return Err(RegistryError::Limit(format!(
                "a chunk's results would be about {result_bytes} bytes (the gradients of {gradient_values} values), more than this coordinator accepts from a worker ({} bytes, --max-result-bytes)",
                self.limits.max_result_bytes
            )));
        }
        let _submitting = lock(&self.submitting);
        let queued = (self.lock().values())
            .filter(|e| e.record.state == ExperimentState::Queued)
            .count();
        if queued >= self.limits.max_queued {
            return Err(RegistryError::Limit(format!(
                "{queued} experiments are queued, this coordinator's limit (--max-queued); submit again when one has started"
            )));
        }
        let seq = self.next_seq.load(Ordering::Relaxed);
        let record = ExperimentRecord::queued(seq, spec.name(), spec.kind(), spec.steps());
        self.store
            .create(&record, &spec.to_toml(), manifest.as_deref())?;
        self.next_seq.store(seq + 1, Ordering::Relaxed);
        let id = record.id.clone();
        tracing::info!(%id, name = %spec.name(), "experiment queued");
        let notes = spec.notes(manifest.as_deref());
        self.lock().insert(seq, Entry::new(record, spec));
        self.submitted.notify_waiters();
        Ok(Submitted { id, notes })
    }

    /// One experiment's record, or all of them when `id` is `None`.
    pub fn status(&self, id: Option<&str>) -> Result<Vec<ExperimentRecord>, RegistryError> {
        let mut entries = self.lock();
        match id {
            None => Ok(entries.values().map(|e| e.record.clone()).collect()),
            Some(id) => Ok(vec![entry_mut(&mut entries, id)?.record.clone()]),
        }
    }

    /// Cancels a queued or running experiment; returns its state afterwards. A running one
    /// becomes `cancelled` once its runner has stopped at the current round. A failed write
    /// changes nothing. It writes: call it from a blocking thread.
    pub fn cancel(&self, id: &str) -> Result<ExperimentState, RegistryError> {
        let state = self.writer(id)?.change(|r| {
            match r.state {
                ExperimentState::Queued | ExperimentState::Paused => {
                    r.state = ExperimentState::Cancelled
                }
                ExperimentState::Running => r.cancel_requested = true,
                _ => {}
            }
            Ok(r.state)
        })?;
        if let Ok(entry) = entry_mut(&mut self.lock(), id) {
            entry.cancel.cancel();
        }
        Ok(state)
    }

    /// Queues a paused experiment again (it continues from its last checkpoint); returns its
    /// state afterwards. Any other state is left as it is and said so. A failed write changes
    /// nothing. It writes: call it from a blocking thread.
    pub fn resume(&self, id: &str) -> Result<ExperimentState, RegistryError> {
        self.writer(id)?.change(|r| {
            if r.state != ExperimentState::Paused {
                return Err(RegistryError::NotPaused {
                    id: id.to_string(),
                    state: r.state,
                });
            }
            *r = ExperimentRecord::queued(r.seq, &r.name, r.kind, r.steps);
            Ok(())
        })?;
        tracing::info!(%id, "paused experiment queued again");
        self.submitted.notify_waiters();
        Ok(ExperimentState::Queued)
    }

    /// Waits for the oldest queued experiment and marks it running (written on a blocking
    /// thread first, as every change of state is).
    pub async fn next_queued(&self) -> io::Result<Job> {
        loop {
            let submitted = self.submitted.notified();
            tokio::pin!(submitted);
            submitted.as_mut().enable();
            let oldest = (self.lock().values())
                .find(|e| e.record.state == ExperimentState::Queued)
                .map(|e| e.record.id.clone());
            let Some(id) = oldest else {
                submitted.await;
                continue;
            };
            let writer = self.writer(&id).map_err(io::Error::other)?;
            let started = tokio::task::spawn_blocking(move || {
                // Cancelled meanwhile: it stays so, and the next one is looked for.
                writer.change(|r| {
                    let queued = r.state == ExperimentState::Queued;
                    if queued {
                        r.state = ExperimentState::Running;
                    }
                    Ok(queued)
                })
            })
            .await
            .map_err(io::Error::other)?;
            match started {
                Ok(true) => {
                    let mut entries = self.lock();
                    let entry = entry_mut(&mut entries, &id).map_err(io::Error::other)?;
                    return Ok(Job {
                        id,
                        spec: entry.spec.clone(),
                        cancel: entry.cancel.clone(),
                        stop: CancellationToken::new(),
                    });
                }
                Ok(false) => continue,
                Err(RegistryError::Storage(e)) => return Err(e),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }

    /// Applies `change` to an experiment's record in memory; a [`RecordWriter`] writes it.
    pub fn update(&self, id: &str, change: impl FnOnce(&mut ExperimentRecord)) {
        if let Ok(entry) = entry_mut(&mut self.lock(), id) {
            change(&mut entry.record);
        }
    }
}

/// The entry of experiment `id`, or the error that names the known ids.
fn entry_mut<'a>(
    entries: &'a mut BTreeMap<u64, Entry>,
    id: &str,
) -> Result<&'a mut Entry, RegistryError> {
    match entries
        .iter()
        .find(|(_, e)| e.record.id == id)
        .map(|(&seq, _)| seq)
    {
        Some(seq) => Ok(entries.get_mut(&seq).expect("found above")),
        None => Err(RegistryError::UnknownId {
            id: id.to_string(),
            known: entries.values().map(|e| e.record.id.clone()).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::tests::SPEC;

    fn no_datasets(name: &str, _: Option<&str>) -> Result<Arc<Manifest>, String> {
        Err(format!("no dataset {name}"))
    }

    fn registry(dir: &std::path::Path) -> Registry {
        Registry::open(Store::open(dir).unwrap()).unwrap()
    }

    #[test]
    fn submissions_past_a_limit_are_refused_saying_which_and_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path()).with_limits(SubmitLimits {
            max_queued: 1,
            max_parameters: 1_000_000,
            ..SubmitLimits::default()
        });
        registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
        let err = registry
            .submit(SPEC, "b.toml", &[], &no_datasets)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 experiments are queued, this coordinator's limit (--max-queued)"),
            "{err}"
        );
        let registry = registry.with_limits(SubmitLimits {
            max_queued: 10,
            max_parameters: 100,
            ..SubmitLimits::default()
        });
        let err = registry
            .submit(SPEC, "c.toml", &[], &no_datasets)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("more than this coordinator's limit of 100 (--max-parameters)"),
            "{err}"
        );
        // The spec's 1,761 parameters make results of 7,044 bytes of gradients, and 64 KiB
        // more at most: 70,000 bytes are too few.
        let registry = registry.with_limits(SubmitLimits {
            max_queued: 10,
            max_result_bytes: 70_000,
            ..SubmitLimits::default()
        });
        let err = registry
            .submit(SPEC, "d.toml", &[], &no_datasets)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the gradients of 1761 values")
                && err.contains("(70000 bytes, --max-result-bytes)"),
            "{err}"
        );
        assert_eq!(registry.status(None).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn submissions_queue_in_order_and_refusals_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let bad = registry.submit(
            &SPEC.replace("meta_batch = 25", "meta_batch = 0"),
            "bad.toml",
            &[],
            &no_datasets,
        );
        assert!(matches!(bad, Err(RegistryError::InvalidSpec(_))));
        assert!(registry.status(None).unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(dir.path().join("experiments"))
                .unwrap()
                .count(),
            0
        );

        assert_eq!(
            registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap(),
            "exp-1"
        );
        assert_eq!(
            registry.submit(SPEC, "b.toml", &[], &no_datasets).unwrap(),
            "exp-2"
        );
        let job = registry.next_queued().await.unwrap();
        assert_eq!(job.id, "exp-1");
        assert_eq!(
            registry.status(Some("exp-1")).unwrap()[0].state,
            ExperimentState::Running
        );
        assert_eq!(
            registry.status(Some("exp-2")).unwrap()[0].state,
            ExperimentState::Queued
        );
    }

    #[tokio::test]
    async fn a_paused_experiment_resumes_or_is_cancelled_and_survives_a_restart_paused() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        for name in ["a.toml", "b.toml"] {
            registry.submit(SPEC, name, &[], &no_datasets).unwrap();
        }
        for _ in 0..2 {
            registry.next_queued().await.unwrap();
        }
        for id in ["exp-1", "exp-2"] {
            registry.update(id, |r| {
                r.state = ExperimentState::Paused;
                r.step = 7;
                r.error = Some("could not write results: disk full".into());
            });
            registry.writer(id).unwrap().persist().unwrap();
        }
        // Only a paused experiment resumes; it is queued again, from its checkpoint.
        let state = |registry: &Registry, id| registry.status(Some(id)).unwrap()[0].state;
        assert_eq!(registry.resume("exp-1").unwrap(), ExperimentState::Queued);
        let record = registry.status(Some("exp-1")).unwrap().remove(0);
        assert_eq!((record.step, record.error), (0, None));
        assert!(matches!(
            registry.resume("exp-1"),
            Err(RegistryError::NotPaused {
                state: ExperimentState::Queued,
                ..
            })
        ));
        assert_eq!(registry.next_queued().await.unwrap().id, "exp-1");
        // A paused experiment stays paused across a restart, and can still be cancelled.
        let registry = self::registry(dir.path());
        assert_eq!(state(&registry, "exp-2"), ExperimentState::Paused);
        assert_eq!(
            registry.cancel("exp-2").unwrap(),
            ExperimentState::Cancelled
        );
        assert!(matches!(
            registry.resume("exp-2"),
            Err(RegistryError::NotPaused { .. })
        ));
    }

    /// Waits until a thread of this process waits in `open` of a FIFO for its other end (the
    /// kernel function it waits in, by name: `wait_for_partner`, or `fifo_open` where that is
    /// inlined).
    fn wait_for_a_thread_in_fifo_open() {
        let started = std::time::Instant::now();
        loop {
            let waiting = std::fs::read_dir("/proc/self/task").unwrap().any(|task| {
                let wchan = task.unwrap().path().join("wchan");
                std::fs::read_to_string(wchan)
                    .is_ok_and(|w| w == "wait_for_partner" || w == "fifo_open")
            });
            if waiting {
                return;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "no thread ever waited on the FIFO (or this kernel does not show where threads wait)"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_write_that_hangs_holds_up_no_reader_and_a_failed_one_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(registry(dir.path()));
        registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
        // `state.json` is written through `state.tmp`: a FIFO there makes the write wait
        // until something reads it (a disk that hangs), then fail (a FIFO cannot be synced).
        let tmp = dir.path().join("experiments/exp-1/state.tmp");
        let made = std::process::Command::new("mkfifo").arg(&tmp).status();
        assert!(made.unwrap().success());
        let cancelling = {
            let registry = registry.clone();
            std::thread::spawn(move || registry.cancel("exp-1"))
        };
        wait_for_a_thread_in_fifo_open();
        // The write waits; reading the experiments does not (it would wait with the write if
        // the write held the registry's lock), nor does a run's progress.
        let (answered, answer) = std::sync::mpsc::channel();
        {
            let registry = registry.clone();
            std::thread::spawn(move || {
                registry.update("exp-1", |r| r.train_seconds = 3.0);
                answered.send(registry.status(None).unwrap()).unwrap();
            });
        }
        let listed = answer
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the status was held up by a write");
        assert_eq!(listed[0].state, ExperimentState::Queued);
        // The write goes through to the FIFO and fails: the cancellation changes nothing.
        std::io::Read::read_to_end(&mut std::fs::File::open(&tmp).unwrap(), &mut Vec::new())
            .unwrap();
        let failed = cancelling.join().unwrap();
        assert!(
            matches!(failed, Err(RegistryError::Storage(_))),
            "{failed:?}"
        );
        let record = registry.status(Some("exp-1")).unwrap().remove(0);
        assert_eq!(
            (record.state, record.train_seconds),
            (ExperimentState::Queued, 3.0)
        );
        // With the disk back, it goes through, and the progress made meanwhile is kept.
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(
            registry.cancel("exp-1").unwrap(),
            ExperimentState::Cancelled
        );
        let stored = Registry::open(Store::open(dir.path()).unwrap())
            .unwrap()
            .status(Some("exp-1"))
            .unwrap()
            .remove(0);
        assert_eq!(
            (stored.state, stored.train_seconds),
            (ExperimentState::Cancelled, 3.0)
        );
    }

    #[tokio::test]
    async fn unknown_ids_are_named_with_the_known_ones() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        let e = registry.status(Some("exp-9")).unwrap_err().to_string();
        assert_eq!(
            e,
            "no experiment with id `exp-9`; no experiments have been submitted"
        );
        registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
        let e = registry.cancel("nope").unwrap_err().to_string();
        assert_eq!(e, "no experiment with id `nope`; known ids: exp-1");
    }

    #[tokio::test]
    async fn cancelling_a_queued_experiment_skips_it() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
        registry.submit(SPEC, "b.toml", &[], &no_datasets).unwrap();
        assert_eq!(
            registry.cancel("exp-1").unwrap(),
            ExperimentState::Cancelled
        );
        assert_eq!(registry.next_queued().await.unwrap().id, "exp-2");
    }

    #[tokio::test]
    async fn a_restart_requeues_what_was_running_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let registry = registry(dir.path());
            for _ in 0..3 {
                registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
            }
            let job = registry.next_queued().await.unwrap();
            registry.update(&job.id, |r| r.step = 40);
            registry.writer(&job.id).unwrap().persist().unwrap();
            registry.cancel("exp-3").unwrap();
        }
        let registry = registry(dir.path());
        let states: Vec<(ExperimentState, u64)> = registry
            .status(None)
            .unwrap()
            .into_iter()
            .map(|r| (r.state, r.step))
            .collect();
        assert_eq!(
            states,
            [
                (ExperimentState::Queued, 0),
                (ExperimentState::Queued, 0),
                (ExperimentState::Cancelled, 0)
            ]
        );
        assert_eq!(
            registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap(),
            "exp-4"
        );
    }

    #[tokio::test]
    async fn ids_are_never_reused_even_past_an_unreadable_experiment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let registry = registry(dir.path());
            registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
            registry.submit(SPEC, "b.toml", &[], &no_datasets).unwrap();
        }
        std::fs::write(dir.path().join("experiments/exp-2/state.json"), "{ torn").unwrap();
        let registry = registry(dir.path());
        assert_eq!(
            registry.status(None).unwrap().len(),
            1,
            "the unreadable one is skipped"
        );
        assert_eq!(
            registry.submit(SPEC, "c.toml", &[], &no_datasets).unwrap(),
            "exp-3"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("experiments/exp-2/state.json")).unwrap(),
            "{ torn"
        );
    }

    #[tokio::test]
    async fn a_cancel_of_a_running_experiment_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let registry = registry(dir.path());
            registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
            let job = registry.next_queued().await.unwrap();
            assert_eq!(
                registry.cancel(&job.id).unwrap(),
                ExperimentState::Running,
                "the runner stops it"
            );
            assert!(job.cancel.is_cancelled());
        }
        let registry = registry(dir.path());
        assert_eq!(
            registry.status(Some("exp-1")).unwrap()[0].state,
            ExperimentState::Cancelled
        );
    }

    #[test]
    fn evaluations_with_no_interval_survive_a_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(dir.path());
        registry.submit(SPEC, "a.toml", &[], &no_datasets).unwrap();
        let eval = crate::store::EvalRecord {
            step: 0,
            loss_mean: f64::INFINITY,
            loss_ci95: f64::NAN,
            tasks: 1,
            loss_before_mean: 1.0,
            r#final: false,
            accuracy_mean: None,
            accuracy_ci95: None,
            accuracy_before_mean: None,
            task_scores: None,
            delta_m_percent: None,
        };
        registry.update("exp-1", |r| r.last_eval = Some(eval));
        registry.writer("exp-1").unwrap().persist().unwrap();
        drop(registry);
        let loaded = Registry::open(Store::open(dir.path()).unwrap())
            .unwrap()
            .status(None)
            .unwrap();
        let back = loaded[0].last_eval.clone().unwrap();
        assert!(back.loss_mean.is_nan() && back.loss_ci95.is_nan() && back.loss_before_mean == 1.0);
    }
}
