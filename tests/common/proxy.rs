//! A TCP proxy between a worker and the coordinator that delays, throttles and cuts the link.
//!
//! It stands in for a network between machines where `tc netem` cannot be had (this project's
//! machines lack the kernel module): each direction's bytes are delivered `delay` (plus up to
//! `jitter`, never reordered) after they were read, at most `bytes_per_s`, and a cut link
//! passes nothing, in either direction, until it is restored; what was in flight then arrives
//! late, as TCP's retransmissions would deliver it.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the link does to the bytes crossing it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Link {
    pub delay: Duration,
    pub jitter: Duration,
    /// Bandwidth in each direction; unlimited when `None`.
    pub bytes_per_s: Option<u64>,
}

/// A running proxy; connect to `url` instead of the coordinator's.
pub struct Proxy {
    pub url: String,
    shared: Arc<Shared>,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    link: Link,
    cut: Mutex<bool>,
    restored: Condvar,
    /// A counter for the jitter's pseudo-random draws.
    draws: AtomicU64,
    stopped: AtomicBool,
}

impl Shared {
    /// Blocks while the link is cut.
    fn wait_while_cut(&self) {
        let mut cut = self.cut.lock().unwrap();
        while *cut {
            cut = self.restored.wait(cut).unwrap();
        }
    }

    /// Up to `jitter`, drawn by a splitmix64 step: reproducible enough, no dependency.
    fn jitter(&self) -> Duration {
        let jitter = self.link.jitter.as_nanos() as u64;
        if jitter == 0 {
            return Duration::ZERO;
        }
        let mut z = self
            .draws
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Duration::from_nanos((z ^ (z >> 31)) % jitter)
    }
}

impl Proxy {
    /// Starts a proxy to the coordinator at `upstream_url` (`http://host:port`) on a port of
    /// its own choosing.
    pub fn start(upstream_url: &str, link: Link) -> Proxy {
        let upstream = socket_addr(upstream_url);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            link,
            cut: Mutex::new(false),
            restored: Condvar::new(),
            draws: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(client) = client else { continue };
                let shared = accepting.clone();
                std::thread::spawn(move || connect(client, shared));
            }
        });
        Proxy { url, shared }
    }

    /// Cuts the link: nothing crosses it, and no new connection gets through, until restored.
    pub fn cut(&self) {
        *self.shared.cut.lock().unwrap() = true;
    }

    /// Sends new connections to the coordinator at `upstream_url` (one restarted elsewhere).
    pub fn retarget(&self, upstream_url: &str) {
        *self.shared.upstream.lock().unwrap() = socket_addr(upstream_url);
    }

    pub fn restore(&self) {
        *self.shared.cut.lock().unwrap() = false;
        self.shared.restored.notify_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::Relaxed);
        self.restore();
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn socket_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("a coordinator URL of the form http://host:port")
}

/// Joins `client` to the coordinator once the link lets a connection through.
fn connect(client: TcpStream, shared: Arc<Shared>) {
    shared.wait_while_cut();
    let upstream = *shared.upstream.lock().unwrap();
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_nodelay(true);
    }
    let (client_in, server_in) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let to_server = {
        let shared = shared.clone();
        std::thread::spawn(move || pump(client_in, server, shared))
    };
    pump(server_in, client, shared);
    let _ = to_server.join();
}

/// Moves bytes from `from` to `to` through the link until either side closes.
fn pump(mut from: TcpStream, to: TcpStream, shared: Arc<Shared>) {
    let (send, receive) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = {
        let shared = shared.clone();
        std::thread::spawn(move || deliver(receive, to, &shared))
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut last_due = Instant::now();
    loop {
        shared.wait_while_cut();
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Later bytes never overtake earlier ones: TCP keeps order, whatever the jitter.
        last_due = last_due.max(Instant::now() + shared.link.delay + shared.jitter());
        if send.send((last_due, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(send);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Read);
}

/// Writes what `pump` read once it is due, within the bandwidth, never while the link is cut.
fn deliver(receive: mpsc::Receiver<(Instant, Vec<u8>)>, mut to: TcpStream, shared: &Shared) {
    for (due, bytes) in receive {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        shared.wait_while_cut();
        if to.write_all(&bytes).is_err() {
            break;
        }
        if let Some(rate) = shared.link.bytes_per_s {
            std::thread::sleep(Duration::from_secs_f64(bytes.len() as f64 / rate as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
