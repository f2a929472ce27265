//! A worker client with a trivial learner: the real worker's protocol (worker/src/client.rs) over its own connection, answering every chunk at once with zero gradients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outerloop_proto::transport::{MAX_MESSAGE_BYTES, WINDOW_BYTES};
use outerloop_proto::v1::results_client::ResultsClient;
use outerloop_proto::v1::workers_client::WorkersClient;
use outerloop_proto::v1::{
    ChunkResult, CompleteRequest, DeregisterRequest, HeartbeatRequest, LeaseReply, LeaseRequest,
    Phase, RegisterRequest, WorkChunk,
};
use prost::bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

/// The real worker's settings: how long a lease request waits, and its `--max-chunks` default.
const LEASE_WAIT: Duration = Duration::from_secs(2);
const MAX_CHUNKS: u32 = 64;
/// The real worker's limit on any one call.
const RPC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the call under way when the run ends may take: a lease wait, and some.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// What one worker saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Time from sending a lease request (alone, or with results) to its reply, for the
    /// replies that carried chunks.
    pub lease_round_trips: Vec<Duration>,
    pub results_sent: u64,
    /// The sum of `CompleteReply.accepted`.
    pub accepted: u64,
    /// Every chunk id leased to this worker.
    pub leased_ids: Vec<u64>,
    /// The chunk ids of calls whose every result was accepted: the coordinator counted each.
    pub accepted_ids: Vec<u64>,
    /// Calls of which only some results were accepted (the others late or copies): which ones
    /// counted cannot be told, so their ids are in neither list.
    pub partly_accepted_calls: u64,
    pub registrations: u64,
    /// Failed calls and protocol violations, in order.
    pub errors: Vec<String>,
}

/// Why a registration's session ended.
enum SessionEnd {
    /// The run is over; deregister, if registered.
    Stopped(Option<u64>),
    /// The coordinator no longer knows this worker: register again.
    Forgotten,
    Failed(String),
}

/// Serves the coordinator at `url` as worker `name` until `stop`; counts its first registration
/// in `registered`.
pub async fn run(
    url: String,
    name: String,
    registered: Arc<AtomicUsize>,
    stop: CancellationToken,
) -> Tally {
    let mut tally = Tally::default();
    let mut client = match connect(&url).await {
        Ok(channel) => Client {
            workers: WorkersClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            results: ResultsClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        },
        Err(e) => {
            tally.errors.push(format!("connect: {e}"));
            return tally;
        }
    };
    while !stop.is_cancelled() {
        match session(&mut client, &name, &registered, &stop, &mut tally).await {
            SessionEnd::Stopped(None) => break,
            SessionEnd::Stopped(Some(worker_id)) => {
                // As the real worker does: its leases go back at once, not at its timeout.
                let bye = client.workers.deregister(DeregisterRequest { worker_id });
                if let Ok(Err(status)) = tokio::time::timeout(Duration::from_secs(2), bye).await {
                    tally.errors.push(format!("deregister: {status}"));
                }
                break;
            }
            SessionEnd::Forgotten => {}
            SessionEnd::Failed(why) => {
                tally.errors.push(why);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tally
}

/// A connection set up as the real worker's.
async fn connect(url: &str) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(url.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(RPC_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
        .connect()
        .await
}

/// The coordinator's two worker services over one connection.
struct Client {
    workers: WorkersClient<Channel>,
    results: ResultsClient<Channel>,
}

/// One registration: heartbeats beside the lease loop, as the real worker runs them.
async fn session(
    client: &mut Client,
    name: &str,
    registered: &AtomicUsize,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> SessionEnd {
    let request = RegisterRequest {
        name: name.to_string(),
        device: "load-test".to_string(),
        threads: 1,
        datasets: Vec::new(),
        skipped: Vec::new(),
    };
    let reply = tokio::select! {
        () = stop.cancelled() => return SessionEnd::Stopped(None),
        reply = client.workers.register(request) => match reply {
            Ok(reply) => reply.into_inner(),
            Err(status) => return SessionEnd::Failed(format!("register: {status}")),
        },
    };
    if tally.registrations == 0 {
        registered.fetch_add(1, Ordering::Relaxed);
    }
    tally.registrations += 1;
    let worker_id = reply.worker_id;
    let heartbeats = {
        let mut client = client.workers.clone();
        let interval = Duration::from_millis(reply.heartbeat_interval_ms.max(50) as u64);
        async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                match client.heartbeat(HeartbeatRequest { worker_id }).await {
                    Ok(reply) if !reply.get_ref().known => return SessionEnd::Forgotten,
                    Ok(_) => {}
                    Err(status) => return SessionEnd::Failed(format!("heartbeat: {status}")),
                }
            }
        }
    };
    // The call under way when the run ends is answered before the worker stops: the last
    // results' `accepted` comes with the reply to their next lease request, which waits.
    let drained = async {
        stop.cancelled().await;
        tokio::time::sleep(DRAIN_LIMIT).await;
        SessionEnd::Failed(format!(
            "a call was still unanswered {} s after the run ended",
            DRAIN_LIMIT.as_secs()
        ))
    };
    tokio::select! {
        end = drained => end,
        end = heartbeats => end,
        end = lease_loop(client, worker_id, stop, tally) => end,
    }
}

/// Leases, answers, and returns the answers with the next lease request in one call, until
/// `stop`.
async fn lease_loop(
    client: &mut Client,
    worker_id: u64,
    stop: &CancellationToken,
    tally: &mut Tally,
) -> SessionEnd {
    let mut cache = Cache::default();
    let mut sent = Instant::now();
    let mut lease = match client.workers.lease(cache.request(worker_id)).await {
        Ok(reply) => reply.into_inner(),
        Err(status) => return SessionEnd::Failed(format!("lease: {status}")),
    };
    loop {
        if lease.unknown_worker {
            return SessionEnd::Forgotten;
        }
        if stop.is_cancelled() {
            return SessionEnd::Stopped(Some(worker_id));
        }
        if lease.chunks.is_empty() {
            sent = Instant::now();
            lease = match client.workers.lease(cache.request(worker_id)).await {
                Ok(reply) => reply.into_inner(),
                Err(status) => return SessionEnd::Failed(format!("lease: {status}")),
            };
            continue;
        }
        tally.lease_round_trips.push(sent.elapsed());
        cache.take(&lease);
        let results = match lease
            .chunks
            .iter()
            .map(|chunk| cache.answer(chunk))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(results) => results,
            Err(violation) => return SessionEnd::Failed(violation),
        };
        let ids: Vec<u64> = lease.chunks.iter().map(|c| c.chunk_id).collect();
        tally.leased_ids.extend(&ids);
        tally.results_sent += ids.len() as u64;
        sent = Instant::now();
        let request = CompleteRequest {
            worker_id,
            results,
            next: Some(cache.request(worker_id)),
        };
        let done = match client.results.complete(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return SessionEnd::Failed(format!("complete: {status}")),
        };
        tally.accepted += done.accepted as u64;
        if done.accepted as usize == ids.len() {
            tally.accepted_ids.extend(ids);
        } else {
            tally.partly_accepted_calls += 1;
        }
        lease = done.next.unwrap_or_default();
    }
}

/// What the worker holds of the current experiment, as the real worker caches it.
#[derive(Default)]
struct Cache {
    experiment: String,
    version: u64,
    /// A meta-gradient of the length of the parameters: zeros, encoded once per length.
    zero_gradient: Bytes,
}

impl Cache {
    fn request(&self, worker_id: u64) -> LeaseRequest {
        LeaseRequest {
            worker_id,
            max_chunks: MAX_CHUNKS,
            cached_experiment: self.experiment.clone(),
            cached_version: self.version,
            wait_ms: LEASE_WAIT.as_millis() as u32,
            ..LeaseRequest::default()
        }
    }

    /// Keeps the set-up and parameters a lease carries.
    fn take(&mut self, lease: &LeaseReply) {
        if let Some(setup) = &lease.setup {
            self.experiment.clone_from(&setup.experiment_id);
        }
        if let Some(parameters) = &lease.parameters {
            self.version = parameters.version;
            if self.zero_gradient.len() != parameters.values.len() {
                self.zero_gradient = Bytes::from(vec![0u8; parameters.values.len()]);
            }
        }
    }

    /// A valid result for `chunk`: a zero meta-gradient when training, finite losses per task;
    /// an error when the coordinator leased it without what computing it needs.
    fn answer(&self, chunk: &WorkChunk) -> Result<ChunkResult, String> {
        if chunk.experiment_id != self.experiment || chunk.version != self.version {
            return Err(format!(
                "chunk {} is of {} at version {}, but the worker holds {} at version {}",
                chunk.chunk_id, chunk.experiment_id, chunk.version, self.experiment, self.version
            ));
        }
        let grad_sum = match Phase::try_from(chunk.phase) {
            Ok(Phase::Train) => self.zero_gradient.clone(),
            Ok(Phase::Eval) => Bytes::new(),
            _ => return Err(format!("chunk {}: phase {}", chunk.chunk_id, chunk.phase)),
        };
        let tasks = chunk.tasks.len();
        Ok(ChunkResult {
            chunk_id: chunk.chunk_id,
            grad_sum,
            loss_before: vec![1.0; tasks],
            loss_after: vec![0.5; tasks],
            ..ChunkResult::default()
        })
    }
}
