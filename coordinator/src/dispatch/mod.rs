//! Work dispatch: the worker registry, the chunks of the rounds in flight, leases and their expiry.
//!
//! Each running experiment has at most one round (a meta-batch, or an evaluation) in flight,
//! and the workers are shared between the rounds by the experiments' weights (see
//! [`share`]): a worker asking for work gets chunks of the round whose experiment has had the
//! least of its share so far. A round's chunks wait in
//! `pending` until a worker leases them; a lease lasts until its deadline or until the worker
//! stops heart-beating, after which the chunk goes back to `pending`. The first result for a
//! chunk wins and later ones are dropped, so a chunk is never counted twice, however many
//! times it was leased.
//!
//! A result counts only from the worker holding the chunk's lease, and only once the round's
//! check accepts it (its sizes, finite values): a refused result gives the chunk to another
//! lease, and a chunk refused [`MAX_REFUSALS`] times fails the round, naming every try. A chunk
//! a worker failed to compute (a libtorch error, out of memory) goes to another worker, up to
//! [`DispatchConfig::chunk_retries`] times, before the round fails naming every failure.
//!
//! Leases last as long as the chunks' measured cost says they should (with a generous slack),
//! not a fixed timeout; and once nothing is left to lease, an idle worker may take a copy of
//! a lease that has run far longer than its cost (a straggler): both compute the same
//! result, and the first to arrive wins, so a slow worker never stalls a step.
//!
//! A round on a dataset is only leased to workers that reported holding that dataset at the
//! experiment's version; a worker that refuses the work anyway (its copy changed) is not asked
//! again. A round that no registered worker can compute for longer than the worker timeout
//! fails, saying why each worker cannot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outerloop_proto::v1::{
    ChunkResult, ExperimentSetup, LeaseReply, LeaseRequest, Parameters, Phase, RegisterReply,
    TaskDescriptor, WorkChunk,
};
use prost::bytes::Bytes;

mod round;
mod share;

use crate::text::printable;
use round::{describe_tasks, Round, RoundKind, Slot};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

/// Timeouts of the dispatcher.
#[derive(Clone, Copy, Debug)]
pub struct DispatchConfig {
    /// A worker that has not been heard of for this long is dropped and its leases requeued.
    pub worker_timeout: Duration,
    /// A lease not completed within this time is requeued even if its worker is alive.
    pub lease_timeout: Duration,
    /// How often workers are asked to heart-beat.
    pub heartbeat_interval: Duration,
    /// The longest a lease request is held open when there is no work.
    pub max_lease_wait: Duration,
    /// How many times a chunk a worker failed to compute is tried again elsewhere.
    pub chunk_retries: u32,
    /// The least time a lease must have run before an idle worker may copy it.
    pub straggler_after: Duration,
    /// Workers registered at once; registrations past it are refused.
    pub max_workers: usize,
    /// Chunks one worker may hold leased at once.
    pub max_leased_chunks: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            worker_timeout: Duration::from_secs(10),
            lease_timeout: Duration::from_secs(300),
            heartbeat_interval: Duration::from_secs(1),
            max_lease_wait: Duration::from_secs(5),
            chunk_retries: 2,
            straggler_after: Duration::from_secs(2),
            max_workers: 1024,
            max_leased_chunks: 256,
        }
    }
}

/// The most of a worker's error or refusal message kept.
const MAX_WORKER_MESSAGE_CHARS: usize = 1024;

/// A dataset at one version: its name and fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DatasetVersion {
    pub name: String,
    pub fingerprint: String,
}

/// A registering worker, as the dispatcher needs it.
#[derive(Clone, Debug)]
pub struct Registration {
    pub name: String,
    pub device: String,
    pub threads: u32,
    pub datasets: Vec<DatasetVersion>,
    /// Folders under its --data-root it could not read: (name, why), bounded by the caller.
    pub skipped: Vec<(String, String)>,
}

/// A registered worker, as `outerloop workers` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerView {
    /// Its id on the wire: a secret of the worker's, never shown.
    pub id: u64,
    /// Its registration number, 1 for the first: what people and logs see.
    pub number: u64,
    pub name: String,
    pub device: String,
    pub threads: u32,
    pub datasets: Vec<DatasetVersion>,
    /// Its results refused by a round's check.
    pub refused_results: u32,
}

/// Refused results a chunk may receive before its round fails: a worker that sends bad values
/// gets its chunk recomputed elsewhere, a run whose every worker computes non-finite values
/// (it diverged) stops.
pub const MAX_REFUSALS: usize = 3;

/// What a round's results must be before one may win its chunk's slot, given the chunk's
/// index: `Err` says what is wrong (wrong sizes, non-finite values).
#[derive(Clone)]
pub struct ResultCheck(Arc<CheckFn>);

/// A round's check of one result: the chunk's index and the result, or why it is refused.
type CheckFn = dyn Fn(usize, &ChunkResult) -> Result<(), String> + Send + Sync;

impl ResultCheck {
    pub fn new(
        check: impl Fn(usize, &ChunkResult) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        ResultCheck(Arc::new(check))
    }

    /// Accepts every result (for rounds whose results are checked later).
    pub fn any() -> Self {
        ResultCheck::new(|_, _| Ok(()))
    }
}

impl std::fmt::Debug for ResultCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResultCheck")
    }
}

/// Everything a round needs: who it is for, the parameters it runs at, and the tasks of each chunk.
#[derive(Clone, Debug)]
pub struct RoundInput {
    pub setup: ExperimentSetup,
    /// The dataset a worker must hold to compute the round, if any.
    pub dataset: Option<DatasetVersion>,
    pub version: u64,
    pub params: Bytes,
    pub phase: Phase,
    pub inner_steps: u32,
    pub chunks: Vec<Vec<TaskDescriptor>>,
    pub check: ResultCheck,
    /// The experiment's share of the workers against the other running experiments'.
    pub weight: f64,
}

/// The results of a round, in chunk order, with the worker that computed each chunk.
#[derive(Debug)]
pub struct RoundOutput {
    pub results: Vec<ChunkResult>,
    pub workers: Vec<u64>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RoundError {
    #[error("chunk {chunk} ({tasks}) failed on every try: {}", failures.join("; "))]
    ChunkFailed {
        chunk: usize,
        /// The chunk's tasks, as people can find them in the meta-batch.
        tasks: String,
        /// `worker: message` for each try.
        failures: Vec<String>,
    },
    #[error("the round was abandoned")]
    Abandoned,
    #[error("no registered worker can compute it: {}", reasons.join("; "))]
    NoEligibleWorker { reasons: Vec<String> },
    #[error("every result for chunk {chunk} was refused ({} tries): {}", refusals.len(), refusals.join("; "))]
    Refused { chunk: usize, refusals: Vec<String> },
}

/// What [`Dispatcher::complete`] made of a call's results.
#[derive(Debug, Default, PartialEq)]
pub struct Completed {
    /// Results that won their chunk's slot.
    pub accepted: u32,
    /// Why each refused result was refused (its chunk goes to another lease).
    pub refused: Vec<String>,
}

/// A registered worker as the coordinator sees it.
#[derive(Clone, Debug)]
struct WorkerInfo {
    name: String,
    device: String,
    threads: u32,
    datasets: Vec<DatasetVersion>,
    /// Folders it could not read, and why: told to whoever submits an experiment on one.
    skipped: Vec<(String, String)>,
    /// Registration number, shown instead of the secret id.
    number: u64,
    last_seen: Instant,
    /// Results of this worker refused by a round's check.
    refused_results: u32,
    /// Experiments that ended since its last heartbeat, for it to stop computing and forget.
    ended: Vec<String>,
}

/// The most ended experiments kept for a worker to hear of (a worker silent that long has
/// been dropped anyway, or hears of the most recent ones).
const MAX_ENDED_TOLD: usize = 64;

#[derive(Debug, Default)]
struct State {
    workers: HashMap<u64, WorkerInfo>,
    /// Registrations so far: the next worker's number is one more.
    registrations: u64,
    next_chunk_id: u64,
    /// The rounds in flight, by their first chunk id (chunk ids of a round are consecutive),
    /// at most one per experiment.
    rounds: BTreeMap<u64, Round>,
    /// What each running experiment has had of the workers.
    shares: share::Shares,
    /// Why a worker refused an experiment's work, by (experiment, worker).
    refusals: HashMap<(String, u64), String>,
    /// Seconds per chunk measured in the last round of each kind.
    costs: HashMap<RoundKind, Duration>,
}

/// Where this process starts numbering chunks: a function of the start time, so
/// that chunk ids from before a coordinator restart (a late result) do not
/// collide with new ones.
fn boot_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // The clock's low 32 bits, effectively random per boot, as the high half: 2^32 ids per
    // boot, and two boots share a range with probability 2^-32.
    (nanos as u64) << 32
}

/// Hands chunks of the rounds in flight to workers and collects their results.
#[derive(Debug)]
pub struct Dispatcher {
    config: DispatchConfig,
    state: Mutex<State>,
    /// Wakes lease requests that wait for work.
    work_ready: Notify,
}

impl Dispatcher {
    pub fn new(config: DispatchConfig) -> Self {
        Dispatcher {
            config,
            state: Mutex::new(State {
                next_chunk_id: boot_epoch(),
                ..State::default()
            }),
            work_ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Nothing under this lock calls code that can panic on user input; if a bug did, the
        // state could be mid-update, but stopping every RPC for good would be worse.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a worker, or says why not (too many are registered).
    pub fn register(&self, request: Registration) -> Result<RegisterReply, String> {
        let mut state = self.lock();
        if state.workers.len() >= self.config.max_workers {
            return Err(format!(
                "the coordinator has {} workers registered, its limit (--max-workers); try again when one leaves",
                state.workers.len()
            ));
        }
        // Whoever knows a worker's id can heart-beat, lease and complete as that worker: ids
        // are drawn from the thread's cryptographic generator, never counted.
        let worker_id = loop {
            let id: u64 = rand::random();
            if id != 0 && !state.workers.contains_key(&id) {
                break id;
            }
        };
        state.registrations += 1;
        let number = state.registrations;
        let datasets: Vec<String> = request
            .datasets
            .iter()
            .map(|d| format!("{}@{}", d.name, d.fingerprint))
            .collect();
        tracing::info!(worker = number, name = %request.name, device = %request.device, threads = request.threads, datasets = %datasets.join(","), "worker registered");
        state.workers.insert(
            worker_id,
            WorkerInfo {
                name: request.name,
                device: request.device,
                threads: request.threads,
                datasets: request.datasets,
                skipped: request.skipped,
                number,
                last_seen: Instant::now(),
                refused_results: 0,
                ended: Vec::new(),
            },
        );
        drop(state);
        // A new worker changes everyone's fair share; let waiting requests look again.
        self.work_ready.notify_waiters();
        Ok(RegisterReply {
            worker_id,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u32,
        })
    }

    /// Forgets `worker` (it is shutting down) and puts the chunks it holds back for other
    /// workers at once, rather than when its heartbeats are missed; false when it was not
    /// registered.
    pub fn deregister(&self, worker: u64) -> bool {
        let mut state = self.lock();
        let Some(info) = state.workers.remove(&worker) else {
            return false;
        };
        tracing::info!(worker = info.number, name = %info.name, "worker deregistered; its leases requeued");
        state.refusals.retain(|(_, w), _| *w != worker);
        for round in state.rounds.values_mut() {
            let held: Vec<usize> = (0..round.slots.len())
                .filter(|&i| {
                    round.slots[i]
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.worker == worker)
                })
                .collect();
            for index in held {
                round.release(worker, index);
            }
        }
        drop(state);
        // Both the requeued chunks and everyone's larger fair share are news to waiting leases.
        self.work_ready.notify_waiters();
        true
    }

    /// Records that `worker` is alive; false when it is not (or no longer) registered.
    pub fn heartbeat(&self, worker: u64) -> bool {
        match self.lock().workers.get_mut(&worker) {
            Some(info) => {
                info.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// The experiments that ended since `worker` last asked (with its heartbeat).
    pub fn ended_for(&self, worker: u64) -> Vec<String> {
        self.lock()
            .workers
            .get_mut(&worker)
            .map(|info| std::mem::take(&mut info.ended))
            .unwrap_or_default()
    }

    pub fn worker_count(&self) -> usize {
        self.lock().workers.len()
    }

    /// The registered workers, by id.
    pub fn workers(&self) -> Vec<WorkerView> {
        let state = self.lock();
        let mut workers: Vec<WorkerView> = state
            .workers
            .iter()
            .map(|(&id, w)| WorkerView {
                id,
                number: w.number,
                name: w.name.clone(),
                device: w.device.clone(),
                threads: w.threads,
                datasets: w.datasets.clone(),
                refused_results: w.refused_results,
            })
            .collect();
        workers.sort_by_key(|w| w.number);
        workers
    }

    /// What the registered workers said of folders named `name` they could not read, one
    /// entry a worker, in registration order.
    pub fn unreadable(&self, name: &str) -> Vec<String> {
        let state = self.lock();
        let mut said: Vec<(u64, String)> = (state.workers.values())
            .flat_map(|w| {
                (w.skipped.iter().filter(|(n, _)| n == name)).map(|(_, why)| {
                    (
                        w.number,
                        format!("worker `{}` could not read its {name}/: {why}", w.name),
                    )
                })
            })
            .collect();
        said.sort();
        said.into_iter().map(|(_, s)| s).collect()
    }

    /// How many registered workers hold each version (fingerprint) of dataset `name`.
    pub fn dataset_holders(&self, name: &str) -> BTreeMap<String, usize> {
        let mut holders = BTreeMap::new();
        for worker in self.lock().workers.values() {
            for d in worker.datasets.iter().filter(|d| d.name == name) {
                *holders.entry(d.fingerprint.clone()).or_insert(0) += 1;
            }
        }
        holders
    }

    /// Starts a round and waits for all of its results. Each experiment has one round at a
    /// time (a new one abandons the last); its runner awaits each before starting the next.
    pub async fn run_round(&self, input: RoundInput) -> Result<RoundOutput, RoundError> {
        if input.chunks.is_empty() {
            return Ok(RoundOutput {
                results: Vec::new(),
                workers: Vec::new(),
            });
        }
        let (done, receive) = oneshot::channel();
        {
            let mut state = self.lock();
            let first_chunk_id = state.next_chunk_id;
            state.next_chunk_id += input.chunks.len() as u64;
            let slots: Vec<Slot> = input
                .chunks
                .into_iter()
                .enumerate()
                .map(|(index, tasks)| Slot {
                    work: WorkChunk {
                        chunk_id: first_chunk_id + index as u64,
                        experiment_id: input.setup.experiment_id.clone(),
                        version: input.version,
                        phase: input.phase as i32,
                        inner_steps: input.inner_steps,
                        tasks,
                    },
                    lease: None,
                    leased_to: Vec::new(),
                    result: None,
                    refusals: Vec::new(),
                    failures: Vec::new(),
                })
                .collect();
            let kind = (
                input.setup.experiment_id.clone(),
                input.phase as i32,
                input.inner_steps,
            );
            let prior_cost = state.costs.get(&kind).copied();
            state.abandon(&input.setup.experiment_id);
            if state.shares.join(&input.setup.experiment_id) {
                // Starting (again: a paused experiment resumed): whatever workers were about
                // to hear of its end no longer holds.
                let experiment = &input.setup.experiment_id;
                for info in state.workers.values_mut() {
                    info.ended.retain(|e| e != experiment);
                }
            }
            state.rounds.insert(
                first_chunk_id,
                Round {
                    setup: input.setup,
                    dataset: input.dataset,
                    version: input.version,
                    params: input.params,
                    check: input.check,
                    first_chunk_id,
                    kind,
                    blocked_since: None,
                    pending: (0..slots.len()).collect(),
                    remaining: slots.len(),
                    slots,
                    leases: VecDeque::new(),
                    next_record: 0,
                    prior_cost,
                    slowest_cost: None,
                    held: HashMap::new(),
                    failed_chunks: 0,
                    weight: input.weight,
                    done,
                },
            );
        }
        self.work_ready.notify_waiters();
        receive.await.unwrap_or(Err(RoundError::Abandoned))
    }

    /// Drops an experiment whose run has ended (its round, if one is left, is abandoned: its
    /// leases end at once) and forgets what workers said about it, so that the refusals of a
    /// coordinator running for weeks do not pile up. With `tell_workers`, workers hear of it
    /// with their next heartbeat, to skip its chunks and drop its set-up (not when the run
    /// only stops for the coordinator's shutdown, to resume at its next start).
    pub fn experiment_ended(&self, experiment_id: &str, tell_workers: bool) {
        let mut state = self.lock();
        for info in state.workers.values_mut().filter(|_| tell_workers) {
            if info.ended.len() >= MAX_ENDED_TOLD {
                info.ended.remove(0);
            }
            info.ended.push(experiment_id.to_string());
        }
        if state.abandon(experiment_id) {
            // Its workers' room for other rounds' chunks has grown.
            self.work_ready.notify_waiters();
        }
        state.shares.leave(experiment_id);
        state
            .refusals
            .retain(|(experiment, _), _| experiment != experiment_id);
        state
            .costs
            .retain(|(experiment, _, _), _| experiment != experiment_id);
    }

    /// Drops `experiment_id`'s round (when the experiment is cancelled); its late results are
    /// ignored.
    pub fn abandon_round(&self, experiment_id: &str) {
        let abandoned = self.lock().abandon(experiment_id);
        if abandoned {
            // Its workers' fair shares of the other rounds have grown.
            self.work_ready.notify_waiters();
        }
    }

    /// Waits (up to the request's `wait_ms`, capped) for chunks to lease to this worker.
    pub async fn lease(&self, request: &LeaseRequest) -> LeaseReply {
        let wait = Duration::from_millis(request.wait_ms as u64).min(self.config.max_lease_wait);
        let give_up = Instant::now() + wait;
        loop {
            let notified = self.work_ready.notified();
            tokio::pin!(notified);
            // Register interest before looking, so a round started in between is not missed.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.workers.contains_key(&request.worker_id) {
                    return LeaseReply {
                        unknown_worker: true,
                        ..LeaseReply::default()
                    };
                }
                if let Some(reply) = state.take_work(request, &self.config) {
                    return reply;
                }
            }
            if tokio::time::timeout_at(give_up, notified).await.is_err() {
                return LeaseReply::default();
            }
        }
    }

    /// Takes `worker`'s results. Only a result for a chunk of a round in flight that this
    /// worker holds the lease of counts: results for chunks done already, leased to another
    /// worker (or to nobody) or of a round that is over are dropped. A counted result is
    /// checked (the round's [`ResultCheck`], run outside the lock) before it wins the slot; a
    /// refused one puts the chunk back for another lease.
    pub fn complete(&self, worker: u64, mut results: Vec<ChunkResult>) -> Completed {
        // What a worker says goes into logs and error messages: bounded, and no escape codes.
        for result in &mut results {
            for text in [&mut result.error, &mut result.refusal] {
                if !text.is_empty() {
                    *text = printable(text, MAX_WORKER_MESSAGE_CHARS);
                }
            }
        }
        // Which results this worker may deliver (by the round they belong to), and the check
        // each must pass.
        let deliverable = {
            let mut state = self.lock();
            // A dropped worker (silent past its timeout, its link cut) may come back under a
            // new id; what it sends under the old one is late, and dropped.
            let Some(info) = state.workers.get_mut(&worker) else {
                return Completed::default();
            };
            info.last_seen = Instant::now();
            let deliverable: Vec<(u64, usize, ResultCheck, ChunkResult)> = results
                .into_iter()
                .filter_map(|result| {
                    let (&key, round) = state.round_of_chunk(result.chunk_id)?;
                    let index = round.holds(worker, result.chunk_id)?;
                    Some((key, index, round.check.clone(), result))
                })
                .collect();
            deliverable
        };
        let checked: Vec<(u64, usize, ChunkResult, Result<(), String>)> = deliverable
            .into_iter()
            .map(|(key, index, check, result)| {
                // Refusals and errors carry no values to check.
                let verdict = if result.refusal.is_empty() && result.error.is_empty() {
                    (check.0)(index, &result)
                } else {
                    Ok(())
                };
                (key, index, result, verdict)
            })
            .collect();
        let mut state = self.lock();
        let worker_name = state
            .workers
            .get(&worker)
            .map_or_else(|| format!("#{worker}"), |w| w.name.clone());
        let mut done = Completed::default();
        for (key, index, result, verdict) in checked {
            // The round may have ended, or the lease expired, while the check ran.
            let Some(round) = state.rounds.get_mut(&key) else {
                continue;
            };
            if round.holds(worker, result.chunk_id) != Some(index) {
                continue;
            }
            // A refused result or a failure to compute: the chunk's first fault counts it.
            let fault = verdict.is_err() || (result.refusal.is_empty() && !result.error.is_empty());
            if fault && !round.slots[index].faulted() {
                round.failed_chunks += 1;
            }
            let slot = &mut round.slots[index];
            if let Err(why) = verdict {
                tracing::warn!(worker = %worker_name, chunk = index, reason = %why, "refused a worker's result; the chunk goes to another lease");
                slot.refusals
                    .push((worker, format!("{worker_name}: {why}")));
                done.refused
                    .push(format!("chunk {}: {why}", result.chunk_id));
                if slot.refusals.len() >= MAX_REFUSALS {
                    let refusals = slot.refusals.drain(..).map(|(_, why)| why).collect();
                    let round = state.rounds.remove(&key).expect("round checked above");
                    let _ = round.done.send(Err(RoundError::Refused {
                        chunk: index,
                        refusals,
                    }));
                    self.work_ready.notify_waiters();
                } else {
                    round.release(worker, index);
                    self.work_ready.notify_waiters();
                }
                if let Some(info) = state.workers.get_mut(&worker) {
                    info.refused_results += 1;
                }
                continue;
            }
            if !result.refusal.is_empty() {
                // This worker cannot compute the experiment at all (its copy of the data is
                // missing or differs): the chunk goes back to the queue for another worker.
                tracing::warn!(worker = %worker_name, experiment = %round.setup.experiment_id, reason = %result.refusal, "worker refused the experiment's work");
                round.release(worker, index);
                let key = (round.setup.experiment_id.clone(), worker);
                state.refusals.insert(key, result.refusal);
                self.work_ready.notify_waiters();
                continue;
            }
            if !result.error.is_empty() {
                done.accepted += 1;
                slot.failures
                    .push((worker, format!("{worker_name}: {}", result.error)));
                if slot.failures.len() > self.config.chunk_retries as usize {
                    let tasks = describe_tasks(&slot.work.tasks);
                    let failures = slot.failures.drain(..).map(|(_, f)| f).collect();
                    let round = state.rounds.remove(&key).expect("round checked above");
                    let _ = round.done.send(Err(RoundError::ChunkFailed {
                        chunk: index,
                        tasks,
                        failures,
                    }));
                    self.work_ready.notify_waiters();
                    continue;
                }
                tracing::warn!(worker = %worker_name, chunk = index, error = %result.error, "a worker failed to compute a chunk; it goes to another worker");
                round.release(worker, index);
                self.work_ready.notify_waiters();
                continue;
            }
            round.measure(worker, index);
            round.end_lease(index);
            let slot = &mut round.slots[index];
            slot.result = Some((result, worker));
            // `pending` is sorted (leases take from the front, requeues insert in order): a
            // search, not a scan, so a round stays linear in its chunks.
            if let Ok(at) = round.pending.binary_search(&index) {
                round.pending.remove(at);
            }
            round.remaining -= 1;
            done.accepted += 1;
            if round.remaining == 0 {
                let round = state.rounds.remove(&key).expect("round checked above");
                if let Some(cost) = round.slowest_cost {
                    state.costs.insert(round.kind.clone(), cost);
                }
                let (results, workers) = round
                    .slots
                    .into_iter()
                    .map(|s| s.result.expect("all chunks done"))
                    .unzip();
                let _ = round.done.send(Ok(RoundOutput { results, workers }));
            }
        }
        done
    }

    /// Drops silent workers and requeues their leases and every lease past its deadline; fails
    /// a round no registered worker has been able to compute for the worker timeout.
    pub fn expire(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let timeout = self.config.worker_timeout;
        let silent: Vec<u64> = state
            .workers
            .iter()
            .filter(|(_, w)| now.duration_since(w.last_seen) > timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in &silent {
            let info = state.workers.remove(id).expect("listed above");
            tracing::warn!(worker = info.number, name = %info.name, "worker missed its heartbeats; dropped, its leases requeued");
        }
        // A dropped worker comes back under a new id, so its refusals mean nothing any more.
        state
            .refusals
            .retain(|(_, worker), _| !silent.contains(worker));
        let mut changed = !silent.is_empty();
        let keys: Vec<u64> = state.rounds.keys().copied().collect();
        for key in keys {
            let blocked = state.blocked_reasons(&state.rounds[&key]);
            let round = state.rounds.get_mut(&key).expect("listed above");
            match blocked {
                None => round.blocked_since = None,
                Some(reasons) => {
                    let since = *round.blocked_since.get_or_insert(now);
                    if now.duration_since(since) > timeout {
                        let round = state.rounds.remove(&key).expect("listed above");
                        let _ = round
                            .done
                            .send(Err(RoundError::NoEligibleWorker { reasons }));
                        changed = true;
                        continue;
                    }
                }
            }
            let expired: Vec<usize> = (0..round.slots.len())
                .filter(|&index| {
                    round.slots[index]
                        .lease
                        .as_ref()
                        .is_some_and(|l| silent.contains(&l.worker) || l.deadline <= now)
                })
                .collect();
            changed |= !expired.is_empty();
            for index in expired {
                round.requeue(index);
            }
        }
        drop(state);
        if changed {
            self.work_ready.notify_waiters();
        }
    }
}

impl State {
    /// The round chunk `chunk_id` belongs to, with its key.
    fn round_of_chunk(&self, chunk_id: u64) -> Option<(&u64, &Round)> {
        let (key, round) = self.rounds.range(..=chunk_id).next_back()?;
        (chunk_id - key < round.slots.len() as u64).then_some((key, round))
    }

    /// Abandons `experiment_id`'s round, if it has one in flight; its late results are dropped.
    fn abandon(&mut self, experiment_id: &str) -> bool {
        let Some(key) = self
            .rounds
            .iter()
            .find(|(_, r)| r.setup.experiment_id == experiment_id)
            .map(|(&key, _)| key)
        else {
            return false;
        };
        let round = self.rounds.remove(&key).expect("found above");
        let _ = round.done.send(Err(RoundError::Abandoned));
        true
    }

    /// Why `worker` cannot compute `round`, if it cannot.
    fn ineligible(&self, round: &Round, worker: u64) -> Option<String> {
        let info = self.workers.get(&worker)?;
        let key = (round.setup.experiment_id.clone(), worker);
        if let Some(refusal) = self.refusals.get(&key) {
            return Some(format!("{}: {refusal}", info.name));
        }
        let needed = round.dataset.as_ref()?;
        if info.datasets.contains(needed) {
            return None;
        }
        Some(match info.datasets.iter().find(|d| d.name == needed.name) {
            Some(other) => format!(
                "{}: holds dataset `{}` at version {}, the experiment uses version {}",
                info.name, needed.name, other.fingerprint, needed.fingerprint
            ),
            None => format!(
                "{}: has no dataset `{}` under its --data-root",
                info.name, needed.name
            ),
        })
    }

    /// When `round` has work waiting and workers are registered but none of them can compute
    /// it, why each cannot.
    fn blocked_reasons(&self, round: &Round) -> Option<Vec<String>> {
        if round.pending.is_empty() || self.workers.is_empty() {
            return None;
        }
        let mut ids: Vec<u64> = self.workers.keys().copied().collect();
        ids.sort();
        ids.iter().map(|&w| self.ineligible(round, w)).collect()
    }

    /// Leases `request.worker_id` chunks of the round whose experiment is furthest behind its
    /// share (and that the worker can compute), up to a fair share of that round and within
    /// the worker's limit of leased chunks; when no round has chunks waiting, maybe a copy of
    /// a straggler's.
    fn take_work(&mut self, request: &LeaseRequest, config: &DispatchConfig) -> Option<LeaseReply> {
        let worker = request.worker_id;
        let held: usize = self
            .rounds
            .values()
            .map(|r| r.held.get(&worker).copied().unwrap_or(0))
            .sum();
        let room = config
            .max_leased_chunks
            .saturating_sub(held)
            .min(request.max_chunks.max(1) as usize);
        if room == 0 {
            return None;
        }
        let order = self.shares.order(
            self.rounds
                .iter()
                .map(|(&key, r)| (key, r.setup.experiment_id.as_str())),
        );
        for &key in &order {
            if self.rounds[&key].pending.is_empty() {
                continue;
            }
            if let Some(taken) = self.lease_pending(key, worker, room, config) {
                return Some(self.reply(key, request, taken));
            }
        }
        for &key in &order {
            if self.ineligible(&self.rounds[&key], worker).is_some() {
                continue;
            }
            let round = self.rounds.get_mut(&key).expect("listed above");
            let copies = round.copy_straggler(worker, room, config.straggler_after);
            if !copies.is_empty() {
                tracing::info!(
                    chunks = copies.len(),
                    "an idle worker takes a copy of a straggling lease"
                );
                return Some(self.reply(key, request, copies));
            }
        }
        None
    }

    /// Leases up to `room` of round `key`'s pending chunks (at most a fair share of the round)
    /// to `worker`, and charges its experiment for them; `None` when it cannot compute them.
    fn lease_pending(
        &mut self,
        key: u64,
        worker: u64,
        room: usize,
        config: &DispatchConfig,
    ) -> Option<Vec<usize>> {
        let round = &self.rounds[&key];
        if self.ineligible(round, worker).is_some() {
            return None;
        }
        // Every lease request comes here, so with many workers nothing below may look at each
        // of them unless it must: only a round on a dataset, or one some worker refused, has
        // workers that cannot take it, and only a chunk someone failed needs the others.
        let experiment = &round.setup.experiment_id;
        let some_cannot =
            round.dataset.is_some() || self.refusals.keys().any(|(e, _)| e == experiment);
        let eligible: Vec<u64> = if some_cannot || round.failed_chunks > 0 {
            let mut ids: Vec<u64> = self.workers.keys().copied().collect();
            ids.retain(|&w| w != worker && self.ineligible(round, w).is_none());
            ids
        } else {
            Vec::new()
        };
        let live_workers = if some_cannot {
            eligible.len() + 1
        } else {
            self.workers.len().max(1)
        };
        let round = self.rounds.get_mut(&key).expect("looked up above");
        // Split the round evenly over the live workers, so that one fast poller does not take
        // everything while others sit idle.
        let share = round.slots.len().div_ceil(live_workers);
        let taken = round.lease_pending(worker, share.min(room), &eligible, config.lease_timeout);
        if taken.is_empty() {
            return None;
        }
        let cost = round.cost().unwrap_or(share::UNMEASURED_CHUNK) * taken.len() as u32;
        let (experiment, weight) = (round.setup.experiment_id.clone(), round.weight);
        self.shares.charge(&experiment, cost, weight);
        Some(taken)
    }

    /// The reply that leases chunks `taken` of round `key`: with the experiment's set-up and
    /// parameters unless the worker says it holds them already.
    fn reply(&self, key: u64, request: &LeaseRequest, taken: Vec<usize>) -> LeaseReply {
        let round = &self.rounds[&key];
        let chunks = taken.iter().map(|&i| round.slots[i].work.clone()).collect();
        let cached = cached_version(request, &round.setup.experiment_id);
        LeaseReply {
            chunks,
            setup: cached.is_none().then(|| round.setup.clone()),
            parameters: (cached != Some(round.version)).then(|| Parameters {
                version: round.version,
                values: round.params.clone(),
            }),
            unknown_worker: false,
        }
    }
}

/// The parameter version of `experiment` the worker says it holds, with its set-up, if it
/// holds them.
fn cached_version(request: &LeaseRequest, experiment: &str) -> Option<u64> {
    let listed = request
        .cached
        .iter()
        .find(|c| c.experiment_id == experiment)
        .map(|c| c.version);
    listed.or_else(|| (request.cached_experiment == experiment).then_some(request.cached_version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn config() -> DispatchConfig {
        DispatchConfig {
            worker_timeout: Duration::from_secs(2),
            lease_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_millis(500),
            max_lease_wait: Duration::from_secs(1),
            chunk_retries: 2,
            straggler_after: Duration::from_secs(1),
            max_workers: 1024,
            max_leased_chunks: 256,
        }
    }

    fn input(chunks: usize) -> RoundInput {
        RoundInput {
            setup: ExperimentSetup {
                experiment_id: "exp-1".into(),
                ..Default::default()
            },
            dataset: None,
            version: 3,
            params: Bytes::from_static(&[0, 0, 128, 63]),
            phase: Phase::Train,
            inner_steps: 1,
            chunks: (0..chunks)
                .map(|i| {
                    vec![TaskDescriptor {
                        index: i as u64,
                        ..Default::default()
                    }]
                })
                .collect(),
            check: ResultCheck::any(),
            weight: 1.0,
        }
    }

    fn register(d: &Dispatcher, name: &str) -> u64 {
        register_with(d, name, vec![])
    }

    fn register_with(d: &Dispatcher, name: &str, datasets: Vec<DatasetVersion>) -> u64 {
        d.register(Registration {
            skipped: Vec::new(),
            name: name.into(),
            device: "cpu".into(),
            threads: 1,
            datasets,
        })
        .expect("below the worker limit")
        .worker_id
    }

    fn omniglot(fingerprint: &str) -> DatasetVersion {
        DatasetVersion {
            name: "omniglot".into(),
            fingerprint: fingerprint.into(),
        }
    }

    /// Starts a round that needs `dataset`.
    fn start_on(
        d: &Arc<Dispatcher>,
        chunks: usize,
        dataset: DatasetVersion,
    ) -> tokio::task::JoinHandle<Result<RoundOutput, RoundError>> {
        let d = d.clone();
        tokio::spawn(async move {
            d.run_round(RoundInput {
                dataset: Some(dataset),
                ..input(chunks)
            })
            .await
        })
    }

    fn ask(worker: u64, max_chunks: u32) -> LeaseRequest {
        LeaseRequest {
            worker_id: worker,
            max_chunks,
            wait_ms: 1000,
            ..Default::default()
        }
    }

    fn result(chunk: &WorkChunk, loss: f32) -> ChunkResult {
        ChunkResult {
            chunk_id: chunk.chunk_id,
            loss_after: vec![loss],
            ..Default::default()
        }
    }

    /// Starts a round on a task of its own and returns the handle to its output.
    fn start(
        d: &Arc<Dispatcher>,
        chunks: usize,
    ) -> tokio::task::JoinHandle<Result<RoundOutput, RoundError>> {
        let d = d.clone();
        tokio::spawn(async move { d.run_round(input(chunks)).await })
    }

    /// Starts a round of `chunks` chunks for experiment `experiment` of `weight`.
    fn start_for(
        d: &Arc<Dispatcher>,
        experiment: &str,
        weight: f64,
        chunks: usize,
    ) -> tokio::task::JoinHandle<Result<RoundOutput, RoundError>> {
        let (d, experiment) = (d.clone(), experiment.to_string());
        tokio::spawn(async move {
            d.run_round(RoundInput {
                setup: ExperimentSetup {
                    experiment_id: experiment,
                    ..Default::default()
                },
                weight,
                ..input(chunks)
            })
            .await
        })
    }

    /// Waits until `rounds` rounds are in flight.
    async fn rounds_in_flight(d: &Dispatcher, rounds: usize) {
        while d.lock().rounds.len() != rounds {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_experiments_share_a_worker_by_their_weights() {
        let d = Arc::new(Dispatcher::new(config()));
        let w = register(&d, "a");
        let heavy = start_for(&d, "exp-1", 3.0, 40);
        let light = start_for(&d, "exp-2", 1.0, 40);
        rounds_in_flight(&d, 2).await;
        let mut leased = Vec::new();
        for _ in 0..20 {
            let lease = d.lease(&ask(w, 1)).await;
            assert_eq!(lease.chunks.len(), 1);
            // Every chunk costs the same 10 ms.
            tokio::time::advance(Duration::from_millis(10)).await;
            leased.push(lease.chunks[0].experiment_id.clone());
            assert_eq!(
                d.complete(w, vec![result(&lease.chunks[0], 1.0)]).accepted,
                1
            );
        }
        let heavy_count = leased.iter().filter(|e| *e == "exp-1").count();
        assert_eq!(
            (heavy_count, leased.len() - heavy_count),
            (15, 5),
            "{leased:?}"
        );
        // Ending one experiment drops its round at once; the other goes on alone.
        d.experiment_ended("exp-1", true);
        assert_eq!(heavy.await.unwrap().unwrap_err(), RoundError::Abandoned);
        // The worker hears of it once, to stop its chunks and drop its set-up; unless it runs
        // again (a paused experiment resumed) before the worker heard of it.
        assert_eq!(d.ended_for(w), ["exp-1"]);
        assert!(d.ended_for(w).is_empty());
        d.experiment_ended("exp-3", true);
        d.experiment_ended("exp-4", false);
        let _again = start_for(&d, "exp-3", 1.0, 1);
        rounds_in_flight(&d, 2).await;
        assert!(
            d.ended_for(w).is_empty(),
            "exp-3 runs again; exp-4 only stopped"
        );
        let lease = d.lease(&ask(w, 64)).await;
        assert_eq!(lease.chunks.len(), 35, "the rest of exp-2's round");
        assert!(lease.chunks.iter().all(|c| c.experiment_id == "exp-2"));
        let results = lease.chunks.iter().map(|c| result(c, 2.0)).collect();
        assert_eq!(d.complete(w, results).accepted, 35);
        assert_eq!(light.await.unwrap().unwrap().results.len(), 40);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_experiments_late_results_are_dropped_and_the_other_round_is_untouched() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        let cancelled = start_for(&d, "exp-1", 1.0, 2);
        let other = start_for(&d, "exp-2", 1.0, 2);
        rounds_in_flight(&d, 2).await;
        let first = d.lease(&ask(a, 8)).await;
        assert_eq!(
            first.chunks[0].experiment_id, "exp-1",
            "the older round first"
        );
        let second = d.lease(&ask(b, 8)).await;
        assert_eq!(
            second.chunks[0].experiment_id, "exp-2",
            "then the one behind"
        );
        d.abandon_round("exp-1");
        assert_eq!(cancelled.await.unwrap().unwrap_err(), RoundError::Abandoned);
        let late = first.chunks.iter().map(|c| result(c, 1.0)).collect();
        assert_eq!(d.complete(a, late).accepted, 0, "its round is gone");
        // Worker a is free at once for the other round's chunk still waiting.
        let results: Vec<ChunkResult> = second.chunks.iter().map(|c| result(c, 2.0)).collect();
        assert_eq!(d.complete(b, results).accepted, second.chunks.len() as u32);
        let rest = d.lease(&ask(a, 8)).await;
        let results = rest.chunks.iter().map(|c| result(c, 2.0)).collect();
        assert_eq!(d.complete(a, results).accepted, rest.chunks.len() as u32);
        let out = other.await.unwrap().unwrap();
        assert_eq!(out.results.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_holding_several_experiments_gets_only_what_it_lacks() {
        let d = Arc::new(Dispatcher::new(config()));
        let w = register(&d, "a");
        let _one = start_for(&d, "exp-1", 1.0, 1);
        let _two = start_for(&d, "exp-2", 1.0, 1);
        rounds_in_flight(&d, 2).await;
        let holding = |versions: &[(&str, u64)]| LeaseRequest {
            cached: versions
                .iter()
                .map(
                    |&(experiment_id, version)| outerloop_proto::v1::CachedExperiment {
                        experiment_id: experiment_id.into(),
                        version,
                    },
                )
                .collect(),
            ..ask(w, 1)
        };
        // Holds both, exp-1 (leased first) at the round's version 3: nothing to send.
        let lease = d.lease(&holding(&[("exp-2", 1), ("exp-1", 3)])).await;
        assert_eq!(lease.chunks[0].experiment_id, "exp-1");
        assert!(lease.setup.is_none() && lease.parameters.is_none());
        // Holds exp-2 at an older version: its parameters, not its set-up.
        let lease = d.lease(&holding(&[("exp-2", 1), ("exp-1", 3)])).await;
        assert_eq!(lease.chunks[0].experiment_id, "exp-2");
        assert!(lease.setup.is_none());
        assert_eq!(lease.parameters.map(|p| p.version), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn results_come_back_in_chunk_order_whatever_the_completion_order() {
        let d = Arc::new(Dispatcher::new(config()));
        let w = register(&d, "a");
        let round = start(&d, 3);
        let lease = d.lease(&ask(w, 8)).await;
        assert_eq!(lease.chunks.len(), 3, "a lone worker takes the whole round");
        for chunk in lease.chunks.iter().rev() {
            assert_eq!(
                d.complete(w, vec![result(chunk, chunk.tasks[0].index as f32)])
                    .accepted,
                1
            );
        }
        let out = round.await.unwrap().unwrap();
        let order: Vec<f32> = out.results.iter().map(|r| r.loss_after[0]).collect();
        assert_eq!(order, [0.0, 1.0, 2.0]);
        assert_eq!(out.workers, [w, w, w]);
    }

    #[tokio::test(start_paused = true)]
    async fn work_is_shared_between_workers_and_the_cache_is_respected() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        let _round = start(&d, 5);
        let first = d.lease(&ask(a, 8)).await;
        assert_eq!(first.chunks.len(), 3);
        assert!(
            first.setup.is_some() && first.parameters.is_some(),
            "a cold worker gets set-up and parameters"
        );
        let cached = LeaseRequest {
            cached_experiment: "exp-1".into(),
            cached_version: 3,
            ..ask(b, 8)
        };
        let second = d.lease(&cached).await;
        assert_eq!(second.chunks.len(), 2);
        assert!(
            second.setup.is_none() && second.parameters.is_none(),
            "a warm worker gets neither"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_request_waits_for_work_and_times_out_empty() {
        let d = Arc::new(Dispatcher::new(config()));
        let w = register(&d, "a");
        assert!(d.lease(&ask(w, 1)).await.chunks.is_empty());
        let waiting = {
            let d = d.clone();
            tokio::spawn(async move { d.lease(&ask(w, 1)).await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _round = start(&d, 1);
        assert_eq!(waiting.await.unwrap().chunks.len(), 1);
        assert!(d.lease(&ask(99, 1)).await.unknown_worker);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_worker_loses_its_leases_and_its_late_results_are_not_counted_twice() {
        let d = Arc::new(Dispatcher::new(config()));
        let (dead, alive) = (register(&d, "dead"), register(&d, "alive"));
        let round = start(&d, 2);
        let lost = d.lease(&ask(dead, 1)).await.chunks;
        let kept = d.lease(&ask(alive, 1)).await.chunks;
        assert_eq!(d.complete(alive, vec![result(&kept[0], 1.0)]).accepted, 1);

        // `alive` keeps heart-beating; `dead` goes quiet past the timeout.
        for _ in 0..6 {
            tokio::time::advance(Duration::from_millis(500)).await;
            assert!(d.heartbeat(alive));
            d.expire();
        }
        assert!(!d.heartbeat(dead), "the silent worker was dropped");
        // Its result arriving now (its link was cut, say) is dropped: it was dropped itself.
        assert_eq!(d.complete(dead, vec![result(&lost[0], 99.0)]).accepted, 0);
        let retry = d.lease(&ask(alive, 8)).await.chunks;
        assert_eq!(
            retry.iter().map(|c| c.chunk_id).collect::<Vec<_>>(),
            vec![lost[0].chunk_id]
        );
        assert_eq!(d.complete(alive, vec![result(&retry[0], 2.0)]).accepted, 1);
        // The dead worker's result arrives late (say it was only partitioned): dropped.
        assert_eq!(d.complete(dead, vec![result(&lost[0], 99.0)]).accepted, 0);
        let out = round.await.unwrap().unwrap();
        assert_eq!(
            out.results
                .iter()
                .map(|r| r.loss_after[0])
                .collect::<Vec<_>>(),
            [2.0, 1.0]
        );
        assert_eq!(out.workers, [alive, alive]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_overdue_lease_is_requeued_and_the_first_result_wins() {
        let d = Arc::new(Dispatcher::new(DispatchConfig {
            lease_timeout: Duration::from_secs(1),
            ..config()
        }));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        let round = start(&d, 1);
        let slow = d.lease(&ask(a, 1)).await.chunks;
        tokio::time::advance(Duration::from_millis(1500)).await;
        d.heartbeat(a);
        d.heartbeat(b);
        d.expire();
        let again = d.lease(&ask(b, 1)).await.chunks;
        assert_eq!(again[0].chunk_id, slow[0].chunk_id);
        assert_eq!(
            d.complete(a, vec![result(&slow[0], 1.0)]).accepted,
            1,
            "the slow worker answered first"
        );
        assert_eq!(d.complete(b, vec![result(&again[0], 1.0)]).accepted, 0);
        assert_eq!(round.await.unwrap().unwrap().workers, [a]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dataset_round_goes_only_to_workers_holding_that_version() {
        let d = Arc::new(Dispatcher::new(config()));
        let holder = register_with(&d, "holder", vec![omniglot("aa")]);
        let other = register_with(&d, "other-version", vec![omniglot("bb")]);
        let none = register(&d, "no-data");
        assert_eq!(
            d.dataset_holders("omniglot"),
            BTreeMap::from([("aa".to_string(), 1), ("bb".to_string(), 1)])
        );
        let round = start_on(&d, 4, omniglot("aa"));
        tokio::task::yield_now().await;
        assert!(d.lease(&ask(other, 8)).await.chunks.is_empty());
        assert!(d.lease(&ask(none, 8)).await.chunks.is_empty());
        let chunks = d.lease(&ask(holder, 8)).await.chunks;
        assert_eq!(
            chunks.len(),
            4,
            "the only eligible worker's fair share is everything"
        );
        for c in &chunks {
            d.complete(holder, vec![result(c, 0.0)]);
        }
        assert!(round.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_chunk_goes_to_another_worker_and_the_refuser_is_not_asked_again() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (
            register_with(&d, "a", vec![omniglot("aa")]),
            register_with(&d, "b", vec![omniglot("aa")]),
        );
        let round = start_on(&d, 2, omniglot("aa"));
        let refused = d.lease(&ask(a, 1)).await.chunks;
        let refusal = ChunkResult {
            chunk_id: refused[0].chunk_id,
            refusal: "dataset `omniglot` is not under --data-root /x".into(),
            ..Default::default()
        };
        assert_eq!(d.complete(a, vec![refusal]).accepted, 0);
        assert!(
            d.lease(&ask(a, 8)).await.chunks.is_empty(),
            "not asked again"
        );
        let rest = d.lease(&ask(b, 8)).await.chunks;
        assert_eq!(rest.len(), 2, "the refused chunk was requeued");
        for c in &rest {
            d.complete(b, vec![result(c, 1.0)]);
        }
        assert_eq!(round.await.unwrap().unwrap().workers, [b, b]);
    }

    #[test]
    fn what_workers_could_not_read_is_told_while_they_are_registered() {
        let d = Dispatcher::new(config());
        let with = |name: &str, skipped: &[(&str, &str)]| {
            d.register(Registration {
                skipped: (skipped.iter())
                    .map(|(n, why)| (n.to_string(), why.to_string()))
                    .collect(),
                name: name.into(),
                device: "cpu".into(),
                threads: 1,
                datasets: vec![],
            })
            .unwrap()
            .worker_id
        };
        let a = with("a", &[("shop", "no rows"), ("other", "ragged")]);
        with("b", &[("shop", "a ragged row")]);
        assert_eq!(
            d.unreadable("shop"),
            [
                "worker `a` could not read its shop/: no rows",
                "worker `b` could not read its shop/: a ragged row"
            ]
        );
        assert!(d.unreadable("mini").is_empty());
        // What a worker said goes with it.
        d.deregister(a);
        assert_eq!(
            d.unreadable("shop"),
            ["worker `b` could not read its shop/: a ragged row"]
        );
        assert!(d.unreadable("other").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_are_forgotten_when_their_experiment_ends_or_their_worker_is_dropped() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (
            register_with(&d, "a", vec![omniglot("aa")]),
            register_with(&d, "b", vec![omniglot("aa")]),
        );
        let refuse = |worker| {
            let round = start_on(&d, 1, omniglot("aa"));
            let d = d.clone();
            async move {
                let chunk = d.lease(&ask(worker, 1)).await.chunks[0].chunk_id;
                let refusal = ChunkResult {
                    chunk_id: chunk,
                    refusal: "no copy".into(),
                    ..Default::default()
                };
                d.complete(worker, vec![refusal]);
                d.abandon_round("exp-1");
                let _ = round.await;
            }
        };
        refuse(a).await;
        refuse(b).await;
        assert_eq!(d.lock().refusals.len(), 2);
        d.experiment_ended("another", true);
        assert_eq!(
            d.lock().refusals.len(),
            2,
            "another experiment's end forgets nothing"
        );
        // b stays alive, a falls silent past the timeout.
        for _ in 0..6 {
            tokio::time::advance(Duration::from_millis(500)).await;
            d.heartbeat(b);
            d.expire();
        }
        let left: Vec<u64> = d.lock().refusals.keys().map(|(_, w)| *w).collect();
        assert_eq!(left, [b], "the dropped worker's refusal is forgotten");
        let experiment = d.lock().refusals.keys().next().unwrap().0.clone();
        d.experiment_ended(&experiment, true);
        assert!(d.lock().refusals.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_round_nobody_can_compute_fails_after_the_worker_timeout_saying_why() {
        let d = Arc::new(Dispatcher::new(config()));
        let _ = register_with(&d, "old-copy", vec![omniglot("bb")]);
        let _ = register(&d, "no-data");
        let round = start_on(&d, 1, omniglot("aa"));
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(500)).await;
            for w in d.workers() {
                d.heartbeat(w.id);
            }
            d.expire();
        }
        assert!(!round.is_finished(), "still within the grace period");
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(500)).await;
            for w in d.workers() {
                d.heartbeat(w.id);
            }
            d.expire();
        }
        let err = round.await.unwrap().unwrap_err().to_string();
        assert!(
            err.contains(
                "old-copy: holds dataset `omniglot` at version bb, the experiment uses version aa"
            ),
            "{err}"
        );
        assert!(err.contains("no-data: has no dataset `omniglot`"), "{err}");
    }

    fn failure(chunk: &WorkChunk, message: &str) -> ChunkResult {
        ChunkResult {
            chunk_id: chunk.chunk_id,
            error: message.into(),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_chunk_goes_to_another_worker_and_its_result_counts() {
        let d = Arc::new(Dispatcher::new(config()));
        let (gpu, cpu) = (register(&d, "gpu-box"), register(&d, "cpu-box"));
        let round = start(&d, 2);
        let chunks = d.lease(&ask(gpu, 8)).await.chunks;
        assert_eq!(chunks.len(), 1, "a fair share");
        assert_eq!(
            d.complete(gpu, vec![failure(&chunks[0], "CUDA out of memory")])
                .accepted,
            1
        );
        // The worker that failed it is not given it again while another can take it: it gets
        // the chunk after it, and the other worker the failed one.
        let next = d.lease(&ask(gpu, 8)).await.chunks;
        let retried = d.lease(&ask(cpu, 8)).await.chunks;
        let ids = |chunks: &[WorkChunk]| chunks.iter().map(|c| c.chunk_id).collect::<Vec<_>>();
        assert_eq!(ids(&next), [chunks[0].chunk_id + 1]);
        assert_eq!(ids(&retried), [chunks[0].chunk_id]);
        assert_eq!(d.complete(gpu, vec![result(&next[0], 1.0)]).accepted, 1);
        assert_eq!(d.complete(cpu, vec![result(&retried[0], 1.0)]).accepted, 1);
        assert_eq!(round.await.unwrap().unwrap().workers, [cpu, gpu]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_chunk_failed_past_its_retries_fails_the_round_naming_its_tasks_and_every_failure() {
        let d = Arc::new(Dispatcher::new(config()));
        let (gpu, cpu) = (register(&d, "gpu-box"), register(&d, "cpu-box"));
        let round = start(&d, 2);
        let first = d.lease(&ask(gpu, 1)).await.chunks;
        let second = d.lease(&ask(cpu, 1)).await.chunks;
        assert_eq!(d.complete(cpu, vec![result(&second[0], 2.0)]).accepted, 1);
        // Three tries (two retries): once every worker failed it, the first may try again.
        d.complete(gpu, vec![failure(&first[0], "CUDA out of memory")]);
        for (worker, message) in [(cpu, "bad alloc"), (gpu, "CUDA out of memory")] {
            let chunk = d.lease(&ask(worker, 8)).await.chunks;
            assert_eq!(chunk.len(), 1);
            assert_eq!(chunk[0].chunk_id, first[0].chunk_id);
            d.complete(worker, vec![failure(&chunk[0], message)]);
        }
        let err = round.await.unwrap().unwrap_err();
        assert_eq!(
            err,
            RoundError::ChunkFailed {
                chunk: 0,
                tasks: "task 0".into(),
                failures: vec![
                    "gpu-box: CUDA out of memory".into(),
                    "cpu-box: bad alloc".into(),
                    "gpu-box: CUDA out of memory".into(),
                ],
            }
        );
        assert!(
            err.to_string()
                .starts_with("chunk 0 (task 0) failed on every try: gpu-box: CUDA"),
            "{err}"
        );
        // Nothing is left to lease or complete.
        assert_eq!(d.complete(gpu, vec![result(&first[0], 0.0)]).accepted, 0);
    }

    #[test]
    fn chunk_tasks_are_described_as_a_range_or_a_list() {
        let tasks = |indices: &[u64]| -> Vec<TaskDescriptor> {
            indices
                .iter()
                .map(|&index| TaskDescriptor {
                    index,
                    ..Default::default()
                })
                .collect()
        };
        assert_eq!(describe_tasks(&tasks(&[])), "no tasks");
        assert_eq!(describe_tasks(&tasks(&[7])), "task 7");
        assert_eq!(describe_tasks(&tasks(&[8, 9, 10, 11])), "tasks 8-11");
        assert_eq!(describe_tasks(&tasks(&[1, 5, 9])), "tasks 1, 5, 9");
        let many: Vec<u64> = (0..20).map(|i| i * 2).collect();
        assert_eq!(
            describe_tasks(&tasks(&many)),
            "tasks 0, 2, 4, 6, 8, 10, 12, 14, ..."
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_worker_copies_a_straggling_lease_and_the_first_result_wins() {
        let d = Arc::new(Dispatcher::new(config()));
        let (slow, fast) = (register(&d, "slow"), register(&d, "fast"));
        let round = start(&d, 2);
        let stuck = d.lease(&ask(slow, 8)).await.chunks;
        let mine = d.lease(&ask(fast, 8)).await.chunks;
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(d.complete(fast, vec![result(&mine[0], 2.0)]).accepted, 1);
        // A lease is a straggler only once it ran past twice its measured cost and the floor.
        assert!(d.lock().take_work(&ask(fast, 8), &config()).is_none());
        tokio::time::advance(Duration::from_millis(1000)).await;
        d.heartbeat(slow);
        let copy = d.lease(&ask(fast, 8)).await.chunks;
        assert_eq!(copy.len(), 1);
        assert_eq!(copy[0].chunk_id, stuck[0].chunk_id);
        // One copy per lease is enough.
        let third = register(&d, "third");
        assert!(d.lock().take_work(&ask(third, 8), &config()).is_none());
        assert_eq!(d.complete(fast, vec![result(&copy[0], 1.0)]).accepted, 1);
        let out = round.await.unwrap().unwrap();
        assert_eq!(out.workers, [fast, fast]);
        // The straggler's late result is not counted twice.
        assert_eq!(d.complete(slow, vec![result(&stuck[0], 9.0)]).accepted, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_measured_cost_nothing_is_copied() {
        let d = Arc::new(Dispatcher::new(config()));
        let (slow, idle) = (register(&d, "slow"), register(&d, "idle"));
        let _round = start(&d, 1);
        assert_eq!(d.lease(&ask(slow, 8)).await.chunks.len(), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        d.heartbeat(slow);
        assert!(d.lock().take_work(&ask(idle, 8), &config()).is_none());
    }

    /// Runs rounds of one chunk on `worker` until one's lease expires, keeping the worker
    /// alive; returns how long the lease lasted, in whole seconds.
    async fn lease_life(d: &Arc<Dispatcher>, worker: u64, other: u64) -> u64 {
        let chunk = d.lease(&ask(worker, 8)).await.chunks;
        assert_eq!(chunk.len(), 1);
        for second in 1..=120 {
            tokio::time::advance(Duration::from_secs(1)).await;
            d.heartbeat(worker);
            d.heartbeat(other);
            d.expire();
            if d.lock().rounds.values().next().unwrap().slots[0]
                .lease
                .is_none()
            {
                return second;
            }
        }
        panic!("the lease never expired")
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_lasts_as_long_as_its_measured_cost_says_within_bounds() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        // Nothing measured: the configured timeout (60 s).
        let round = start(&d, 1);
        assert_eq!(lease_life(&d, a, b).await, 60);
        d.abandon_round("exp-1");
        let _ = round.await;
        // A round of the same kind that took 5 s a chunk: 8 x 5 s.
        let round = start(&d, 1);
        let chunk = d.lease(&ask(a, 8)).await.chunks;
        tokio::time::advance(Duration::from_secs(5)).await;
        d.complete(a, vec![result(&chunk[0], 1.0)]);
        round.await.unwrap().unwrap();
        let round = start(&d, 1);
        assert_eq!(lease_life(&d, a, b).await, 40);
        d.abandon_round("exp-1");
        let _ = round.await;
        // A cheap round: never below the floor of 30 s.
        let round = start(&d, 1);
        let chunk = d.lease(&ask(a, 8)).await.chunks;
        d.complete(a, vec![result(&chunk[0], 1.0)]);
        round.await.unwrap().unwrap();
        let _round = start(&d, 1);
        assert_eq!(lease_life(&d, a, b).await, 30);
    }

    #[tokio::test(start_paused = true)]
    async fn registrations_past_the_worker_limit_are_refused_until_one_leaves() {
        let d = Dispatcher::new(DispatchConfig {
            max_workers: 2,
            ..config()
        });
        let registration = || Registration {
            skipped: Vec::new(),
            name: "w".into(),
            device: "cpu".into(),
            threads: 1,
            datasets: vec![],
        };
        let first = d.register(registration()).unwrap().worker_id;
        d.register(registration()).unwrap();
        let err = d.register(registration()).unwrap_err();
        assert!(
            err.contains("2 workers registered, its limit (--max-workers)"),
            "{err}"
        );
        assert_eq!(d.worker_count(), 2);
        assert!(d.deregister(first));
        assert!(d.register(registration()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_holds_at_most_its_limit_of_leased_chunks() {
        let d = Arc::new(Dispatcher::new(DispatchConfig {
            max_leased_chunks: 3,
            ..config()
        }));
        let w = register(&d, "greedy");
        let _round = start(&d, 10);
        let first = d.lease(&ask(w, 100)).await.chunks;
        assert_eq!(first.len(), 3);
        assert!(
            d.lease(&ask(w, 100)).await.chunks.is_empty(),
            "at its limit"
        );
        assert_eq!(d.complete(w, vec![result(&first[0], 1.0)]).accepted, 1);
        assert_eq!(d.lease(&ask(w, 100)).await.chunks.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_result_counts_only_from_a_worker_the_chunk_was_leased_to() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        let round = start(&d, 2);
        let mine = d.lease(&ask(a, 1)).await.chunks;
        let theirs = d.lease(&ask(b, 1)).await.chunks;
        // `b` answers for `a`'s chunk, an unregistered id for both, and `b` reports a failure of
        // `a`'s chunk: none of it counts, and the round goes on.
        assert_eq!(d.complete(b, vec![result(&mine[0], 666.0)]).accepted, 0);
        assert_eq!(
            d.complete(12345, vec![result(&theirs[0], 666.0)]).accepted,
            0
        );
        let failure = ChunkResult {
            chunk_id: mine[0].chunk_id,
            error: "made up".into(),
            ..Default::default()
        };
        assert_eq!(d.complete(b, vec![failure]).accepted, 0);
        assert_eq!(d.complete(a, vec![result(&mine[0], 1.0)]).accepted, 1);
        assert_eq!(d.complete(b, vec![result(&theirs[0], 2.0)]).accepted, 1);
        let out = round.await.unwrap().unwrap();
        let losses: Vec<f32> = out.results.iter().map(|r| r.loss_after[0]).collect();
        assert_eq!(losses, [1.0, 2.0]);
        assert_eq!(out.workers, [a, b]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_result_goes_to_another_lease_and_a_chunk_refused_every_try_fails_the_round()
    {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        let finite = ResultCheck::new(|index, r: &ChunkResult| {
            if r.loss_after.iter().all(|l| l.is_finite()) {
                Ok(())
            } else {
                Err(format!("chunk {index}: a loss is not finite"))
            }
        });
        let round = {
            let (d, finite) = (d.clone(), finite.clone());
            tokio::spawn(async move {
                d.run_round(RoundInput {
                    check: finite,
                    ..input(2)
                })
                .await
            })
        };
        let bad = d.lease(&ask(a, 1)).await.chunks;
        let done = d.complete(a, vec![result(&bad[0], f32::NAN)]);
        assert_eq!(done.accepted, 0);
        assert_eq!(
            done.refused,
            [format!(
                "chunk {}: chunk 0: a loss is not finite",
                bad[0].chunk_id
            )]
        );
        // `a` keeps serving, but the chunk it sent bad values for waits for `b`, who has not
        // tried it: `a` gets only the one nobody took yet.
        let other = d.lease(&ask(a, 8)).await.chunks;
        let ids: Vec<u64> = other.iter().map(|c| c.chunk_id).collect();
        assert_eq!(ids, [bad[0].chunk_id + 1]);
        let again = d.lease(&ask(b, 8)).await.chunks;
        let ids: Vec<u64> = again.iter().map(|c| c.chunk_id).collect();
        assert_eq!(ids, [bad[0].chunk_id]);
        assert_eq!(d.complete(b, vec![result(&again[0], 3.0)]).accepted, 1);
        assert_eq!(d.complete(a, vec![result(&other[0], 3.0)]).accepted, 1);
        assert_eq!(round.await.unwrap().unwrap().workers, [b, a]);

        // Every try refused: the round fails naming each worker and why.
        let round = {
            let d = d.clone();
            tokio::spawn(async move {
                d.run_round(RoundInput {
                    check: finite,
                    ..input(1)
                })
                .await
            })
        };
        for (try_, worker) in [a, b, a].into_iter().enumerate() {
            let chunk = d.lease(&ask(worker, 1)).await.chunks;
            assert_eq!(chunk.len(), 1, "try {try_}");
            assert_eq!(
                d.complete(worker, vec![result(&chunk[0], f32::INFINITY)])
                    .refused
                    .len(),
                1
            );
        }
        let RoundError::Refused { chunk: 0, refusals } = round.await.unwrap().unwrap_err() else {
            panic!("the round should fail with the chunk's refusals")
        };
        assert_eq!(refusals.len(), MAX_REFUSALS);
        assert!(
            refusals[0].starts_with("a: chunk 0: a loss is not finite"),
            "{refusals:?}"
        );
        assert!(refusals[1].starts_with("b: "), "{refusals:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_is_known_only_by_the_unguessable_id_it_was_given() {
        let d = Arc::new(Dispatcher::new(config()));
        let (a, b) = (register(&d, "a"), register(&d, "b"));
        let shown: Vec<(u64, String)> = d
            .workers()
            .into_iter()
            .map(|w| (w.number, w.name))
            .collect();
        assert_eq!(shown, [(1, "a".to_string()), (2, "b".to_string())]);
        // Neither the numbers people see nor a neighbour of a real id lets anyone act as a worker.
        for guess in [1, 2, a.wrapping_add(1), b.wrapping_sub(1), a ^ 1] {
            if guess != a && guess != b {
                assert!(!d.heartbeat(guess), "{guess}");
                assert!(d.lease(&ask(guess, 1)).await.unknown_worker, "{guess}");
            }
        }
        assert!(d.heartbeat(a) && d.heartbeat(b));
    }
}
