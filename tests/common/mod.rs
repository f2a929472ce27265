//! Test harness: real coordinator and worker processes on loopback, driven through the real CLI.

#![allow(dead_code)]

pub mod netns;
pub mod proxy;
pub mod report;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_outerloop");
pub const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/sinusoid_maml.toml");

/// `SPEC` cut to a run of seconds.
pub const TINY: [&str; 4] = [
    "meta.steps=20",
    "eval.every=20",
    "eval.tasks=50",
    "eval.final_tasks=50",
];

/// A spec of `configs/` by file name.
pub fn config(name: &str) -> String {
    format!("{}/configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A coordinator and its workers; every process is killed when the cluster is dropped.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub url: String,
    coordinator: Child,
    pub workers: Vec<Child>,
    coordinator_args: Vec<String>,
    /// Flags every CLI call carries (e.g. `--token-file FILE`).
    pub cli_args: Vec<String>,
    /// The proxy workers reach the coordinator through, when it may restart: a restarted
    /// coordinator listens on a port of its own choosing, and the proxy follows it there.
    front: Option<proxy::Proxy>,
    /// The command prefix the coordinator and the CLI run under (`ip netns exec HOST`, for a
    /// coordinator on a host of its own); empty on this machine's own network.
    launcher: Vec<String>,
}

/// `outerloop ARGS`, run under `launcher` (a command prefix; none when empty).
fn command(launcher: &[String]) -> Command {
    match launcher.split_first() {
        None => Command::new(BIN),
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(BIN);
            command
        }
    }
}

fn spawn(launcher: &[String], args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    command(launcher)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start outerloop")
}

impl Cluster {
    /// Starts a coordinator on a loopback port of its choosing with `extra` flags.
    pub fn start(extra: &[&str]) -> Cluster {
        Self::start_on(Vec::new(), "127.0.0.1", extra)
    }

    /// Starts a coordinator under `launcher` (on another host: `ip netns exec HOST`) listening
    /// on `address`, on a port of its choosing, with `extra` flags; the CLI runs there too.
    pub fn start_on(launcher: Vec<String>, address: &str, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut coordinator_args: Vec<String> = vec!["--listen".into(), format!("{address}:0")];
        coordinator_args.extend(extra.iter().map(|s| s.to_string()));
        let (coordinator, url) = Self::start_coordinator(dir.path(), &launcher, &coordinator_args);
        Cluster {
            dir,
            url,
            coordinator,
            workers: Vec::new(),
            coordinator_args,
            cli_args: Vec::new(),
            front: None,
            launcher,
        }
    }

    /// Starts a coordinator whose workers reach it through a proxy, so that they find it again
    /// after [`Cluster::restart_coordinator`] or [`Cluster::start_coordinator_again`].
    pub fn start_restartable(extra: &[&str]) -> Cluster {
        let mut cluster = Self::start(extra);
        cluster.front = Some(proxy::Proxy::start(&cluster.url, proxy::Link::default()));
        cluster
    }

    fn start_coordinator(dir: &Path, launcher: &[String], extra: &[String]) -> (Child, String) {
        let port_file = dir.join("coordinator.addr");
        let _ = std::fs::remove_file(&port_file);
        let state = dir.join("state");
        let mut args = vec!["coordinator", "--state-dir", state.to_str().unwrap()];
        args.extend(["--port-file", port_file.to_str().unwrap()]);
        args.extend(extra.iter().map(String::as_str));
        let mut child = spawn(launcher, &args, &dir.join("coordinator.log"));
        let started = Instant::now();
        loop {
            if let Ok(addr) = std::fs::read_to_string(&port_file) {
                return (child, format!("http://{}", addr.trim()));
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "coordinator exited early ({status}): {}",
                    std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "coordinator did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn add_worker(&mut self) {
        self.add_worker_with(&[]);
    }

    /// Starts a worker with `extra` flags (e.g. `--data-root DIR`); returns its name.
    pub fn add_worker_with(&mut self, extra: &[&str]) -> String {
        let url = self.front.as_ref().map_or(&self.url, |f| &f.url).clone();
        self.add_worker_via(&url, extra)
    }

    /// Starts a worker that reaches the coordinator at `url` (a proxy's); returns its name.
    pub fn add_worker_via(&mut self, url: &str, extra: &[&str]) -> String {
        self.add_worker_on(&[], url, extra)
    }

    /// Starts a worker under `launcher` (on another host: `ip netns exec HOST`) that reaches
    /// the coordinator at `url`; returns its name.
    pub fn add_worker_on(&mut self, launcher: &[String], url: &str, extra: &[&str]) -> String {
        let name = format!("worker-{}", self.workers.len());
        let log = self.dir.path().join(format!("{name}.log"));
        let mut args = vec![
            "worker",
            "--coordinator",
            url,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--name",
            &name,
        ];
        args.extend(extra);
        let child = spawn(launcher, &args, &log);
        self.workers.push(child);
        name
    }

    /// The registered workers, as `outerloop workers --json` lists them.
    pub fn workers(&self) -> Vec<Value> {
        let out = self.cli(&["workers", "--json"]);
        assert!(
            out.status.success(),
            "workers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `count` workers are registered.
    pub fn wait_workers(&self, count: usize) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let workers = self.workers();
            if workers.len() >= count {
                return workers;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{} of {count} workers registered\n{}",
                workers.len(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for experiment `id` to finish. With `restart_at`, the coordinator is first SIGKILLed
    /// once the run has passed that step and restarted, and the run must have resumed from its
    /// checkpoint (the step is chosen well before the end, so the run is still going).
    pub fn finish_with_restart(&mut self, id: &str, restart_at: Option<u64>) {
        if let Some(step) = restart_at {
            self.wait_for(id, Duration::from_secs(600), |s| {
                s["step"].as_u64() >= Some(step)
            });
            self.restart_coordinator();
        }
        self.wait_finished(id, Duration::from_secs(600));
        if restart_at.is_some() {
            let log = std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap();
            assert!(log.contains("resuming from the checkpoint"), "{log}");
        }
    }

    /// Sends SIGTERM to the coordinator and waits for it to exit; returns whether it exited 0.
    pub fn terminate_coordinator(&mut self) -> bool {
        terminate(&mut self.coordinator)
    }

    /// Sends SIGTERM to worker `index` and waits for it to exit; returns whether it exited 0.
    pub fn terminate_worker(&mut self, index: usize) -> bool {
        terminate(&mut self.workers[index])
    }

    /// Starts the coordinator again (after it exited) with the same flags and state directory.
    pub fn start_coordinator_again(&mut self) {
        let (child, url) =
            Self::start_coordinator(self.dir.path(), &self.launcher, &self.coordinator_args);
        self.coordinator = child;
        self.follow(url);
    }

    /// Points the CLI, and the workers' proxy if there is one, at the coordinator at `url`.
    fn follow(&mut self, url: String) {
        if let Some(front) = &self.front {
            front.retarget(&url);
        }
        self.url = url;
    }

    /// The coordinator's log since it last started.
    pub fn coordinator_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("coordinator.log")).unwrap_or_default()
    }

    /// SIGKILLs the coordinator and starts a new one with the same flags and state directory.
    pub fn restart_coordinator(&mut self) {
        self.coordinator.kill().unwrap();
        self.coordinator.wait().unwrap();
        let (child, url) =
            Self::start_coordinator(self.dir.path(), &self.launcher, &self.coordinator_args);
        self.coordinator = child;
        self.follow(url);
    }

    pub fn coordinator_alive(&mut self) -> bool {
        self.coordinator.try_wait().unwrap().is_none()
    }

    /// Runs `outerloop ARGS --coordinator URL` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        command(&self.launcher)
            .args(args)
            .args(["--coordinator", &self.url])
            .args(&self.cli_args)
            .output()
            .expect("run outerloop")
    }

    /// Submits `spec` with `overrides`; the id, or the error text.
    pub fn submit(&self, spec: &str, overrides: &[&str]) -> Result<String, String> {
        let mut args = vec!["submit", spec];
        for o in overrides {
            args.extend(["--set", o]);
        }
        let out = self.cli(&args);
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
        } else {
            Err(String::from_utf8(out.stderr).unwrap())
        }
    }

    pub fn status(&self, id: &str) -> Value {
        let out = self.cli(&["status", id, "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints one JSON object")
    }

    /// Polls until `pred(status)` holds; panics with the last status after `timeout`.
    pub fn wait_for(&self, id: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let status = self.status(id);
            if pred(&status) {
                return status;
            }
            assert!(
                started.elapsed() < timeout,
                "timed out waiting; last status {status}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `done` holds of the coordinator's log, or fails after `limit`.
    pub fn wait_log(&self, limit: Duration, what: &str, done: impl Fn(&str) -> bool) {
        let started = Instant::now();
        while !done(&self.coordinator_log()) {
            assert!(
                started.elapsed() < limit,
                "waited for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for worker `index` to exit (within two minutes) and returns how it exited.
    pub fn wait_worker_exit(&mut self, index: usize) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.workers[index].try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "worker {index} kept running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_finished(&self, id: &str, timeout: Duration) -> Value {
        let status = self.wait_for(id, timeout, |s| {
            matches!(
                s["state"].as_str(),
                Some("finished" | "failed" | "cancelled")
            )
        });
        assert_eq!(status["state"], "finished", "{status}\n{}", self.logs());
        status
    }

    pub fn experiment_dir(&self, id: &str) -> PathBuf {
        self.state_dir().join("experiments").join(id)
    }

    /// Every line of the experiment's metrics.jsonl.
    pub fn metrics(&self, id: &str) -> Vec<Value> {
        std::fs::read_to_string(self.experiment_dir(id).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// All process logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                out += &format!(
                    "--- {} (last lines)\n{}\n",
                    path.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        out
    }
}

/// Sends SIGTERM to `child` and waits (up to two minutes) for it to exit; whether it exited 0.
fn terminate(child: &mut Child) -> bool {
    succeed(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the process did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self
            .workers
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs `command` to completion and returns its standard output, failing the test with its
/// standard error if it failed.
pub fn succeed(command: &mut Command) -> Vec<u8> {
    let out = command.output().expect("run the command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Metrics lines without what differs between runs by design: timings and how many workers
/// shared a step.
pub fn without_timings(metrics: Vec<Value>) -> Vec<Value> {
    metrics
        .into_iter()
        .map(|mut m| {
            // Every timing is a `*_seconds` field; `workers` is how many answered.
            m.as_object_mut()
                .unwrap()
                .retain(|key, _| !key.ends_with("_seconds") && key != "workers");
            m
        })
        .collect()
}

/// The `step` of every meta-training line, in file order.
pub fn train_steps(metrics: &[Value]) -> Vec<u64> {
    metrics
        .iter()
        .filter(|m| m["kind"] == "train")
        .map(|m| m["step"].as_u64().unwrap())
        .collect()
}

/// The final parameters as raw bytes.
pub fn final_parameters(cluster: &Cluster, id: &str) -> Vec<u8> {
    std::fs::read(cluster.experiment_dir(id).join("final.safetensors")).unwrap()
}

/// The step a resumed run started from, as the coordinator's `log` says.
pub fn resumed_step(log: &str) -> u64 {
    log.lines()
        .find_map(|l| l.split("resuming from the checkpoint").nth(1))
        .and_then(|rest| rest.split("step=").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the coordinator did not resume from a checkpoint:\n{log}"))
}

/// The registration of a one-thread CPU worker named `name`, without datasets.
pub fn registration(name: &str) -> outerloop_proto::v1::RegisterRequest {
    outerloop_proto::v1::RegisterRequest {
        name: name.into(),
        device: "cpu".into(),
        threads: 1,
        datasets: Vec::new(),
        skipped: Vec::new(),
    }
}

/// Clients of the Workers and Results services, registered as a worker named `name`, with
/// its id: for tests that play a worker by hand.
pub async fn raw_worker(
    url: &str,
    name: &str,
) -> (
    outerloop_proto::v1::workers_client::WorkersClient<tonic::transport::Channel>,
    outerloop_proto::v1::results_client::ResultsClient<tonic::transport::Channel>,
    u64,
) {
    let channel = tonic::transport::Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = outerloop_proto::v1::workers_client::WorkersClient::new(channel.clone())
        .max_decoding_message_size(outerloop_proto::transport::MAX_MESSAGE_BYTES);
    let results = outerloop_proto::v1::results_client::ResultsClient::new(channel)
        .max_decoding_message_size(outerloop_proto::transport::MAX_MESSAGE_BYTES);
    let id = client
        .register(registration(name))
        .await
        .unwrap()
        .into_inner()
        .worker_id;
    (client, results, id)
}

/// Leases until a chunk comes, as worker `worker_id` (a test playing a worker by hand).
pub async fn lease_one<T>(
    client: &mut outerloop_proto::v1::workers_client::WorkersClient<T>,
    worker_id: u64,
) -> outerloop_proto::v1::WorkChunk
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    loop {
        let lease = client
            .lease(outerloop_proto::v1::LeaseRequest {
                worker_id,
                max_chunks: 1,
                wait_ms: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(chunk) = lease.chunks.into_iter().next() {
            return chunk;
        }
    }
}

/// `SPEC` long enough to cut a worker off mid-run, in chunks small enough that both workers
/// hold some.
pub const CUT_RUN: &[&str] = &[
    "meta.steps=600",
    "meta.chunk_tasks=5",
    "eval.every=300",
    "eval.tasks=50",
    "eval.final_tasks=50",
];

/// Runs `CUT_RUN` on `cluster` (two workers, the coordinator started with a short worker
/// timeout) and cuts the second worker's link with `cut` once both share steps, past its
/// timeout, then restores it with `restore`: the run goes on without it, it registers again,
/// every step is done once and the final parameters equal a one-worker run's.
pub fn a_cut_worker_is_replaced_then_rejoins(
    cluster: &Cluster,
    cut: impl FnOnce(),
    restore: impl FnOnce(),
) {
    let id = cluster.submit(SPEC, CUT_RUN).unwrap();
    // Cut once both workers share steps: the cut worker holds leases, or soon asks for one.
    let before = cluster.wait_for(&id, Duration::from_secs(120), |s| {
        s["step"].as_u64() >= Some(50) && s["workers"] == 2
    });
    cut();
    cluster.wait_log(
        Duration::from_secs(60),
        "the cut worker to be dropped",
        |log| log.contains("missed its heartbeats"),
    );
    // The run goes on without it: its chunks are redone by the other worker.
    let cut_step = before["step"].as_u64().unwrap();
    cluster.wait_for(&id, Duration::from_secs(120), |s| {
        s["step"].as_u64() >= Some(cut_step + 30) && s["workers"] == 1
    });
    restore();
    // It rejoins under a new registration (its old id's late traffic is refused).
    cluster.wait_log(
        Duration::from_secs(120),
        "the cut worker to register again",
        |log| log.matches("worker registered").count() >= 3,
    );
    let status = cluster.wait_finished(&id, Duration::from_secs(300));
    assert_eq!(status["state"], "finished", "{status}");
    assert_eq!(
        train_steps(&cluster.metrics(&id)),
        (1..=600).collect::<Vec<_>>()
    );

    let mut reference = Cluster::start(&[]);
    reference.add_worker();
    let reference_id = reference.submit(SPEC, CUT_RUN).unwrap();
    reference.wait_finished(&reference_id, Duration::from_secs(300));
    assert!(
        final_parameters(cluster, &id) == final_parameters(&reference, &reference_id),
        "a chunk was lost or counted twice"
    );
}
