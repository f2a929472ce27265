//! Every fault in one run: workers SIGKILLed twice, the coordinator SIGKILLed and restarted, a
//! worker SIGSTOPped past its timeout, a worker's link cut and restored, and a poisoned result;
//! the final parameters equal an undisturbed run's, bit for bit.
//!
//! Each fault waits for the state it needs (workers sharing steps, a worker dropped, a
//! checkpoint written) and checks the run is still going when it strikes. Every worker reaches
//! the coordinator through a proxy of the test's, which can cut its link and follows the
//! coordinator to its new address after the restart.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::proxy::{Link, Proxy};
use common::{final_parameters, succeed, train_steps, Cluster, SPEC};
use outerloop_proto::v1::{ChunkResult, CompleteRequest, DeregisterRequest, LeaseRequest};

/// Long enough that the faults, injected in the first sixth or so of it here, strike a running
/// experiment even on a machine several times as fast (each wait checks it still runs).
const STEPS: u64 = 5000;

fn overrides() -> Vec<String> {
    vec![
        format!("meta.steps={STEPS}"),
        "meta.chunk_tasks=5".into(),
        // A checkpoint every 100 steps: the restart resumes from one.
        "eval.every=100".into(),
        "eval.tasks=25".into(),
        "eval.final_tasks=50".into(),
    ]
}

/// Registers a worker of its own, leases one chunk and answers it with NaN of the right
/// sizes; checks the answer is refused, then deregisters (its chunk goes back at once).
fn send_one_poisoned_result(url: &str) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut client, mut results, me) = common::raw_worker(url, "poisoner").await;
        let (chunk, parameters) = loop {
            let lease = client
                .lease(LeaseRequest {
                    worker_id: me,
                    max_chunks: 1,
                    wait_ms: 1000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            if let Some(chunk) = lease.chunks.into_iter().next() {
                break (chunk, lease.parameters.expect("a first lease carries them"));
            }
        };
        let tasks = chunk.tasks.len();
        let nan = f32::NAN.to_le_bytes();
        let poisoned = ChunkResult {
            chunk_id: chunk.chunk_id,
            loss_before: vec![1.0; tasks],
            loss_after: vec![f32::NAN; tasks],
            grad_sum: nan.repeat(parameters.values.len() / 4).into(),
            ..Default::default()
        };
        let refused = results
            .complete(CompleteRequest {
                worker_id: me,
                results: vec![poisoned],
                next: None,
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        client
            .deregister(DeregisterRequest { worker_id: me })
            .await
            .unwrap();
    });
}

fn signal(pid: u32, signal: &str) {
    succeed(Command::new("kill").args([signal, &pid.to_string()]));
}

/// Lines of the coordinator's log (since its last start) that say `what`, about worker `name`
/// when given.
fn said(cluster: &Cluster, what: &str, name: Option<&str>) -> usize {
    let name = name.map(|n| format!("name={n}"));
    cluster
        .coordinator_log()
        .lines()
        .filter(|line| line.contains(what) && name.as_ref().is_none_or(|n| line.contains(n)))
        .count()
}

/// Waits until the coordinator's log says `what` (about worker `name`) more than `before` times.
fn wait_said(cluster: &Cluster, what: &str, name: Option<&str>, before: usize) {
    let started = Instant::now();
    while said(cluster, what, name) <= before {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "waited for {what:?} ({name:?})\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

const DROPPED: &str = "missed its heartbeats";

/// Waits until the run has passed `step` with `workers` workers sharing it, and checks it has
/// not finished: the next fault must strike a running experiment.
fn wait_running(cluster: &Cluster, id: &str, step: u64, workers: u64) -> u64 {
    let status = cluster.wait_for(id, Duration::from_secs(300), |s| {
        s["state"] != "running" || (s["step"].as_u64() >= Some(step) && s["workers"] == workers)
    });
    assert_eq!(
        status["state"], "running",
        "the run ended before the fault: {status}"
    );
    let at = status["step"].as_u64().unwrap();
    eprintln!("fault at step {at} of {STEPS}");
    at
}

#[test]
fn one_run_survives_every_fault_and_ends_bit_identical_to_an_undisturbed_one() {
    let overrides = overrides();
    let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
    // Short timeouts keep the faults' part of the run short against the whole; a worker
    // dropped by mistake on a loaded machine only rejoins, and changes nothing.
    let mut cluster = Cluster::start(&["--worker-timeout-ms", "800", "--heartbeat-ms", "100"]);
    let proxies: Vec<Proxy> = (0..4)
        .map(|_| Proxy::start(&cluster.url, Link::default()))
        .collect();
    for proxy in &proxies[..3] {
        cluster.add_worker_via(&proxy.url, &[]);
    }
    cluster.wait_workers(3);
    let id = cluster.submit(SPEC, &overrides).unwrap();

    // 1. SIGKILL a worker; a new one takes its place.
    wait_running(&cluster, &id, 1, 3);
    let before = said(&cluster, DROPPED, Some("worker-0"));
    cluster.workers[0].kill().unwrap();
    cluster.workers[0].wait().unwrap();
    wait_said(&cluster, DROPPED, Some("worker-0"), before);
    cluster.add_worker_via(&proxies[3].url, &[]);

    // 2. A poisoned result, refused; its chunk is computed again.
    wait_running(&cluster, &id, 0, 3);
    send_one_poisoned_result(&cluster.url);
    wait_said(&cluster, "refused a worker's result", None, 0);

    // 3. SIGSTOP a worker past its timeout, then let it go on: it is dropped and rejoins.
    let step = wait_running(&cluster, &id, 0, 3);
    let before = said(&cluster, DROPPED, Some("worker-1"));
    let stopped = cluster.workers[1].id();
    signal(stopped, "-STOP");
    wait_said(&cluster, DROPPED, Some("worker-1"), before);
    wait_running(&cluster, &id, step + 5, 2);
    signal(stopped, "-CONT");

    // 4. Cut a worker's link past its timeout, then restore it.
    let step = wait_running(&cluster, &id, 0, 3);
    let before = said(&cluster, DROPPED, Some("worker-2"));
    proxies[2].cut();
    wait_said(&cluster, DROPPED, Some("worker-2"), before);
    wait_running(&cluster, &id, step + 5, 2);
    proxies[2].restore();

    // 5. SIGKILL the coordinator after a checkpoint, and restart it elsewhere.
    wait_running(&cluster, &id, 100, 3);
    cluster.restart_coordinator();
    for proxy in &proxies {
        proxy.retarget(&cluster.url);
    }
    wait_said(&cluster, "resuming from the checkpoint", None, 0);

    // 6. SIGKILL a worker again.
    wait_running(&cluster, &id, 0, 3);
    cluster.workers[3].kill().unwrap();
    cluster.workers[3].wait().unwrap();
    wait_said(&cluster, DROPPED, Some("worker-3"), 0);

    let status = cluster.wait_finished(&id, Duration::from_secs(600));
    assert_eq!(status["state"], "finished", "{status}");
    let steps = train_steps(&cluster.metrics(&id));
    let distinct: std::collections::BTreeSet<u64> = steps.iter().copied().collect();
    let (lost, twice) = (STEPS - distinct.len() as u64, steps.len() - distinct.len());
    assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "every step once");

    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, &overrides).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(600));
    assert!(
        final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id),
        "a chunk was lost or counted twice"
    );
    common::report::record(serde_json::json!({
        "check": "faults survived in one run",
        "faults": ["worker SIGKILL", "poisoned result", "worker SIGSTOP past its timeout",
                   "link cut past the timeout", "coordinator SIGKILL and restart", "worker SIGKILL"],
        "steps": STEPS,
        "steps_lost": lost,
        "steps_twice": twice,
        "bit_identical": true,
    }));
}
