//! The `outerloop` command: coordinator, worker, and the client commands that drive them.

mod dataset;
mod demo;
mod rpc;
mod status;
mod watch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use outerloop_coordinator::dispatch::DispatchConfig;
use outerloop_coordinator::CoordinatorConfig;
use outerloop_worker::data::DataRoot;

const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:7070";

#[derive(Parser)]
#[command(
    name = "outerloop",
    version,
    about = "Distributed meta-learning and multi-task learning on libtorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// A file holding the token to present: a user token for the client commands, a worker
    /// token for `worker`. Without it, $OUTERLOOP_TOKEN; without either, none (a coordinator
    /// without tokens listens on loopback only).
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// For an https:// coordinator: the authority (PEM) that signed its certificate.
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for a coordinator that requires one (mutual TLS).
    #[arg(long, global = true, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator: the gRPC server that owns experiments and the outer loop.
    Coordinator {
        /// Address to listen on (port 0 picks a free port; see --port-file).
        #[arg(long, default_value = "127.0.0.1:7070")]
        listen: SocketAddr,
        /// Where experiments and their results are stored.
        #[arg(long, default_value = "outerloop-state")]
        state_dir: PathBuf,
        /// Write the bound address here once listening (for scripts that use port 0).
        #[arg(long)]
        port_file: Option<PathBuf>,
        /// Drop a worker that has not been heard of for this long; its work is requeued.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
        worker_timeout_ms: u64,
        /// Requeue a leased chunk that is not completed within this time.
        #[arg(long, default_value_t = 300_000, value_parser = clap::value_parser!(u64).range(100..))]
        lease_timeout_ms: u64,
        /// How often workers heart-beat.
        #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..))]
        heartbeat_ms: u64,
        /// Async runtime threads. One is fastest for small models: an outer step is a chain of
        /// short hand-offs, and each cross-thread wake-up adds latency to it.
        #[arg(long, default_value_t = 1)]
        runtime_threads: usize,
        /// The tokens callers must present: lines `worker TOKEN` and `user TOKEN` (workers may
        /// register, lease and complete; users submit, watch, cancel and list). Without it,
        /// $OUTERLOOP_WORKER_TOKEN and $OUTERLOOP_USER_TOKEN; without those, no
        /// authentication, and the coordinator listens on loopback addresses only.
        #[arg(long, value_name = "FILE")]
        tokens: Option<PathBuf>,
        /// Serve over TLS with this certificate chain (PEM); clients use https:// URLs.
        #[arg(long, value_name = "FILE", requires = "server_key")]
        server_cert: Option<PathBuf>,
        /// The private key (PEM) of --server-cert.
        #[arg(long, value_name = "FILE", requires = "server_cert")]
        server_key: Option<PathBuf>,
        /// Require every client to present a certificate signed by this authority (PEM):
        /// mutual TLS.
        #[arg(long, value_name = "FILE", requires = "server_cert")]
        client_ca: Option<PathBuf>,
        /// The largest submission accepted (the spec with its overrides), in bytes.
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=(1 << 30)))]
        max_spec_bytes: u64,
        /// The largest message a worker may send other than results (a registration with its
        /// datasets' manifests, heartbeats, lease requests), in bytes.
        #[arg(long, value_name = "BYTES", default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1 << 16..=(1 << 30)))]
        max_worker_request_bytes: u64,
        /// The largest results message a worker may send (a chunk's results: its gradients,
        /// per task for multi-task learning), in bytes; set it near your models' size.
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 30, value_parser = clap::value_parser!(u64).range(1 << 16..=(1 << 30)))]
        max_result_bytes: u64,
        /// Try a chunk a worker failed to compute (a libtorch error, out of memory) this many
        /// more times on other workers before the experiment fails.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=100))]
        chunk_retries: u32,
        /// Workers registered at once; more are refused until one leaves.
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_workers: u64,
        /// Chunks one worker may hold leased at once.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        max_leased_chunks: u64,
        /// Open connections at once; more are closed as they arrive. Kept below the process's
        /// descriptor limit, which the coordinator raises to its hard limit at start.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(8..=1_000_000))]
        max_connections: u64,
        /// Close a connection that carried nothing for this long (workers heart-beat every
        /// --heartbeat-ms, so theirs never idle).
        #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
        idle_timeout_s: u64,
        /// Experiments waiting at once; submissions past it are refused.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        max_queued: u64,
        /// Experiments running at once, sharing the workers by their `scheduling.weight`; the
        /// next queued one starts when one ends.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
        max_running: u64,
        /// The largest model a submitted spec may train, in parameters.
        #[arg(long, default_value_t = 1 << 26, value_parser = clap::value_parser!(u64).range(1..))]
        max_parameters: u64,
    },
    /// Run a worker: pulls work from the coordinator and runs inner loops on this machine.
    Worker {
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
        /// cpu, cuda:N, or auto (the first CUDA device if there is one, else cpu).
        #[arg(long, default_value = "auto")]
        device: String,
        /// libtorch intra-op threads (0: libtorch's default, one per core).
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Name shown in the coordinator's logs (default: host name and process id).
        #[arg(long)]
        name: Option<String>,
        /// Most chunks taken per lease.
        #[arg(long, default_value_t = 64)]
        max_chunks: u32,
        /// Results of a lease's chunk at least this large (bytes, encoded) are sent as soon as
        /// they are computed, beside the next chunk's compute; smaller ones go with the
        /// lease's last result.
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
        stream_min_bytes: usize,
        /// The most memory (MiB) the parameters of cached experiments may take: a worker shared
        /// by several experiments keeps each one's set-up and parameters while they fit, so
        /// switching between them resends nothing; the least recently used leave first.
        #[arg(long, value_name = "MIB", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
        cache_mib: u64,
        /// Run tasks one at a time instead of batched (the reference path; slower).
        #[arg(long)]
        per_task: bool,
        /// Where this worker's datasets are: a spec's dataset NAME is read from DIR/NAME/
        /// (Omniglot's published layout, train/, val/ and test/ class folders, or a table of
        /// *.csv or *.parquet files).
        #[arg(long, value_name = "DIR")]
        data_root: Option<PathBuf>,
    },
    /// List the registered workers and the datasets each holds.
    Workers {
        /// One JSON object per worker, one per line.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
    },
    /// Submit an experiment spec; prints the experiment id.
    Submit {
        spec: PathBuf,
        /// Override a spec field, e.g. --set meta.steps=2000 (repeatable).
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        overrides: Vec<String>,
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
    },
    /// Show the state of one experiment, or of all.
    Status {
        id: Option<String>,
        /// One JSON object per experiment, one per line.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
    },
    /// Follow an experiment until it ends; exits 0 if it finished, 1 if it failed, 2 if
    /// cancelled, 3 if the coordinator stayed unreachable, 4 if it paused (its results could
    /// not be written; `outerloop resume` continues it).
    Watch {
        id: String,
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
    },
    /// Cancel a queued, running or paused experiment.
    Cancel {
        id: String,
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
    },
    /// Queue a paused experiment again (one whose results could not be written, once the
    /// cause is fixed): it continues from its last checkpoint.
    Resume {
        id: String,
        #[arg(long, default_value = DEFAULT_COORDINATOR, value_parser = coordinator_url)]
        coordinator: String,
    },
    /// Start a coordinator and workers on loopback, run a spec (by default the sinusoid MAML one
    /// at demo length), and stop.
    Demo(demo::DemoArgs),
    /// Dataset tools: generate the synthetic few-shot benchmark data.
    Dataset(dataset::DatasetArgs),
}

fn init_tracing(default: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into());
    // Colours only on a terminal: logs redirected to files stay plain text.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// Rust's allocations (gRPC buffers of tens of megabytes, gradient vectors) go to mimalloc,
/// which keeps freed large blocks for reuse: glibc returns any block above 32 MiB to the
/// kernel on free, so each multi-task step paid fresh page faults on every chunk's result
/// (about a quarter of a one-worker step, measured with `bench/compare_mtl.py`). libtorch's
/// own allocations still go through glibc, tuned by `keep_freed_memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A worker's async side only talks to the coordinator (inner loops run on the compute
    // thread) and the client commands make a few calls, so one thread each is plenty, and it
    // keeps cross-thread wake-ups off the per-step critical path.
    let runtime = match cli.command {
        Command::Coordinator {
            runtime_threads, ..
        } if runtime_threads > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(runtime_threads)
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tls = outerloop_proto::tls::ClientTls {
        ca: cli.tls_ca,
        cert: cli.tls_cert,
        key: cli.tls_key,
    };
    match runtime.block_on(run(cli.command, cli.token_file, tls)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    command: Command,
    token_file: Option<PathBuf>,
    tls: outerloop_proto::tls::ClientTls,
) -> anyhow::Result<ExitCode> {
    // Read only by the commands that call a coordinator.
    let token =
        || outerloop_proto::auth::client_token(token_file.as_deref()).map_err(anyhow::Error::msg);
    match command {
        Command::Coordinator {
            listen,
            state_dir,
            port_file,
            worker_timeout_ms,
            lease_timeout_ms,
            heartbeat_ms,
            runtime_threads: _,
            tokens,
            max_spec_bytes,
            max_worker_request_bytes,
            max_result_bytes,
            server_cert,
            server_key,
            client_ca,
            chunk_retries,
            max_workers,
            max_leased_chunks,
            max_connections,
            idle_timeout_s,
            max_queued,
            max_running,
            max_parameters,
        } => {
            init_tracing("info");
            let tokens = outerloop_coordinator::auth::Tokens::load(tokens.as_deref())
                .map_err(anyhow::Error::msg)?;
            if tokens.is_empty() {
                if !listen.ip().is_loopback() {
                    anyhow::bail!(
                        "refusing to listen on {listen} without authentication: give the tokens callers must present \
                         (--tokens FILE, or $OUTERLOOP_WORKER_TOKEN and $OUTERLOOP_USER_TOKEN), or listen on a loopback address"
                    );
                }
                tracing::warn!("no tokens configured: every caller is trusted, so the coordinator listens on loopback only");
            }
            // Multi-task rounds bring each task's gradients, megabytes each, every step: kept
            // in the process, their buffers are not faulted in afresh each time.
            outerloop_worker::allocator::keep_freed_memory();
            if worker_timeout_ms < 2 * heartbeat_ms {
                anyhow::bail!(
                    "--worker-timeout-ms ({worker_timeout_ms}) must be at least twice --heartbeat-ms ({heartbeat_ms}), \
                     or live workers would be dropped between two heartbeats"
                );
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            let bound = listener.local_addr()?;
            if let Some(path) = port_file {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, bound.to_string())
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            let config = CoordinatorConfig {
                state_dir,
                dispatch: DispatchConfig {
                    worker_timeout: Duration::from_millis(worker_timeout_ms),
                    lease_timeout: Duration::from_millis(lease_timeout_ms),
                    heartbeat_interval: Duration::from_millis(heartbeat_ms),
                    chunk_retries,
                    max_workers: max_workers as usize,
                    max_leased_chunks: max_leased_chunks as usize,
                    ..DispatchConfig::default()
                },
                connections: outerloop_coordinator::connections::Limits {
                    max_open: connection_limit(max_connections as usize),
                    idle_timeout: Duration::from_secs(idle_timeout_s),
                },
                submissions: outerloop_coordinator::registry::SubmitLimits {
                    max_queued: max_queued as usize,
                    max_parameters,
                    max_result_bytes: max_result_bytes as usize,
                },
                max_running: max_running as usize,
                tokens: std::sync::Arc::new(tokens),
                max_spec_bytes: max_spec_bytes as usize,
                max_worker_request_bytes: max_worker_request_bytes as usize,
                max_result_bytes: max_result_bytes as usize,
                tls: server_cert.zip(server_key).map(|(cert, key)| {
                    outerloop_proto::tls::ServerTls {
                        cert,
                        key,
                        client_ca,
                    }
                }),
            };
            outerloop_coordinator::run(listener, config, shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Worker {
            coordinator,
            device,
            threads,
            name,
            max_chunks,
            stream_min_bytes,
            cache_mib,
            per_task,
            data_root,
        } => {
            init_tracing("info");
            let device = outerloop_worker::parse_device(&device).map_err(anyhow::Error::msg)?;
            let name = name.unwrap_or_else(default_worker_name);
            let path = if per_task {
                outerloop_worker::Path::PerTask
            } else {
                outerloop_worker::Path::Batched
            };
            let data = match &data_root {
                Some(root) => scan_data_root(root)?,
                None => DataRoot::empty(),
            };
            let datasets = data.manifests();
            // As many as the coordinator keeps, each reason cut to what it shows: a data root
            // of many unreadable folders must not make the registration too large to accept.
            use outerloop_proto::dataset::{MAX_SKIPPED_DATASETS, MAX_SKIP_REASON_CHARS};
            let skipped = (data.skipped.iter().take(MAX_SKIPPED_DATASETS))
                .map(|(dir, why)| {
                    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
                    let why = why.chars().take(MAX_SKIP_REASON_CHARS).collect();
                    (name.unwrap_or_default(), why)
                })
                .collect();
            let compute = outerloop_worker::ComputeThread::spawn(
                device,
                threads as usize,
                path,
                std::sync::Arc::new(data),
                (cache_mib as usize) << 20,
            )?;
            let identity = outerloop_worker::WorkerIdentity {
                coordinator,
                name,
                device: outerloop_worker::device_name(device),
                threads,
                max_chunks,
                stream_min_bytes,
                datasets,
                skipped,
                token: token()?,
                tls: tls.clone(),
            };
            let served =
                outerloop_worker::serve(identity, compute.clone(), shutdown_signal()).await;
            compute.stop();
            served.map_err(anyhow::Error::msg)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Submit {
            spec,
            overrides,
            coordinator,
        } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("cannot read {}", spec.display()))?;
            let id = rpc::Coordinator::connect(&coordinator, token()?.as_deref(), &tls)
                .await?
                .submit(&text, &spec.display().to_string(), overrides)
                .await?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            id,
            json,
            coordinator,
        } => {
            let experiments = rpc::Coordinator::connect(&coordinator, token()?.as_deref(), &tls)
                .await?
                .status(id.as_deref().unwrap_or(""))
                .await?;
            status::print(&experiments, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { id, coordinator } => {
            watch::watch(&coordinator, token()?.as_deref(), &tls, &id).await
        }
        Command::Workers { json, coordinator } => {
            let workers = rpc::Coordinator::connect(&coordinator, token()?.as_deref(), &tls)
                .await?
                .workers()
                .await?;
            status::print_workers(&workers, json);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cancel { id, coordinator } => {
            let state = rpc::Coordinator::connect(&coordinator, token()?.as_deref(), &tls)
                .await?
                .cancel(&id)
                .await?;
            println!("{id}: {state}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resume { id, coordinator } => {
            let state = rpc::Coordinator::connect(&coordinator, token()?.as_deref(), &tls)
                .await?
                .resume(&id)
                .await?;
            println!("{id}: {state}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => demo::run(args).await,
        Command::Dataset(args) => dataset::run(args),
    }
}

/// Accepts `host:port` as well as `http://host:port`, and refuses what is neither.
fn coordinator_url(text: &str) -> Result<String, String> {
    let url = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let uri: tonic::transport::Uri = url
        .parse()
        .map_err(|e| format!("not a URL like http://127.0.0.1:7070: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) => Ok(url),
        _ => Err("expected http://HOST:PORT or HOST:PORT".to_string()),
    }
}

/// The datasets under `root`, each reported with its layout, size and fingerprint.
fn scan_data_root(root: &std::path::Path) -> anyhow::Result<DataRoot> {
    if !root.is_dir() {
        anyhow::bail!("--data-root {}: not a directory", root.display());
    }
    let data = DataRoot::scan(root)
        .with_context(|| format!("cannot read --data-root {}", root.display()))?;
    for dataset in data.datasets.values() {
        tracing::info!(dataset = %dataset.manifest.summary(), "found dataset");
    }
    for (dir, why) in &data.skipped {
        tracing::warn!(dir = %dir.display(), error = %why, "not a usable dataset; skipped");
    }
    if data.datasets.is_empty() {
        tracing::warn!(root = %root.display(), "no datasets under --data-root (expected NAME/images_background/..., NAME/train/... or NAME/*.csv|*.parquet)");
    }
    Ok(data)
}

fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

/// Descriptors kept free of connections: the state directory's files, the listener, logs.
const SPARE_DESCRIPTORS: usize = 64;

/// `wanted` open connections, or fewer when the process's descriptor limit (raised first to
/// its hard limit) leaves no room for them and [`SPARE_DESCRIPTORS`] more: past that limit a
/// checkpoint could not be written.
fn connection_limit(wanted: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    let descriptors = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                ..limit
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    };
    let room = descriptors.saturating_sub(SPARE_DESCRIPTORS).max(8);
    if wanted > room {
        tracing::warn!(
            wanted,
            descriptors,
            allowed = room,
            "--max-connections is above what the descriptor limit leaves room for; lowered"
        );
    }
    wanted.min(room)
}

#[cfg(test)]
mod tests {
    use super::coordinator_url;

    #[test]
    fn coordinator_urls_take_a_scheme_or_get_one() {
        assert_eq!(
            coordinator_url("127.0.0.1:7070").as_deref(),
            Ok("http://127.0.0.1:7070")
        );
        assert_eq!(
            coordinator_url("https://coord:443").as_deref(),
            Ok("https://coord:443")
        );
        assert!(coordinator_url("ftp://coord:21")
            .unwrap_err()
            .contains("expected http://HOST:PORT"));
        assert!(coordinator_url("http://").is_err());
    }
}
