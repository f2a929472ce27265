//! Load test of the coordinator: one in-process coordinator, N trivial workers over loopback TCP, a table of throughput, lease latency, CPU and memory, and the accounting checks.

mod coordinator;
mod experiments;
mod ledger;
mod process;
mod table;
mod worker;

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::coordinator::InProcess;
use crate::experiments::Shape;
use crate::ledger::Ledger;
use crate::table::Row;

// The allocator of the `outerloop` binary, so that memory figures are the coordinator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long all workers may take to register.
const REGISTRATION_LIMIT: Duration = Duration::from_secs(60);
/// An experiment whose step does not move for this long is hung.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// How long the coordinator may take to shut down once its workers left.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// Load-tests one in-process coordinator with trivial in-process workers.
#[derive(Parser, Debug)]
struct Args {
    /// Worker clients, each with its own connection.
    #[arg(long, default_value_t = 256)]
    workers: usize,
    /// Keep submitting experiments for this long; the last ones run to their end.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Run once per worker count of --sweep-counts, --sweep-seconds each, instead.
    #[arg(long)]
    sweep: bool,
    #[arg(long, value_delimiter = ',', default_value = "16,64,256,512,1024")]
    sweep_counts: Vec<usize>,
    #[arg(long, default_value_t = 8)]
    sweep_seconds: u64,
    /// Tasks per outer step (`meta.meta_batch`).
    #[arg(long, default_value_t = 1024)]
    meta_batch: u32,
    /// Tasks per chunk (`meta.chunk_tasks`).
    #[arg(long, default_value_t = 4)]
    chunk_tasks: u32,
    /// The coordinator's async runtime threads (the CLI's --runtime-threads).
    #[arg(long, default_value_t = 1)]
    coordinator_threads: usize,
    /// Threads the worker clients share [default: the cores the coordinator leaves, at least 1].
    #[arg(long)]
    client_threads: Option<usize>,
}

/// One run's row, what else it measured, and what went wrong.
struct Report {
    row: Row,
    details: String,
    problems: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    println!("$ {}", std::env::args().collect::<Vec<_>>().join(" "));
    process::raise_descriptor_limit();
    let shape = Shape {
        meta_batch: args.meta_batch,
        chunk_tasks: args.chunk_tasks,
    };
    let spec = match shape.spec(1) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("error: the spec: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let client_threads = args
        .client_threads
        .unwrap_or(cores.saturating_sub(args.coordinator_threads).max(1));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(client_threads)
        .thread_name("load-clients")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: the clients' runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (counts, seconds) = if args.sweep {
        (args.sweep_counts.clone(), args.sweep_seconds)
    } else {
        (vec![args.workers], args.seconds)
    };
    println!(
        "spec: configs/sinusoid_maml.toml ({} parameters), meta_batch {} in chunks of {} tasks: {} chunks per outer step; experiments of a few seconds each, submitted back to back for {seconds} s",
        spec.layout().param_count(),
        shape.meta_batch,
        shape.chunk_tasks,
        experiments::chunks_per_step(&spec),
    );
    println!(
        "coordinator: in this process, default settings but max_workers and max connections at least workers + 64; {} runtime thread(s); worker clients on {client_threads} thread(s); {cores} cores",
        args.coordinator_threads
    );
    println!("lease: from sending Lease (or Complete with the next request) to a reply with chunks; CPU: over the run, 100% = one core; RSS: this process, the clients included");
    println!();
    println!("{}", table::HEADER);
    let mut reports = Vec::new();
    for workers in counts {
        let report = runtime.block_on(run(
            workers,
            Duration::from_secs(seconds),
            shape,
            args.coordinator_threads,
        ));
        println!("{}", report.row.line());
        reports.push(report);
    }
    println!();
    for report in &reports {
        println!("{}", report.details);
    }
    // The trust report (`bench/trust_report.py`) collects every run's row.
    if let Ok(path) = std::env::var("OUTERLOOP_TRUST_REPORT") {
        use std::io::Write;
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                reports
                    .iter()
                    .try_for_each(|r| writeln!(file, "{}", r.row.json()))
            });
        if let Err(e) = appended {
            eprintln!("error: the trust report {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    let problems: Vec<&String> = reports.iter().flat_map(|r| &r.problems).collect();
    if problems.is_empty() {
        println!("checks passed: no chunk lost, none counted twice, no failed call");
        return ExitCode::SUCCESS;
    }
    println!("PROBLEMS:");
    for problem in problems {
        println!("  {problem}");
    }
    ExitCode::FAILURE
}

/// Runs one coordinator with `workers` workers, submitting experiments for `seconds`.
async fn run(
    workers: usize,
    seconds: Duration,
    shape: Shape,
    coordinator_threads: usize,
) -> Report {
    let peak_reset = process::reset_peak_memory();
    let mut row = Row {
        workers,
        rss_before_mib: process::status_mib("VmRSS"),
        ..Row::default()
    };
    let coordinator = match InProcess::start(workers, coordinator_threads) {
        Ok(coordinator) => coordinator,
        Err(e) => {
            return Report {
                row,
                details: format!("{workers} workers: no run"),
                problems: vec![format!("{workers} workers: {e}")],
            }
        }
    };
    let registered = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let connecting = Instant::now();
    let clients: Vec<_> = (0..workers)
        .map(|i| {
            tokio::spawn(worker::run(
                coordinator.url.clone(),
                format!("load-{i}"),
                registered.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let mut problems = Vec::new();
    while registered.load(Ordering::Relaxed) < workers {
        if connecting.elapsed() > REGISTRATION_LIMIT {
            problems.push(format!(
                "only {} registered within {} s",
                registered.load(Ordering::Relaxed),
                REGISTRATION_LIMIT.as_secs()
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let registration = connecting.elapsed();

    let (coordinator_cpu, process_cpu) = (
        process::cpu_seconds(Some(coordinator::THREAD_NAME)),
        process::cpu_seconds(None),
    );
    let measuring = Instant::now();
    let outcome = experiments::drive(&coordinator.url, shape, seconds, STALL_LIMIT).await;
    let measured = measuring.elapsed().as_secs_f64();
    let share = |before: Option<f64>, after: Option<f64>| Some((after? - before?) / measured);
    row.coordinator_cpu = share(
        coordinator_cpu,
        process::cpu_seconds(Some(coordinator::THREAD_NAME)),
    );
    row.process_cpu = share(process_cpu, process::cpu_seconds(None));
    row.peak_mib = process::status_mib("VmHWM").filter(|_| peak_reset);
    row.rss_after_mib = process::status_mib("VmRSS");

    stop.cancel();
    let mut tallies = Vec::with_capacity(workers);
    for client in clients {
        match client.await {
            Ok(tally) => tallies.push(tally),
            Err(e) => problems.push(format!("a worker client panicked: {e}")),
        }
    }
    if let Err(e) = coordinator.stop(SHUTDOWN_LIMIT) {
        problems.push(e);
    }

    let ledger = Ledger::new(&outcome, &tallies);
    let window = outcome.window.as_secs_f64().max(f64::MIN_POSITIVE);
    row.chunks_per_s = ledger.accepted as f64 / window;
    row.steps_per_s = outcome.steps as f64 / window;
    row.lost = ledger.lost();
    row.counted_twice = ledger.counted_twice();
    row.lease_round_trips = tallies
        .iter_mut()
        .flat_map(|t| std::mem::take(&mut t.lease_round_trips))
        .collect();
    row.lease_round_trips.sort_unstable();
    problems.extend(outcome.problems.iter().cloned());
    problems.extend(ledger.problems());
    let errors: Vec<&String> = tallies.iter().flat_map(|t| &t.errors).collect();
    if let Some(first) = errors.first() {
        problems.push(format!("{} failed calls; the first: {first}", errors.len()));
    }
    let registrations: u64 = tallies.iter().map(|t| t.registrations).sum();
    let details = format!(
        "{workers} workers: {} experiments, {} outer steps, {} chunks in {window:.1} s; {} results sent, {} accepted ({} calls partly accepted); {} lease replies with chunks; all registered in {:.2} s; {} registrations again",
        outcome.experiments,
        outcome.steps,
        ledger.expected,
        ledger.results_sent,
        ledger.accepted,
        ledger.partly_accepted_calls,
        row.lease_round_trips.len(),
        registration.as_secs_f64(),
        registrations.saturating_sub(tallies.len() as u64),
    );
    Report {
        row,
        details,
        problems: problems
            .into_iter()
            .map(|p| format!("{workers} workers: {p}"))
            .collect(),
    }
}
