//! `outerloop demo`: a coordinator and workers on loopback, one experiment at demo length, then stop.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

use crate::rpc::Coordinator;

/// The main benchmark spec, embedded so that the demo runs from anywhere.
const SINUSOID_MAML: &str = include_str!("../configs/sinusoid_maml.toml");
/// Demo length: long enough for MAML to learn the family well, short enough for a 2-core laptop
/// (under a minute). Chunks of 13 tasks give both demo workers a share of every meta-batch.
const DEMO_OVERRIDES: &[&str] = &[
    "meta.steps=20000",
    "meta.chunk_tasks=13",
    "eval.every=2000",
    "eval.tasks=1000",
    "eval.final_tasks=5000",
];

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Worker processes to start.
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Spec to run instead of the embedded configs/sinusoid_maml.toml (as written: the demo's
    /// shortening applies to the embedded spec only).
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Further overrides, applied after the demo's own (e.g. --set meta.steps=2000).
    #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
    overrides: Vec<String>,
    /// Where the coordinator stores experiments and the processes' logs.
    #[arg(long, default_value = "outerloop-demo")]
    state_dir: PathBuf,
    /// The workers' --data-root, for specs on image datasets.
    #[arg(long, value_name = "DIR")]
    data_root: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (spec_text, spec_name) = match &args.spec {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            SINUSOID_MAML.to_string(),
            "configs/sinusoid_maml.toml".to_string(),
        ),
    };
    // The demo's state directory is its own: an earlier demo's experiments (an interrupted one
    // would be resumed first) are cleared so that this run starts alone.
    let previous = args.state_dir.join("experiments");
    if previous.exists() {
        std::fs::remove_dir_all(&previous)
            .with_context(|| format!("cannot clear {}", previous.display()))?;
        println!(
            "cleared the previous demo's results in {}",
            previous.display()
        );
    }
    let logs = args.state_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let exe = std::env::current_exe()?;
    let port_file = args.state_dir.join("coordinator.addr");
    let _ = std::fs::remove_file(&port_file);

    // Children are killed when dropped, so every exit path below stops what the demo started.
    let mut children: Vec<Child> = Vec::new();
    children.push(spawn(&exe, &logs.join("coordinator.log"), |c| {
        c.args(["coordinator", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&args.state_dir)
            .arg("--port-file")
            .arg(&port_file)
    })?);
    let addr = wait_for_file(&port_file, &mut children[0]).await?;
    let url = format!("http://{addr}");
    println!(
        "coordinator listening on {addr} (logs in {})",
        logs.display()
    );
    for i in 0..args.workers {
        let log = logs.join(format!("worker-{i}.log"));
        children.push(spawn(&exe, &log, |c| {
            c.args([
                "worker",
                "--coordinator",
                &url,
                "--device",
                "auto",
                "--threads",
                "1",
                "--name",
            ])
            .arg(format!("demo-worker-{i}"));
            if let Some(root) = &args.data_root {
                c.arg("--data-root").arg(root);
            }
            c
        })?);
    }
    let mut coordinator = Coordinator::connect(&url, None, &Default::default()).await?;
    // Specs on a dataset are checked against what workers report when they register.
    let started = Instant::now();
    while coordinator.workers().await?.len() < args.workers as usize {
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "the workers did not register within 120 s; see their logs in {}",
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("started {} worker processes", args.workers);

    // The demo length applies to the embedded sinusoid spec; a spec of the user's runs as
    // given, with the user's own overrides.
    let demo_length = if args.spec.is_none() {
        DEMO_OVERRIDES
    } else {
        &[]
    };
    let overrides: Vec<String> = demo_length
        .iter()
        .map(|s| s.to_string())
        .chain(args.overrides)
        .collect();
    let id = coordinator
        .submit(&spec_text, &spec_name, overrides.clone())
        .await?;
    println!(
        "submitted {spec_name} as {id} with --set {}",
        overrides.join(" --set ")
    );

    let code = crate::watch::watch(&url, None, &Default::default(), &id).await?;
    if let Some(status) = coordinator.status(&id).await?.into_iter().next() {
        if let Some(eval) = status.last_eval.filter(|e| e.r#final) {
            println!();
            match (eval.accuracy_mean, eval.accuracy_ci95) {
                (Some(mean), Some(ci95)) => println!(
                    "post-adaptation accuracy on {} held-out episodes: {:.2}% ± {:.2}% (95% CI)",
                    eval.tasks,
                    100.0 * mean,
                    100.0 * ci95
                ),
                _ => {
                    println!(
                        "post-adaptation MSE on {} held-out tasks: {:.4} ± {:.4} (95% CI)",
                        eval.tasks, eval.loss_mean, eval.loss_ci95
                    );
                    println!("before adaptation: {:.4}", eval.loss_before_mean);
                }
            }
            println!(
                "results written to {}: spec.toml, metrics.jsonl, final.safetensors",
                status.results_dir
            );
        }
    }
    for child in &mut children {
        terminate(child).await;
    }
    println!("stopped the coordinator and {} workers", args.workers);
    Ok(code)
}

fn spawn(
    exe: &Path,
    log: &Path,
    configure: impl FnOnce(&mut Command) -> &mut Command,
) -> anyhow::Result<Child> {
    let log_file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(exe);
    configure(&mut command)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true);
    command
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))
}

/// Waits for the coordinator to write its bound address.
async fn wait_for_file(path: &Path, coordinator: &mut Child) -> anyhow::Result<String> {
    let started = Instant::now();
    loop {
        if let Ok(addr) = std::fs::read_to_string(path) {
            return Ok(addr.trim().to_string());
        }
        if let Some(status) = coordinator.try_wait()? {
            bail!("the coordinator exited ({status}) before listening; see its log");
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("the coordinator did not start listening within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, then SIGKILL if the process has not exited within a few seconds.
async fn terminate(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
