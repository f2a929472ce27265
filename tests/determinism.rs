//! Same seed, same spec: bit-identical parameters whatever the number of workers.

mod common;

use std::time::Duration;

use common::{final_parameters, Cluster, SPEC};

const OVERRIDES: &[&str] = &[
    "meta.steps=300",
    "meta.chunk_tasks=5",
    "eval.every=150",
    "eval.tasks=100",
    "eval.final_tasks=200",
];

fn run_with(workers: usize) -> (Vec<u8>, Vec<serde_json::Value>) {
    let mut cluster = Cluster::start(&[]);
    for _ in 0..workers {
        cluster.add_worker();
    }
    let id = cluster.submit(SPEC, OVERRIDES).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(120));
    let losses = cluster
        .metrics(&id)
        .into_iter()
        .filter(|m| m["kind"] != "train" || m["workers"].as_u64() > Some(0))
        .map(|mut m| {
            // Timings and the number of workers differ between runs by design.
            for key in [
                "step_seconds",
                "compute_seconds",
                "critical_compute_seconds",
                "workers",
            ] {
                m.as_object_mut().unwrap().remove(key);
            }
            m
        })
        .collect();
    (final_parameters(&cluster, &id), losses)
}

#[test]
fn one_and_three_workers_give_bit_identical_parameters() {
    let (one, one_metrics) = run_with(1);
    let (three, three_metrics) = run_with(3);
    assert_eq!(one_metrics.len(), three_metrics.len());
    for (a, b) in one_metrics.iter().zip(&three_metrics) {
        assert_eq!(a, b, "every loss of every step and evaluation is identical");
    }
    assert!(
        one == three,
        "final.safetensors differs between 1 and 3 workers"
    );
}
