//! Hosts of their own on one machine: network namespaces joined by veth pairs to a bridge, links that can be capped and cut, set up and torn down by the test (as root).
//!
//! Each host is a namespace with one veth end, addressed `10.231.0.N/24`; the other ends hang
//! on a bridge in a namespace of their own, so nothing of the machine's own network changes
//! and two sets can run at once. A link's bandwidth is capped by an HTB qdisc on both ends
//! (each shapes what leaves it); a cut takes the bridge's end down, so packets are dropped
//! with no reset and TCP sees a silent peer, as when a cable or a switch fails.
//! Where the kernel has `sch_netem`, `netem` shapes a link with latency, jitter, loss and a
//! rate; this project's machines lack the module, and there latency and jitter come from a
//! proxy (`common::proxy`) running on the worker's host, in front of its link, and no packet
//! is lost.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::proxy::{Link, Proxy};

/// Namespace sets made by this process, for unique names.
static SETS: AtomicUsize = AtomicUsize::new(0);

/// Set to make a test that cannot create namespaces fail rather than skip.
pub const REQUIRE: &str = "OUTERLOOP_REQUIRE_NETNS";

/// A proxy running on a host of its own; stopped there when dropped (its accept loop is woken
/// by a connection made inside the host's namespace, where it listens).
pub struct HostProxy {
    proxy: Option<Proxy>,
    namespace: File,
    pub url: String,
}

/// Runs `work` on a thread that has entered the network namespace `namespace`: the sockets it
/// makes, and the threads it starts (which inherit the namespace), all live there.
fn in_namespace<T: Send + 'static>(
    namespace: &File,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let namespace = namespace.try_clone().unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with a descriptor that outlives the call.
        let entered = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
        work()
    })
    .join()
    .unwrap()
}

impl Drop for HostProxy {
    fn drop(&mut self) {
        let proxy = self.proxy.take();
        in_namespace(&self.namespace, move || drop(proxy));
    }
}

/// A bridge and the hosts on it; every namespace is deleted when this is dropped.
pub struct Network {
    prefix: String,
    hosts: Vec<String>,
}

/// Runs `ip ARGS` (or `tc`), returning its error output when it fails.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Network {
    /// A bridge in a namespace of its own, or why namespaces cannot be made here (not root,
    /// no iproute2): callers skip then, saying so, unless [`REQUIRE`] is set. Any other
    /// failure is a failure.
    pub fn new() -> Result<Network, String> {
        let set = SETS.fetch_add(1, Ordering::Relaxed);
        // The process id and the time: a set left by a killed run of a process with the same
        // id does not collide.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let network = Network {
            prefix: format!("ol{}x{set}x{:x}", std::process::id(), nanos % 0xfff),
            hosts: Vec::new(),
        };
        let bridge = network.bridge_namespace();
        if let Err(why) = run("ip", &["netns", "add", &bridge]) {
            let unavailable = why.starts_with("cannot run")
                || why.contains("Operation not permitted")
                || why.contains("Permission denied");
            if unavailable && std::env::var_os(REQUIRE).is_none() {
                return Err(why);
            }
            panic!("cannot create a network namespace: {why}");
        }
        run(
            "ip",
            &["-n", &bridge, "link", "add", "br0", "type", "bridge"],
        )
        .unwrap();
        run("ip", &["-n", &bridge, "link", "set", "br0", "up"]).unwrap();
        Ok(network)
    }

    fn bridge_namespace(&self) -> String {
        format!("{}-br", self.prefix)
    }

    /// Adds a host on the bridge; returns its name (also its namespace's) and its address.
    pub fn add_host(&mut self) -> Result<(String, String), String> {
        let index = self.hosts.len();
        let host = format!("{}-h{index}", self.prefix);
        let address = format!("10.231.0.{}", index + 1);
        let bridge = self.bridge_namespace();
        // Interface names are at most 15 bytes: short ones, unique within each namespace.
        let (inside, outside) = (format!("eth{index}"), format!("port{index}"));
        run("ip", &["netns", "add", &host])?;
        self.hosts.push(host.clone());
        run(
            "ip",
            &[
                "-n", &host, "link", "add", &inside, "type", "veth", "peer", "name", &outside,
                "netns", &bridge,
            ],
        )?;
        run(
            "ip",
            &[
                "-n", &bridge, "link", "set", &outside, "master", "br0", "up",
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &host,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                &inside,
            ],
        )?;
        run("ip", &["-n", &host, "link", "set", &inside, "up"])?;
        run("ip", &["-n", &host, "link", "set", "lo", "up"])?;
        Ok((host, address))
    }

    /// The command prefix that runs a program on `host`.
    pub fn launcher(&self, host: &str) -> Vec<String> {
        ["ip", "netns", "exec", host]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Whether the kernel has `tc netem` (a qdisc tried on the bridge namespace's loopback).
    pub fn has_netem(&self) -> bool {
        let bridge = self.bridge_namespace();
        let added = run(
            "tc",
            &[
                "-n", &bridge, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
            ],
        );
        let _ = run("tc", &["-n", &bridge, "qdisc", "del", "dev", "lo", "root"]);
        added.is_ok()
    }

    /// Shapes host `index`'s link in each direction with `tc netem` and `options` (e.g.
    /// `delay 20ms 5ms loss 1% rate 100mbit`), where [`Network::has_netem`].
    pub fn netem(&self, index: usize, options: &[&str]) -> Result<(), String> {
        for (namespace, device) in self.ends(index) {
            let mut args = vec![
                "-n", &namespace, "qdisc", "add", "dev", &device, "root", "netem",
            ];
            args.extend(options);
            run("tc", &args)?;
        }
        Ok(())
    }

    /// Host `index`'s link's two ends, as (namespace, device).
    fn ends(&self, index: usize) -> [(String, String); 2] {
        [
            (self.hosts[index].clone(), format!("eth{index}")),
            (self.bridge_namespace(), format!("port{index}")),
        ]
    }

    /// Caps host `index`'s link at `mbit` megabits per second in each direction.
    pub fn cap(&self, index: usize, mbit: u32) -> Result<(), String> {
        let rate = format!("{mbit}mbit");
        for (namespace, device) in &self.ends(index) {
            run(
                "tc",
                &[
                    "-n", namespace, "qdisc", "add", "dev", device, "root", "handle", "1:", "htb",
                    "default", "1",
                ],
            )?;
            run(
                "tc",
                &[
                    "-n", namespace, "class", "add", "dev", device, "parent", "1:", "classid",
                    "1:1", "htb", "rate", &rate,
                ],
            )?;
        }
        Ok(())
    }

    /// Starts a proxy with `link` on `host` (listening on its loopback) to the coordinator at
    /// `upstream_url`: a worker on that host that connects to the proxy's URL reaches the
    /// coordinator with `link`'s delays, over the host's own link.
    pub fn proxy(&self, host: &str, upstream_url: &str, link: Link) -> HostProxy {
        let namespace = File::open(format!("/var/run/netns/{host}")).unwrap();
        let upstream_url = upstream_url.to_string();
        let proxy = in_namespace(&namespace, move || Proxy::start(&upstream_url, link));
        HostProxy {
            url: proxy.url.clone(),
            proxy: Some(proxy),
            namespace,
        }
    }

    /// Cuts host `index`'s link (its bridge port goes down), or restores it.
    pub fn set_link(&self, index: usize, up: bool) {
        let port = format!("port{index}");
        let state = if up { "up" } else { "down" };
        run(
            "ip",
            &["-n", &self.bridge_namespace(), "link", "set", &port, state],
        )
        .unwrap();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends (and with them their peers).
        for host in self.hosts.iter().chain([&self.bridge_namespace()]) {
            let _ = run("ip", &["netns", "delete", host]);
        }
    }
}
