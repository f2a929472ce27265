//! Workers on hosts of their own: the coordinator and each worker in a network namespace, joined by veth links to a bridge, the links capped in the kernel, delayed and cut for real; results bit-identical to loopback.
//!
//! Needs root and iproute2 (as this project's machines have); elsewhere each test says why it
//! skips. Where the kernel has `tc netem`, it delays, jitters, drops and caps the links;
//! this project's machines lack its module, and there the kernel caps the links and a proxy
//! on each worker's host delays them (and no packet is lost).

mod common;

use std::path::Path;
use std::time::Duration;

use common::netns::Network;
use common::proxy::Link;
use common::{final_parameters, Cluster, SPEC, TINY};

const WORKER_TOKEN: &str = "w-5b0e8d13c4a97f26e0d1";
const USER_TOKEN: &str = "u-a3f61c07e2d948b5c1f4";

/// The namespaces' bridge, or `None` (and why, on stderr) where they cannot be made.
fn network_or_skip() -> Option<Network> {
    match Network::new() {
        Ok(network) => Some(network),
        Err(why) => {
            eprintln!("skipped: network namespaces cannot be made here: {why}");
            None
        }
    }
}

/// A coordinator on a host of its own (host 0) with tokens, since it listens beyond loopback,
/// and `workers` workers on hosts 1..=workers, each reaching it through a proxy with `link`
/// on its own host when there is one; waits until they are registered. Returns the proxies
/// too (they stop when dropped).
fn cluster_across(
    network: &mut Network,
    files: &Path,
    workers: usize,
    link: Option<Link>,
    extra: &[&str],
) -> (Cluster, Vec<common::netns::HostProxy>) {
    let tokens = files.join("tokens");
    std::fs::write(
        &tokens,
        format!("worker {WORKER_TOKEN}\nuser {USER_TOKEN}\n"),
    )
    .unwrap();
    let (user_token, worker_token) = (files.join("user.token"), files.join("worker.token"));
    std::fs::write(&user_token, USER_TOKEN).unwrap();
    std::fs::write(&worker_token, WORKER_TOKEN).unwrap();
    let (host, address) = network.add_host().unwrap();
    let mut args = vec!["--tokens", tokens.to_str().unwrap()];
    args.extend(extra);
    let mut cluster = Cluster::start_on(network.launcher(&host), &address, &args);
    cluster.cli_args = vec!["--token-file".into(), user_token.to_str().unwrap().into()];
    let mut proxies = Vec::new();
    for _ in 0..workers {
        let (host, _) = network.add_host().unwrap();
        let url = match link {
            Some(link) => {
                proxies.push(network.proxy(&host, &cluster.url, link));
                proxies.last().unwrap().url.clone()
            }
            None => cluster.url.clone(),
        };
        cluster.add_worker_on(
            &network.launcher(&host),
            &url,
            &["--token-file", worker_token.to_str().unwrap()],
        );
    }
    cluster.wait_workers(workers);
    (cluster, proxies)
}

/// Runs `overrides` of `SPEC` on `cluster` to its end; the final parameters and the training
/// steps per second.
fn run(cluster: &Cluster, overrides: &[&str]) -> (Vec<u8>, f64) {
    let id = cluster.submit(SPEC, overrides).unwrap();
    let status = cluster.wait_finished(&id, Duration::from_secs(300));
    let steps = status["step"].as_f64().unwrap();
    let seconds = status["train_seconds"].as_f64().unwrap();
    (final_parameters(cluster, &id), steps / seconds)
}

/// Runs `TINY` on two workers on hosts of their own whose links are `delay_ms` each way (up
/// to a quarter of it more, jitter) at 100 Mbit/s each way; with netem, 1% of the packets
/// are lost too. Returns the final parameters, the steps per second, and how the links were
/// shaped; `None` where namespaces cannot be made.
fn run_across(delay_ms: u64) -> Option<(Vec<u8>, f64, &'static str)> {
    let mut network = network_or_skip()?;
    let files = tempfile::tempdir().unwrap();
    let netem = network.has_netem();
    let proxied = Link {
        delay: Duration::from_millis(delay_ms),
        jitter: Duration::from_millis(delay_ms / 4),
        bytes_per_s: None,
    };
    let (cluster, _proxies) = cluster_across(
        &mut network,
        files.path(),
        2,
        (!netem).then_some(proxied),
        &[],
    );
    for worker in [1, 2] {
        if netem {
            let (delay, jitter) = (format!("{delay_ms}ms"), format!("{}ms", delay_ms / 4));
            let wan = ["delay", &delay, &jitter, "loss", "1%", "rate", "100mbit"];
            network.netem(worker, &wan).unwrap();
        } else {
            network.cap(worker, 100).unwrap();
        }
    }
    let (parameters, rate) = run(&cluster, &TINY);
    let shaping = if netem {
        "tc netem, 1% loss"
    } else {
        "kernel cap, proxy delays"
    };
    Some((parameters, rate, shaping))
}

#[test]
fn workers_on_hosts_of_their_own_over_slow_capped_links_give_the_loopback_result() {
    // Checked first, so that where namespaces cannot be made the loopback run is not wasted.
    if network_or_skip().is_none() {
        return;
    }
    let mut loopback = Cluster::start(&[]);
    loopback.add_worker();
    loopback.add_worker();
    loopback.wait_workers(2);
    let (local, local_rate) = run(&loopback, &TINY);
    // Machines in one region, then across a continent.
    for delay_ms in [20, 100] {
        let Some((across, rate, shaping)) = run_across(delay_ms) else {
            return;
        };
        eprintln!(
            "steps/s: loopback {local_rate:.1}, hosts of their own, {delay_ms} ms ± {} ms at \
             100 Mbit/s ({shaping}) {rate:.1}",
            delay_ms / 4
        );
        assert!(across == local, "a {delay_ms} ms link changed the result");
    }
}

#[test]
fn a_worker_whose_link_goes_down_past_its_timeout_is_replaced_then_rejoins() {
    let Some(mut network) = network_or_skip() else {
        return;
    };
    let files = tempfile::tempdir().unwrap();
    let (cluster, _) = cluster_across(
        &mut network,
        files.path(),
        2,
        None,
        &["--worker-timeout-ms", "1500", "--heartbeat-ms", "200"],
    );
    // Its bridge port goes down: its packets vanish, with no reset.
    common::a_cut_worker_is_replaced_then_rejoins(
        &cluster,
        || network.set_link(2, false),
        || network.set_link(2, true),
    );
}
