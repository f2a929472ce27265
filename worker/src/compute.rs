//! The compute thread: one per worker, fed by a channel, so inner loops never block the async side.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use outerloop_proto::v1::{ChunkResult, ExperimentSetup, Parameters, WorkChunk};
use tch::Device;
use tokio::sync::oneshot;

use crate::engine::Engine;
use crate::maml::Path;

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
}

impl ComputeThread {
    /// Starts the thread with libtorch limited to `threads` intra-op threads.
    pub fn spawn(device: Device, threads: usize, path: Path) -> std::io::Result<ComputeThread> {
        crate::allocator::keep_freed_memory();
        let (jobs, receive) = mpsc::channel::<Job>();
        thread::Builder::new()
            .name("outerloop-compute".into())
            .spawn(move || {
                // 0 leaves libtorch's default (one thread per core).
                if threads > 0 {
                    tch::set_num_threads(threads as i32);
                }
                let mut engine = Engine::new(device, path);
                while let Some(job) = next_job(&receive) {
                    let results = run_job(&mut engine, &job);
                    let _ = job.reply.send(results);
                }
            })?;
        Ok(ComputeThread { jobs })
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
        let lost = |ids: Vec<u64>| {
            ids.into_iter()
                .map(|chunk_id| ChunkResult {
                    chunk_id,
                    error: "the compute thread has stopped".into(),
                    ..Default::default()
                })
                .collect()
        };
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
    outcome.unwrap_or_else(|panic| {
        let message = crate::engine::panic_message(panic);
        job.chunks
            .iter()
            .map(|c| ChunkResult {
                chunk_id: c.chunk_id,
                error: message.clone(),
                ..Default::default()
            })
            .collect()
    })
}

fn install_and_run(engine: &mut Engine, job: &Job) -> Vec<ChunkResult> {
    let installed = job
        .setup
        .as_ref()
        .map_or(Ok(()), |setup| engine.set_experiment(setup))
        .and_then(|()| {
            job.params
                .as_ref()
                .map_or(Ok(()), |p| engine.set_parameters(p))
        });
    match installed {
        Ok(()) => job
            .chunks
            .iter()
            .map(|chunk| engine.run_chunk(chunk))
            .collect(),
        Err(e) => job
            .chunks
            .iter()
            .map(|c| ChunkResult {
                chunk_id: c.chunk_id,
                error: e.to_string(),
                ..Default::default()
            })
            .collect(),
    }
}
