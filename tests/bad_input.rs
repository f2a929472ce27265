//! Bad specs, overrides and ids get clear errors and leave the coordinator and its experiments intact.

mod common;

use std::time::Duration;

use common::{Cluster, SPEC};

fn variant(cluster: &Cluster, name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(SPEC).unwrap();
    assert!(text.contains(from), "the spec has `{from}`");
    let path = cluster.dir.path().join(name);
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    let good = cluster
        .submit(
            SPEC,
            &[
                "meta.steps=50",
                "eval.every=25",
                "eval.tasks=50",
                "eval.final_tasks=50",
            ],
        )
        .unwrap();
    cluster.wait_finished(&good, Duration::from_secs(60));

    let cases: Vec<(String, Vec<&str>, Vec<&str>)> = vec![
        (
            variant(&cluster, "syntax.toml", "shots = 10", "shots = = 10"),
            vec![],
            vec!["syntax.toml:9:9: extra `=`", "9 | shots = = 10"],
        ),
        (
            variant(
                &cluster,
                "unknown.toml",
                "meta_batch = 25",
                "meta_batchh = 25",
            ),
            vec![],
            vec![
                "unknown.toml:21:1",
                "unknown field `meta_batchh`",
                "expected one of",
            ],
        ),
        (
            variant(&cluster, "zero.toml", "meta_batch = 25", "meta_batch = 0"),
            vec![],
            vec![
                "zero.toml:21:1",
                "meta.meta_batch",
                "0 is out of range: must be at least 1",
            ],
        ),
        (
            variant(&cluster, "lr.toml", "inner_lr = 0.01", "inner_lr = -0.01"),
            vec![],
            vec![
                "lr.toml:23:1",
                "meta.inner_lr: -0.01",
                "must be a finite number > 0",
            ],
        ),
        (
            variant(&cluster, "hidden.toml", "hidden = [40, 40]", "hidden = []"),
            vec![],
            vec![
                "hidden.toml:16:1",
                "model.hidden: []",
                "at least one hidden layer",
            ],
        ),
        (
            variant(
                &cluster,
                "algo.toml",
                "algorithm = \"maml\"",
                "algorithm = \"mamml\"",
            ),
            vec![],
            vec!["algo.toml:19:13", "`maml`", "`fomaml`"],
        ),
        (
            SPEC.to_string(),
            vec!["meta.stepz=3"],
            vec![
                "--set meta.stepz=3",
                "unknown field `stepz`",
                "expected one of",
            ],
        ),
        (
            SPEC.to_string(),
            vec!["meta.meta_batch=0"],
            vec!["--set meta.meta_batch=0", "must be at least 1"],
        ),
        (
            SPEC.to_string(),
            vec!["meta.steps"],
            vec!["--set meta.steps", "expected key.path=value"],
        ),
    ];
    for (spec, overrides, expected) in &cases {
        let err = cluster.submit(spec, overrides).expect_err("refused");
        for part in expected {
            assert!(
                err.contains(part),
                "error for {spec} {overrides:?} should contain `{part}`:\n{err}"
            );
        }
    }

    let out = cluster.cli(&["status", "exp-42", "--json"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("no experiment with id `exp-42`; known ids: exp-1"),
        "{err}"
    );
    let out = cluster.cli(&["cancel", "nope"]);
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no experiment with id `nope`"));
    let missing = cluster.submit("/nonexistent/spec.toml", &[]).unwrap_err();
    assert!(
        missing.contains("cannot read /nonexistent/spec.toml"),
        "{missing}"
    );

    // The coordinator is still up, with exactly the one accepted experiment, untouched.
    assert!(cluster.coordinator_alive());
    let status = cluster.status(&good);
    assert_eq!(
        (status["state"].as_str(), status["step"].as_u64()),
        (Some("finished"), Some(50))
    );
    let all = cluster.cli(&["status", "--json"]);
    assert_eq!(String::from_utf8(all.stdout).unwrap().lines().count(), 1);
    assert_eq!(
        std::fs::read_dir(cluster.state_dir().join("experiments"))
            .unwrap()
            .count(),
        1
    );
    let next = cluster
        .submit(
            SPEC,
            &[
                "meta.steps=10",
                "eval.every=10",
                "eval.tasks=10",
                "eval.final_tasks=10",
            ],
        )
        .unwrap();
    assert_eq!(next, "exp-2");
    cluster.wait_finished(&next, Duration::from_secs(60));
}

#[test]
fn an_unreachable_coordinator_is_named() {
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--coordinator", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("cannot reach the coordinator at http://127.0.0.1:9"),
        "{err}"
    );
}
