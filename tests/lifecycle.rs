//! Experiments queue past the running limit, can be cancelled, and survive a coordinator killed mid-run, again and again.

mod common;

use std::time::{Duration, Instant};

use common::{final_parameters, resumed_step, train_steps, Cluster, SPEC};

#[test]
fn experiments_past_the_running_limit_queue_and_a_cancelled_one_stops() {
    let mut cluster = Cluster::start(&["--max-running", "1"]);
    cluster.add_worker();
    let long = cluster
        .submit(SPEC, &["meta.steps=1000000", "eval.every=100000"])
        .unwrap();
    let short = cluster
        .submit(
            SPEC,
            &[
                "meta.steps=20",
                "eval.every=10",
                "eval.tasks=20",
                "eval.final_tasks=20",
            ],
        )
        .unwrap();
    cluster.wait_for(&long, Duration::from_secs(60), |s| {
        s["state"] == "running" && s["step"].as_u64() > Some(10)
    });
    assert_eq!(
        cluster.status(&short)["state"],
        "queued",
        "with --max-running 1, one experiment runs at a time"
    );

    let cancel = cluster.cli(&["cancel", &long]);
    assert!(cancel.status.success());
    let watch = cluster.cli(&["watch", &long]);
    assert_eq!(
        watch.status.code(),
        Some(2),
        "watch exits 2 for a cancelled experiment"
    );
    assert!(String::from_utf8(watch.stdout)
        .unwrap()
        .contains("cancelled at step"));
    let stopped_at = cluster.status(&long)["step"].as_u64().unwrap();
    assert!(stopped_at < 1_000_000);

    cluster.wait_finished(&short, Duration::from_secs(60));
    assert_eq!(
        cluster.status(&long)["step"].as_u64(),
        Some(stopped_at),
        "nothing ran after the cancel"
    );
    assert!(!cluster
        .experiment_dir(&long)
        .join("final.safetensors")
        .exists());
}

#[test]
fn a_coordinator_killed_mid_run_resumes_from_its_checkpoint_with_the_same_result() {
    let overrides = [
        "meta.steps=3000",
        "meta.chunk_tasks=5",
        "eval.every=500",
        "eval.tasks=100",
        "eval.final_tasks=200",
    ];
    let mut cluster = Cluster::start_restartable(&[]);
    cluster.add_worker();
    let id = cluster.submit(SPEC, &overrides).unwrap();
    cluster.wait_for(&id, Duration::from_secs(60), |s| {
        s["step"].as_u64() >= Some(1200)
    });

    cluster.restart_coordinator(); // SIGKILL, then a new process on the same state
    cluster.wait_finished(&id, Duration::from_secs(120));
    let resumed_at = resumed_step(&cluster.coordinator_log());
    assert!(
        resumed_at >= 1000 && resumed_at.is_multiple_of(500),
        "resumed at {resumed_at}"
    );
    // Steps done after the checkpoint and lost with the coordinator are done again, once.
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=3000).collect::<Vec<_>>()
    );
    let worker_log = std::fs::read_to_string(cluster.dir.path().join("worker-0.log")).unwrap();
    assert!(
        worker_log.matches("registered").count() >= 2,
        "the worker registered again:\n{worker_log}"
    );

    // Parameters and optimizer state were restored exactly: same bits as an undisturbed run.
    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, &overrides).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(120));
    assert!(final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id));
}

#[test]
fn a_coordinator_killed_again_and_again_while_it_writes_ends_with_the_same_result() {
    let overrides = [
        "meta.steps=1500",
        "meta.chunk_tasks=5",
        "eval.every=50",
        "eval.tasks=25",
        "eval.final_tasks=50",
    ];
    // A second, shorter experiment runs beside it: it ends during the kills, and what it
    // finished must never be touched again.
    let short = [
        "seed=2",
        "meta.steps=400",
        "meta.chunk_tasks=5",
        "eval.every=100",
        "eval.tasks=25",
        "eval.final_tasks=50",
    ];
    let mut cluster = Cluster::start_restartable(&[]);
    cluster.add_worker();
    let id = cluster.submit(SPEC, &overrides).unwrap();
    let beside = cluster.submit(SPEC, &short).unwrap();
    let mut finished_beside: Option<(Vec<u8>, std::time::SystemTime)> = None;
    let mut last_kill = 0;
    for kill in 0..6 {
        if kill % 2 == 0 {
            // Just as an evaluation is logged: its metrics and checkpoint are being written.
            let started = Instant::now();
            while !cluster.coordinator_log().contains("evaluated") {
                assert!(
                    started.elapsed() < Duration::from_secs(120),
                    "{}",
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            // Past the next checkpoint, so that the run moves on whatever the other kills hit.
            last_kill += 60;
            cluster.wait_for(&id, Duration::from_secs(120), |s| {
                s["state"] != "running" || s["step"].as_u64() >= Some(last_kill)
            });
        }
        let status = cluster.status(&id);
        assert_eq!(
            status["state"], "running",
            "ended before kill {kill}: {status}"
        );
        last_kill = last_kill.max(status["step"].as_u64().unwrap());
        if finished_beside.is_none() && cluster.status(&beside)["state"] == "finished" {
            let path = cluster.experiment_dir(&beside).join("final.safetensors");
            let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
            finished_beside = Some((std::fs::read(&path).unwrap(), modified));
        }
        cluster.restart_coordinator();
    }
    let status = cluster.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(status["state"], "finished", "{status}");
    // No torn file stopped it, and every step is in `metrics.jsonl` once, in order.
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=1500).collect::<Vec<_>>()
    );
    let status = cluster.wait_finished(&beside, Duration::from_secs(300));
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(
        train_steps(&cluster.metrics(&beside)),
        (1..=400).collect::<Vec<_>>()
    );
    if let Some((bytes, modified)) = finished_beside {
        let path = cluster.experiment_dir(&beside).join("final.safetensors");
        assert!(
            std::fs::read(&path).unwrap() == bytes,
            "a finished result changed"
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            modified
        );
    }
    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, &overrides).unwrap();
    let reference_beside = reference.submit(SPEC, &short).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(300));
    reference.wait_finished(&reference_beside, Duration::from_secs(300));
    assert!(final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id));
    assert!(final_parameters(&cluster, &beside) == final_parameters(&reference, &reference_beside));
}

#[test]
fn checkpoints_every_so_many_steps_keep_the_newest_and_a_restart_resumes_from_the_last() {
    let overrides = [
        "meta.steps=300",
        "meta.chunk_tasks=5",
        // No evaluation before the end: every checkpoint is one of `checkpoint.every`.
        "eval.every=300",
        "eval.tasks=25",
        "eval.final_tasks=50",
        "checkpoint.every=40",
        "checkpoint.keep=3",
    ];
    let mut cluster = Cluster::start_restartable(&[]);
    cluster.add_worker();
    let id = cluster.submit(SPEC, &overrides).unwrap();
    let status = cluster.wait_for(&id, Duration::from_secs(120), |s| {
        s["state"] != "running" || s["step"].as_u64() >= Some(130)
    });
    assert_eq!(status["state"], "running", "{status}");
    cluster.restart_coordinator();
    cluster.wait_finished(&id, Duration::from_secs(300));
    let resumed_at = resumed_step(&cluster.coordinator_log());
    assert!(
        resumed_at >= 120 && resumed_at.is_multiple_of(40),
        "resumed at {resumed_at}"
    );
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=300).collect::<Vec<_>>()
    );
    let mut kept: Vec<String> = std::fs::read_dir(cluster.experiment_dir(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    kept.sort();
    assert_eq!(
        kept,
        [200, 240, 280].map(|s| format!("checkpoint-{s:010}.safetensors"))
    );

    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, &overrides).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(300));
    assert!(final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id));
}

#[test]
fn a_run_whose_results_cannot_be_written_pauses_and_resumes_to_the_same_result() {
    let overrides = [
        "meta.steps=300",
        "meta.chunk_tasks=5",
        "eval.every=100",
        "eval.tasks=50",
        "eval.final_tasks=100",
        "checkpoint.every=50",
    ];
    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, &overrides).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(120));

    let mut cluster = Cluster::start(&[]);
    let id = cluster.submit(SPEC, &overrides).unwrap();
    cluster.wait_for(&id, Duration::from_secs(30), |s| s["state"] == "running");
    // Before any worker computes a step, the checkpoint's temporary file is made impossible
    // to write (a directory in its place, which stops root as well): the first checkpoint,
    // at step 50, fails on every try.
    let blocker = cluster.experiment_dir(&id).join("checkpoint.tmp");
    std::fs::create_dir_all(blocker.join("in-the-way")).unwrap();
    cluster.add_worker();
    let paused = cluster.wait_for(&id, Duration::from_secs(120), |s| {
        s["state"] != "running" && s["state"] != "queued"
    });
    assert_eq!(paused["state"], "paused", "{paused}");
    let error = paused["error"].as_str().unwrap();
    assert!(
        error.contains("could not write results")
            && error.contains(&format!("outerloop resume {id}")),
        "{error}"
    );
    let watch = cluster.cli(&["watch", &id]);
    assert_eq!(
        watch.status.code(),
        Some(4),
        "watch exits 4 for a paused experiment"
    );

    std::fs::remove_dir_all(&blocker).unwrap();
    let resume = cluster.cli(&["resume", &id]);
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    cluster.wait_finished(&id, Duration::from_secs(120));
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=300).collect::<Vec<u64>>(),
        "every step once"
    );
    assert!(
        final_parameters(&cluster, &id) == final_parameters(&reference, &reference_id),
        "the paused and resumed run ends as the undisturbed one"
    );
    let again = cluster.cli(&["resume", &id]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("only a paused experiment can be resumed"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}
