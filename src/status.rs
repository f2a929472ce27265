//! Renders experiment status for people (a table) and for programs (JSON lines).

use outerloop_proto::v1::{DatasetLayout, EvalSummary, ExperimentStatus, WorkerSummary};
use serde_json::{json, Value};

/// `meta` or `mtl` (a coordinator from before multi-task learning says nothing: meta).
pub fn kind(e: &ExperimentStatus) -> &str {
    if e.kind.is_empty() {
        "meta"
    } else {
        &e.kind
    }
}

/// What an experiment's throughput counts: tasks (meta-learning) or rows (multi-task).
pub fn items(e: &ExperimentStatus) -> &'static str {
    if kind(e) == "mtl" {
        "rows"
    } else {
        "tasks"
    }
}

/// One experiment as the JSON object `outerloop status --json` prints.
pub fn to_json(e: &ExperimentStatus) -> Value {
    let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    json!({
        "id": e.id,
        "name": e.name,
        "kind": kind(e),
        "state": e.state,
        "step": e.step,
        "steps": e.steps,
        "tasks_per_s": e.tasks_per_s,
        "train_seconds": e.train_seconds,
        "meta_loss": finite(e.meta_loss),
        "meta_accuracy": e.meta_accuracy.map(finite),
        "last_eval": e.last_eval.as_ref().map(|v| {
            let mut eval = json!({
                "step": v.step,
                "loss_mean": finite(v.loss_mean),
                "loss_ci95": finite(v.loss_ci95),
                "tasks": v.tasks,
                "loss_before_mean": finite(v.loss_before_mean),
                "final": v.r#final,
            });
            // Classification only: accuracies are fractions in [0, 1].
            if let Some(mean) = v.accuracy_mean {
                eval["accuracy_mean"] = finite(mean);
                eval["accuracy_ci95"] = v.accuracy_ci95.map(finite).unwrap_or(Value::Null);
                eval["accuracy_before_mean"] =
                    v.accuracy_before_mean.map(finite).unwrap_or(Value::Null);
            }
            // Multi-task only: each task's scores, and Δm% when baselines were given.
            if !v.task_scores.is_empty() {
                eval["task_scores"] = v
                    .task_scores
                    .iter()
                    .map(|s| json!({"task": s.task, "loss": finite(s.loss), "metric": finite(s.metric)}))
                    .collect();
                eval["delta_m_percent"] = v.delta_m_percent.map(finite).unwrap_or(Value::Null);
            }
            eval
        }),
        "error": (!e.error.is_empty()).then_some(&e.error),
        "results_dir": e.results_dir,
        "workers": e.workers,
    })
}

/// `0.123 ± 0.004 on 1000 tasks`, and for classification `accuracy 97.10% ± 0.40%`.
pub fn eval_line(v: &EvalSummary) -> String {
    if !v.task_scores.is_empty() {
        let delta = v
            .delta_m_percent
            .map(|d| format!(", Δm {d:+.2}%"))
            .unwrap_or_default();
        return format!(
            "mean task loss {:.4} over {} tasks on {} rows{delta}",
            v.loss_mean,
            v.task_scores.len(),
            v.tasks
        );
    }
    let loss = format!(
        "{:.4} ± {:.4} on {} tasks (before adaptation {:.3})",
        v.loss_mean, v.loss_ci95, v.tasks, v.loss_before_mean
    );
    match v.accuracy_mean {
        Some(mean) => format!(
            "accuracy {:.2}% ± {:.2}%, loss {loss}",
            100.0 * mean,
            100.0 * v.accuracy_ci95.unwrap_or(f64::NAN)
        ),
        None => loss,
    }
}

/// `outerloop workers`: one line per worker and its datasets, or JSON lines.
pub fn print_workers(workers: &[WorkerSummary], json: bool) {
    let layout = |l: i32| match DatasetLayout::try_from(l) {
        Ok(DatasetLayout::Omniglot) => "omniglot",
        Ok(DatasetLayout::Folders) => "folders",
        Ok(DatasetLayout::Table) => "table",
        _ => "?",
    };
    if json {
        for w in workers {
            let datasets: Vec<Value> = w
                .datasets
                .iter()
                .map(|d| {
                    json!({"name": d.name, "layout": layout(d.layout), "fingerprint": d.fingerprint,
                           "classes": d.classes, "images": d.images, "rows": d.rows, "columns": d.columns})
                })
                .collect();
            println!(
                "{}",
                json!({"number": w.number, "name": w.name, "device": w.device,
                       "threads": w.threads, "datasets": datasets,
                       "refused_results": w.refused_results})
            );
        }
        return;
    }
    if workers.is_empty() {
        println!("no workers registered");
        return;
    }
    for w in workers {
        let refused = match w.refused_results {
            0 => String::new(),
            n => format!(", {n} results refused"),
        };
        println!("{} ({}, {} threads{refused})", w.name, w.device, w.threads);
        for d in &w.datasets {
            let size = if d.layout == DatasetLayout::Table as i32 {
                format!("{} rows, {} columns", d.rows, d.columns)
            } else {
                format!("{} classes, {} images", d.classes, d.images)
            };
            println!(
                "  {} ({} layout, {size}, fingerprint {})",
                d.name,
                layout(d.layout),
                d.fingerprint
            );
        }
    }
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
        "{:<8} {:<20} {:<10} {:>15} {:>14} {:>10}  last evaluation",
        "ID", "NAME", "STATE", "STEP", "THROUGHPUT", "LOSS"
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
            "{:<8} {:<20} {:<10} {:>15} {:>14} {:>10}  {eval}",
            e.id,
            e.name,
            e.state,
            format!("{}/{}", e.step, e.steps),
            format!("{:.0} {}/s", e.tasks_per_s, items(e)),
            meta_loss
        );
        if !e.error.is_empty() {
            println!("         error: {}", e.error);
        }
    }
}
