//! Connections: at most `max_connections`, where a new one at the cap closes the oldest that
//! has waited long enough for its client, and each connection's TLS handshake (bounded in
//! time and in how many run at once) followed by its HTTP/1.1 requests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};

use super::ops::handle;
use super::Shared;

/// How long a connection must have been waiting for its peer (for a ClientHello, or for the
/// next request) before it may be closed to admit a new one. Legitimate clients send their
/// ClientHello at once, so this spares them even when the server is slow to read it.
const EVICT_GRACE: Duration = Duration::from_secs(1);
/// How often the accept loop looks again for a connection to close while at the cap.
pub(super) const EVICT_RETRY: Duration = Duration::from_millis(100);

/// Book-keeping of open connections, oldest first, for eviction at the connection cap.
pub(super) struct Conns {
    table: Mutex<ConnTable>,
    epoch: Instant,
}

impl Default for Conns {
    fn default() -> Self {
        Conns {
            table: Mutex::default(),
            epoch: Instant::now(),
        }
    }
}

#[derive(Default)]
struct ConnTable {
    next: u64,
    open: std::collections::BTreeMap<u64, Arc<ConnSlot>>,
}

/// Waiting for the client's ClientHello.
const AWAIT_HELLO: u8 = 0;
/// TLS handshake after the ClientHello (queued for a handshake permit, or running).
const HANDSHAKE: u8 = 1;
/// Between requests, waiting for the next one.
const IDLE: u8 = 2;
/// Inside a request.
const BUSY: u8 = 3;

/// What one connection is doing, shared with the accept loop.
pub(super) struct ConnSlot {
    state: std::sync::atomic::AtomicU8,
    /// Milliseconds since [`Conns::epoch`] when `state` last changed.
    since: std::sync::atomic::AtomicU64,
    epoch: Instant,
    pub(super) evict: tokio::sync::Notify,
}

impl ConnSlot {
    fn set(&self, state: u8) {
        use std::sync::atomic::Ordering;
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since.store(ms, Ordering::Release);
        self.state.store(state, Ordering::Release);
    }

    /// Waiting for the peer (for a ClientHello or the next request), not for this server.
    pub(super) fn waiting_for_peer(&self) -> bool {
        matches!(
            self.state.load(std::sync::atomic::Ordering::Acquire),
            AWAIT_HELLO | IDLE
        )
    }

    /// Waiting for the peer for at least [`EVICT_GRACE`].
    fn evictable(&self) -> bool {
        let since = Duration::from_millis(self.since.load(std::sync::atomic::Ordering::Acquire));
        self.waiting_for_peer() && self.epoch.elapsed().saturating_sub(since) >= EVICT_GRACE
    }
}

impl Conns {
    pub(super) fn register(&self) -> (u64, Arc<ConnSlot>) {
        let slot = Arc::new(ConnSlot {
            state: std::sync::atomic::AtomicU8::new(AWAIT_HELLO),
            since: std::sync::atomic::AtomicU64::new(0),
            epoch: self.epoch,
            evict: tokio::sync::Notify::new(),
        });
        slot.set(AWAIT_HELLO);
        let Ok(mut t) = self.table.lock() else {
            return (u64::MAX, slot);
        };
        let id = t.next;
        t.next = t.next.wrapping_add(1);
        t.open.insert(id, slot.clone());
        (id, slot)
    }

    pub(super) fn remove(&self, id: u64) {
        if let Ok(mut t) = self.table.lock() {
            t.open.remove(&id);
        }
    }

    /// Tells the oldest connection that has been waiting for its peer to close.
    pub(super) fn evict_oldest_idle(&self) {
        let Ok(mut t) = self.table.lock() else { return };
        let victim = t
            .open
            .iter()
            .find(|(_, s)| s.evictable())
            .map(|(id, s)| (*id, s.clone()));
        if let Some((id, slot)) = victim {
            t.open.remove(&id);
            slot.evict.notify_one();
        }
    }
}

/// One accepted TCP connection: TLS handshake, then HTTP/1.1 requests.
pub(super) struct Connection {
    pub(super) tls: Arc<rustls::ServerConfig>,
    pub(super) shared: Arc<Shared>,
    pub(super) handshakes: Arc<tokio::sync::Semaphore>,
    pub(super) handshake_timeout: Duration,
    pub(super) slot: Arc<ConnSlot>,
}

impl Connection {
    pub(super) async fn serve(self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
        let Connection {
            tls,
            shared,
            handshakes,
            handshake_timeout,
            slot,
        } = self;
        // The whole handshake, ClientHello included, within the handshake timeout; the
        // CPU-heavy part after the ClientHello at most `max_handshakes` at a time.
        let handshake = async {
            let acceptor =
                tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
            let start = acceptor.await?;
            slot.set(HANDSHAKE);
            let _permit = handshakes
                .acquire_owned()
                .await
                .map_err(std::io::Error::other)?;
            start.into_stream(tls).await
        };
        let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        slot.set(IDLE);
        let timeout = shared.io_timeout;
        let svc = hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let slot = slot.clone();
            async move {
                slot.set(BUSY);
                let r = handle(shared, peer, req).await;
                slot.set(IDLE);
                r
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(stream), svc);
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with error");
        }
    }
}
