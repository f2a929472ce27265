//! `outerloop watch`: live progress of one experiment until it ends.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use outerloop_proto::v1::ExperimentStatus;

use crate::rpc::Coordinator;
use crate::status::eval_line;

const POLL: Duration = Duration::from_millis(250);
/// When output is not a terminal, progress is printed as lines at most this often.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// How long `watch` keeps retrying a coordinator that stopped answering (it may be restarting).
const PATIENCE: Duration = Duration::from_secs(60);

/// Follows `id` until it finishes (exit 0), fails (1), is cancelled (2) or pauses (4); exits 3
/// if the coordinator stays unreachable for a minute.
pub async fn watch(
    url: &str,
    token: Option<&str>,
    tls: &outerloop_proto::tls::ClientTls,
    id: &str,
) -> anyhow::Result<ExitCode> {
    let mut coordinator = Coordinator::connect(url, token, tls).await?;
    let live = std::io::stdout().is_terminal();
    let mut last_eval_step = None;
    let mut last_line = Instant::now() - LINE_EVERY;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let status = match coordinator.try_status(id).await {
            Ok(found) => {
                unreachable_since = None;
                found
                    .into_iter()
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("no experiment {id}"))?
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                anyhow::bail!("{}", status.message())
            }
            Err(status) => {
                let since = *unreachable_since.get_or_insert_with(|| {
                    clear_line(live);
                    println!(
                        "lost the coordinator ({}); retrying for up to {}s",
                        status.message(),
                        PATIENCE.as_secs()
                    );
                    Instant::now()
                });
                if since.elapsed() > PATIENCE {
                    println!("the coordinator stayed unreachable; giving up");
                    return Ok(ExitCode::from(3));
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Some(eval) = &status.last_eval {
            if last_eval_step != Some((eval.step, eval.r#final)) {
                last_eval_step = Some((eval.step, eval.r#final));
                let what = if eval.r#final {
                    "final evaluation"
                } else {
                    "evaluation"
                };
                clear_line(live);
                let loss = if crate::status::kind(&status) == "mtl" {
                    ""
                } else {
                    "post-adaptation loss "
                };
                println!("{what} at step {}: {loss}{}", eval.step, eval_line(eval));
            }
        }
        match status.state.as_str() {
            "finished" => {
                clear_line(live);
                println!(
                    "{}: finished {} steps in {:.1}s of training ({:.0} {}/s)",
                    status.id,
                    status.step,
                    status.train_seconds,
                    status.tasks_per_s,
                    crate::status::items(&status)
                );
                println!("results: {}", status.results_dir);
                return Ok(ExitCode::SUCCESS);
            }
            "failed" => {
                clear_line(live);
                println!(
                    "{}: failed at step {}: {}",
                    status.id, status.step, status.error
                );
                return Ok(ExitCode::from(1));
            }
            "cancelled" => {
                clear_line(live);
                println!("{}: cancelled at step {}", status.id, status.step);
                return Ok(ExitCode::from(2));
            }
            "paused" => {
                clear_line(live);
                println!(
                    "{}: paused at step {}: {}",
                    status.id, status.step, status.error
                );
                return Ok(ExitCode::from(4));
            }
            _ => {}
        }
        if live {
            print!("\r{}\x1b[K", progress(&status));
            std::io::stdout().flush()?;
        } else if last_line.elapsed() >= LINE_EVERY {
            println!("{}", progress(&status));
            last_line = Instant::now();
        }
        tokio::time::sleep(POLL).await;
    }
}

fn clear_line(live: bool) {
    if live {
        print!("\r\x1b[K");
    }
}

/// `step 1200/3000 (40%)  meta-loss 0.4120  21345 tasks/s  ETA 0:45  workers 2` (multi-task:
/// `loss` and `rows/s`)
fn progress(s: &ExperimentStatus) -> String {
    if s.state == "queued" {
        return format!("{}: queued (workers connected: {})", s.id, s.workers);
    }
    if s.step == 0 || s.train_seconds <= 0.0 {
        return format!(
            "step {}/{}: starting (workers connected: {})",
            s.step, s.steps, s.workers
        );
    }
    let left = s.train_seconds / s.step as f64 * (s.steps - s.step) as f64;
    let eta = format!("{}:{:02}", left as u64 / 60, left as u64 % 60);
    let accuracy = s
        .meta_accuracy
        .map(|a| format!("  accuracy {:.1}%", 100.0 * a))
        .unwrap_or_default();
    let (loss, items) = match crate::status::kind(s) {
        "mtl" => ("loss", "rows"),
        _ => ("meta-loss", "tasks"),
    };
    format!(
        "step {}/{} ({:.0}%)  {loss} {:.4}{accuracy}  {:.0} {items}/s  ETA {eta}  workers {}",
        s.step,
        s.steps,
        100.0 * s.step as f64 / s.steps.max(1) as f64,
        s.meta_loss,
        s.tasks_per_s,
        s.workers
    )
}
