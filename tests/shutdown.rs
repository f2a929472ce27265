//! Graceful shutdown on SIGTERM: the coordinator checkpoints a running experiment where it is and exits, and resumes it without redoing a step; a worker hands back its chunks at once.

mod common;

use std::time::Duration;

use common::{train_steps, Cluster, SPEC};

/// Long enough that the run is still going when the test, polling, sees step 30 on any machine.
const RUN: [&str; 5] = [
    "meta.steps=1000",
    "meta.chunk_tasks=5",
    "eval.every=1000",
    "eval.tasks=50",
    "eval.final_tasks=50",
];

fn step(status: &serde_json::Value) -> u64 {
    status["step"].as_u64().unwrap_or(0)
}

#[test]
fn a_terminated_coordinator_checkpoints_where_it_is_and_resumes_there() {
    let mut undisturbed = Cluster::start(&[]);
    undisturbed.add_worker();
    let id = undisturbed.submit(SPEC, &RUN).unwrap();
    undisturbed.wait_finished(&id, Duration::from_secs(300));
    let expected = common::final_parameters(&undisturbed, &id);

    // The coordinator comes back on another port; the worker follows it through a proxy.
    let mut cluster = Cluster::start_restartable(&[]);
    cluster.add_worker();
    let id = cluster.submit(SPEC, &RUN).unwrap();
    // Well past the step-0 evaluation and far from the next checkpoint (step 1000).
    cluster.wait_for(&id, Duration::from_secs(300), |s| step(s) >= 30);
    assert!(cluster.terminate_coordinator(), "exit status 0 on SIGTERM");
    let done = train_steps(&cluster.metrics(&id));
    let stopped_at = *done.last().unwrap();
    assert!((30..1000).contains(&stopped_at), "{stopped_at}");
    assert!(cluster
        .coordinator_log()
        .contains("stopped by the shutdown"));

    cluster.start_coordinator_again();
    cluster.wait_finished(&id, Duration::from_secs(300));
    let log = cluster.coordinator_log();
    assert!(
        log.contains("resuming from the checkpoint") && log.contains(&format!("step={stopped_at}")),
        "resumed at the step it stopped at, {stopped_at}: {log}"
    );
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=1000).collect::<Vec<u64>>(),
        "every step once"
    );
    assert!(
        common::final_parameters(&cluster, &id) == expected,
        "final.safetensors differs from an undisturbed run"
    );
}

#[test]
fn a_terminated_worker_hands_back_its_chunks_at_once() {
    // Ten minutes before a silent worker or a lease would be given up: the run can only end
    // within the test's time if the worker hands its chunks back.
    let mut cluster = Cluster::start(&[
        "--worker-timeout-ms",
        "600000",
        "--lease-timeout-ms",
        "600000",
    ]);
    cluster.add_worker();
    let id = cluster.submit(SPEC, &RUN).unwrap();
    cluster.wait_for(&id, Duration::from_secs(300), |s| step(s) >= 10);
    assert!(cluster.terminate_worker(0), "exit status 0 on SIGTERM");
    let log = cluster.coordinator_log();
    assert!(log.contains("worker deregistered"), "{log}");
    cluster.add_worker();
    cluster.wait_finished(&id, Duration::from_secs(120));
}
