//! A worker killed with SIGKILL mid-run: the experiment finishes on the others, nothing counted twice.

mod common;

use std::time::Duration;

use common::{final_parameters, train_steps, Cluster, SPEC};

const OVERRIDES: &[&str] = &[
    "meta.steps=1500",
    "meta.chunk_tasks=5",
    "eval.every=500",
    "eval.tasks=100",
    "eval.final_tasks=200",
];
const FAST_EXPIRY: &[&str] = &["--worker-timeout-ms", "1500", "--heartbeat-ms", "200"];

#[test]
fn a_killed_worker_loses_nothing_and_counts_nothing_twice() {
    let mut cluster = Cluster::start(FAST_EXPIRY);
    cluster.add_worker();
    cluster.add_worker();
    let id = cluster.submit(SPEC, OVERRIDES).unwrap();
    cluster.wait_for(&id, Duration::from_secs(60), |s| {
        s["step"].as_u64() >= Some(200) && s["workers"] == 2
    });

    let victim = &mut cluster.workers[0];
    victim.kill().unwrap(); // SIGKILL: no goodbye, leases left dangling.
    victim.wait().unwrap();
    let status = cluster.wait_finished(&id, Duration::from_secs(120));
    assert_eq!(status["workers"], 1, "the dead worker was dropped");
    let log = std::fs::read_to_string(cluster.dir.path().join("coordinator.log")).unwrap();
    assert!(log.contains("missed its heartbeats"), "{log}");

    let metrics = cluster.metrics(&id);
    assert_eq!(train_steps(&metrics), (1..=1500).collect::<Vec<_>>());
    assert!(metrics
        .iter()
        .any(|m| m["kind"] == "train" && m["workers"] == 2));

    // A chunk counted twice, or one lost, would change the parameters: compare with an
    // undisturbed run of the same spec on one worker, bit for bit.
    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, OVERRIDES).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(120));
    assert!(final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id));
}
