//! Workers across a network: latency, jitter and a bandwidth cap, and a link cut and restored.
//!
//! The link is a proxy in the test process (`common::proxy`), which needs no root;
//! `tests/namespaces.rs` runs the same checks with each process on a host of its own.

mod common;

use std::time::{Duration, Instant};

use common::proxy::{Link, Proxy};
use common::{final_parameters, train_steps, Cluster, SPEC, TINY};

/// A link between machines in one region: 20 ms each way, up to 5 ms of jitter, 100 Mbit/s.
const WAN: Link = Link {
    delay: Duration::from_millis(20),
    jitter: Duration::from_millis(5),
    bytes_per_s: Some(12_500_000),
};

/// Runs `TINY` on two workers, each reaching the coordinator through a proxy with `link` (or
/// directly, without); returns the final parameters and the training steps per second.
fn run_two_workers(link: Option<Link>) -> (Vec<u8>, f64) {
    let mut cluster = Cluster::start(&[]);
    let proxies: Vec<Proxy> = match link {
        Some(link) => (0..2).map(|_| Proxy::start(&cluster.url, link)).collect(),
        None => Vec::new(),
    };
    for proxy in &proxies {
        cluster.add_worker_via(&proxy.url, &[]);
    }
    if proxies.is_empty() {
        cluster.add_worker();
        cluster.add_worker();
    }
    cluster.wait_workers(2);
    let id = cluster.submit(SPEC, &TINY).unwrap();
    let status = cluster.wait_finished(&id, Duration::from_secs(300));
    let steps = status["step"].as_f64().unwrap();
    let seconds = status["train_seconds"].as_f64().unwrap();
    (final_parameters(&cluster, &id), steps / seconds)
}

#[test]
fn over_a_slow_jittery_capped_link_results_are_bit_identical_to_loopback() {
    let (loopback, loopback_rate) = run_two_workers(None);
    let (wan, wan_rate) = run_two_workers(Some(WAN));
    // Figures, not a test of speed: the README's network table comes from `bench/`.
    eprintln!("steps/s: loopback {loopback_rate:.1}, 20 ms ± 5 ms at 100 Mbit/s {wan_rate:.1}");
    assert!(wan == loopback, "the link changed the result");
}

/// Waits until `done` holds of the coordinator's log, or fails after `limit`.
fn wait_log(cluster: &Cluster, limit: Duration, what: &str, done: impl Fn(&str) -> bool) {
    let started = Instant::now();
    while !done(&cluster.coordinator_log()) {
        assert!(
            started.elapsed() < limit,
            "waited for {what}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_worker_cut_off_past_its_timeout_is_replaced_then_rejoins_and_nothing_changes() {
    const OVERRIDES: &[&str] = &[
        "meta.steps=600",
        "meta.chunk_tasks=5",
        "eval.every=300",
        "eval.tasks=50",
        "eval.final_tasks=50",
    ];
    let mut cluster = Cluster::start(&["--worker-timeout-ms", "1500", "--heartbeat-ms", "200"]);
    cluster.add_worker();
    let proxy = Proxy::start(&cluster.url, Link::default());
    cluster.add_worker_via(&proxy.url, &[]);
    cluster.wait_workers(2);
    let id = cluster.submit(SPEC, OVERRIDES).unwrap();
    // Cut once both workers share steps: the cut worker holds leases, or soon asks for one.
    let before = cluster.wait_for(&id, Duration::from_secs(120), |s| {
        s["step"].as_u64() >= Some(50) && s["workers"] == 2
    });
    proxy.cut();
    wait_log(
        &cluster,
        Duration::from_secs(60),
        "the cut worker to be dropped",
        |log| log.contains("missed its heartbeats"),
    );
    // The run goes on without it: its chunks are redone by the other worker.
    let cut_step = before["step"].as_u64().unwrap();
    cluster.wait_for(&id, Duration::from_secs(120), |s| {
        s["step"].as_u64() >= Some(cut_step + 30) && s["workers"] == 1
    });
    proxy.restore();
    // It rejoins under a new registration (its old id's late traffic is refused).
    wait_log(
        &cluster,
        Duration::from_secs(120),
        "the cut worker to register again",
        |log| log.matches("worker registered").count() >= 3,
    );
    let status = cluster.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=600).collect::<Vec<_>>()
    );

    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, OVERRIDES).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(300));
    assert!(
        final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id),
        "a chunk was lost or counted twice"
    );
}
