//! The compute thread: one per worker, fed by a channel, so inner loops never block the async side.

use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use outerloop_proto::v1::{ChunkResult, ExperimentSetup, Parameters, WorkChunk};
use tch::Device;
use tokio::sync::oneshot;

use crate::algorithms::Path;
use crate::data::DataRoot;
use crate::engine::{failed_chunk, panic_message, refused_chunk, Engine, EngineError, Held};

/// A lease's worth of work, with whatever set-up and parameters it brought.
struct Job {
    setup: Option<ExperimentSetup>,
    params: Option<Parameters>,
    chunks: Vec<WorkChunk>,
    reply: oneshot::Sender<Vec<ChunkResult>>,
}

/// The async side's handle to the compute thread.
#[derive(Clone, Debug)]
pub struct ComputeThread {
    jobs: mpsc::Sender<Job>,
    /// What the engine holds after its last job (see [`Engine::held`]): what the next lease
    /// request tells the coordinator, so that it sends only what is missing.
    held: Arc<Mutex<Held>>,
    /// Experiments the coordinator said have ended: their chunks still queued here are
    /// skipped, and the engine drops their set-up before its next job.
    ended: Arc<Mutex<Ended>>,
    /// Held by the compute thread while it runs a job: whoever holds it knows that no
    /// libtorch call is under way, nor will one start.
    busy: Arc<Mutex<()>>,
}

impl ComputeThread {
    /// Starts the thread with libtorch limited to `threads` intra-op threads, reading datasets
    /// from `data`, caching experiments up to `cache_bytes` of parameters.
    pub fn spawn(
        device: Device,
        threads: usize,
        path: Path,
        data: Arc<DataRoot>,
        cache_bytes: usize,
    ) -> std::io::Result<ComputeThread> {
        crate::allocator::keep_freed_memory();
        let (jobs, receive) = mpsc::channel::<Job>();
        let busy = Arc::new(Mutex::new(()));
        let running = busy.clone();
        let held = Arc::new(Mutex::new(Vec::new()));
        let publish = held.clone();
        let ended = Arc::new(Mutex::new(Ended::default()));
        let ended_here = ended.clone();
        thread::Builder::new()
            .name("outerloop-compute".into())
            .spawn(move || {
                // 0 leaves libtorch's default (one thread per core).
                if threads > 0 {
                    tch::set_num_threads(threads as i32);
                }
                let mut engine = Engine::new(device, path, data).with_cache_bytes(cache_bytes);
                while let Some(job) = next_job(&receive) {
                    let _running = running.lock().unwrap_or_else(|e| e.into_inner());
                    let (forget, skip) = {
                        let mut ended = ended_here.lock().unwrap_or_else(|e| e.into_inner());
                        // A set-up for an ended experiment means it runs again (resumed).
                        if let Some(setup) = &job.setup {
                            ended.remove(&setup.experiment_id);
                        }
                        let forget = std::mem::take(&mut ended.to_forget);
                        let skip = job.chunks.iter().any(|c| ended.contains(&c.experiment_id));
                        (forget, skip)
                    };
                    for experiment in &forget {
                        engine.forget(experiment);
                    }
                    let results = if skip {
                        skip_ended(&job)
                    } else {
                        run_job(&mut engine, &job)
                    };
                    // Published before the results go: the request that follows them must
                    // say what the engine holds now.
                    *publish.lock().unwrap_or_else(|e| e.into_inner()) = engine.held();
                    let _ = job.reply.send(results);
                }
            })?;
        Ok(ComputeThread {
            jobs,
            busy,
            held,
            ended,
        })
    }

    /// Notes experiments that have ended: their chunks not yet computed are skipped (each
    /// comes back as failed; the coordinator has dropped its round already), and their
    /// set-ups leave the engine before its next job.
    pub fn end_experiments(&self, experiments: Vec<String>) {
        if experiments.is_empty() {
            return;
        }
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        for experiment in experiments {
            tracing::info!(%experiment, "experiment ended; its chunks here are skipped");
            ended.add(experiment);
        }
    }

    /// The experiments the engine holds, least recently used first, with the parameter
    /// version it holds for each (`None`: none yet).
    pub fn held(&self) -> Held {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits for the job under way, if any, and keeps the thread from starting another, for
    /// good: called before the process exits, whose teardown of libtorch's globals must not
    /// run beside a libtorch call (that crashed a worker told to stop mid-chunk).
    pub fn stop(&self) {
        std::mem::forget(self.busy.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Runs `chunks` after installing `setup` and `params` when given; results in chunk order.
    pub async fn run(
        &self,
        setup: Option<ExperimentSetup>,
        params: Option<Parameters>,
        chunks: Vec<WorkChunk>,
    ) -> Vec<ChunkResult> {
        let (reply, receive) = oneshot::channel();
        let ids: Vec<u64> = chunks.iter().map(|c| c.chunk_id).collect();
        let lost = |ids: Vec<u64>| fail_all(ids, "the compute thread has stopped");
        if self
            .jobs
            .send(Job {
                setup,
                params,
                chunks,
                reply,
            })
            .is_err()
        {
            return lost(ids);
        }
        receive.await.unwrap_or_else(|_| lost(ids))
    }
}

/// The experiments a worker was told have ended, the most recent [`Ended::KEPT`].
#[derive(Debug, Default)]
struct Ended {
    ids: std::collections::VecDeque<String>,
    /// Those the engine has not dropped yet.
    to_forget: Vec<String>,
}

impl Ended {
    const KEPT: usize = 64;

    fn add(&mut self, experiment: String) {
        if self.ids.contains(&experiment) {
            return;
        }
        if self.ids.len() >= Self::KEPT {
            self.ids.pop_front();
        }
        self.ids.push_back(experiment.clone());
        self.to_forget.push(experiment);
    }

    fn remove(&mut self, experiment: &str) {
        self.ids.retain(|e| e != experiment);
        self.to_forget.retain(|e| e != experiment);
    }

    fn contains(&self, experiment: &str) -> bool {
        self.ids.iter().any(|e| e == experiment)
    }
}

/// The results of a job whose experiment has ended: none is computed.
fn skip_ended(job: &Job) -> Vec<ChunkResult> {
    job.chunks
        .iter()
        .map(|c| {
            let why = format!("experiment {} has ended; not computed", c.experiment_id);
            failed_chunk(c.chunk_id, why)
        })
        .collect()
}

/// How long the compute thread keeps polling for the next job before it sleeps.
const POLL: Duration = Duration::from_micros(300);

/// The next job, or `None` once the async side has gone. In meta-training the next step's
/// work arrives a fraction of a millisecond after the results leave, and waking a sleeping
/// thread costs tens of microseconds on every step, so the thread first polls for a moment,
/// yielding its core to any other runnable thread (the coordinator may share the machine).
fn next_job(jobs: &mpsc::Receiver<Job>) -> Option<Job> {
    let until = Instant::now() + POLL;
    while Instant::now() < until {
        match jobs.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::TryRecvError::Empty) => thread::yield_now(),
            Err(mpsc::TryRecvError::Disconnected) => return None,
        }
    }
    jobs.recv().ok()
}

/// Runs a job; a panic anywhere in it (libtorch raises them, e.g. on CUDA out of memory)
/// becomes an error result for its chunks instead of ending the compute thread.
fn run_job(engine: &mut Engine, job: &Job) -> Vec<ChunkResult> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        install_and_run(engine, job)
    }));
    outcome.unwrap_or_else(|panic| fail_all(chunk_ids(job), &panic_message(panic)))
}

fn chunk_ids(job: &Job) -> Vec<u64> {
    job.chunks.iter().map(|c| c.chunk_id).collect()
}

/// The same error for every chunk.
fn fail_all(ids: Vec<u64>, error: &str) -> Vec<ChunkResult> {
    ids.into_iter()
        .map(|id| failed_chunk(id, error.to_string()))
        .collect()
}

fn install_and_run(engine: &mut Engine, job: &Job) -> Vec<ChunkResult> {
    // A lease's chunks are all of one experiment, the one its set-up and parameters are for.
    let experiment = job.chunks.first().map_or("", |c| c.experiment_id.as_str());
    let installed = job
        .setup
        .as_ref()
        .map_or(Ok(()), |setup| engine.set_experiment(setup))
        .and_then(|()| {
            job.params
                .as_ref()
                .map_or(Ok(()), |p| engine.set_parameters(experiment, p))
        });
    match installed {
        Ok(()) => job
            .chunks
            .iter()
            .map(|chunk| engine.run_chunk(chunk))
            .collect(),
        Err(EngineError::Refused(refusal)) => chunk_ids(job)
            .into_iter()
            .map(|id| refused_chunk(id, refusal.clone()))
            .collect(),
        Err(e) => fail_all(chunk_ids(job), &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outerloop_proto::f32s_to_bytes;
    use outerloop_proto::model::{Mlp, Model};
    use outerloop_proto::v1::{task_descriptor, Phase, SinusoidTask, TaskDescriptor};
    use outerloop_proto::work::{self, Family, Setup, SinusoidFamily};

    fn job(input: u32) -> (ExperimentSetup, Parameters, Vec<WorkChunk>) {
        let mlp = Mlp {
            input: input as usize,
            hidden: vec![4],
            output: 1,
        };
        let count = mlp.layout().param_count();
        let setup: ExperimentSetup = (&Setup {
            experiment_id: format!("exp-{input}"),
            family: Family::Sinusoid(SinusoidFamily {
                shots: 4,
                queries: 4,
                x_range: [-5.0, 5.0],
            }),
            model: Model::Mlp(mlp),
            algorithm: work::Algorithm::Maml,
            inner_lr: 0.01,
        })
            .into();
        let params = Parameters {
            version: 0,
            values: f32s_to_bytes(&vec![0.1; count]),
        };
        let task = TaskDescriptor {
            index: 0,
            data_seed: 1,
            task: Some(task_descriptor::Task::Sinusoid(SinusoidTask {
                amplitude: 1.0,
                phase: 0.0,
            })),
        };
        let chunk = WorkChunk {
            chunk_id: 11,
            experiment_id: setup.experiment_id.clone(),
            version: 0,
            phase: Phase::Train as i32,
            inner_steps: 1,
            tasks: vec![task],
        };
        (setup, params, vec![chunk])
    }

    /// A compute thread on the CPU, with one libtorch thread and no data.
    fn spawn() -> ComputeThread {
        ComputeThread::spawn(
            Device::Cpu,
            1,
            Path::Batched,
            Arc::new(DataRoot::empty()),
            crate::engine::DEFAULT_CACHE_BYTES,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn an_ended_experiments_chunks_are_skipped_and_its_set_up_dropped() {
        let compute = spawn();
        let (setup, params, chunks) = job(1);
        let results = compute.run(Some(setup), Some(params), chunks.clone()).await;
        assert_eq!(results[0].error, "");
        assert_eq!(compute.held(), [("exp-1".to_string(), Some(0))]);
        compute.end_experiments(vec!["exp-1".into()]);
        let skipped = compute.run(None, None, chunks).await;
        assert!(skipped[0].error.contains("exp-1 has ended"), "{skipped:?}");
        assert!(compute.held().is_empty(), "its set-up left the engine");
        // Its set-up coming again means it runs again (a paused experiment resumed).
        let (setup, params, chunks) = job(1);
        let again = compute.run(Some(setup), Some(params), chunks).await;
        assert_eq!(again[0].error, "");
        // Another experiment runs as before.
        let (setup, params, chunks) = job(1);
        let other = WorkChunk {
            experiment_id: "exp-2".into(),
            ..chunks[0].clone()
        };
        let setup = ExperimentSetup {
            experiment_id: "exp-2".into(),
            ..setup
        };
        let results = compute.run(Some(setup), Some(params), vec![other]).await;
        assert_eq!(results[0].error, "");
    }

    #[tokio::test]
    async fn a_libtorch_error_fails_the_chunks_and_the_thread_lives_on() {
        let compute = spawn();
        // Sinusoid inputs are 1-wide; a 3-wide first layer makes libtorch raise a shape error.
        let (setup, params, chunks) = job(3);
        let results = compute.run(Some(setup), Some(params), chunks).await;
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].chunk_id, 11);
        assert!(!results[0].error.is_empty(), "a shape error is reported");

        let (setup, params, chunks) = job(1);
        let results = compute.run(Some(setup), Some(params), chunks).await;
        assert_eq!(results[0].error, "", "the thread still computes");
        assert_eq!(results[0].loss_after.len(), 1);
    }
}
