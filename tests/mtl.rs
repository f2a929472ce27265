//! Multi-task experiments end to end: a real coordinator and workers on loopback, the shipped GradNorm spec cut small.

mod common;

use std::time::Duration;

use common::{config, final_parameters, without_timings, Cluster};
use serde_json::Value;

/// The shipped spec at a size a test can afford: three tasks of very different scales.
const SMALL: &[&str] = &[
    "data.sigmas=[1.0, 10.0, 100.0]",
    "data.inputs=20",
    "data.outputs=5",
    "model.hidden=[32, 32]",
    "train.batch=32",
    "train.chunk_rows=8",
    "train.lr=0.003",
    "eval.rows=256",
    "eval.final_rows=512",
    "eval.chunk_rows=128",
];

fn spec() -> String {
    config("mtl_gradnorm.toml")
}

/// Submits the small spec with `extra` overrides after the common ones.
fn submit(cluster: &Cluster, extra: &[&str]) -> String {
    let overrides: Vec<&str> = SMALL.iter().chain(extra).copied().collect();
    cluster.submit(&spec(), &overrides).unwrap()
}

fn lines<'a>(metrics: &'a [Value], kind: &str) -> Vec<&'a Value> {
    metrics.iter().filter(|m| m["kind"] == kind).collect()
}

/// Each task's held-out loss in an evaluation line, in task order.
fn task_losses(line: &Value) -> Vec<f64> {
    line["task_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["loss"].as_f64().unwrap())
        .collect()
}

#[test]
fn every_step_records_each_tasks_loss_and_the_methods_weights_and_training_lowers_every_loss() {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    let id = submit(
        &cluster,
        &[
            "weighting.method=\"dwa\"",
            "train.steps=120",
            "eval.every=60",
            "eval.baselines={ t0 = 1.0, t1 = 100.0, t2 = 10000.0 }",
        ],
    );
    let status = cluster.wait_finished(&id, Duration::from_secs(300));
    let metrics = cluster.metrics(&id);
    let train = lines(&metrics, "train");
    assert_eq!(train.len(), 120);
    for line in &train {
        assert_eq!(line["task_losses"].as_array().unwrap().len(), 3, "{line}");
        let weights = line["weighting"]["weights"]
            .as_array()
            .expect("DWA records its weights");
        let sum: f64 = weights.iter().map(|w| w.as_f64().unwrap()).sum();
        // DWA's weights sum to the number of tasks.
        assert!((sum - 3.0).abs() < 1e-9, "{line}");
    }
    let evals = lines(&metrics, "eval");
    assert_eq!(
        evals
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 60, 120]
    );
    let finals = lines(&metrics, "final_eval");
    assert_eq!(finals.len(), 1);
    let (first, last) = (task_losses(evals[0]), task_losses(finals[0]));
    for task in 0..3 {
        assert!(
            last[task] < 0.9 * first[task],
            "task {task}: loss {} at the start, {} at the end",
            first[task],
            last[task]
        );
    }
    // Regression tasks report their MSE as the metric.
    let task = &finals[0]["task_scores"][2];
    assert_eq!(task["task"], "t2");
    assert_eq!(task["loss"], task["metric"]);
    let delta = finals[0]["delta_m_percent"]
        .as_f64()
        .expect("baselines were given");
    assert!(delta.is_finite());
    assert_eq!(status["kind"], "mtl");
    let last = &status["last_eval"];
    assert_eq!(last["final"], true);
    assert_eq!(last["delta_m_percent"].as_f64(), Some(delta));
    assert_eq!(last["task_scores"][2], finals[0]["task_scores"][2]);
    let bytes = final_parameters(&cluster, &id);
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    for name in [
        "shared.0.weight",
        "shared.2.bias",
        "heads.t0.weight",
        "heads.t2.bias",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

/// Final parameters and metrics (timings removed) of a PCGrad run on `workers` workers; with
/// `restart_at`, the coordinator is SIGKILLed once the run has passed that step and restarted
/// on the same state (its workers follow it through a proxy).
fn pcgrad_run(workers: usize, restart_at: Option<u64>) -> (Vec<u8>, Vec<Value>, u64) {
    // PCGrad draws its projection order from the step's counter-based key, and DWA-free runs
    // are long enough that a restart past the checkpoint at step 100 cannot miss the run.
    let extra = [
        "weighting.method=\"pcgrad\"",
        "train.steps=600",
        "eval.every=100",
    ];
    run_on(workers, &extra, restart_at)
}

/// Final parameters, metrics (timings removed) and the most workers that shared a step, of the
/// small spec with `extra` overrides on `workers` workers, restarting the coordinator past
/// `restart_at` as [`pcgrad_run`] says.
fn run_on(workers: usize, extra: &[&str], restart_at: Option<u64>) -> (Vec<u8>, Vec<Value>, u64) {
    let mut cluster = Cluster::start_restartable(&[]);
    for _ in 0..workers {
        // Every chunk's results go back as soon as they are computed (the path large
        // gradients take), so bit-identity is checked with them arriving out of step.
        cluster.add_worker_with(&["--stream-min-bytes", "0"]);
    }
    cluster.wait_workers(workers);
    let id = submit(&cluster, extra);
    cluster.finish_with_restart(&id, restart_at);
    let metrics = cluster.metrics(&id);
    let most_sharing = metrics
        .iter()
        .filter_map(|m| m["workers"].as_u64())
        .max()
        .unwrap_or(0);
    (
        final_parameters(&cluster, &id),
        without_timings(metrics),
        most_sharing,
    )
}

#[test]
fn a_multi_task_run_is_bit_identical_on_one_and_two_workers_and_after_a_restart() {
    let (one, one_metrics, _) = pcgrad_run(1, None);
    let (two, two_metrics, sharing) = pcgrad_run(2, None);
    assert!(sharing >= 2, "with 2 workers, steps were shared");
    assert_eq!(one_metrics.len(), two_metrics.len());
    for (a, b) in one_metrics.iter().zip(&two_metrics) {
        assert_eq!(a, b, "every task's loss and every weight is identical");
    }
    assert!(
        one == two,
        "final.safetensors differs between 1 and 2 workers"
    );
    let (resumed, resumed_metrics, _) = pcgrad_run(1, Some(150));
    assert_eq!(
        one_metrics, resumed_metrics,
        "the steps after the checkpoint were done again, once"
    );
    assert!(
        one == resumed,
        "final.safetensors differs after a coordinator restart"
    );
}

/// Runs `run` on one and on two workers, asserts that the two workers shared the steps and
/// that the final parameters and the metrics of both runs are identical, and returns the
/// two-worker run's.
fn same_on_one_and_two_workers(
    run: impl Fn(usize) -> (Vec<u8>, Vec<Value>, u64),
) -> (Vec<u8>, Vec<Value>) {
    let (one, one_metrics, _) = run(1);
    let (two, two_metrics, sharing) = run(2);
    assert!(sharing >= 2, "with 2 workers, steps were shared");
    assert_eq!(
        one_metrics, two_metrics,
        "every loss and weight is identical"
    );
    assert!(
        one == two,
        "final.safetensors differs between 1 and 2 workers"
    );
    (two, two_metrics)
}

#[test]
fn an_mmoe_run_trains_every_task_and_is_bit_identical_on_one_and_two_workers() {
    let extra = [
        "model.kind=\"mmoe\"",
        "model.experts=3",
        "model.hidden=[16, 16]",
        "weighting.method=\"pcgrad\"",
        "train.steps=80",
        "eval.every=80",
        "train.lr=0.01",
    ];
    let (two, two_metrics) = same_on_one_and_two_workers(|workers| run_on(workers, &extra, None));
    let first = task_losses(lines(&two_metrics, "eval")[0]);
    let last = task_losses(lines(&two_metrics, "final_eval")[0]);
    eprintln!("mmoe: {first:?} -> {last:?}");
    for task in 0..3 {
        assert!(
            last[task] < 0.9 * first[task],
            "task {task}: held-out loss {} at the start, {} at the end",
            first[task],
            last[task]
        );
    }
    let file = safetensors::SafeTensors::deserialize(&two).unwrap();
    let names: Vec<String> = file.names().into_iter().map(String::from).collect();
    for name in [
        "experts.0.0.weight",
        "experts.2.2.bias",
        "gates.t0.weight",
        "gates.t2.bias",
        "heads.t1.weight",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
    assert_eq!(file.tensor("gates.t1.weight").unwrap().shape(), [3, 20]);
    assert!(!names.iter().any(|n| n.starts_with("shared.")), "{names:?}");
}

#[test]
fn a_factored_run_is_bit_identical_on_one_and_two_workers_and_trains_as_the_dense_run_does() {
    // MGDA reads the tasks' Gram matrix and combines their gradients: both from the factored
    // form here, from the formed gradients in the dense run.
    let run = |workers, form: &str| {
        let form = format!("train.shared_gradients=\"{form}\"");
        let extra = [
            form.as_str(),
            "weighting.method=\"mgda\"",
            "train.steps=80",
            "eval.every=80",
        ];
        run_on(workers, &extra, None)
    };
    let (_, two_metrics) = same_on_one_and_two_workers(|workers| run(workers, "factored"));
    let (_, dense_metrics, _) = run(2, "dense");
    let first = task_losses(lines(&two_metrics, "eval")[0]);
    let last = task_losses(lines(&two_metrics, "final_eval")[0]);
    let dense_last = task_losses(lines(&dense_metrics, "final_eval")[0]);
    eprintln!("factored: {first:?} -> {last:?}; dense: {dense_last:?}");
    for task in 0..3 {
        assert!(last[task] < first[task], "task {task} trains");
        let gap = (last[task] - dense_last[task]).abs() / dense_last[task];
        assert!(
            gap < 1e-5,
            "task {task}: {} factored, {} dense",
            last[task],
            dense_last[task]
        );
    }
}

#[test]
fn bad_multi_task_specs_are_refused_with_the_field_and_what_is_allowed() {
    let cluster = Cluster::start(&[]);
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["weighting.method=\"cagrad\"", "weighting.c=1.5"],
            &["weighting.c=1.5", "[0, 1)"],
        ),
        (
            &["weighting.method=\"sum\""],
            &["unknown variant `sum`", "pcgrad"],
        ),
        (
            &["data.sigmas=[1.0, 0.0]"],
            &["data.sigmas", "finite and positive"],
        ),
        (
            &["weighting.method=\"fixed\"", "weighting.weights=[1.0, 2.0]"],
            &["one weight per task (10)"],
        ),
        (
            &[
                "model.kind=\"mmoe\"",
                "model.experts=2",
                "train.shared_gradients=\"factored\"",
            ],
            &["train.shared_gradients", "needs model kind \"mlp\""],
        ),
    ];
    for (overrides, expected) in cases {
        let error = cluster.submit(&spec(), overrides).unwrap_err();
        for part in expected {
            assert!(error.contains(part), "{overrides:?}: {error}");
        }
    }
    let all = cluster.cli(&["status", "--json"]);
    assert!(all.status.success());
    assert_eq!(all.stdout, b"", "refused specs store nothing");
}

/// Every weighting method, with its published defaults (fixed weights need a weight per task).
const METHODS: [&str; 13] = [
    "fixed", "ew", "uw", "dwa", "gradnorm", "rlw", "pcgrad", "mgda", "cagrad", "nash_mtl",
    "imtl_g", "gradvac", "famo",
];

#[test]
fn every_weighting_method_trains_every_task_on_two_workers() {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    cluster.add_worker();
    cluster.wait_workers(2);
    for method in METHODS {
        let method_line = format!("weighting.method=\"{method}\"");
        let mut extra = vec![method_line.as_str(), "train.steps=120", "eval.every=120"];
        if method == "fixed" {
            extra.push("weighting.weights=[1.0, 0.1, 0.01]");
        }
        let id = submit(&cluster, &extra);
        cluster.wait_finished(&id, Duration::from_secs(300));
        let metrics = cluster.metrics(&id);
        let first = task_losses(lines(&metrics, "eval")[0]);
        let last = task_losses(lines(&metrics, "final_eval")[0]);
        // Every task's loss falls (MGDA, led by the smallest gradient, moves the largest-scale
        // task least: 2% in this short run), and the tasks together clearly improve.
        eprintln!("{method}: {first:?} -> {last:?}");
        for task in 0..3 {
            assert!(
                last[task] < first[task],
                "{method}, task {task}: held-out loss {} at the start, {} at the end",
                first[task],
                last[task]
            );
        }
        let mean_ratio = (0..3).map(|t| last[t] / first[t]).sum::<f64>() / 3.0;
        assert!(mean_ratio < 0.9, "{method}: mean loss ratio {mean_ratio}");
        let shared = metrics
            .iter()
            .filter_map(|m| m["workers"].as_u64())
            .max()
            .unwrap_or(0);
        assert_eq!(shared, 2, "{method}: steps were shared by both workers");
    }
}

/// Waits for experiment `id` to end, checks that it failed, and returns its error.
fn failure(cluster: &Cluster, id: &str) -> String {
    let status = cluster.wait_for(id, Duration::from_secs(120), |s| {
        matches!(s["state"].as_str(), Some("finished" | "failed"))
    });
    assert_eq!(status["state"], "failed", "{status}");
    status["error"].as_str().unwrap().to_string()
}

#[test]
fn a_diverging_run_stops_before_a_non_finite_update_naming_the_step_and_the_task() {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    // Adam's first step moves every parameter by about the learning rate: 1e30 makes the next
    // step's outputs overflow.
    let id = submit(
        &cluster,
        &["train.lr=1e30", "train.steps=20", "eval.every=20"],
    );
    let error = failure(&cluster, &id);
    // The non-finite chunk results are refused as they arrive, tried again, then the step is.
    assert!(
        error.contains("refused step 2")
            && error.contains("task `t")
            && error.contains("not finite"),
        "{error}"
    );
    assert!(error.contains("(3 tries)"), "{error}");
    assert!(!cluster
        .experiment_dir(&id)
        .join("final.safetensors")
        .exists());
    let steps = common::train_steps(&cluster.metrics(&id));
    assert_eq!(steps, [1], "only the finite step was applied and recorded");
    // A refusal is about the results, not the worker: it kept its first registration (no new
    // id, no back-off) and every try was refused under it.
    let workers = cluster.workers();
    assert_eq!(workers.len(), 1, "{workers:?}");
    assert_eq!(workers[0]["number"], 1, "{workers:?}");
    assert!(
        workers[0]["refused_results"].as_u64() >= Some(3),
        "{workers:?}"
    );

    // Every chunk finite, but a weight that overflows the combination in f32: the run stops at
    // that step naming the task and the setting, and applies nothing.
    let id = submit(
        &cluster,
        &[
            "weighting.method=\"fixed\"",
            "weighting.weights=[1.0, 1.0, 3e38]",
            "train.steps=20",
            "eval.every=20",
        ],
    );
    let error = failure(&cluster, &id);
    assert!(
        error.contains("at step 1")
            && error.contains("task `t2`")
            && error.contains("weighted 3.000e38")
            && error.contains("check weighting.weights"),
        "{error}"
    );
    assert!(common::train_steps(&cluster.metrics(&id)).is_empty());
}

#[test]
fn the_toy_problem_runs_as_a_spec_and_mgda_lowers_both_losses_at_once() {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    // Plain gradient steps along MGDA's min-norm direction decrease both losses while the
    // steps are small: the direction has a positive product with both gradients.
    let id = cluster
        .submit(
            &config("mtl_pareto_toy.toml"),
            &[
                "data.start=[9.0, 9.0]",
                "weighting.method=\"mgda\"",
                "train.optimizer=\"sgd\"",
                "train.lr=0.05",
                "train.steps=150",
                "eval.every=150",
            ],
        )
        .unwrap();
    cluster.wait_finished(&id, Duration::from_secs(300));
    let metrics = cluster.metrics(&id);
    let train = lines(&metrics, "train");
    assert_eq!(train.len(), 150);
    let values = |line: &Value, key: &str| -> Vec<f64> {
        line[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let path: Vec<Vec<f64>> = train.iter().map(|l| values(l, "task_metrics")).collect();
    for (before, after) in path.iter().zip(&path[1..]) {
        assert!(
            after[0] <= before[0] + 1e-9 && after[1] <= before[1] + 1e-9,
            "both losses fall every step: {before:?} then {after:?}"
        );
    }
    let (first, last) = (&path[0], &path[149]);
    assert!(
        last[0] < first[0] - 0.01 && last[1] < first[1] - 0.01,
        "{first:?} then {last:?}"
    );
    // The exported point is where the final evaluation scored the exact losses.
    let bytes = final_parameters(&cluster, &id);
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let coordinate = |name: &str| {
        let data = file.tensor(name).unwrap().data().to_vec();
        f32::from_le_bytes(data[..4].try_into().unwrap()) as f64
    };
    let (f, _) =
        outerloop_worker::mtl::pareto_toy::losses([coordinate("point.x1"), coordinate("point.x2")]);
    let finals = lines(&metrics, "final_eval");
    let scored: Vec<f64> = finals[0]["task_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"].as_f64().unwrap())
        .collect();
    for t in 0..2 {
        assert!((scored[t] - f[t]).abs() < 1e-9, "{scored:?} vs {f:?}");
    }
}
