//! Multi-task learning on a table end to end: a generated CSV under the workers' --data-root, a real coordinator and workers on loopback, the shipped table spec cut small.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{config, Cluster, BIN};
use serde_json::Value;

/// Writes the dataset `NAME` that `outerloop dataset GENERATOR [OPTIONS]` makes (seed 3)
/// under a fresh data root in `dir`; returns the root.
fn generated(dir: &Path, generator: &[&str], name: &str, rows: u32) -> PathBuf {
    let root = dir.join("data");
    let out = root.join(name);
    let rows = rows.to_string();
    let mut args = vec!["dataset"];
    args.extend(generator);
    args.extend([
        "--out",
        out.to_str().unwrap(),
        "--rows",
        &rows,
        "--seed",
        "3",
    ]);
    common::succeed(Command::new(BIN).args(args));
    root
}

/// The generated table `shop` under a fresh data root; returns the root.
fn data_root(dir: &Path, rows: u32) -> PathBuf {
    generated(dir, &["table"], "shop", rows)
}

const SHORT: &[&str] = &[
    "model.hidden=[32, 32]",
    "train.steps=160",
    "train.batch=128",
    "train.chunk_rows=32",
    "eval.every=80",
];

/// Asserts every task's held-out loss ended below `factor` times where it started.
fn assert_losses_fell(first: &[(String, f64, f64)], last: &[(String, f64, f64)], factor: f64) {
    for (before, after) in first.iter().zip(last) {
        assert!(
            after.1 < factor * before.1,
            "{}: held-out loss {} at the start, {} at the end",
            after.0,
            before.1,
            after.1
        );
    }
}

fn scores(line: &Value) -> Vec<(String, f64, f64)> {
    line["task_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["task"].as_str().unwrap().to_string(),
                s["loss"].as_f64().unwrap(),
                s["metric"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn regression_classification_and_multi_label_tasks_train_together_on_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let root = data_root(dir.path(), 4000);
    let mut cluster = Cluster::start(&[]);
    for _ in 0..2 {
        cluster.add_worker_with(&["--data-root", root.to_str().unwrap()]);
    }
    let workers = cluster.wait_workers(2);
    let table = &workers[0]["datasets"][0];
    assert_eq!(
        (
            &table["name"],
            &table["layout"],
            &table["rows"],
            &table["columns"]
        ),
        (&"shop".into(), &"table".into(), &4000.into(), &15.into()),
        "{table}"
    );

    let id = cluster.submit(&config("mtl_table.toml"), SHORT).unwrap();
    let status = cluster.wait_finished(&id, Duration::from_secs(600));
    let metrics = cluster.metrics(&id);
    let evals: Vec<&Value> = metrics.iter().filter(|m| m["kind"] == "eval").collect();
    let finals: Vec<&Value> = metrics
        .iter()
        .filter(|m| m["kind"] == "final_eval")
        .collect();
    assert_eq!(evals.len(), 3, "steps 0, 80 and 160");
    let (first, last) = (scores(evals[0]), scores(finals[0]));
    let names: Vec<&str> = last.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["price", "segment", "tags"]);
    assert_losses_fell(&first, &last, 0.7);
    // Chance is a third for the segment (3 classes) and about a half per tag; the latent the
    // targets share is learnable, so both must be clearly above it.
    assert!(last[1].2 > 0.6, "segment accuracy {}", last[1].2);
    assert!(last[2].2 > 0.7, "tag accuracy {}", last[2].2);
    // The whole validation and test splits are scored (the spec leaves eval.rows out).
    let rows = |line: &Value| line["tasks"].as_u64().unwrap();
    assert!((300..500).contains(&rows(evals[0])), "{}", evals[0]);
    assert!((300..500).contains(&rows(finals[0])), "{}", finals[0]);
    assert_ne!(rows(evals[0]), rows(finals[0]));
    assert_eq!(status["last_eval"]["task_scores"][1]["task"], "segment");
    // The stored spec pins the table's version and lists what the table decided.
    let stored = std::fs::read_to_string(cluster.experiment_dir(&id).join("spec.toml")).unwrap();
    let fingerprint = table["fingerprint"].as_str().unwrap();
    assert!(
        stored.contains(&format!("fingerprint = \"{fingerprint}\"")),
        "{stored}"
    );
    assert!(stored.contains("\"region\""), "{stored}");
}

#[test]
fn specs_that_do_not_fit_the_table_are_refused_naming_the_field_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = data_root(dir.path(), 200);
    // A table with its column names and no rows: the worker skips it, and says why.
    std::fs::create_dir_all(root.join("warehouse")).unwrap();
    std::fs::write(root.join("warehouse/data.csv"), "x0,x1,price\n").unwrap();
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker_with(&["--data-root", root.to_str().unwrap()]);
    cluster.wait_workers(1);
    let spec = config("mtl_table.toml");
    let cases: [(&[&str], &[&str]); 8] = [
        (
            &["data.tasks[0].target=\"prize\""],
            &["data.tasks[0].target", "no column `prize`", "x0, x1"],
        ),
        (
            &["data.tasks[1].outputs=2"],
            &["data.tasks[1].outputs", "needs a head of 3 outputs, not 2"],
        ),
        (
            &["data.tasks[2].targets=[]"],
            &["data.tasks[2].targets", "a task with no target has no data"],
        ),
        (
            &[
                "data.tasks[0].target=\"segment\"",
                "data.tasks[0].name=\"p\"",
            ],
            &["column `segment` holds text; mean squared error needs numbers"],
        ),
        (
            &["data.tasks[0].target=\"region\""],
            &["data.features", "`region` is a target or the split column"],
        ),
        (
            &["data.dataset=\"warehouse\""],
            &[
                "data.dataset",
                "no worker has reported a dataset named `warehouse`",
                "could not read its warehouse/",
                "only column names",
            ],
        ),
        (
            &["data.dataset=\"../shop\""],
            &["a spec never names a path"],
        ),
        (&["weighting.method=\"sum\""], &["weighting", "pcgrad"]),
    ];
    for (overrides, expected) in cases {
        let error = cluster.submit(&spec, overrides).unwrap_err();
        for e in expected {
            assert!(error.contains(e), "{overrides:?}: {error}");
        }
    }
    assert!(cluster.coordinator_alive());
    let listed = cluster.cli(&["status", "--json"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).trim().is_empty(),
        "a refused spec leaves no experiment behind"
    );

    // A worker whose copy differs refuses the work; the one holding the pinned version does it.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("shop")).unwrap();
    let csv = std::fs::read_to_string(root.join("shop/data.csv")).unwrap();
    std::fs::write(
        other.join("shop/data.csv"),
        csv.replacen("north", "south", 1),
    )
    .unwrap();
    cluster.add_worker_with(&["--data-root", other.to_str().unwrap()]);
    let workers = cluster.wait_workers(2);
    let held_by = |name: &str| {
        let worker = workers.iter().find(|w| w["name"] == name).unwrap();
        worker["datasets"][0]["fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let fingerprint = held_by("worker-0");
    assert_ne!(held_by("worker-1"), fingerprint);
    let pin = format!("data.fingerprint=\"{fingerprint}\"");
    let tiny = [
        "model.hidden=[8]",
        "train.steps=4",
        "train.batch=64",
        "eval.every=4",
        pin.as_str(),
    ];
    let id = cluster.submit(&spec, &tiny).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(300));
    assert!(
        cluster
            .metrics(&id)
            .iter()
            .all(|m| m["kind"] != "train" || m["workers"] == 1),
        "only the worker holding the experiment's version computed"
    );

    // Without a pin, the submitter is told that the workers disagree, which version was
    // taken and how to pin one; the id alone goes to stdout.
    let mut args = vec!["submit", spec.as_str()];
    for o in &tiny[..4] {
        args.extend(["--set", o]);
    }
    let out = cluster.cli(&args);
    assert!(out.status.success());
    let (id, said) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(
        id.trim().starts_with("exp-") && !id.contains("note"),
        "{id}"
    );
    assert!(
        said.contains("note: workers hold 2 versions of dataset `shop`")
            && said.contains("held by 1 of 2 workers")
            && said.contains("data.fingerprint"),
        "{said}"
    );
    cluster.cli(&["cancel", id.trim()]);
}

/// The shipped conv4 spec cut small, on `workers` workers: its metrics without timings, its
/// final parameters, and the final evaluation's scores against step 0's.
fn conv4_run(root: &Path, workers: usize) -> (Vec<Value>, Vec<u8>) {
    let mut cluster = Cluster::start(&[]);
    for _ in 0..workers {
        cluster.add_worker_with(&["--data-root", root.to_str().unwrap()]);
    }
    cluster.wait_workers(workers);
    let short = ["model.filters=16", "train.steps=240", "eval.every=120"];
    let id = cluster
        .submit(&config("mtl_shapes_conv4.toml"), &short)
        .unwrap();
    cluster.wait_finished(&id, Duration::from_secs(600));
    (
        common::without_timings(cluster.metrics(&id)),
        common::final_parameters(&cluster, &id),
    )
}

#[test]
fn conv4_shared_layers_learn_every_task_from_pixel_columns_identically_on_one_and_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let root = generated(dir.path(), &["shapes"], "shapes", 2000);
    let (two, two_params) = conv4_run(&root, 2);
    let score_line = |kind: &str| two.iter().find(|m| m["kind"] == kind).unwrap();
    let (first, last) = (scores(score_line("eval")), scores(score_line("final_eval")));
    let names: Vec<&str> = last.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(names, ["shape", "size", "position"]);
    assert_losses_fell(&first, &last, 0.8);
    // Four shapes: chance is a quarter.
    assert!(last[0].2 > 0.4, "shape accuracy {}", last[0].2);
    let (one, one_params) = conv4_run(&root, 1);
    assert_eq!(
        one, two,
        "every loss and weight is identical on 1 and 2 workers"
    );
    assert!(
        one_params == two_params,
        "final.safetensors differs between 1 and 2 workers"
    );
}

#[test]
fn an_image_column_names_each_rows_picture_and_a_worker_missing_one_holds_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let root = generated(dir.path(), &["shapes", "--images"], "shape_files", 1000);
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker_with(&["--data-root", root.to_str().unwrap()]);
    cluster.wait_workers(1);
    let spec = config("mtl_shapes_images.toml");
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["data.image_column=\"size\""],
            &["data.image_column", "`size` is a target"],
        ),
        (
            &["data.image_column=\"photo\""],
            &["data.image_column", "no column `photo`"],
        ),
        (
            &["model.channels=2"],
            &["model.channels", "1 (grey) or 3 (RGB)"],
        ),
        (
            &["data.features=[\"x\"]"],
            &["data.features", "leave `features` out"],
        ),
    ];
    for (overrides, expected) in cases {
        let error = cluster.submit(&spec, overrides).unwrap_err();
        for e in expected {
            assert!(error.contains(e), "{overrides:?}: {error}");
        }
    }

    let short = ["model.filters=16", "train.steps=160", "eval.every=160"];
    let id = cluster.submit(&spec, &short).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(600));
    let metrics = cluster.metrics(&id);
    let line = |kind: &str| metrics.iter().find(|m| m["kind"] == kind).unwrap();
    let (first, last) = (scores(line("eval")), scores(line("final_eval")));
    assert_losses_fell(&first, &last, 0.9);

    // A copy that lacks one picture is another version of the dataset.
    let other = dir.path().join("other");
    common::succeed(Command::new("cp").args([
        "-r",
        root.to_str().unwrap(),
        other.to_str().unwrap(),
    ]));
    std::fs::remove_file(other.join("shape_files/images/00007.png")).unwrap();
    cluster.add_worker_with(&["--data-root", other.to_str().unwrap()]);
    let workers = cluster.wait_workers(2);
    let prints: std::collections::BTreeSet<&str> = workers
        .iter()
        .map(|w| w["datasets"][0]["fingerprint"].as_str().unwrap())
        .collect();
    assert_eq!(prints.len(), 2, "{workers:?}");
}
