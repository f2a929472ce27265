//! The outerloop coordinator: owns experiments and the outer loop; never links libtorch.

pub mod aggregate;
pub mod auth;
pub mod connections;
pub mod datasets;
pub mod dispatch;
pub mod finite;
pub mod mtl;
pub mod optimizer;
pub mod parallel;
pub mod registry;
pub mod runner;
pub mod safetensors_file;
pub mod sampling;
pub mod service;
mod simd;
pub mod spec;
pub mod stats;
pub mod store;
pub mod text;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use outerloop_proto::v1::experiments_server::ExperimentsServer;
use outerloop_proto::v1::results_server::ResultsServer;
use outerloop_proto::v1::workers_server::WorkersServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

use crate::datasets::Catalog;
use crate::dispatch::{DispatchConfig, Dispatcher};
use crate::registry::Registry;
use crate::service::{ExperimentsService, ResultsService, WorkersService};
use crate::store::Store;

pub use outerloop_proto::transport::{MAX_FRAME_BYTES, MAX_MESSAGE_BYTES, WINDOW_BYTES};

/// How a coordinator is set up.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    pub state_dir: PathBuf,
    pub dispatch: DispatchConfig,
    /// The tokens callers must present; none turns authentication off.
    pub tokens: Arc<auth::Tokens>,
    /// The largest message the `Experiments` service accepts (a spec and its overrides):
    /// specs are kilobytes, and one of a gigabyte would tie up the coordinator parsing it.
    pub max_spec_bytes: usize,
    /// The largest message the `Workers` service accepts (a registration with its dataset
    /// manifests, heartbeats, lease requests): all small, so a caller cannot make the
    /// coordinator buffer and decode the model's size of anything but results.
    pub max_worker_request_bytes: usize,
    /// The largest message the `Results` service accepts (a chunk's results).
    pub max_result_bytes: usize,
    /// Serve over TLS with these files (and require client certificates when they name an
    /// authority for them); plain HTTP/2 without.
    pub tls: Option<outerloop_proto::tls::ServerTls>,
    /// Open connections at once, and how long one may idle.
    pub connections: connections::Limits,
    /// What a submission may ask for.
    pub submissions: registry::SubmitLimits,
    /// Experiments running at once; the queued ones wait for one of them to end.
    pub max_running: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("cannot use state directory {dir}: {source}")]
    StateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

/// Serves the coordinator on `listener` until `shutdown` completes. Experiments start in
/// submission order, up to `max_running` at once, sharing the workers; one interrupted by
/// shutdown runs again at the next start.
pub async fn run(
    listener: TcpListener,
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), CoordinatorError> {
    // Unreadable certificates stop the start before anything runs.
    let tls =
        (config.tls.as_ref().map(|t| t.config()).transpose()).map_err(CoordinatorError::Tls)?;
    let state_error = |source| CoordinatorError::StateDir {
        dir: config.state_dir.clone(),
        source,
    };
    let store = Store::open(&config.state_dir).map_err(state_error)?;
    let registry = Arc::new(
        Registry::open(store)
            .map_err(state_error)?
            .with_limits(config.submissions),
    );
    let datasets = Arc::new(Catalog::open(&config.state_dir).map_err(state_error)?);
    let dispatcher = Arc::new(Dispatcher::new(config.dispatch));
    let stop = CancellationToken::new();

    let reaper = tokio::spawn({
        let (dispatcher, stop) = (dispatcher.clone(), stop.clone());
        let period = config
            .dispatch
            .heartbeat_interval
            .min(config.dispatch.worker_timeout / 4);
        async move {
            let mut tick = tokio::time::interval(period);
            while stop.run_until_cancelled(tick.tick()).await.is_some() {
                dispatcher.expire();
            }
        }
    });
    let scheduler = tokio::spawn({
        let (registry, dispatcher, stop) = (registry.clone(), dispatcher.clone(), stop.clone());
        let running = Arc::new(tokio::sync::Semaphore::new(config.max_running.max(1)));
        async move {
            let mut runs = tokio::task::JoinSet::new();
            // A free place first, then the next queued experiment: until a place frees, the
            // queue stays as it is (and `status` says so).
            while let Some(Ok(place)) = stop
                .run_until_cancelled(running.clone().acquire_owned())
                .await
            {
                while let Some(ended) = runs.try_join_next() {
                    log_panic(ended);
                }
                let Some(job) = stop.run_until_cancelled(registry.next_queued()).await else {
                    break;
                };
                match job {
                    Ok(job) => {
                        let job = registry::Job {
                            stop: stop.clone(),
                            ..job
                        };
                        let (registry, dispatcher) = (registry.clone(), dispatcher.clone());
                        runs.spawn(async move {
                            runner::run(job, &registry, &dispatcher).await;
                            drop(place);
                        });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the next experiment; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
            }
            // Awaited whole: on shutdown each run checkpoints, then ends.
            while let Some(ended) = runs.join_next().await {
                log_panic(ended);
            }
        }
    });

    tracing::info!(addr = ?listener.local_addr().ok(), state_dir = %config.state_dir.display(), "coordinator listening");
    let gate = |role| auth::Gate::new(config.tokens.clone(), role);
    let experiments = ExperimentsServer::new(ExperimentsService {
        registry,
        dispatcher: dispatcher.clone(),
        datasets: datasets.clone(),
    })
    .max_decoding_message_size(config.max_spec_bytes)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let experiments = InterceptedService::new(experiments, gate(auth::Role::User));
    let workers = WorkersServer::new(WorkersService {
        dispatcher: dispatcher.clone(),
        datasets,
    })
    .max_decoding_message_size(config.max_worker_request_bytes)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = InterceptedService::new(workers, gate(auth::Role::Worker));
    let results = ResultsServer::new(ResultsService { dispatcher })
        .max_decoding_message_size(config.max_result_bytes)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let results = InterceptedService::new(results, gate(auth::Role::Worker));
    // Every outer step is a few small request/reply exchanges: without TCP_NODELAY, Nagle's
    // algorithm and delayed ACKs add tens of milliseconds to each.
    let incoming = connections::LimitedIncoming::new(
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        config.connections,
    );
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let served = server
        // Sized for results that carry gradients of megabytes (see `transport`).
        .initial_stream_window_size(Some(WINDOW_BYTES))
        .initial_connection_window_size(Some(2 * WINDOW_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES))
        // Pings find peers whose link was cut, so their connections do not linger.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(experiments)
        .add_service(workers)
        .add_service(results)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    stop.cancel();
    let _ = tokio::join!(reaper, scheduler);
    Ok(served?)
}

/// Logs a run that panicked (a bug): its experiment stays `running` in the store and runs again
/// from its checkpoint at the next start.
fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended {
        tracing::error!(error = %e, "an experiment's run panicked; it resumes at the next start");
    }
}
