//! Few-shot image classification end to end: a generated Omniglot-layout dataset on the
//! workers' disks, a coordinator that never reads an image, and every algorithm learning
//! 5-way 1-shot well above chance with two workers.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::{config, Cluster};
use serde_json::Value;

/// A small generated dataset in Omniglot's published layout, under `ROOT/omniglot/`, shared
/// by the tests of this file.
fn data_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        // Leaked on purpose: the directory must outlive every test of the binary.
        let root = tempfile::tempdir().unwrap().keep();
        generate(&root.join("omniglot"), 120);
        root
    })
}

/// Writes a synthetic Omniglot-layout dataset of `characters` characters, 20 drawers each.
pub fn generate(dir: &Path, characters: u32) {
    common::succeed(
        std::process::Command::new(common::BIN)
            .args(["dataset", "synth", "--out"])
            .arg(dir)
            .args([
                "--classes",
                &characters.to_string(),
                "--instances",
                "20",
                "--seed",
                "7",
            ]),
    );
}

/// A coordinator and two workers holding the dataset, both registered.
fn cluster() -> Cluster {
    let mut cluster = Cluster::start(&[]);
    let root = data_root().to_str().unwrap().to_string();
    for _ in 0..2 {
        cluster.add_worker_with(&["--data-root", &root]);
    }
    cluster.wait_workers(2);
    cluster
}

/// Short runs of the shipped Omniglot specs: a narrow conv4, 5 queries per class, small
/// meta-batches cut into chunks that both workers share.
const SHORT: &[&str] = &[
    "model.filters=16",
    "task.queries=5",
    "meta.meta_batch=8",
    "meta.chunk_tasks=4",
    "eval.tasks=100",
    "eval.final_tasks=300",
    "eval.queries=5",
    "eval.chunk_tasks=50",
];

/// The final evaluation's mean accuracy, after checking what status reports about it.
fn final_accuracy(status: &Value) -> f64 {
    let eval = &status["last_eval"];
    assert_eq!(eval["final"], true, "{status}");
    let accuracy = eval["accuracy_mean"].as_f64().unwrap();
    let ci95 = eval["accuracy_ci95"].as_f64().unwrap();
    assert!(
        (0.0..=1.0).contains(&accuracy) && ci95 > 0.0 && ci95 < 0.1,
        "{eval}"
    );
    accuracy
}

/// The raw-pixel nearest-neighbour accuracy of the test split's 5-way 1-shot episodes (5
/// queries per class), as `outerloop dataset baseline` measures it.
fn baseline() -> f64 {
    static BASELINE: OnceLock<f64> = OnceLock::new();
    *BASELINE.get_or_init(|| {
        let out = common::succeed(
            std::process::Command::new(common::BIN)
                .args([
                    "dataset",
                    "baseline",
                    "--json",
                    "--queries",
                    "5",
                    "--data-root",
                ])
                .arg(data_root()),
        );
        let summary: Value = serde_json::from_slice(&out).unwrap();
        summary["accuracy_mean"].as_f64().unwrap()
    })
}

/// What every algorithm must reach after its short run: clearly above chance (20%) and clearly
/// above the raw-pixel nearest-neighbour baseline (about 50% on this data).
fn assert_learned(algorithm: &str, status: &Value) {
    let accuracy = final_accuracy(status);
    let floor = baseline();
    assert!(
        (0.35..0.65).contains(&floor),
        "the generated data should be neither trivial nor hopeless for raw pixels: {floor}"
    );
    assert!(
        accuracy >= 0.65 && accuracy >= floor + 0.12,
        "{algorithm}: final accuracy {accuracy:.3} on 5-way 1-shot; needs 0.65 and the pixel baseline {floor:.3} + 0.12\n{status}"
    );
}

#[test]
fn every_algorithm_learns_five_way_one_shot_on_two_workers() {
    let cluster = cluster();
    let short = ["meta.steps=150", "eval.every=150"];
    // Each algorithm with settings a short run learns under; the shipped specs hold the papers'.
    let runs: Vec<(&str, &str, Vec<&str>)> = vec![
        ("maml", "omniglot_5w1s_maml.toml", vec![]),
        (
            "fomaml",
            "omniglot_5w1s_maml.toml",
            vec![
                "meta.algorithm=fomaml",
                "meta.inner_steps=3",
                "meta.inner_lr=0.2",
                "eval.inner_steps=5",
            ],
        ),
        (
            "metasgd",
            "omniglot_5w1s_maml.toml",
            vec!["meta.algorithm=metasgd"],
        ),
        (
            "anil",
            "omniglot_5w1s_maml.toml",
            vec![
                "meta.algorithm=anil",
                "meta.inner_steps=5",
                "eval.inner_steps=10",
            ],
        ),
        (
            "reptile",
            "omniglot_5w1s_maml.toml",
            vec![
                "meta.algorithm=reptile",
                "meta.inner_steps=5",
                "meta.inner_lr=0.1",
                "meta.optimizer=sgd",
                "meta.meta_lr=1.0",
                "meta.lr_schedule=linear",
                "eval.inner_steps=10",
                "meta.steps=200",
            ],
        ),
        (
            "protonet",
            "omniglot_5w1s_protonet.toml",
            vec![
                "task.ways=20",
                "meta.meta_batch=2",
                "meta.chunk_tasks=1",
                "meta.steps=100",
                "eval.every=100",
            ],
        ),
    ];
    // Submitted together: they queue and run one after another on the same two workers.
    let ids: Vec<(&str, String)> = runs
        .iter()
        .map(|(algorithm, spec, extra)| {
            let overrides: Vec<&str> = SHORT.iter().chain(&short).chain(extra).copied().collect();
            (
                *algorithm,
                cluster.submit(&config(spec), &overrides).unwrap(),
            )
        })
        .collect();
    for (algorithm, id) in &ids {
        let status = cluster.wait_finished(id, Duration::from_secs(1200));
        assert_learned(algorithm, &status);
        let metrics = cluster.metrics(id);
        let train: Vec<&Value> = metrics.iter().filter(|m| m["kind"] == "train").collect();
        assert!(
            train
                .iter()
                .all(|m| (0.0..=1.0).contains(&m["accuracy"].as_f64().unwrap())),
            "{algorithm}: training metrics carry accuracy"
        );
        assert!(
            train.iter().any(|m| m["workers"] == 2),
            "{algorithm}: both workers took part"
        );
        let evals: Vec<&Value> = metrics.iter().filter(|m| m["kind"] != "train").collect();
        assert!(
            evals
                .iter()
                .all(|e| e["accuracy_mean"].is_number() && e["accuracy_ci95"].is_number()),
            "{algorithm}: {evals:?}"
        );
        // The coordinator sampled from the manifest it kept; it never had the images.
        let manifest = cluster.experiment_dir(id).join("manifest.json");
        assert!(
            manifest.exists(),
            "{algorithm}: the manifest is kept with the results"
        );
    }
    // Meta-SGD exports its learned learning rates beside the weights.
    let metasgd = &ids[2].1;
    let bytes = std::fs::read(cluster.experiment_dir(metasgd).join("final.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("inner_lr.0.weight").unwrap().shape(),
        file.tensor("0.weight").unwrap().shape()
    );
    pytorch_loads_conv4(&cluster.experiment_dir(&ids[0].1).join("final.safetensors"));
}

/// PyTorch loads `path` strictly into the conv4 `nn.Sequential` the README documents and runs
/// it. `make test` points OUTERLOOP_PYTHON at the torch environment it installs.
fn pytorch_loads_conv4(path: &Path) {
    let Ok(python) = std::env::var("OUTERLOOP_PYTHON") else {
        eprintln!("OUTERLOOP_PYTHON unset: not checking that PyTorch loads final.safetensors");
        return;
    };
    let check = r#"
import sys, torch
from safetensors.torch import load_file
def block(i, o):
    return [torch.nn.Conv2d(i, o, 3, padding=1), torch.nn.BatchNorm2d(o, track_running_stats=False), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
net = torch.nn.Sequential(*block(1, 16), *block(16, 16), *block(16, 16), *block(16, 16), torch.nn.Flatten(), torch.nn.Linear(16, 5))
net.load_state_dict(load_file(sys.argv[1]), strict=True)
print(net(torch.rand(10, 1, 28, 28)).shape)
"#;
    let out = common::succeed(std::process::Command::new(python).args([
        "-c",
        check,
        path.to_str().unwrap(),
    ]));
    assert_eq!(
        String::from_utf8(out).unwrap().trim(),
        "torch.Size([10, 5])"
    );
}

/// The final parameters and the metrics (timings and worker counts removed) of a short conv4
/// run on `workers` workers; with `restart_at`, the coordinator is killed with SIGKILL once
/// the run has passed that step, and restarted on the same state (its workers follow it through a proxy).
fn conv4_run(workers: usize, restart_at: Option<u64>) -> (Vec<u8>, Vec<Value>) {
    let mut cluster = Cluster::start_restartable(&[]);
    let root = data_root().to_str().unwrap().to_string();
    for _ in 0..workers {
        cluster.add_worker_with(&["--data-root", &root]);
    }
    cluster.wait_workers(workers);
    let overrides = [
        "model.filters=4",
        "task.queries=2",
        "meta.meta_batch=6",
        "meta.chunk_tasks=2",
        "meta.steps=60",
        "eval.every=10",
        "eval.tasks=20",
        "eval.final_tasks=20",
        "eval.chunk_tasks=5",
    ];
    let id = cluster
        .submit(&config("omniglot_5w1s_maml.toml"), &overrides)
        .unwrap();
    cluster.finish_with_restart(&id, restart_at);
    let metrics = common::without_timings(cluster.metrics(&id));
    (common::final_parameters(&cluster, &id), metrics)
}

#[test]
fn a_conv4_experiment_is_bit_identical_on_one_and_two_workers_and_after_a_restart() {
    let (one, one_metrics) = conv4_run(1, None);
    let (two, two_metrics) = conv4_run(2, None);
    assert_eq!(
        one_metrics, two_metrics,
        "every loss and accuracy is identical"
    );
    assert!(
        one == two,
        "final.safetensors differs between 1 and 2 workers"
    );
    // Killed past its checkpoint at step 20 and resumed from it, with the episodes sampled
    // from the manifest kept with the experiment.
    let (resumed, resumed_metrics) = conv4_run(1, Some(25));
    assert_eq!(
        one_metrics, resumed_metrics,
        "the steps after the checkpoint were done again, once"
    );
    assert!(
        one == resumed,
        "final.safetensors differs after a coordinator restart"
    );
}

/// A copy of the dataset with one image fewer: another version, with another fingerprint.
fn modified_copy() -> PathBuf {
    let root = tempfile::tempdir().unwrap().keep();
    let copy = root.join("omniglot");
    let status = std::process::Command::new("cp")
        .arg("-r")
        .arg(data_root().join("omniglot"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let alphabet = std::fs::read_dir(copy.join("images_background"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let character = std::fs::read_dir(alphabet)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let image = std::fs::read_dir(character)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(image).unwrap();
    root
}

#[test]
fn bad_dataset_input_is_refused_clearly_and_the_coordinator_carries_on() {
    let mut cluster = Cluster::start(&["--worker-timeout-ms", "1500", "--heartbeat-ms", "200"]);
    let spec = config("omniglot_5w1s_maml.toml");
    let e = cluster.submit(&spec, &[]).unwrap_err();
    assert!(
        e.contains("task.dataset: no worker has reported a dataset named `omniglot`; no worker has reported any dataset yet"),
        "{e}"
    );

    let root = data_root().to_str().unwrap().to_string();
    cluster.add_worker_with(&["--data-root", &root]);
    let workers = cluster.wait_workers(1);
    let fingerprint = workers[0]["datasets"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let unknown_version = format!(
        "no worker has reported version abcd of dataset `omniglot` (versions seen: {fingerprint})"
    );
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec!["task.ways=400".into()], vec!["--set task.ways=400: 400 is out of range: the meta-training split of dataset `omniglot` has"]),
        (
            vec!["task.shots=10".into(), "task.queries=15".into()],
            vec!["--set task.queries=15: 15 is out of range: 10 shots + 15 queries = 25 images per class, but a class of the meta-training split of dataset `omniglot` has only 20"],
        ),
        (vec!["task.dataset=tiered".into()], vec!["no worker has reported a dataset named `tiered`; datasets known: omniglot"]),
        (vec!["task.dataset=../omniglot".into()], vec!["\"../omniglot\" is not a dataset name", "--data-root"]),
        (vec!["task.image_size=14".into()], vec!["task.image_size=14: 14 is out of range: conv4's four 2x2 max-pools need images of at least 16x16"]),
        (vec!["meta.algorithm=reptil".into()], vec!["unknown variant `reptil`", "`protonet`"]),
        (vec!["model.kind=resnet".into()], vec!["unknown variant `resnet`, expected `mlp` or `conv4`"]),
        (vec!["task.fingerprint=abcd".into()], vec![&unknown_version]),
    ];
    for (overrides, expected) in &cases {
        let overrides: Vec<&str> = overrides.iter().map(String::as_str).collect();
        let e = cluster.submit(&spec, &overrides).unwrap_err();
        for part in expected {
            assert!(e.contains(part), "{overrides:?} should say `{part}`:\n{e}");
        }
    }
    // In a file, the error points at the line.
    let text = std::fs::read_to_string(&spec)
        .unwrap()
        .replace("ways = 5", "ways = 400");
    let file = cluster.dir.path().join("wide.toml");
    std::fs::write(&file, &text).unwrap();
    let line = text.lines().position(|l| l == "ways = 400").unwrap() + 1;
    let e = cluster.submit(file.to_str().unwrap(), &[]).unwrap_err();
    assert!(
        e.contains(&format!(
            "wide.toml:{line}:1: task.ways: 400 is out of range"
        )),
        "{e}"
    );

    // A worker without the data and one with another version: neither is given the work.
    cluster.add_worker_with(&[]);
    let modified = modified_copy();
    cluster.add_worker_with(&["--data-root", modified.to_str().unwrap()]);
    cluster.wait_workers(3);
    let pin = format!("task.fingerprint={fingerprint}");
    let tiny = [
        "model.filters=8",
        "meta.meta_batch=4",
        "meta.chunk_tasks=1",
        "meta.steps=6",
        "eval.every=6",
        "eval.tasks=8",
        "eval.final_tasks=8",
        pin.as_str(),
    ];
    let ran = cluster.submit(&spec, &tiny).unwrap();
    cluster.wait_finished(&ran, Duration::from_secs(600));
    assert!(
        cluster
            .metrics(&ran)
            .iter()
            .all(|m| m["kind"] != "train" || m["workers"] == 1),
        "only the worker holding the experiment's version computed"
    );

    // Without that worker, nobody can: the next experiment fails and says why, per worker.
    cluster.workers[0].kill().unwrap();
    cluster.workers[0].wait().unwrap();
    let started = std::time::Instant::now();
    while cluster.workers().len() != 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the killed worker was not dropped"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let stuck = cluster.submit(&spec, &tiny).unwrap();
    let status = cluster.wait_for(&stuck, Duration::from_secs(120), |s| s["state"] == "failed");
    let error = status["error"].as_str().unwrap();
    assert!(
        error.contains("no registered worker can compute it"),
        "{error}"
    );
    assert!(
        error.contains("worker-1: has no dataset `omniglot` under its --data-root"),
        "{error}"
    );
    assert!(
        error.contains("worker-2: holds dataset `omniglot` at version")
            && error.contains(&format!("the experiment uses version {fingerprint}")),
        "{error}"
    );
    assert!(cluster.coordinator_alive());
    assert_eq!(
        cluster.status(&ran)["state"],
        "finished",
        "the earlier experiment is untouched"
    );
}
