//! Authentication end to end: a coordinator with tokens refuses every call without a token of the right role, and without tokens it will not listen beyond loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Cluster, BIN, SPEC};

const WORKER_TOKEN: &str = "w-3f9c2a7e51d84b60a1c7";
const USER_TOKEN: &str = "u-8b1e6d0f4a2c97e35d10";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr_of(args: &[&str], cluster: &Cluster) -> String {
    let out = cluster.cli(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn every_call_needs_a_token_of_its_role() {
    let files = tempfile::tempdir().unwrap();
    let tokens = write(
        files.path(),
        "tokens",
        &format!("# role token\nworker {WORKER_TOKEN}\nuser {USER_TOKEN}\n"),
    );
    let worker_token = write(files.path(), "worker.token", WORKER_TOKEN);
    let user_token = write(files.path(), "user.token", &format!("{USER_TOKEN}\n"));
    let wrong_token = write(files.path(), "wrong.token", "not-a-token-anyone-gave");
    let mut cluster = Cluster::start(&["--tokens", tokens.to_str().unwrap()]);

    // A user call without a token, with a worker's, and with a made-up one.
    let missing = stderr_of(&["workers"], &cluster);
    assert!(missing.contains("requires a user token"), "{missing}");
    let worker = stderr_of(
        &["workers", "--token-file", worker_token.to_str().unwrap()],
        &cluster,
    );
    assert!(
        worker.contains("a worker token cannot make this call"),
        "{worker}"
    );
    let wrong = stderr_of(
        &["workers", "--token-file", wrong_token.to_str().unwrap()],
        &cluster,
    );
    assert!(
        wrong.contains("not one this coordinator accepts"),
        "{wrong}"
    );
    let submitted = stderr_of(&["submit", SPEC], &cluster);
    assert!(submitted.contains("requires a user token"), "{submitted}");

    // A worker holding a user token is refused at registration and exits saying why.
    cluster.add_worker_with(&["--token-file", user_token.to_str().unwrap()]);
    assert!(!cluster.wait_worker_exit(0).success());
    let log = std::fs::read_to_string(cluster.dir.path().join("worker-0.log")).unwrap();
    assert!(log.contains("a user token cannot make this call"), "{log}");

    // With the right tokens everything works: the worker registers, the user's run finishes.
    cluster.cli_args = vec!["--token-file".into(), user_token.to_str().unwrap().into()];
    cluster.add_worker_with(&["--token-file", worker_token.to_str().unwrap()]);
    cluster.wait_workers(1);
    let id = cluster.submit(SPEC, &common::TINY).unwrap();
    cluster.wait_finished(&id, Duration::from_secs(300));
    // The token never shows in the coordinator's log.
    let logs = cluster.logs();
    assert!(!logs.contains(WORKER_TOKEN) && !logs.contains(USER_TOKEN));
}

#[test]
fn without_tokens_the_coordinator_listens_on_loopback_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["coordinator", "--listen", "0.0.0.0:0", "--state-dir"])
        .arg(dir.path().join("state"))
        .env_remove("OUTERLOOP_WORKER_TOKEN")
        .env_remove("OUTERLOOP_USER_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8(out.stderr).unwrap();
    assert!(
        error.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{error}"
    );
    // A tokens file that lacks a role is refused before anything listens.
    let tokens = write(dir.path(), "tokens", &format!("worker {WORKER_TOKEN}\n"));
    let out = Command::new(BIN)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--tokens"])
        .arg(&tokens)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let error = String::from_utf8(out.stderr).unwrap();
    assert!(error.contains("no user token"), "{error}");
}
