//! Work dispatch: the worker registry, the chunks of the current round, leases and their expiry.
//!
//! One round (a meta-batch, or an evaluation) is in flight at a time. Its chunks wait in
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

use crate::text::printable;
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

/// How many times its measured cost a lease is given before it expires: generous, because an
/// expired lease costs a recomputation, and a worker may be slower than the round's others.
const LEASE_SLACK: u32 = 8;

/// The shortest lease a measured cost may give: below it, the noise of a loaded machine.
const MIN_LEASE: Duration = Duration::from_secs(30);

/// The most of a worker's error or refusal message kept.
const MAX_WORKER_MESSAGE_CHARS: usize = 1024;

/// How many times its measured cost a lease must have run before it counts as a straggler.
const STRAGGLER_FACTOR: u32 = 2;

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
    /// Registration number, shown instead of the secret id.
    number: u64,
    last_seen: Instant,
    /// Results of this worker refused by a round's check.
    refused_results: u32,
}

#[derive(Debug)]
struct Lease {
    worker: u64,
    deadline: Instant,
    /// The [`LeaseRecord`] this lease was granted in.
    record: u64,
}

/// One grant of chunks to a worker: what straggler copies and the cost measurements need.
#[derive(Debug)]
struct LeaseRecord {
    id: u64,
    worker: u64,
    leased_at: Instant,
    chunks: Vec<usize>,
    /// Chunks still leased under this record (neither done nor put back).
    open: usize,
    /// Whether an idle worker took a copy of it already (one copy per lease is enough).
    copied: bool,
}

/// Rounds whose chunks cost alike: the same experiment, phase and inner steps.
type RoundKind = (String, i32, u32);

#[derive(Debug)]
struct Slot {
    work: WorkChunk,
    lease: Option<Lease>,
    /// Every worker this chunk was leased to in this round: each computes the same result, so
    /// the first of theirs to arrive wins (a slow worker's lease may have passed to another).
    leased_to: Vec<u64>,
    result: Option<(ChunkResult, u64)>,
    /// Why each refused result for this chunk was refused, with the worker that sent it.
    refusals: Vec<String>,
    /// The workers that failed to compute this chunk, and `name: message` for each.
    failures: Vec<(u64, String)>,
}

impl Slot {
    fn failed_on(&self, worker: u64) -> bool {
        self.failures.iter().any(|(w, _)| *w == worker)
    }
}

#[derive(Debug)]
struct Round {
    setup: ExperimentSetup,
    dataset: Option<DatasetVersion>,
    version: u64,
    params: Bytes,
    check: ResultCheck,
    first_chunk_id: u64,
    kind: RoundKind,
    /// Since when no registered worker could compute the round, if none can.
    blocked_since: Option<Instant>,
    slots: Vec<Slot>,
    /// Chunk indices waiting for a worker, in chunk order.
    pending: VecDeque<usize>,
    remaining: usize,
    /// Grants of this round still open, oldest first, ids counting up without gaps.
    leases: VecDeque<LeaseRecord>,
    next_record: u64,
    /// Seconds per chunk measured in the last round of this kind, if there was one.
    prior_cost: Option<Duration>,
    /// The slowest seconds per chunk of a lease measured in this round.
    slowest_cost: Option<Duration>,
    /// Chunks leased to each worker now.
    held: HashMap<u64, usize>,
    /// Chunks some worker failed to compute.
    failed_chunks: usize,
    done: oneshot::Sender<Result<RoundOutput, RoundError>>,
}

impl Round {
    /// The index of chunk `chunk_id` when it is this round's, still open, and was leased to
    /// `worker`: only such a result may count.
    fn holds(&self, worker: u64, chunk_id: u64) -> Option<usize> {
        let index = chunk_id.checked_sub(self.first_chunk_id)? as usize;
        let slot = self.slots.get(index)?;
        (slot.result.is_none() && slot.leased_to.contains(&worker)).then_some(index)
    }

    /// Puts chunk `index` back for another lease when `worker` holds its lease now.
    fn release(&mut self, worker: u64, index: usize) {
        if self.slots[index]
            .lease
            .as_ref()
            .is_some_and(|l| l.worker == worker)
        {
            self.requeue(index);
        }
    }

    /// Ends chunk `index`'s lease and puts it back for another.
    fn requeue(&mut self, index: usize) {
        self.end_lease(index);
        let at = self.pending.partition_point(|&i| i < index);
        self.pending.insert(at, index);
    }

    /// Ends chunk `index`'s lease, if it has one, and returns it.
    fn end_lease(&mut self, index: usize) -> Option<Lease> {
        let lease = self.slots[index].lease.take()?;
        if let Some(record) = self.record_mut(lease.record) {
            record.open -= 1;
        }
        if let Some(held) = self.held.get_mut(&lease.worker) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&lease.worker);
            }
        }
        Some(lease)
    }

    fn record_mut(&mut self, id: u64) -> Option<&mut LeaseRecord> {
        let first = self.leases.front()?.id;
        self.leases
            .get_mut(usize::try_from(id.checked_sub(first)?).ok()?)
    }

    /// What one chunk costs, as measured: the slowest of this round and the last of its kind.
    fn cost(&self) -> Option<Duration> {
        self.prior_cost.max(self.slowest_cost)
    }

    /// How long a lease of `size` chunks is given: its measured cost with slack, within
    /// bounds; the configured timeout while nothing was measured.
    fn lease_time(&self, size: usize, timeout: Duration) -> Duration {
        match self.cost() {
            None => timeout,
            Some(cost) => cost
                .saturating_mul(u32::try_from(size).unwrap_or(u32::MAX))
                .saturating_mul(LEASE_SLACK)
                .clamp(MIN_LEASE.min(timeout), timeout),
        }
    }

    /// Leases up to `count` pending chunks, in chunk order, to `worker`. A chunk `worker`
    /// failed to compute is left for another while one of the `eligible` has not failed it.
    fn lease_pending(
        &mut self,
        worker: u64,
        count: usize,
        eligible: &[u64],
        timeout: Duration,
    ) -> Vec<usize> {
        let mut taken = Vec::with_capacity(count.min(self.pending.len()));
        let mut skipped = Vec::new();
        while taken.len() < count {
            let Some(index) = self.pending.pop_front() else {
                break;
            };
            let slot = &self.slots[index];
            if slot.failed_on(worker) && eligible.iter().any(|&w| !slot.failed_on(w)) {
                skipped.push(index);
            } else {
                taken.push(index);
            }
        }
        for index in skipped.into_iter().rev() {
            self.pending.push_front(index);
        }
        if taken.is_empty() {
            return taken;
        }
        let now = Instant::now();
        let deadline = now + self.lease_time(taken.len(), timeout);
        let record = self.next_record;
        self.next_record += 1;
        for &index in &taken {
            let slot = &mut self.slots[index];
            slot.leased_to.push(worker);
            slot.lease = Some(Lease {
                worker,
                deadline,
                record,
            });
        }
        *self.held.entry(worker).or_insert(0) += taken.len();
        self.leases.push_back(LeaseRecord {
            id: record,
            worker,
            leased_at: now,
            open: taken.len(),
            chunks: taken.clone(),
            copied: false,
        });
        taken
    }

    /// Gives idle `worker` a copy of up to `count` chunks of the oldest lease that has run
    /// far past its measured cost (and `at_least`), if there is one.
    fn copy_straggler(&mut self, worker: u64, count: usize, at_least: Duration) -> Vec<usize> {
        while self.leases.front().is_some_and(|r| r.open == 0) {
            self.leases.pop_front();
        }
        let Some(cost) = self.cost() else {
            return Vec::new();
        };
        let now = Instant::now();
        for r in 0..self.leases.len() {
            let record = &self.leases[r];
            let overdue = cost
                .saturating_mul(u32::try_from(record.chunks.len()).unwrap_or(u32::MAX))
                .saturating_mul(STRAGGLER_FACTOR)
                .max(at_least);
            if record.copied
                || record.open == 0
                || record.worker == worker
                || now.duration_since(record.leased_at) < overdue
            {
                continue;
            }
            let id = record.id;
            let copies: Vec<usize> = record
                .chunks
                .iter()
                .copied()
                .filter(|&i| {
                    let slot = &self.slots[i];
                    slot.result.is_none()
                        && slot.lease.as_ref().is_some_and(|l| l.record == id)
                        && !slot.leased_to.contains(&worker)
                })
                .take(count)
                .collect();
            if copies.is_empty() {
                continue;
            }
            self.leases[r].copied = true;
            for &index in &copies {
                self.slots[index].leased_to.push(worker);
            }
            return copies;
        }
        Vec::new()
    }

    /// Notes the cost of a lease whose chunk `index` `worker` just delivered.
    fn measure(&mut self, worker: u64, index: usize) {
        let Some(lease) = self.slots[index].lease.as_ref() else {
            return;
        };
        // A copy's result says nothing about its lease's cost.
        if lease.worker != worker {
            return;
        }
        let record = lease.record;
        if let Some(record) = self.record_mut(record) {
            let per_chunk =
                record.leased_at.elapsed() / u32::try_from(record.chunks.len()).unwrap_or(u32::MAX);
            self.slowest_cost = self.slowest_cost.max(Some(per_chunk));
        }
    }
}

/// The tasks of a chunk, for a message: `tasks 8-15`, or their indices when not consecutive.
fn describe_tasks(tasks: &[TaskDescriptor]) -> String {
    let indices: Vec<u64> = tasks.iter().map(|t| t.index).collect();
    match indices.as_slice() {
        [] => "no tasks".to_string(),
        [one] => format!("task {one}"),
        [first, .., last] if indices.windows(2).all(|w| w[1] == w[0] + 1) => {
            format!("tasks {first}-{last}")
        }
        _ => {
            let shown: Vec<String> = indices.iter().take(8).map(u64::to_string).collect();
            let more = if indices.len() > 8 { ", ..." } else { "" };
            format!("tasks {}{more}", shown.join(", "))
        }
    }
}

#[derive(Debug, Default)]
struct State {
    workers: HashMap<u64, WorkerInfo>,
    /// Registrations so far: the next worker's number is one more.
    registrations: u64,
    next_chunk_id: u64,
    round: Option<Round>,
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

/// Hands chunks of the current round to workers and collects their results.
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
                number,
                last_seen: Instant::now(),
                refused_results: 0,
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
        if let Some(round) = state.round.as_mut() {
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

    /// Starts a round and waits for all of its results. Only one round runs at a time; the
    /// caller (the experiment runner) awaits each before starting the next.
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
            if let Some(old) = state.round.take() {
                let _ = old.done.send(Err(RoundError::Abandoned));
            }
            state.round = Some(Round {
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
                done,
            });
        }
        self.work_ready.notify_waiters();
        receive.await.unwrap_or(Err(RoundError::Abandoned))
    }

    /// Forgets what workers said about an experiment that has ended, so that the refusals of a
    /// coordinator running for weeks do not pile up.
    pub fn experiment_ended(&self, experiment_id: &str) {
        let mut state = self.lock();
        state
            .refusals
            .retain(|(experiment, _), _| experiment != experiment_id);
        state
            .costs
            .retain(|(experiment, _, _), _| experiment != experiment_id);
    }

    /// Drops the current round (when its experiment is cancelled); its late results are ignored.
    pub fn abandon_round(&self) {
        if let Some(round) = self.lock().round.take() {
            let _ = round.done.send(Err(RoundError::Abandoned));
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

    /// Takes `worker`'s results. Only a result for a chunk of the current round that this
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
        // Which results this worker may deliver, and the check they must pass.
        let (first_chunk_id, check, held) = {
            let mut state = self.lock();
            // A dropped worker (silent past its timeout, its link cut) may come back under a
            // new id; what it sends under the old one is late, and dropped.
            let Some(info) = state.workers.get_mut(&worker) else {
                return Completed::default();
            };
            info.last_seen = Instant::now();
            let Some(round) = state.round.as_ref() else {
                return Completed::default();
            };
            let held: Vec<(usize, ChunkResult)> = results
                .into_iter()
                .filter_map(|result| {
                    let index = round.holds(worker, result.chunk_id)?;
                    Some((index, result))
                })
                .collect();
            (round.first_chunk_id, round.check.clone(), held)
        };
        let checked: Vec<(usize, ChunkResult, Result<(), String>)> = held
            .into_iter()
            .map(|(index, result)| {
                // Refusals and errors carry no values to check.
                let verdict = if result.refusal.is_empty() && result.error.is_empty() {
                    (check.0)(index, &result)
                } else {
                    Ok(())
                };
                (index, result, verdict)
            })
            .collect();
        let mut state = self.lock();
        let worker_name = state
            .workers
            .get(&worker)
            .map_or_else(|| format!("#{worker}"), |w| w.name.clone());
        let mut done = Completed::default();
        for (index, result, verdict) in checked {
            let Some(round) = state.round.as_mut() else {
                break;
            };
            // The round may have moved on, or the lease expired, while the check ran.
            if round.first_chunk_id != first_chunk_id
                || round.holds(worker, result.chunk_id) != Some(index)
            {
                continue;
            }
            let slot = &mut round.slots[index];
            if let Err(why) = verdict {
                tracing::warn!(worker = %worker_name, chunk = index, reason = %why, "refused a worker's result; the chunk goes to another lease");
                slot.refusals.push(format!("{worker_name}: {why}"));
                done.refused
                    .push(format!("chunk {}: {why}", result.chunk_id));
                if slot.refusals.len() >= MAX_REFUSALS {
                    let refusals = std::mem::take(&mut slot.refusals);
                    let round = state.round.take().expect("round checked above");
                    let _ = round.done.send(Err(RoundError::Refused {
                        chunk: index,
                        refusals,
                    }));
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
                if slot.failures.is_empty() {
                    round.failed_chunks += 1;
                }
                let slot = &mut round.slots[index];
                slot.failures
                    .push((worker, format!("{worker_name}: {}", result.error)));
                if slot.failures.len() > self.config.chunk_retries as usize {
                    let tasks = describe_tasks(&slot.work.tasks);
                    let failures = slot.failures.drain(..).map(|(_, f)| f).collect();
                    let round = state.round.take().expect("round checked above");
                    let _ = round.done.send(Err(RoundError::ChunkFailed {
                        chunk: index,
                        tasks,
                        failures,
                    }));
                    return done;
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
                let round = state.round.take().expect("round checked above");
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

    /// Drops silent workers and requeues their leases and every lease past its deadline.
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
        let mut requeued = false;
        let blocked = state.blocked_reasons();
        if let Some(round) = state.round.as_mut() {
            match blocked {
                None => round.blocked_since = None,
                Some(reasons) => {
                    let since = *round.blocked_since.get_or_insert(now);
                    if now.duration_since(since) > timeout {
                        let round = state.round.take().expect("checked above");
                        let _ = round
                            .done
                            .send(Err(RoundError::NoEligibleWorker { reasons }));
                        return;
                    }
                }
            }
        }
        if let Some(round) = state.round.as_mut() {
            let expired: Vec<usize> = (0..round.slots.len())
                .filter(|&index| {
                    round.slots[index]
                        .lease
                        .as_ref()
                        .is_some_and(|l| silent.contains(&l.worker) || l.deadline <= now)
                })
                .collect();
            for index in expired {
                round.requeue(index);
                requeued = true;
            }
        }
        drop(state);
        if requeued || !silent.is_empty() {
            self.work_ready.notify_waiters();
        }
    }
}

impl State {
    /// Why `worker` cannot compute the current round, if it cannot.
    fn ineligible(&self, worker: u64) -> Option<String> {
        let round = self.round.as_ref()?;
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

    /// When the current round has work waiting and workers are registered but none of them
    /// can compute it, why each cannot.
    fn blocked_reasons(&self) -> Option<Vec<String>> {
        let round = self.round.as_ref()?;
        if round.pending.is_empty() || self.workers.is_empty() {
            return None;
        }
        let mut ids: Vec<u64> = self.workers.keys().copied().collect();
        ids.sort();
        ids.iter().map(|&w| self.ineligible(w)).collect()
    }

    /// Leases up to a fair share of the pending chunks to `request.worker_id`, within its
    /// limit of leased chunks; when none are pending, maybe a copy of a straggler's.
    fn take_work(&mut self, request: &LeaseRequest, config: &DispatchConfig) -> Option<LeaseReply> {
        let worker = request.worker_id;
        if self.ineligible(worker).is_some() {
            return None;
        }
        let round = self.round.as_ref()?;
        // Every lease request comes here, so with many workers nothing below may look at each
        // of them unless it must: only a round on a dataset, or one some worker refused, has
        // workers that cannot take it, and only a chunk someone failed needs the others.
        let experiment = &round.setup.experiment_id;
        let some_cannot =
            round.dataset.is_some() || self.refusals.keys().any(|(e, _)| e == experiment);
        let eligible: Vec<u64> = if some_cannot || round.failed_chunks > 0 {
            let mut ids: Vec<u64> = self.workers.keys().copied().collect();
            ids.retain(|&w| w != worker && self.ineligible(w).is_none());
            ids
        } else {
            Vec::new()
        };
        let live_workers = if some_cannot {
            eligible.len() + 1
        } else {
            self.workers.len().max(1)
        };
        let round = self.round.as_mut()?;
        let held = round.held.get(&worker).copied().unwrap_or(0);
        let room = config
            .max_leased_chunks
            .saturating_sub(held)
            .min(request.max_chunks.max(1) as usize);
        if room == 0 {
            return None;
        }
        let taken = if round.pending.is_empty() {
            let copies = round.copy_straggler(worker, room, config.straggler_after);
            if !copies.is_empty() {
                tracing::info!(
                    chunks = copies.len(),
                    "an idle worker takes a copy of a straggling lease"
                );
            }
            copies
        } else {
            // Split the round evenly over the live workers, so that one fast poller does not
            // take everything while others sit idle.
            let share = round.slots.len().div_ceil(live_workers);
            round.lease_pending(worker, share.min(room), &eligible, config.lease_timeout)
        };
        if taken.is_empty() {
            return None;
        }
        let chunks = taken.iter().map(|&i| round.slots[i].work.clone()).collect();
        let same_experiment = request.cached_experiment == round.setup.experiment_id;
        Some(LeaseReply {
            chunks,
            setup: (!same_experiment).then(|| round.setup.clone()),
            parameters: (!same_experiment || request.cached_version != round.version).then(|| {
                Parameters {
                    version: round.version,
                    values: round.params.clone(),
                }
            }),
            unknown_worker: false,
        })
    }
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
        }
    }

    fn register(d: &Dispatcher, name: &str) -> u64 {
        register_with(d, name, vec![])
    }

    fn register_with(d: &Dispatcher, name: &str, datasets: Vec<DatasetVersion>) -> u64 {
        d.register(Registration {
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
                d.abandon_round();
                let _ = round.await;
            }
        };
        refuse(a).await;
        refuse(b).await;
        assert_eq!(d.lock().refusals.len(), 2);
        d.experiment_ended("another");
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
        d.experiment_ended(&experiment);
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
            if d.lock().round.as_ref().unwrap().slots[0].lease.is_none() {
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
        d.abandon_round();
        let _ = round.await;
        // A round of the same kind that took 5 s a chunk: 8 x 5 s.
        let round = start(&d, 1);
        let chunk = d.lease(&ask(a, 8)).await.chunks;
        tokio::time::advance(Duration::from_secs(5)).await;
        d.complete(a, vec![result(&chunk[0], 1.0)]);
        round.await.unwrap().unwrap();
        let round = start(&d, 1);
        assert_eq!(lease_life(&d, a, b).await, 40);
        d.abandon_round();
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
        // The refused chunk is leased again first (here to `b`), then the one nobody took yet.
        let mut again = d.lease(&ask(b, 8)).await.chunks;
        again.extend(d.lease(&ask(b, 8)).await.chunks);
        let ids: Vec<u64> = again.iter().map(|c| c.chunk_id).collect();
        assert_eq!(ids, [bad[0].chunk_id, bad[0].chunk_id + 1]);
        for chunk in &again {
            assert_eq!(d.complete(b, vec![result(chunk, 3.0)]).accepted, 1);
        }
        assert_eq!(round.await.unwrap().unwrap().workers, [b, b]);

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
