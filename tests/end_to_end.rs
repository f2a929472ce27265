//! Coordinator and two worker processes on loopback learn the sinusoid family with MAML.

mod common;

use std::time::Duration;

use common::{train_steps, Cluster, SPEC};

#[test]
fn maml_on_two_workers_learns_the_sinusoid_family() {
    let mut cluster = Cluster::start(&[]);
    cluster.add_worker();
    cluster.add_worker();
    let id = cluster
        .submit(
            SPEC,
            &[
                "meta.steps=800",
                "meta.chunk_tasks=5",
                "eval.every=400",
                "eval.tasks=300",
                "eval.final_tasks=1000",
            ],
        )
        .unwrap();

    // `watch` follows the run and exits 0 when it finishes.
    let watch = cluster.cli(&["watch", &id]);
    assert!(
        watch.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&watch.stdout),
        cluster.logs()
    );
    let watched = String::from_utf8(watch.stdout).unwrap();
    assert!(
        watched.contains("final evaluation at step 800"),
        "{watched}"
    );

    let status = cluster.wait_finished(&id, Duration::from_secs(60));
    assert_eq!(status["step"], 800);
    assert_eq!(status["steps"], 800);
    assert!(status["tasks_per_s"].as_f64().unwrap() > 0.0);
    let last = &status["last_eval"];
    assert_eq!(last["tasks"], 1000);
    assert_eq!(last["final"], true);

    let metrics = cluster.metrics(&id);
    assert_eq!(
        train_steps(&metrics),
        (1..=800).collect::<Vec<_>>(),
        "every step recorded once, in order"
    );
    let evals: Vec<&serde_json::Value> = metrics.iter().filter(|m| m["kind"] == "eval").collect();
    assert_eq!(
        evals
            .iter()
            .map(|e| e["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [0, 400, 800]
    );
    let at_start = evals[0]["loss_mean"].as_f64().unwrap();
    let at_end = evals[2]["loss_mean"].as_f64().unwrap();
    // Step 0 is an unadapted-to-the-family network (MSE about 3 to 4); 800 steps of MAML
    // bring the post-adaptation MSE on the same held-out tasks down by more than half.
    assert!(
        at_end < 0.55 * at_start,
        "post-adaptation MSE went from {at_start} to {at_end}"
    );
    let final_eval = last["loss_mean"].as_f64().unwrap();
    assert!(final_eval < 0.55 * at_start && last["loss_ci95"].as_f64().unwrap() < 0.2 * final_eval);

    // Both workers took part.
    assert!(
        metrics
            .iter()
            .any(|m| m["kind"] == "train" && m["workers"] == 2),
        "work was shared"
    );

    // The results directory holds the resolved spec and PyTorch-loadable parameters.
    let dir = cluster.experiment_dir(&id);
    let spec = std::fs::read_to_string(dir.join("spec.toml")).unwrap();
    assert!(
        spec.contains("steps = 800") && spec.contains("chunk_tasks = 5"),
        "{spec}"
    );
    let bytes = common::final_parameters(&cluster, &id);
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = tensors.names();
    names.sort();
    assert_eq!(
        names,
        ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    );
    assert_eq!(tensors.tensor("2.weight").unwrap().shape(), [40, 40]);

    // And PyTorch loads them into the matching nn.Sequential, strictly. `make test` points
    // OUTERLOOP_PYTHON at the torch environment it installs; with a user's own LIBTORCH there
    // may be no Python torch at all.
    let Ok(python) = std::env::var("OUTERLOOP_PYTHON") else {
        eprintln!("OUTERLOOP_PYTHON unset: not checking that PyTorch loads final.safetensors");
        return;
    };
    let check = r#"
import sys, torch
from safetensors.torch import load_file
net = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(), torch.nn.Linear(40, 1))
net.load_state_dict(load_file(sys.argv[1]), strict=True)
print(float(net(torch.zeros(1, 1))))
"#;
    let out = common::succeed(std::process::Command::new(python).args([
        "-c",
        check,
        dir.join("final.safetensors").to_str().unwrap(),
    ]));
    let value: f64 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert!(value.is_finite());
}
