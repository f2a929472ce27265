//! The worker's conversation with the coordinator: connect, register, heart-beat, lease, complete.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use outerloop_proto::auth::ClientAuth;
use outerloop_proto::dataset::Manifest;
use outerloop_proto::transport::{MAX_MESSAGE_BYTES, WINDOW_BYTES};
use outerloop_proto::v1;
use outerloop_proto::v1::results_client::ResultsClient;
use outerloop_proto::v1::workers_client::WorkersClient;
use outerloop_proto::v1::{
    CompleteRequest, DeregisterRequest, HeartbeatRequest, LeaseRequest, RegisterRequest,
};
use prost::Message;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::compute::ComputeThread;

/// How long a lease request waits at the coordinator before coming back empty.
const LEASE_WAIT: Duration = Duration::from_secs(2);
/// The longest any one call may take: a lease wait plus moving a large model's parameters.
const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// Who this worker is and where it reports.
#[derive(Clone, Debug)]
pub struct WorkerIdentity {
    pub coordinator: String,
    pub name: String,
    pub device: String,
    pub threads: u32,
    /// Most chunks taken per lease.
    pub max_chunks: u32,
    /// Results of a lease's chunk at least this large (encoded) are sent as soon as they are
    /// computed; smaller ones wait for the lease's last call, where one more call per chunk
    /// would cost more than it overlaps (a meta-learning chunk's gradient of a small model).
    pub stream_min_bytes: usize,
    /// The datasets under this worker's --data-root, reported when it registers.
    pub datasets: Vec<Manifest>,
    /// The folders there that looked like datasets but could not be read: (name, why).
    pub skipped: Vec<(String, String)>,
    /// The worker token every call carries, when the coordinator requires one.
    pub token: Option<String>,
    /// TLS files for an `https://` coordinator.
    pub tls: outerloop_proto::tls::ClientTls,
}

/// A channel to the coordinator whose every call carries the worker's token.
type Authed = InterceptedService<Channel, ClientAuth>;

/// The coordinator's two worker services over one connection: `workers` for registration,
/// heartbeats and leases, `results` for handing results back.
#[derive(Clone)]
struct Client {
    workers: WorkersClient<Authed>,
    results: ResultsClient<Authed>,
}

/// Why a session with the coordinator ended.
#[derive(Debug, thiserror::Error)]
enum SessionEnd {
    #[error("the coordinator no longer knows this worker")]
    Forgotten,
    #[error(transparent)]
    Rpc(#[from] tonic::Status),
    #[error(transparent)]
    Connect(#[from] tonic::transport::Error),
    /// The coordinator turned the worker away, or its own settings cannot work: no retry helps.
    #[error("the coordinator refused this worker: {0}")]
    Refused(String),
}

/// Serves the coordinator until `shutdown`: reconnects with exponential backoff whenever the
/// coordinator is unreachable, and registers again whenever it forgot this worker. Ends with
/// an error when the coordinator refuses the worker's token: no retry can change that.
pub async fn serve(
    identity: WorkerIdentity,
    compute: ComputeThread,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    // The registration in force, if any: on shutdown it is ended at the coordinator.
    let registered: Registered = std::sync::Mutex::new(None);
    let sessions = async {
        let mut backoff = Duration::from_millis(100);
        loop {
            let end = session(&identity, &compute, &registered).await;
            *registered.lock().expect("not poisoned") = None;
            match end {
                SessionEnd::Forgotten => {
                    tracing::warn!("the coordinator forgot this worker; registering again");
                    backoff = Duration::from_millis(100);
                }
                refused @ SessionEnd::Refused(_) => return refused.to_string(),
                // A call the coordinator does not have stays missing: another version.
                SessionEnd::Rpc(status) if status.code() == tonic::Code::Unimplemented => {
                    return format!(
                        "the coordinator does not serve a call this worker makes ({}): are the \
                         worker and the coordinator the same version of outerloop?",
                        status.message()
                    );
                }
                e => {
                    tracing::warn!(coordinator = %identity.coordinator, error = %e, retry_in = ?backoff, "coordinator unreachable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    tokio::select! {
        refused = sessions => Err(refused),
        () = shutdown => {
            tracing::info!("worker shutting down");
            let current = registered.lock().expect("not poisoned").take();
            if let Some((mut client, worker_id)) = current {
                // Hands back its chunks at once rather than when its heartbeats are missed;
                // a coordinator that does not answer soon finds out that way instead.
                let bye = client.workers.deregister(DeregisterRequest { worker_id });
                match tokio::time::timeout(Duration::from_secs(2), bye).await {
                    Ok(Ok(_)) => tracing::info!("deregistered; leased chunks handed back"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not deregister"),
                    Err(_) => tracing::warn!("the coordinator did not answer the deregistration"),
                }
            }
            Ok(())
        }
    }
}

/// The client and worker id of the registration in force, if there is one.
type Registered = std::sync::Mutex<Option<(Client, u64)>>;

/// One registration's worth of work; ends only when something goes wrong.
async fn session(
    identity: &WorkerIdentity,
    compute: &ComputeThread,
    registered: &Registered,
) -> SessionEnd {
    match work_session(identity, compute, registered).await {
        Ok(never) => match never {},
        Err(end) => end,
    }
}

async fn work_session(
    identity: &WorkerIdentity,
    compute: &ComputeThread,
    registered: &Registered,
) -> Result<std::convert::Infallible, SessionEnd> {
    let endpoint =
        Endpoint::from_shared(identity.coordinator.clone()).map_err(SessionEnd::Connect)?;
    let endpoint = identity
        .tls
        .endpoint(endpoint, &identity.coordinator)
        .map_err(SessionEnd::Refused)?;
    let channel: Channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        // A coordinator host that vanishes without closing the connection (power loss, a
        // partition) must not wedge the worker until TCP gives up minutes later.
        .timeout(RPC_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true)
        // Sized for gradients of megabytes, as the coordinator's side.
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
        .connect()
        .await?;
    let auth = ClientAuth::new(identity.token.as_deref()).map_err(SessionEnd::Refused)?;
    let mut client = Client {
        workers: WorkersClient::with_interceptor(channel.clone(), auth.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        results: ResultsClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    };
    let registered_reply = client
        .workers
        .register(RegisterRequest {
            name: identity.name.clone(),
            device: identity.device.clone(),
            threads: identity.threads,
            datasets: identity.datasets.iter().map(Into::into).collect(),
            skipped: (identity.skipped.iter())
                .map(|(name, reason)| v1::SkippedDataset {
                    name: name.clone(),
                    reason: reason.clone(),
                })
                .collect(),
        })
        .await
        .map_err(|status| match status.code() {
            // A token the coordinator does not accept stays unaccepted: stop, and say why.
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                SessionEnd::Refused(status.message().to_string())
            }
            // The same registration stays too large: stop, and say which flag bounds it.
            tonic::Code::OutOfRange => SessionEnd::Refused(format!(
                "{} (a registration lists the worker's datasets: raise the coordinator's \
                 --max-worker-request-bytes, or put fewer datasets under this worker's --data-root)",
                status.message()
            )),
            _ => SessionEnd::Rpc(status),
        })?
        .into_inner();
    let worker_id = registered_reply.worker_id;
    *registered.lock().expect("not poisoned") = Some((client.clone(), worker_id));
    tracing::info!(coordinator = %identity.coordinator, "registered");

    // Heartbeats run beside the lease loop, so a long inner loop never looks like a dead worker.
    let heartbeats = {
        let mut client = client.workers.clone();
        let interval = Duration::from_millis(registered_reply.heartbeat_interval_ms.max(50) as u64);
        async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                match client.heartbeat(HeartbeatRequest { worker_id }).await {
                    Ok(reply) if !reply.get_ref().known => return SessionEnd::Forgotten,
                    Ok(reply) => compute.end_experiments(reply.into_inner().ended_experiments),
                    Err(status) => return SessionEnd::Rpc(status),
                }
            }
        }
    };
    let work = async {
        // Experiments whose set-up came from this coordinator in this session: only those may
        // be listed as held, since another coordinator (or a restarted one with another state
        // directory) may give the same id to another experiment.
        let mut from_this_session: HashSet<String> = HashSet::new();
        // What the engine holds, so that the coordinator sends only what is missing: the
        // engine says so itself after each job (a refused set-up, an evicted experiment).
        let lease_request = |from_this_session: &HashSet<String>| {
            let cached: Vec<v1::CachedExperiment> = compute
                .held()
                .into_iter()
                .filter(|(experiment_id, _)| from_this_session.contains(experiment_id))
                .filter_map(|(experiment_id, version)| {
                    Some(v1::CachedExperiment {
                        experiment_id,
                        version: version?,
                    })
                })
                .collect();
            // The most recently used one also in the fields older coordinators read.
            let last = cached.last().cloned().unwrap_or_default();
            LeaseRequest {
                worker_id,
                max_chunks: identity.max_chunks,
                wait_ms: LEASE_WAIT.as_millis() as u32,
                cached_experiment: last.experiment_id,
                cached_version: last.version,
                cached,
            }
        };
        let mut lease = client
            .workers
            .lease(lease_request(&from_this_session))
            .await?
            .into_inner();
        loop {
            if lease.unknown_worker {
                return Err(SessionEnd::Forgotten);
            }
            if lease.chunks.is_empty() {
                lease = client
                    .workers
                    .lease(lease_request(&from_this_session))
                    .await?
                    .into_inner();
                continue;
            }
            if let Some(setup) = &lease.setup {
                tracing::info!(experiment = %setup.experiment_id, "new experiment");
                from_this_session.insert(setup.experiment_id.clone());
            }
            let (results, sent) = run_streaming(
                compute,
                &client,
                worker_id,
                identity.stream_min_bytes,
                lease,
            )
            .await?;
            for send in sent {
                finish(send).await?;
            }
            // Hand the last results back and ask for more in one call.
            let next = Some(lease_request(&from_this_session));
            let reply = client
                .results
                .complete(CompleteRequest {
                    worker_id,
                    results,
                    next,
                })
                .await;
            // A refusal answers no lease: the next turn asks for one.
            lease = match accepted(reply)? {
                Some(reply) => reply.into_inner().next.unwrap_or_default(),
                None => v1::LeaseReply::default(),
            };
        }
    };
    tokio::select! {
        end = heartbeats => Err(end),
        end = work => end,
    }
}

/// A send of some results already under way.
type Sending = tokio::task::JoinHandle<Result<tonic::Response<v1::CompleteReply>, tonic::Status>>;

/// Sends under way at once while chunks compute: enough to overlap the next chunk's compute,
/// few enough that a long lease does not hold every chunk's gradients in memory and in flight.
const MAX_SENDS_IN_FLIGHT: usize = 2;

/// Waits for a send to be answered.
async fn finish(send: Sending) -> Result<(), SessionEnd> {
    let reply = send
        .await
        .map_err(|e| SessionEnd::Rpc(tonic::Status::internal(e.to_string())))?;
    accepted(reply)?;
    Ok(())
}

/// The reply to a call handing results back, or `None` when the coordinator refused them
/// (INVALID_ARGUMENT: values that were not finite, sizes that did not fit). A refusal is about
/// those results, not about this worker's session: their chunks go to other workers, and this
/// one keeps serving without registering again. A diverged experiment has every worker's
/// results refused, and ending the session for each refusal had left every worker backing
/// off for seconds, stalling the other experiments.
fn accepted<T>(
    reply: Result<tonic::Response<T>, tonic::Status>,
) -> Result<Option<tonic::Response<T>>, SessionEnd> {
    match reply {
        Ok(reply) => Ok(Some(reply)),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            tracing::warn!(reason = %status.message(), "the coordinator refused results of this worker; their chunks go to other workers");
            Ok(None)
        }
        Err(status) => Err(SessionEnd::Rpc(status)),
    }
}

/// Computes a lease's chunks one after another and hands each result but the last back as
/// soon as it is ready, in a call of its own that runs while the next chunk computes: moving
/// a chunk's gradients (megabytes, in multi-task learning) then overlaps the next chunk's
/// compute instead of following the whole lease. Returns the last chunk's results, for the
/// call that also asks for more work, and the sends under way. When the first chunk fails
/// (a refused set-up, say), or its results are below `stream_min_bytes`, the rest
/// run as one job, as they would have without streaming.
async fn run_streaming(
    compute: &ComputeThread,
    client: &Client,
    worker_id: u64,
    stream_min_bytes: usize,
    lease: v1::LeaseReply,
) -> Result<(Vec<v1::ChunkResult>, Vec<Sending>), SessionEnd> {
    let mut chunks = lease.chunks;
    if chunks.len() <= 1 {
        let results = compute.run(lease.setup, lease.parameters, chunks).await;
        return Ok((results, Vec::new()));
    }
    let rest = chunks.split_off(1);
    let first = compute
        .run(lease.setup.clone(), lease.parameters.clone(), chunks)
        .await;
    let failed = first
        .iter()
        .any(|r| !r.error.is_empty() || !r.refusal.is_empty());
    let small = first.iter().map(Message::encoded_len).sum::<usize>() < stream_min_bytes;
    if failed || small {
        // After a failure the set-up goes again: the engine may not have kept it.
        let (setup, params) = if failed {
            (lease.setup, lease.parameters)
        } else {
            (None, None)
        };
        let mut results = first;
        results.extend(compute.run(setup, params, rest).await);
        return Ok((results, Vec::new()));
    }
    let mut sent: std::collections::VecDeque<Sending> = Default::default();
    let mut ready = first;
    for chunk in rest {
        if sent.len() >= MAX_SENDS_IN_FLIGHT {
            finish(sent.pop_front().expect("non-empty")).await?;
        }
        let mut sender = client.results.clone();
        let results = std::mem::take(&mut ready);
        sent.push_back(tokio::spawn(async move {
            sender
                .complete(CompleteRequest {
                    worker_id,
                    results,
                    next: None,
                })
                .await
        }));
        ready = compute.run(None, None, vec![chunk]).await;
    }
    Ok((ready, sent.into()))
}
