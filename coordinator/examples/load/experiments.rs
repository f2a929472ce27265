//! The load itself: sinusoid MAML experiments submitted one after another until time is up, and the chunks the coordinator must have dispatched for them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use outerloop_coordinator::spec::Spec;
use outerloop_proto::v1::experiments_client::ExperimentsClient;
use outerloop_proto::v1::{ExperimentStatus, StatusRequest, SubmitRequest};
use tonic::transport::Channel;

/// The spec every experiment runs, cut into many small chunks by [`Shape`].
const SPEC_TEXT: &str = include_str!("../../../configs/sinusoid_maml.toml");
const SPEC_SOURCE: &str = "configs/sinusoid_maml.toml";

/// How often the driver looks at its experiments.
const POLL: Duration = Duration::from_millis(50);

/// How each outer step is cut.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub meta_batch: u32,
    pub chunk_tasks: u32,
}

impl Shape {
    /// The spec's overrides for an experiment of `steps` outer steps.
    fn overrides(&self, steps: u64) -> Vec<String> {
        vec![
            format!("meta.steps={steps}"),
            format!("meta.meta_batch={}", self.meta_batch),
            format!("meta.chunk_tasks={}", self.chunk_tasks),
        ]
    }

    /// The experiment of `steps` steps as the coordinator resolves it.
    pub fn spec(&self, steps: u64) -> Result<Spec, String> {
        Spec::parse(SPEC_TEXT, SPEC_SOURCE, &self.overrides(steps)).map_err(|e| e.to_string())
    }
}

/// Chunks in one outer step of `spec`.
pub fn chunks_per_step(spec: &Spec) -> u64 {
    (spec.meta.meta_batch as u64).div_ceil(spec.meta.chunk_tasks as u64)
}

/// Every chunk a finished run of `spec` dispatched: the evaluation before step 1, its steps,
/// an evaluation every `eval.every` steps, and the final evaluation (see runner/meta.rs).
fn chunks_of_run(spec: &Spec) -> u64 {
    let eval_chunk = spec.eval.chunk_tasks.unwrap_or(1) as u64;
    let evaluation = (spec.eval.tasks as u64).div_ceil(eval_chunk);
    let final_evaluation = (spec.eval.final_tasks as u64).div_ceil(eval_chunk);
    let steps = spec.meta.steps;
    steps * chunks_per_step(spec) + (1 + steps / spec.eval.every) * evaluation + final_evaluation
}

/// What the experiments of a run did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// From the first submission until the last experiment finished.
    pub window: Duration,
    pub experiments: u32,
    pub steps: u64,
    /// The chunks their rounds dispatched, every one of which a worker's result completed.
    pub chunks: u64,
    /// Whether every experiment finished at its last step (else `chunks` counts only those
    /// that did, and `problems` says what happened to the others).
    pub all_finished: bool,
    pub problems: Vec<String>,
}

/// An experiment submitted and not yet seen to end.
struct Submitted {
    id: String,
    spec: Spec,
}

/// Submits experiments for `seconds`, each sized to take a fraction of it, keeping one queued
/// behind the running one so that workers never wait between experiments; then waits for
/// them to end. Gives up on one that makes no progress for `stall`.
pub async fn drive(url: &str, shape: Shape, seconds: Duration, stall: Duration) -> Outcome {
    let mut outcome = Outcome {
        all_finished: true,
        ..Outcome::default()
    };
    let mut client = match ExperimentsClient::connect(url.to_string()).await {
        Ok(client) => client,
        Err(e) => {
            outcome.all_finished = false;
            outcome.problems.push(format!("experiments client: {e}"));
            return outcome;
        }
    };
    // Short experiments make the run end close to `seconds`; each one is still hundreds of
    // rounds at full speed, so the evaluations and set-up between them stay a small share.
    let target = (seconds / 8).clamp(Duration::from_millis(500), Duration::from_secs(4));
    let mut steps_next = 10;
    let start = Instant::now();
    let deadline = start + seconds;
    let mut open: VecDeque<Submitted> = VecDeque::new();
    let mut progress = (String::new(), u64::MAX, Instant::now());
    loop {
        while let Some(oldest) = open.front() {
            let status = match status(&mut client, &oldest.id).await {
                Ok(status) => status,
                Err(e) => {
                    outcome.problems.push(e);
                    outcome.all_finished = false;
                    break;
                }
            };
            if matches!(status.state.as_str(), "queued" | "running") {
                if (status.id.as_str(), status.step) != (progress.0.as_str(), progress.1) {
                    progress = (status.id.clone(), status.step, Instant::now());
                } else if progress.2.elapsed() > stall {
                    outcome.all_finished = false;
                    outcome.problems.push(format!(
                        "hang: experiment {} {} at step {} of {} for {} s",
                        status.id,
                        status.state,
                        status.step,
                        status.steps,
                        stall.as_secs()
                    ));
                    outcome.window = start.elapsed();
                    return outcome;
                }
                break;
            }
            let ended = open.pop_front().expect("looked at above");
            outcome.window = start.elapsed();
            match check_finished(&status, &ended.spec) {
                Ok(()) => {
                    outcome.experiments += 1;
                    outcome.steps += status.step;
                    outcome.chunks += chunks_of_run(&ended.spec);
                    let rate = outcome.steps as f64 / outcome.window.as_secs_f64();
                    steps_next = ((rate * target.as_secs_f64()) as u64).max(5);
                }
                Err(problem) => {
                    outcome.all_finished = false;
                    outcome.problems.push(problem);
                }
            }
        }
        let now = Instant::now();
        if (now >= deadline && open.is_empty()) || !outcome.problems.is_empty() {
            return outcome;
        }
        if now < deadline && open.len() < 2 {
            match submit(&mut client, shape, steps_next).await {
                Ok(submitted) => open.push_back(submitted),
                Err(e) => {
                    outcome.all_finished = false;
                    outcome.problems.push(e);
                    return outcome;
                }
            }
            continue;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn submit(
    client: &mut ExperimentsClient<Channel>,
    shape: Shape,
    steps: u64,
) -> Result<Submitted, String> {
    let spec = shape.spec(steps)?;
    let request = SubmitRequest {
        spec_toml: SPEC_TEXT.to_string(),
        overrides: shape.overrides(steps),
        source_name: SPEC_SOURCE.to_string(),
    };
    let reply = client
        .submit(request)
        .await
        .map_err(|e| format!("submit: {e}"))?;
    Ok(Submitted {
        id: reply.into_inner().id,
        spec,
    })
}

async fn status(
    client: &mut ExperimentsClient<Channel>,
    id: &str,
) -> Result<ExperimentStatus, String> {
    let reply = client
        .status(StatusRequest { id: id.to_string() })
        .await
        .map_err(|e| format!("status of {id}: {e}"))?;
    reply
        .into_inner()
        .experiments
        .into_iter()
        .next()
        .ok_or_else(|| format!("status of {id}: not listed"))
}

/// Whether an experiment that is no longer queued or running finished every step and its
/// final evaluation: only then did every one of its rounds complete.
fn check_finished(status: &ExperimentStatus, spec: &Spec) -> Result<(), String> {
    let final_evaluated = status.last_eval.as_ref().is_some_and(|e| e.r#final);
    if status.state == "finished" && status.step == spec.meta.steps && final_evaluated {
        return Ok(());
    }
    Err(format!(
        "experiment {} ended {} at step {} of {}{}{}",
        status.id,
        status.state,
        status.step,
        spec.meta.steps,
        if final_evaluated {
            ""
        } else {
            " without its final evaluation"
        },
        if status.error.is_empty() {
            String::new()
        } else {
            format!(": {}", status.error)
        }
    ))
}
