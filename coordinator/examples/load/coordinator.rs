//! One coordinator in this process on a loopback port, on a thread and runtime of its own as `outerloop coordinator` runs it, with default settings but for its worker and connection limits.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use outerloop_coordinator::auth::Tokens;
use outerloop_coordinator::connections;
use outerloop_coordinator::dispatch::DispatchConfig;
use outerloop_coordinator::registry::SubmitLimits;
use outerloop_coordinator::CoordinatorConfig;
use tokio::sync::oneshot;

/// Registrations and connections allowed beyond the workers: the experiments client, and a
/// worker that registers again before its old registration expired.
const HEADROOM: usize = 64;

/// The CLI's default `--max-spec-bytes`.
const MAX_SPEC_BYTES: usize = 1 << 20;

/// Threads whose names start with this are the coordinator's (comm keeps 15 bytes).
pub const THREAD_NAME: &str = "coordinator";

/// A running coordinator; [`InProcess::stop`] ends it.
pub struct InProcess {
    pub url: String,
    shutdown: oneshot::Sender<()>,
    ended: mpsc::Receiver<Result<(), String>>,
    thread: JoinHandle<()>,
    // Removed when dropped, after the coordinator stopped writing to it.
    _state_dir: tempfile::TempDir,
}

impl InProcess {
    /// Starts a coordinator for `workers` workers on `runtime_threads` threads (one: a
    /// current-thread runtime, the CLI's default) and waits until it listens.
    pub fn start(workers: usize, runtime_threads: usize) -> Result<Self, String> {
        let state_dir = tempfile::tempdir().map_err(|e| format!("temporary state dir: {e}"))?;
        let config = config(state_dir.path().to_path_buf(), workers);
        let runtime = if runtime_threads > 1 {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(runtime_threads)
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
        } else {
            // The name covers the blocking pool; the runtime itself runs on the thread below.
            tokio::runtime::Builder::new_current_thread()
                .thread_name(THREAD_NAME)
                .enable_all()
                .build()
        }
        .map_err(|e| format!("coordinator runtime: {e}"))?;
        let (shutdown, shutdown_received) = oneshot::channel::<()>();
        let (listening, address) = mpsc::channel();
        let (end, ended) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    // Bound inside the coordinator's runtime, whose reactor serves it.
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(|e| format!("bind: {e}"))?;
                    let _ = listening.send(listener.local_addr().map_err(|e| e.to_string()));
                    let shutdown = async {
                        let _ = shutdown_received.await;
                    };
                    outerloop_coordinator::run(listener, config, shutdown)
                        .await
                        .map_err(|e| e.to_string())
                });
                let _ = end.send(served);
            })
            .map_err(|e| format!("coordinator thread: {e}"))?;
        let address = match address.recv_timeout(Duration::from_secs(10)) {
            Ok(address) => address?,
            Err(_) => {
                return Err(match ended.try_recv() {
                    Ok(Err(e)) => format!("the coordinator did not start: {e}"),
                    _ => "the coordinator did not start listening within 10 s".to_string(),
                })
            }
        };
        Ok(InProcess {
            url: format!("http://{address}"),
            shutdown,
            ended,
            thread,
            _state_dir: state_dir,
        })
    }

    /// Shuts the coordinator down and waits up to `within` for it to end.
    pub fn stop(self, within: Duration) -> Result<(), String> {
        let _ = self.shutdown.send(());
        match self.ended.recv_timeout(within) {
            Ok(served) => {
                let _ = self.thread.join();
                served.map_err(|e| format!("the coordinator failed: {e}"))
            }
            // Left running: joining would hang this run too.
            Err(_) => Err(format!(
                "the coordinator did not shut down within {} s",
                within.as_secs()
            )),
        }
    }
}

/// The defaults of `outerloop coordinator`, but room for `workers` registrations and their
/// connections (plus [`HEADROOM`]).
fn config(state_dir: std::path::PathBuf, workers: usize) -> CoordinatorConfig {
    let dispatch = DispatchConfig::default();
    let connections = connections::Limits::default();
    CoordinatorConfig {
        max_running: 4,
        max_result_bytes: outerloop_coordinator::MAX_MESSAGE_BYTES,
        max_worker_request_bytes: outerloop_coordinator::MAX_MESSAGE_BYTES,
        state_dir,
        dispatch: DispatchConfig {
            max_workers: dispatch.max_workers.max(workers + HEADROOM),
            ..dispatch
        },
        tokens: Arc::new(Tokens::default()),
        max_spec_bytes: MAX_SPEC_BYTES,
        tls: None,
        connections: connections::Limits {
            max_open: connections.max_open.max(workers + HEADROOM),
            ..connections
        },
        submissions: SubmitLimits::default(),
    }
}
