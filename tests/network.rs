//! Workers across a network: latency, jitter and a bandwidth cap, and a link cut and restored.
//!
//! The link is a proxy in the test process (`common::proxy`), which needs no root;
//! `tests/namespaces.rs` runs the same checks with each process on a host of its own.

mod common;

use std::time::Duration;

use common::proxy::{Link, Proxy};
use common::{final_parameters, Cluster, SPEC, TINY};

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

#[test]
fn a_worker_cut_off_past_its_timeout_is_replaced_then_rejoins_and_nothing_changes() {
    let mut cluster = Cluster::start(&["--worker-timeout-ms", "1500", "--heartbeat-ms", "200"]);
    cluster.add_worker();
    let proxy = Proxy::start(&cluster.url, Link::default());
    cluster.add_worker_via(&proxy.url, &[]);
    cluster.wait_workers(2);
    common::a_cut_worker_is_replaced_then_rejoins(&cluster, || proxy.cut(), || proxy.restore());
}
