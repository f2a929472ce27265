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

/// Runs the spec on `workers` workers: the final parameters, the metrics without timings, and
/// the most workers that shared one step.
fn run_with(workers: usize) -> (Vec<u8>, Vec<serde_json::Value>, u64) {
    let mut cluster = Cluster::start(&[]);
    for _ in 0..workers {
        cluster.add_worker();
    }
    let id = cluster.submit(SPEC, OVERRIDES).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(120));
    let metrics = cluster.metrics(&id);
    let most_sharing = metrics
        .iter()
        .filter_map(|m| m["workers"].as_u64())
        .max()
        .unwrap_or(0);
    let losses = common::without_timings(metrics);
    (final_parameters(&cluster, &id), losses, most_sharing)
}

#[test]
fn one_two_and_three_workers_give_bit_identical_parameters() {
    let (one, one_metrics, _) = run_with(1);
    for workers in [2, 3] {
        let (many, many_metrics, most_sharing) = run_with(workers);
        assert!(
            most_sharing >= 2,
            "with {workers} workers, steps were shared"
        );
        assert_eq!(one_metrics.len(), many_metrics.len());
        for (a, b) in one_metrics.iter().zip(&many_metrics) {
            assert_eq!(
                a, b,
                "every loss of every step and evaluation is identical with {workers} workers"
            );
        }
        assert!(
            one == many,
            "final.safetensors differs between 1 and {workers} workers"
        );
    }
}
