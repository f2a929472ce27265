//! Several experiments at once: they share the workers, each ends bit-identical to running it alone, and the queue waits for a free place.

mod common;

use std::time::Duration;

use common::{config, final_parameters, train_steps, without_timings, Cluster, SPEC};

/// A meta-learning run of a few seconds.
const META: &[&str] = &[
    "meta.steps=200",
    "meta.chunk_tasks=5",
    "eval.every=100",
    "eval.tasks=50",
    "eval.final_tasks=100",
];

/// A meta-learning run that only ends when cancelled.
const ENDLESS: &[&str] = &["seed=7", "meta.steps=1000000", "eval.every=100000"];

/// A multi-task run of a few seconds, weighted to take twice its share of the workers.
const MTL: &[&str] = &[
    "train.steps=60",
    "eval.every=30",
    "eval.rows=200",
    "eval.final_rows=400",
    "scheduling.weight=2",
];

/// The tensors of `final.safetensors`, without its header (whose metadata names the
/// experiment's id, which depends on the order of submission).
fn tensor_bytes(cluster: &Cluster, id: &str) -> Vec<u8> {
    let file = final_parameters(cluster, id);
    let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    file[8 + header..].to_vec()
}

/// Runs `spec` with `overrides` alone on one worker: its final tensors and its metrics
/// without timings.
fn alone(spec: &str, overrides: &[&str]) -> (Vec<u8>, Vec<serde_json::Value>) {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    let id = cluster.submit(spec, overrides).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(180));
    (
        tensor_bytes(&cluster, &id),
        without_timings(cluster.metrics(&id)),
    )
}

#[test]
fn experiments_share_the_workers_and_each_ends_as_if_it_ran_alone() {
    let mut cluster = Cluster::start(&["--max-running", "2"]);
    // Submitted before any worker registers, so that the two first ones surely run side by
    // side: each waits for workers with its first round out.
    let meta = cluster.submit(SPEC, META).unwrap();
    let endless = cluster.submit(SPEC, ENDLESS).unwrap();
    let mtl_spec = config("mtl_gradnorm.toml");
    let mtl = cluster.submit(&mtl_spec, MTL).unwrap();
    for id in [&meta, &endless] {
        cluster.wait_for(id, Duration::from_secs(30), |s| s["state"] == "running");
    }
    assert_eq!(
        cluster.status(&mtl)["state"],
        "queued",
        "a third experiment waits for a place (--max-running 2)"
    );
    cluster.add_worker();
    cluster.add_worker();

    // Once the endless one has trained a while beside the first, cancelling it frees its
    // place for the queued one.
    cluster.wait_for(&endless, Duration::from_secs(60), |s| {
        s["step"].as_u64() >= Some(20)
    });
    assert!(cluster.cli(&["cancel", &endless]).status.success());
    cluster.wait_for(&endless, Duration::from_secs(30), |s| {
        s["state"] == "cancelled"
    });
    cluster.wait_finished(&meta, Duration::from_secs(180));
    cluster.wait_finished(&mtl, Duration::from_secs(180));

    // Each result is the one it would have had alone, step for step.
    for (id, spec, overrides) in [(&meta, SPEC, META), (&mtl, mtl_spec.as_str(), MTL)] {
        let metrics = cluster.metrics(id);
        let steps = train_steps(&metrics);
        assert_eq!(steps, (1..=steps.len() as u64).collect::<Vec<_>>());
        let (tensors, alone_metrics) = alone(spec, overrides);
        assert_eq!(without_timings(metrics), alone_metrics, "{id}'s metrics");
        assert!(
            tensor_bytes(&cluster, id) == tensors,
            "{id}'s final parameters differ from a run alone"
        );
    }

    // Each worker's cache held the experiments it switched between: a set-up is sent to a
    // worker once per experiment, however often the worker went from one to another.
    for worker in 0..2 {
        let log = std::fs::read_to_string(cluster.dir.path().join(format!("worker-{worker}.log")))
            .unwrap();
        let sent = log.matches("new experiment").count();
        assert!(
            (1..=3).contains(&sent),
            "worker-{worker} was sent {sent} set-ups for 3 experiments:\n{log}"
        );
    }
}
