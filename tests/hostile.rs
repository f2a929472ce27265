//! A worker that sends what it must not: results for chunks it was never leased, of the wrong size, with non-finite values. Each is refused at the edge, its chunk is computed again, and the run ends bit-identical to an undisturbed one.

mod common;

use std::time::Duration;

use common::{Cluster, SPEC};
use outerloop_proto::v1::{ChunkResult, CompleteRequest};

const SHORT: [&str; 5] = [
    "meta.steps=6",
    "meta.chunk_tasks=5",
    "eval.every=6",
    "eval.tasks=20",
    "eval.final_tasks=20",
];

/// Registers a worker of its own, takes a chunk of the running experiment's first round and
/// answers it with poison, twice; checks each answer is refused with INVALID_ARGUMENT.
async fn poison(url: String) {
    let (mut client, mut results, me) = common::raw_worker(&url, "hostile").await;
    let chunk = common::lease_one(&mut client, me).await;
    // The first round is the evaluation at step 0: every chunk answers a loss per task.
    let tasks = chunk.tasks.len();
    let answer = |chunk_id, losses: Vec<f32>| ChunkResult {
        chunk_id,
        loss_before: vec![1.0; losses.len()],
        loss_after: losses,
        ..Default::default()
    };
    let complete = |results: Vec<ChunkResult>, worker_id| CompleteRequest {
        worker_id,
        results,
        next: None,
    };
    // A chunk id nobody was leased, and an id that never registered: nothing counts.
    let stray = answer(chunk.chunk_id + 1000, vec![0.5; tasks]);
    let reply = results.complete(complete(vec![stray], me)).await.unwrap();
    assert_eq!(reply.into_inner().accepted, 0);
    let forged = answer(chunk.chunk_id, vec![0.5; tasks]);
    let reply = results
        .complete(complete(vec![forged], me + 777))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().accepted, 0);
    // Its own chunk, answered with a loss too few; leased again, with a NaN loss.
    let short = answer(chunk.chunk_id, vec![0.5; tasks - 1]);
    let refused = results
        .complete(complete(vec![short], me))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("losses for"), "{refused:?}");
    let again = common::lease_one(&mut client, me).await;
    assert_eq!(
        again.chunk_id, chunk.chunk_id,
        "the refused chunk is leased again"
    );
    let mut nan = vec![0.5; tasks];
    nan[tasks / 2] = f32::NAN;
    let refused = results
        .complete(complete(vec![answer(again.chunk_id, nan)], me))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("loss is not finite"),
        "{refused:?}"
    );
}

fn run(hostile: bool) -> Vec<u8> {
    let mut cluster = Cluster::start(&[]);
    let id = cluster.submit(SPEC, &SHORT).unwrap();
    if hostile {
        // Alone, the hostile worker is leased the first round's chunks before anyone else.
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(poison(cluster.url.clone()));
        // Both refusals are counted against it where people look.
        let workers = cluster.workers();
        let hostile = workers.iter().find(|w| w["name"] == "hostile").unwrap();
        assert_eq!(hostile["refused_results"], 2, "{workers:?}");
    }
    cluster.add_worker();
    cluster.wait_finished(&id, Duration::from_secs(300));
    common::final_parameters(&cluster, &id)
}

#[test]
fn poisoned_results_are_refused_and_the_run_ends_as_an_undisturbed_one() {
    let undisturbed = run(false);
    let attacked = run(true);
    assert!(
        attacked == undisturbed,
        "final.safetensors differs after refused results"
    );
}

#[test]
fn an_oversized_submission_is_refused_and_the_coordinator_keeps_serving() {
    let cluster = Cluster::start(&["--max-spec-bytes", "65536"]);
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(SPEC).unwrap();
    let padded = dir.path().join("padded.toml");
    std::fs::write(&padded, format!("{spec}\n# {}\n", "x".repeat(100_000))).unwrap();
    let error = cluster.submit(padded.to_str().unwrap(), &[]).unwrap_err();
    assert!(error.contains("65536"), "{error}");
    // The coordinator answers the next call, and a spec of normal size goes through.
    assert!(cluster.submit(SPEC, &SHORT).is_ok());
}

#[test]
fn a_worker_whose_registration_is_too_large_stops_and_names_the_flag() {
    let mut cluster = Cluster::start(&["--max-worker-request-bytes", "65536"]);
    // A table of 800 columns with long names: its manifest, sent with the registration, is
    // about 100 KB.
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("wide")).unwrap();
    let names: Vec<String> = (0..800)
        .map(|i| format!("column_{i}_{}", "w".repeat(100)))
        .collect();
    let row = vec!["1"; names.len()].join(",");
    std::fs::write(
        root.path().join("wide/data.csv"),
        format!("{}\n{row}\n{row}\n", names.join(",")),
    )
    .unwrap();
    cluster.add_worker_with(&["--data-root", root.path().to_str().unwrap()]);
    assert!(!cluster.wait_worker_exit(0).success());
    let log = std::fs::read_to_string(cluster.dir.path().join("worker-0.log")).unwrap();
    assert!(log.contains("--max-worker-request-bytes"), "{log}");
    // A worker with a small registration is welcome.
    cluster.add_worker();
    cluster.wait_workers(1);
}

#[test]
fn names_are_bounded_and_errors_on_long_lines_still_arrive() {
    let cluster = Cluster::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read_to_string(SPEC).unwrap();
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    // An error quoting a 40 KB line reaches the caller, cut short (the spec's error keeps the
    // ends of what it quotes; the reply bounds any message).
    let long_line = write(
        "long.toml",
        spec.replacen(
            "seed = ",
            &format!("seed = \"{}\"\n# ", "x".repeat(40_000)),
            1,
        ),
    );
    let error = cluster.submit(&long_line, &[]).unwrap_err();
    assert!(
        error.contains("long.toml:5:8: invalid type") && error.len() < 4096,
        "{}",
        &error[..error.len().min(300)]
    );
    // Names: bounded, printable, never echoed back.
    let huge = format!("name = \"{}\"", "n".repeat(5000));
    let named = write(
        "huge.toml",
        spec.replacen("name = ", &format!("{huge}\n# "), 1),
    );
    let error = cluster.submit(&named, &[]).unwrap_err();
    assert!(
        error.contains("is 5000 characters long; at most 128"),
        "{error}"
    );
    assert!(error.len() < 1000, "the name came back");
    let escape = write(
        "escape.toml",
        spec.replacen("name = ", "name = \"x\\u001b[2Jforged\"\n# ", 1),
    );
    let error = cluster.submit(&escape, &[]).unwrap_err();
    assert!(error.contains("U+001B"), "{error}");
    assert!(
        cluster.submit(SPEC, &SHORT).is_ok(),
        "the coordinator keeps serving"
    );
}
