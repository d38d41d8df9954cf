//! The HTTPS server: TLS on every connection, HTTP/1.1 + JSON, bearer-token auth.
//!
//! Endpoints (all POST with `Content-Type: application/json` and `Authorization: Bearer
//! TOKEN`, except `GET /v1/health`): `/v1/wrap`, `/v1/unwrap`, `/v1/rewrap`, `/v1/anchor`,
//! `/v1/check_anchor`. Limits: body ≤ 16 KiB (413), TLS handshake within 5 s, request headers
//! within 10 s (slowloris), body within 10 s (408).
//!
//! What traffic without a valid token can cost is bounded:
//! - at most `max_connections` connections; at the cap a new connection closes the oldest one
//!   that has waited at least `conns::EVICT_GRACE` for its client (no ClientHello yet, or idle
//!   between requests), so idle connections cannot keep a client out; at most `max_handshakes`
//!   TLS handshakes run at once;
//! - requests refused before a token authenticated (401, 429, unknown endpoint, wrong method)
//!   are not audited one by one: they are counted per (address, status) in a bounded table and
//!   written as one summary record per key every `noise_interval` and at shutdown;
//! - failed authentications are limited per presented token (`failure_limit` a minute) and per
//!   address (`address_failure_limit`, high enough for a NAT); only unauthenticated requests
//!   get 429, a valid token is never locked out by others' failures.
//!
//! Every request that authenticated — each key release and each refusal of an authenticated
//! request — gets its own audit record, fsynced before the reply; if it cannot be written the
//! reply is 500 (fail closed).
//!
//! - `limits`: failed-authentication windows per token and address, and the aggregation of
//!   refused unauthenticated requests into summary audit records.
//! - `conns`: the connection cap with eviction of waiting connections, and one connection's
//!   TLS handshake and HTTP/1.1 serving.
//! - `ops`: one request → authentication, the endpoint's operation, its audit record and
//!   the JSON reply.
//! - `metrics`: request and key operation counters (totals, and wraps, unwraps and rewraps
//!   per tenant of the registry), served to Prometheus on a separate plain-HTTP listener
//!   (`ServerConfig::metrics_listen`), off unless configured.

mod conns;
mod limits;
mod metrics;
mod ops;

use conns::{Connection, Conns, EVICT_RETRY};
use limits::{Limiter, Noise};
use metrics::Metrics;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::audit::AuditLog;
use crate::keys::RootSecret;
use crate::registry::RegistryView;
use crate::state::{Credential, StateDir};
use crate::{Error, Result};

/// Largest accepted request body.
pub const MAX_BODY: usize = 16 * 1024;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The state directory.
    pub state_dir: PathBuf,
    /// Address to listen on (port 0: any free port).
    pub listen: SocketAddr,
    /// PEM certificate chain.
    pub tls_cert: PathBuf,
    /// PEM private key.
    pub tls_key: PathBuf,
    /// Audit log path (default `STATE_DIR/audit.log`).
    pub audit_log: Option<PathBuf>,
    /// Concurrent connection cap. When it is reached, a new connection closes the oldest
    /// connection that has waited at least a second for its client (for its ClientHello, or
    /// idle between requests); connections in a handshake or a request are never closed.
    pub max_connections: usize,
    /// Concurrent TLS handshakes (after the ClientHello arrived); the CPU-heavy part.
    pub max_handshakes: usize,
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for request headers, and for the request body, each.
    pub io_timeout: Duration,
    /// Failed authentications with one presented token per minute before that token gets 429.
    pub failure_limit: u32,
    /// Failed authentications from one address per minute before every unauthenticated request
    /// from it gets 429 (valid tokens from that address keep working).
    pub address_failure_limit: u32,
    /// How often refused unauthenticated requests are summarized in the audit log.
    pub noise_interval: Duration,
    /// Where to serve Prometheus metrics (plain HTTP, `GET /metrics`); none by default.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    /// Defaults: 256 connections, 32 handshakes, 5 s handshake and 10 s header/body timeouts,
    /// 10 failures per token and 1 000 per address per minute, one noise summary per minute.
    pub fn new(
        state_dir: PathBuf,
        listen: SocketAddr,
        tls_cert: PathBuf,
        tls_key: PathBuf,
    ) -> Self {
        ServerConfig {
            state_dir,
            listen,
            tls_cert,
            tls_key,
            audit_log: None,
            max_connections: 256,
            max_handshakes: 32,
            handshake_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(10),
            failure_limit: 10,
            address_failure_limit: 1_000,
            noise_interval: Duration::from_secs(60),
            metrics_listen: None,
        }
    }
}

struct Shared {
    root: RootSecret,
    state: StateDir,
    registry: RegistryView,
    audit: AuditLog,
    limiter: Limiter,
    noise: Noise,
    io_timeout: Duration,
    metrics: Metrics,
}

/// A bound, unsealed server, ready to [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    max_connections: usize,
    max_handshakes: usize,
    handshake_timeout: Duration,
    noise_interval: Duration,
}

impl Server {
    /// Unseals the root secret, loads the registry, opens the audit log and binds.
    pub async fn bind(cfg: ServerConfig, cred: &Credential) -> Result<Server> {
        let state = StateDir::new(&cfg.state_dir);
        let root = state.unseal(cred)?;
        let registry = RegistryView::open(&state.file(crate::state::REGISTRY_FILE))?;
        let audit_path = cfg
            .audit_log
            .clone()
            .unwrap_or_else(|| state.file(crate::state::AUDIT_FILE));
        let audit = AuditLog::open(&audit_path, root.audit_key()?)?;
        let tls = crate::tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Invalid(format!("listen on {}: {e}", cfg.listen)))?;
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::Invalid(format!("metrics: listen on {addr}: {e}")))?,
            ),
            None => None,
        };
        Ok(Server {
            listener,
            metrics_listener,
            shared: Arc::new(Shared {
                root,
                state,
                registry,
                audit,
                limiter: Limiter::new(cfg.failure_limit, cfg.address_failure_limit),
                noise: Noise::new(),
                io_timeout: cfg.io_timeout,
                metrics: Metrics::new(),
            }),
            tls,
            max_connections: cfg.max_connections.max(1),
            max_handshakes: cfg.max_handshakes.max(1),
            handshake_timeout: cfg.handshake_timeout,
            noise_interval: cfg.noise_interval.max(Duration::from_millis(100)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("local address: {e}")))
    }

    /// The address of the metrics listener, if one was configured.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        self.metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(|e| Error::Invalid(format!("metrics local address: {e}")))
    }

    /// Serves until `shutdown` completes; then writes the pending summary of refused
    /// unauthenticated requests.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        // Aborted when `run` returns (the guard drops): no metrics after the service stopped.
        let _metrics = self.metrics_listener.take().map(|l| {
            AbortOnDrop(tokio::spawn(metrics::serve(
                l,
                self.shared.clone(),
                self.shared.io_timeout,
            )))
        });
        let sem = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        let handshakes = Arc::new(tokio::sync::Semaphore::new(self.max_handshakes));
        let conns = Arc::new(Conns::default());
        let mut ticker = tokio::time::interval(self.noise_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        tokio::pin!(shutdown);
        let result = loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = ticker.tick() => {
                    // In the background: the accept loop never waits for the audit log.
                    let sh = self.shared.clone();
                    tokio::task::spawn_blocking(move || sh.noise.flush(&sh.audit));
                    continue;
                }
                () = &mut shutdown => break Ok(()),
            };
            // At the cap, make room by closing the oldest connection that is not inside a
            // request, so idle or stalled connections cannot keep a legitimate client out.
            let permit = loop {
                if let Ok(p) = sem.clone().try_acquire_owned() {
                    break Some(p);
                }
                conns.evict_oldest_idle();
                tokio::select! {
                    p = sem.clone().acquire_owned() => break p.ok(),
                    () = tokio::time::sleep(EVICT_RETRY) => {}
                    () = &mut shutdown => break None,
                }
            };
            let Some(permit) = permit else { break Ok(()) };
            self.shared.metrics.connection();
            let (id, slot) = conns.register();
            let conn = Connection {
                tls: self.tls.clone(),
                shared: self.shared.clone(),
                handshakes: handshakes.clone(),
                handshake_timeout: self.handshake_timeout,
                slot: slot.clone(),
            };
            let conns = conns.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let serve = conn.serve(tcp, peer);
                tokio::pin!(serve);
                loop {
                    tokio::select! {
                        () = &mut serve => break,
                        () = slot.evict.notified() => {
                            // It may have started a request since it was chosen: let it finish.
                            if slot.waiting_for_peer() {
                                tracing::debug!(%peer, "idle connection closed to admit a new one");
                                break;
                            }
                        }
                    }
                }
                conns.remove(id);
            });
        };
        self.flush_noise().await;
        result
    }

    async fn flush_noise(&self) {
        let sh = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || sh.noise.flush(&sh.audit)).await;
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A server running on its own thread and tokio runtime (tests, embedding in sync code).
pub struct BackgroundServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BackgroundServer {
    /// Binds and starts serving; returns once the server accepts connections.
    pub fn start(cfg: ServerConfig, cred: Credential) -> Result<BackgroundServer> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| Error::Invalid(format!("tokio runtime: {e}")))?;
        let server = rt.block_on(Server::bind(cfg, &cred))?;
        let addr = server.local_addr()?;
        let metrics_addr = server.metrics_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rt.block_on(server.run(async {
                let _ = rx.await;
            }));
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Ok(BackgroundServer {
            addr,
            metrics_addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the metrics listener, if configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
