//! Renders experiment status for people (a table) and for programs (JSON lines).

use outerloop_proto::v1::{EvalSummary, ExperimentStatus};
use serde_json::{json, Value};

/// One experiment as the JSON object `outerloop status --json` prints.
pub fn to_json(e: &ExperimentStatus) -> Value {
    let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    json!({
        "id": e.id,
        "name": e.name,
        "state": e.state,
        "step": e.step,
        "steps": e.steps,
        "tasks_per_s": e.tasks_per_s,
        "train_seconds": e.train_seconds,
        "meta_loss": finite(e.meta_loss),
        "last_eval": e.last_eval.as_ref().map(|v| json!({
            "step": v.step,
            "loss_mean": finite(v.loss_mean),
            "loss_ci95": finite(v.loss_ci95),
            "tasks": v.tasks,
            "loss_before_mean": finite(v.loss_before_mean),
            "final": v.r#final,
        })),
        "error": (!e.error.is_empty()).then_some(&e.error),
        "results_dir": e.results_dir,
        "workers": e.workers,
    })
}

/// `0.123 ± 0.004 on 1000 tasks`
pub fn eval_line(v: &EvalSummary) -> String {
    format!(
        "{:.4} ± {:.4} on {} tasks (before adaptation {:.3})",
        v.loss_mean, v.loss_ci95, v.tasks, v.loss_before_mean
    )
}

pub fn print(experiments: &[ExperimentStatus], json: bool) {
    if json {
        for e in experiments {
            println!("{}", to_json(e));
        }
        return;
    }
    if experiments.is_empty() {
        println!("no experiments");
        return;
    }
    println!(
        "{:<8} {:<20} {:<10} {:>15} {:>10} {:>10}  last evaluation (post-adaptation loss)",
        "ID", "NAME", "STATE", "STEP", "TASKS/S", "META-LOSS"
    );
    for e in experiments {
        let eval = e
            .last_eval
            .as_ref()
            .map(|v| format!("step {}: {}", v.step, eval_line(v)))
            .unwrap_or_default();
        // Before the first step there is no meta-loss yet.
        let meta_loss = if e.meta_loss.is_finite() {
            format!("{:.4}", e.meta_loss)
        } else {
            "-".into()
        };
        println!(
            "{:<8} {:<20} {:<10} {:>15} {:>10.0} {:>10}  {eval}",
            e.id,
            e.name,
            e.state,
            format!("{}/{}", e.step, e.steps),
            e.tasks_per_s,
            meta_loss
        );
        if !e.error.is_empty() {
            println!("         error: {}", e.error);
        }
    }
}
