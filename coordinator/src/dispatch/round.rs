//! One round in flight: its chunks' slots, leases, straggler copies and measured costs.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use outerloop_proto::v1::{ChunkResult, ExperimentSetup, TaskDescriptor, WorkChunk};
use prost::bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{DatasetVersion, ResultCheck, RoundError, RoundOutput};

/// How many times its measured cost a lease is given before it expires: generous, because an
/// expired lease costs a recomputation, and a worker may be slower than the round's others.
const LEASE_SLACK: u32 = 8;

/// The shortest lease a measured cost may give: below it, the noise of a loaded machine.
const MIN_LEASE: Duration = Duration::from_secs(30);

/// How many times its measured cost a lease must have run before it counts as a straggler.
const STRAGGLER_FACTOR: u32 = 2;

#[derive(Debug)]
pub(super) struct Lease {
    pub(super) worker: u64,
    pub(super) deadline: Instant,
    /// The [`LeaseRecord`] this lease was granted in.
    pub(super) record: u64,
}

/// One grant of chunks to a worker: what straggler copies and the cost measurements need.
#[derive(Debug)]
pub(super) struct LeaseRecord {
    pub(super) id: u64,
    pub(super) worker: u64,
    pub(super) leased_at: Instant,
    pub(super) chunks: Vec<usize>,
    /// Chunks still leased under this record (neither done nor put back).
    pub(super) open: usize,
    /// Whether an idle worker took a copy of it already (one copy per lease is enough).
    pub(super) copied: bool,
}

/// Rounds whose chunks cost alike: the same experiment, phase and inner steps.
pub(super) type RoundKind = (String, i32, u32);

#[derive(Debug)]
pub(super) struct Slot {
    pub(super) work: WorkChunk,
    pub(super) lease: Option<Lease>,
    /// Every worker this chunk was leased to in this round: each computes the same result, so
    /// the first of theirs to arrive wins (a slow worker's lease may have passed to another).
    pub(super) leased_to: Vec<u64>,
    pub(super) result: Option<(ChunkResult, u64)>,
    /// The workers whose results for this chunk were refused, and `name: why` for each.
    pub(super) refusals: Vec<(u64, String)>,
    /// The workers that failed to compute this chunk, and `name: message` for each.
    pub(super) failures: Vec<(u64, String)>,
}

impl Slot {
    /// Whether `worker` failed to compute this chunk or sent a result for it that was refused:
    /// the chunk goes to another worker first, so that one worker's fault does not use up
    /// every try.
    pub(super) fn failed_on(&self, worker: u64) -> bool {
        self.faults().any(|w| w == worker)
    }

    /// Whether some worker failed to compute this chunk or sent a refused result for it.
    pub(super) fn faulted(&self) -> bool {
        self.faults().next().is_some()
    }

    /// The workers that failed this chunk or sent refused results for it.
    fn faults(&self) -> impl Iterator<Item = u64> + '_ {
        (self.failures.iter().chain(&self.refusals)).map(|(w, _)| *w)
    }
}

#[derive(Debug)]
pub(super) struct Round {
    pub(super) setup: ExperimentSetup,
    pub(super) dataset: Option<DatasetVersion>,
    pub(super) version: u64,
    pub(super) params: Bytes,
    pub(super) check: ResultCheck,
    pub(super) first_chunk_id: u64,
    pub(super) kind: RoundKind,
    /// Since when no registered worker could compute the round, if none can.
    pub(super) blocked_since: Option<Instant>,
    pub(super) slots: Vec<Slot>,
    /// Chunk indices waiting for a worker, in chunk order.
    pub(super) pending: VecDeque<usize>,
    pub(super) remaining: usize,
    /// Grants of this round still open, oldest first, ids counting up without gaps.
    pub(super) leases: VecDeque<LeaseRecord>,
    pub(super) next_record: u64,
    /// Seconds per chunk measured in the last round of this kind, if there was one.
    pub(super) prior_cost: Option<Duration>,
    /// The slowest seconds per chunk of a lease measured in this round.
    pub(super) slowest_cost: Option<Duration>,
    /// Chunks leased to each worker now.
    pub(super) held: HashMap<u64, usize>,
    /// Chunks some worker failed to compute or sent a refused result for.
    pub(super) failed_chunks: usize,
    /// Its experiment's share of the workers (see `share`).
    pub(super) weight: f64,
    pub(super) done: oneshot::Sender<Result<RoundOutput, RoundError>>,
}

impl Round {
    /// The index of chunk `chunk_id` when it is this round's, still open, and was leased to
    /// `worker`: only such a result may count.
    pub(super) fn holds(&self, worker: u64, chunk_id: u64) -> Option<usize> {
        let index = chunk_id.checked_sub(self.first_chunk_id)? as usize;
        let slot = self.slots.get(index)?;
        (slot.result.is_none() && slot.leased_to.contains(&worker)).then_some(index)
    }

    /// Puts chunk `index` back for another lease when `worker` holds its lease now.
    pub(super) fn release(&mut self, worker: u64, index: usize) {
        if self.slots[index]
            .lease
            .as_ref()
            .is_some_and(|l| l.worker == worker)
        {
            self.requeue(index);
        }
    }

    /// Ends chunk `index`'s lease and puts it back for another.
    pub(super) fn requeue(&mut self, index: usize) {
        self.end_lease(index);
        let at = self.pending.partition_point(|&i| i < index);
        self.pending.insert(at, index);
    }

    /// Ends chunk `index`'s lease, if it has one, and returns it.
    pub(super) fn end_lease(&mut self, index: usize) -> Option<Lease> {
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

    pub(super) fn record_mut(&mut self, id: u64) -> Option<&mut LeaseRecord> {
        let first = self.leases.front()?.id;
        self.leases
            .get_mut(usize::try_from(id.checked_sub(first)?).ok()?)
    }

    /// What one chunk costs, as measured: the slowest of this round and the last of its kind.
    pub(super) fn cost(&self) -> Option<Duration> {
        self.prior_cost.max(self.slowest_cost)
    }

    /// How long a lease of `size` chunks is given: its measured cost with slack, within
    /// bounds; the configured timeout while nothing was measured.
    pub(super) fn lease_time(&self, size: usize, timeout: Duration) -> Duration {
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
    pub(super) fn lease_pending(
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
    pub(super) fn copy_straggler(
        &mut self,
        worker: u64,
        count: usize,
        at_least: Duration,
    ) -> Vec<usize> {
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
    pub(super) fn measure(&mut self, worker: u64, index: usize) {
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
pub(super) fn describe_tasks(tasks: &[TaskDescriptor]) -> String {
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
