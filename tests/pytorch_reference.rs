//! The worker's conv4 MAML meta-gradients against PyTorch's, computed the usual way (a per-task loop, `autograd.grad(create_graph=True)`) by the benchmark's own reference code.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use outerloop_proto::model::Conv4 as Conv4Layout;
use outerloop_worker::algorithms::{Algorithm, Context, Maml, Order, Path as ComputePath};
use outerloop_worker::data::TaskBatch;
use outerloop_worker::models::{Conv4, Model};
use outerloop_worker::objective::Objective;
use tch::Tensor;

/// What tests/pytorch/maml_conv4_case.py writes: parameters, episodes and PyTorch's gradients.
fn pytorch_case(dir: &Path, inner_steps: usize) -> Option<HashMap<String, Tensor>> {
    // `make test` points OUTERLOOP_PYTHON at the torch environment it installs.
    let Ok(python) = std::env::var("OUTERLOOP_PYTHON") else {
        eprintln!("OUTERLOOP_PYTHON unset: not comparing against PyTorch");
        return None;
    };
    let out = dir.join(format!("case-{inner_steps}.safetensors"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/pytorch/maml_conv4_case.py"
    );
    let status = Command::new(python)
        .arg(script)
        .arg(&out)
        .arg(inner_steps.to_string())
        .status()
        .expect("run python");
    assert!(status.success(), "{script} failed");
    Some(
        Tensor::read_safetensors(&out)
            .unwrap()
            .into_iter()
            .collect(),
    )
}

#[test]
fn conv4_maml_meta_gradients_match_pytorch_on_both_paths() {
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = Conv4Layout {
        channels: 1,
        image_size: 28,
        filters: 16,
        output: 5,
    }
    .layout()
    .slots
    .iter()
    .map(|s| s.name.clone())
    .collect();
    // One inner step runs the explicit first-step backward; two add an autograd step.
    for inner_steps in [1, 2] {
        let Some(case) = pytorch_case(dir.path(), inner_steps) else {
            return;
        };
        let theta: Vec<Tensor> = names
            .iter()
            .map(|n| case[n].copy().set_requires_grad(true))
            .collect();
        let batch = TaskBatch {
            support_x: case["xs"].shallow_clone(),
            support_y: case["ys"].shallow_clone(),
            query_x: case["xq"].shallow_clone(),
            query_y: case["yq"].shallow_clone(),
        };
        for (order, prefix) in [(Order::Second, "second"), (Order::First, "first")] {
            let reference: Vec<&Tensor> = names
                .iter()
                .map(|n| &case[&format!("{prefix}.{n}")])
                .collect();
            // Gradients that are zero in exact arithmetic (convolution biases, which batch
            // norm cancels) are float noise on both sides: a small share of the largest
            // gradient is allowed on top of the relative error.
            let scale = reference
                .iter()
                .map(|r| r.abs().max().double_value(&[]))
                .fold(0.0, f64::max);
            for path in [ComputePath::Batched, ComputePath::PerTask] {
                let cx = Context {
                    model: &Conv4 as &dyn Model,
                    objective: Objective::CrossEntropy,
                    inner_steps,
                    inner_lr: 0.4,
                    path,
                };
                let ours = Maml { order }
                    .run(&cx, &theta, &batch, true)
                    .grad_sum
                    .expect("a training step has a gradient");
                for ((name, g), r) in names.iter().zip(&ours).zip(&reference) {
                    let err = (g - *r).abs().max().double_value(&[]);
                    let own = r.abs().max().double_value(&[]);
                    assert!(
                        err <= 1e-4 * own + 1e-5 * scale,
                        "{prefix}-order MAML, {inner_steps} inner steps, {path:?} path, {name}: \
                         max difference {err:.3e} from PyTorch's (its largest value {own:.3e})"
                    );
                }
            }
        }
    }
}
