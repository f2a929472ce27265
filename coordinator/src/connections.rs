//! Connection limits: at most so many open connections, each closed once idle for too long.
//!
//! Without them, a thousand idle connections exhausted the coordinator's descriptors: accept
//! then failed in a busy loop (100% CPU), training slowed from 281 to 3 steps/s, and a
//! checkpoint write failed the experiment with "Too many open files". Connections past the
//! limit are closed as they arrive; accept errors back off instead of spinning.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// How many connections may be open at once, and how long one may carry nothing.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_open: usize,
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_open: 512,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// After an accept error (out of descriptors, say), wait this long before accepting again:
/// the failed connection stays in the backlog, and retrying at once only spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Accepted connections within [`Limits`]: those past the limit are dropped (closed) here.
pub struct LimitedIncoming {
    inner: TcpIncoming,
    permits: Arc<Semaphore>,
    limits: Limits,
    backoff: Option<Pin<Box<Sleep>>>,
    /// Connections closed for the limit since the last warning, which says how many.
    turned_away: u64,
}

impl LimitedIncoming {
    pub fn new(inner: TcpIncoming, limits: Limits) -> Self {
        LimitedIncoming {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_open)),
            limits,
            backoff: None,
            turned_away: 0,
        }
    }
}

impl Stream for LimitedIncoming {
    type Item = io::Result<LimitedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(backoff) = this.backoff.as_mut() {
                ready!(backoff.as_mut().poll(cx));
                this.backoff = None;
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "cannot accept a connection; backing off");
                    this.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
                }
                Some(Ok(tcp)) => match this.permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        return Poll::Ready(Some(Ok(LimitedStream::new(
                            tcp,
                            permit,
                            this.limits.idle_timeout,
                        ))))
                    }
                    Err(_) => {
                        // Warn on the first and then every 100th, not once per connection.
                        if this.turned_away.is_multiple_of(100) {
                            tracing::warn!(limit = this.limits.max_open, peer = ?tcp.peer_addr().ok(), turned_away = this.turned_away + 1, "too many open connections (--max-connections); closing new ones");
                        }
                        this.turned_away += 1;
                    }
                },
            }
        }
    }
}

/// A connection that holds one of the permits while open and ends (as if the peer had closed
/// it) once nothing was read or written for the idle timeout.
pub struct LimitedStream {
    tcp: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_active: Instant,
    idle: Pin<Box<Sleep>>,
}

impl LimitedStream {
    fn new(tcp: TcpStream, permit: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        LimitedStream {
            tcp,
            _permit: permit,
            idle_timeout,
            last_active: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }

    /// Whether the connection has been idle past its timeout. Activity only stamps
    /// `last_active`; the timer is re-armed lazily when it fires early.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_active + self.idle_timeout;
            if Instant::now() >= deadline {
                return true;
            }
            self.idle.as_mut().reset(deadline);
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.last_active = Instant::now();
                Poll::Ready(result)
            }
            Poll::Pending if this.poll_idle(cx) => {
                tracing::debug!(peer = ?this.tcp.peer_addr().ok(), "closing an idle connection");
                // End of stream: the server closes the connection as if the peer had.
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if polled.is_ready() {
            this.last_active = Instant::now();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        if polled.is_ready() {
            this.last_active = Instant::now();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connected for LimitedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    /// A listener behind [`LimitedIncoming`] and its address.
    async fn listen(limits: Limits) -> (LimitedIncoming, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        (
            LimitedIncoming::new(TcpIncoming::from(listener), limits),
            addr,
        )
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_closed_and_a_freed_permit_admits_the_next() {
        let (mut incoming, addr) = listen(Limits {
            max_open: 2,
            idle_timeout: Duration::from_secs(3600),
        })
        .await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _second = incoming.next().await.unwrap().unwrap();
        // A third, while two are open, is accepted and closed: its peer reads end of stream.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        tokio::select! {
            admitted = incoming.next() => panic!("admitted past the limit: {:?}", admitted.map(|r| r.is_ok())),
            read = c.read(&mut byte) => assert_eq!(read.unwrap(), 0, "turned away"),
        }
        // Once one closes, the next is served.
        drop(first);
        let mut d = TcpStream::connect(addr).await.unwrap();
        let mut served = incoming.next().await.unwrap().unwrap();
        d.write_all(b"x").await.unwrap();
        served.read_exact(&mut byte).await.unwrap();
        assert_eq!(&byte, b"x");
    }

    #[tokio::test]
    async fn an_idle_connection_ends_and_an_active_one_does_not() {
        let (mut incoming, addr) = listen(Limits {
            max_open: 8,
            idle_timeout: Duration::from_millis(300),
        })
        .await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        let mut server = incoming.next().await.unwrap().unwrap();
        // Activity every 100 ms keeps it open past the timeout...
        let mut byte = [0u8; 1];
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut byte).await.unwrap();
        }
        // ...and silence ends it: the read sees end of stream.
        let started = Instant::now();
        assert_eq!(server.read(&mut byte).await.unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(250));
    }
}
