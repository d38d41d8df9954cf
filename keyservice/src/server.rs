//! The HTTPS server: TLS on every connection, HTTP/1.1 + JSON, bearer-token auth.
//!
//! Endpoints (all POST with `Content-Type: application/json` and `Authorization: Bearer
//! TOKEN`, except `GET /v1/health`): `/v1/wrap`, `/v1/unwrap`, `/v1/rewrap`, `/v1/anchor`,
//! `/v1/check_anchor`. Limits: body ≤ 16 KiB (413), TLS handshake within 5 s, request headers
//! within 10 s (slowloris), body within 10 s (408).
//!
//! What traffic without a valid token can cost is bounded:
//! - at most `max_connections` connections; at the cap a new connection closes the oldest one
//!   that has waited at least [`EVICT_GRACE`] for its client (no ClientHello yet, or idle
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

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rand::RngCore;
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use crate::anchors::{self, Check};
use crate::audit::{AuditLog, Event};
use crate::client::protocol::{
    AnchorReply, AnchorRequest, CheckAnchorRequest, ErrorReply, KeyReply, UnwrapRequest,
    WrapRequest, WrappedReply, PATH_ANCHOR, PATH_CHECK_ANCHOR, PATH_REWRAP, PATH_UNWRAP, PATH_WRAP,
};
use crate::keys::{self, RootSecret, MASTER_KEY_LEN};
use crate::registry::{RegistryView, Role, TenantState, TokenMatch};
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
        }
    }
}

/// Entries kept per limiter table; beyond that, new keys are not tracked until old ones expire.
const LIMITER_ENTRIES: usize = 10_000;

const WINDOW: Duration = Duration::from_secs(60);

/// Failed-authentication counters per key over a one-minute window.
struct Window<K> {
    limit: u32,
    map: Mutex<HashMap<K, (Instant, u32)>>,
}

impl<K: std::hash::Hash + Eq> Window<K> {
    fn new(limit: u32) -> Self {
        Window {
            limit,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one failure for `key`; true if `key` is now over its limit.
    fn fail(&self, key: K) -> bool {
        let Ok(mut m) = self.map.lock() else {
            return true;
        };
        if m.len() >= LIMITER_ENTRIES && !m.contains_key(&key) {
            m.retain(|_, (s, _)| s.elapsed() < WINDOW);
            if m.len() >= LIMITER_ENTRIES {
                return false;
            }
        }
        let e = m.entry(key).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
        e.1 > self.limit
    }
}

/// Failed authentications, limited per presented token and (with a higher limit, for clients
/// behind one NAT) per address. Only requests that fail authentication are ever limited: a
/// valid token is served whatever its address's count.
struct Limiter {
    tokens: Window<[u8; 32]>,
    addrs: Window<IpAddr>,
}

impl Limiter {
    /// Records a failed authentication (`token`: the hash of the presented token, if any);
    /// true if the request is to be answered with 429 rather than 401.
    fn fail(&self, ip: IpAddr, token: Option<[u8; 32]>) -> bool {
        let by_addr = self.addrs.fail(ip);
        let by_token = token.is_some_and(|t| self.tokens.fail(t));
        by_addr || by_token
    }
}

/// Refused unauthenticated requests, counted per (address, status, code) and written to the
/// audit log as one summary record per key and interval. At most [`NOISE_KEYS`] keys; the
/// rest are counted under one overflow key without an address.
struct Noise {
    table: Mutex<HashMap<NoiseKey, NoiseCount>>,
}

/// Distinct (address, reason) pairs aggregated per interval.
const NOISE_KEYS: usize = 1_024;

#[derive(Clone, PartialEq, Eq, Hash)]
struct NoiseKey {
    ip: Option<IpAddr>,
    status: u16,
    code: &'static str,
}

struct NoiseCount {
    count: u64,
    first: String,
    last: String,
}

impl Noise {
    fn add(&self, ip: IpAddr, status: u16, code: &'static str) {
        let Ok(mut t) = self.table.lock() else { return };
        let mut key = NoiseKey {
            ip: Some(ip),
            status,
            code,
        };
        if t.len() >= NOISE_KEYS && !t.contains_key(&key) {
            key.ip = None;
        }
        let now = crate::audit::now_rfc3339();
        let e = t.entry(key).or_insert_with(|| NoiseCount {
            count: 0,
            first: now.clone(),
            last: String::new(),
        });
        e.count = e.count.saturating_add(1);
        e.last = now;
    }

    /// Writes one summary record per key and empties the table.
    fn flush(&self, audit: &AuditLog) {
        let taken = match self.table.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        if taken.is_empty() {
            return;
        }
        let mut events = Vec::with_capacity(taken.len());
        let mut total = 0u64;
        for (k, c) in taken {
            let mut rid = [0u8; 8];
            rand::rngs::OsRng.fill_bytes(&mut rid);
            total = total.saturating_add(c.count);
            events.push(Event {
                request_id: hex::encode(rid),
                op: "unauthenticated".into(),
                client: k
                    .ip
                    .map_or_else(|| "(other addresses)".into(), |ip| ip.to_string()),
                outcome: "refused".into(),
                reason: format!(
                    "{} {}: {} requests from {} to {} (aggregated)",
                    k.status, k.code, c.count, c.first, c.last
                ),
                count: Some(c.count),
                ..Event::default()
            });
        }
        // One write and one fsync for all summaries of the interval.
        if let Err(e) = audit.append_all(&events) {
            tracing::error!(error = %e, requests = total,
                "audit summary of refused unauthenticated requests could not be written");
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
}

/// A bound, unsealed server, ready to [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
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
        Ok(Server {
            listener,
            shared: Arc::new(Shared {
                root,
                state,
                registry,
                audit,
                limiter: Limiter {
                    tokens: Window::new(cfg.failure_limit),
                    addrs: Window::new(cfg.address_failure_limit),
                },
                noise: Noise {
                    table: Mutex::new(HashMap::new()),
                },
                io_timeout: cfg.io_timeout,
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

    /// Serves until `shutdown` completes; then writes the pending summary of refused
    /// unauthenticated requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
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

/// How long a connection must have been waiting for its peer (for a ClientHello, or for the
/// next request) before it may be closed to admit a new one. Legitimate clients send their
/// ClientHello at once, so this spares them even when the server is slow to read it.
const EVICT_GRACE: Duration = Duration::from_secs(1);
/// How often the accept loop looks again for a connection to close while at the cap.
const EVICT_RETRY: Duration = Duration::from_millis(100);

/// Book-keeping of open connections, oldest first, for eviction at the connection cap.
struct Conns {
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
struct ConnSlot {
    state: std::sync::atomic::AtomicU8,
    /// Milliseconds since [`Conns::epoch`] when `state` last changed.
    since: std::sync::atomic::AtomicU64,
    epoch: Instant,
    evict: tokio::sync::Notify,
}

impl ConnSlot {
    fn set(&self, state: u8) {
        use std::sync::atomic::Ordering;
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.since.store(ms, Ordering::Release);
        self.state.store(state, Ordering::Release);
    }

    /// Waiting for the peer (for a ClientHello or the next request), not for this server.
    fn waiting_for_peer(&self) -> bool {
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
    fn register(&self) -> (u64, Arc<ConnSlot>) {
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

    fn remove(&self, id: u64) {
        if let Ok(mut t) = self.table.lock() {
            t.open.remove(&id);
        }
    }

    /// Tells the oldest connection that has been waiting for its peer to close.
    fn evict_oldest_idle(&self) {
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
struct Connection {
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    handshakes: Arc<tokio::sync::Semaphore>,
    handshake_timeout: Duration,
    slot: Arc<ConnSlot>,
}

impl Connection {
    async fn serve(self, tcp: tokio::net::TcpStream, peer: SocketAddr) {
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

/// A server running on its own thread and tokio runtime (tests, embedding in sync code).
pub struct BackgroundServer {
    addr: SocketAddr,
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
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = rt.block_on(server.run(async {
                let _ = rx.await;
            }));
            rt.shutdown_timeout(Duration::from_secs(1));
        });
        Ok(BackgroundServer {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
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

/// A refused request.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
    }
}

fn internal(e: Error) -> ApiError {
    tracing::error!(error = %e, "internal error");
    err(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Wrap,
    Unwrap,
    Rewrap,
    Anchor,
    CheckAnchor,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Wrap => "wrap",
            Op::Unwrap => "unwrap",
            Op::Rewrap => "rewrap",
            Op::Anchor => "anchor",
            Op::CheckAnchor => "check_anchor",
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/v1/health" && req.method() == Method::GET {
        return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
    }
    let mut rid = [0u8; 8];
    rand::rngs::OsRng.fill_bytes(&mut rid);
    let mut ev = Event {
        request_id: hex::encode(rid),
        client: peer.to_string(),
        op: req
            .uri()
            .path()
            .trim_start_matches("/v1/")
            .chars()
            .take(32)
            .collect(),
        ..Event::default()
    };
    let mut authenticated = false;
    let result = process(&shared, peer, req, &mut ev, &mut authenticated).await;
    if let (Err(e), false) = (&result, authenticated) {
        // Refused before a token authenticated: counted, summarized per interval, never
        // written (let alone fsynced) one by one, so it cannot fill the disk or slow the log.
        shared.noise.add(peer.ip(), e.status.as_u16(), e.code);
        return Ok(json_response(
            e.status,
            &error_reply(e.code, &e.message, &ev.request_id),
        ));
    }
    match &result {
        Ok(_) => ev.outcome = "ok".into(),
        Err(e) => {
            ev.outcome = if e.status.is_server_error() {
                "error"
            } else {
                "refused"
            }
            .into();
            ev.reason = format!("{} {}: {}", e.status.as_u16(), e.code, e.message);
        }
    }
    let request_id = ev.request_id.clone();
    let sh = shared.clone();
    let logged = tokio::task::spawn_blocking(move || sh.audit.append(&ev)).await;
    let logged = match logged {
        Ok(r) => r,
        Err(e) => Err(Error::Audit(e.to_string())),
    };
    if let Err(e) = logged {
        tracing::error!(error = %e, "audit log write failed; refusing request");
        return Ok(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &error_reply("audit_failed", "audit log cannot be written", &request_id),
        ));
    }
    Ok(match result {
        Ok(mut body) => {
            if let Some(o) = body.as_object_mut() {
                o.insert("request_id".into(), json!(request_id));
            }
            let r = json_response(StatusCode::OK, &body);
            zeroize_json(&mut body);
            r
        }
        Err(e) => json_response(e.status, &error_reply(e.code, &e.message, &request_id)),
    })
}

/// Binds filesystem `fs` to `tenant` in the anchors file (see [`anchors::bind`]).
async fn bind(
    shared: &Shared,
    tenant: &str,
    fs: [u8; 16],
    proof: anchors::Proof,
) -> std::result::Result<Check, ApiError> {
    let state = shared.state.clone();
    let t = tenant.to_string();
    tokio::task::spawn_blocking(move || anchors::bind(&state, &t, &hex::encode(fs), proof))
        .await
        .map_err(|e| internal(Error::Invalid(e.to_string())))?
        .map_err(internal)
}

/// Best-effort wipe of string values (the unwrapped key) in a JSON value.
fn zeroize_json(v: &mut serde_json::Value) {
    if let Some(o) = v.as_object_mut() {
        for (_, val) in o.iter_mut() {
            if let serde_json::Value::String(s) = val {
                s.zeroize();
            }
        }
    }
}

/// A success reply's JSON body.
fn reply(body: &impl serde::Serialize) -> std::result::Result<serde_json::Value, ApiError> {
    serde_json::to_value(body).map_err(|e| internal(Error::Invalid(e.to_string())))
}

/// The JSON body of a refusal.
fn error_reply(code: &str, message: &str, request_id: &str) -> serde_json::Value {
    serde_json::to_value(ErrorReply {
        error: code.into(),
        message: message.into(),
        request_id: Some(request_id.into()),
    })
    .unwrap_or_else(|_| json!({"error": code}))
}

fn bad(msg: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, "bad_request", msg)
}

fn parse_uuid(s: &str) -> std::result::Result<[u8; 16], ApiError> {
    let clean: String = s.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    hex::decode_to_slice(&clean, &mut out)
        .map_err(|_| bad("fs_uuid must be 32 hex digits (hyphens allowed)"))?;
    Ok(out)
}

fn b64d(s: &str, what: &str) -> std::result::Result<Zeroizing<Vec<u8>>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map(Zeroizing::new)
        .map_err(|_| bad(format!("{what} is not valid base64")))
}

fn b64e(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn process(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
    ev: &mut Event,
    authenticated: &mut bool,
) -> std::result::Result<serde_json::Value, ApiError> {
    let op = match req.uri().path() {
        PATH_WRAP => Op::Wrap,
        PATH_UNWRAP => Op::Unwrap,
        PATH_REWRAP => Op::Rewrap,
        PATH_ANCHOR => Op::Anchor,
        PATH_CHECK_ANCHOR => Op::CheckAnchor,
        _ => return Err(err(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
    };
    ev.op = op.name().into();
    if req.method() != Method::POST {
        return Err(err(StatusCode::METHOD_NOT_ALLOWED, "method", "use POST"));
    }
    let ip = peer.ip();
    let limited = || {
        err(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed authentications with this token or from this address; retry in a minute",
        )
    };

    // Authentication. Failures are limited per presented token and per address; a valid
    // token is served whatever others behind the same address did.
    let registry = shared.registry.current().map_err(internal)?;
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_string()));
    let Some(token) = token else {
        if shared.limiter.fail(ip, None) {
            return Err(limited());
        }
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        ));
    };
    let rec = match registry.find_token(&token) {
        TokenMatch::Found(r) => r,
        TokenMatch::Unknown => {
            if shared
                .limiter
                .fail(ip, Some(crate::registry::token_hash(&token)))
            {
                return Err(limited());
            }
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown token",
            ));
        }
    };
    *authenticated = true;
    ev.tenant = rec.tenant.clone();
    if rec.revoked {
        return Err(err(StatusCode::FORBIDDEN, "token_revoked", "token revoked"));
    }
    let (Role::Tenant, Some(tenant_id)) = (rec.role, rec.tenant.as_deref()) else {
        return Err(err(
            StatusCode::FORBIDDEN,
            "forbidden",
            "admin tokens cannot use tenant endpoints",
        ));
    };
    let tenant_id = tenant_id.to_string();
    match registry.tenants.get(&tenant_id) {
        Some(t) if t.state == TenantState::Active => {}
        Some(_) => {
            return Err(err(
                StatusCode::FORBIDDEN,
                "tenant_revoked",
                "tenant revoked",
            ))
        }
        None => {
            return Err(err(
                StatusCode::FORBIDDEN,
                "tenant_revoked",
                "tenant removed",
            ))
        }
    }

    // Content type and body.
    let ct_ok = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false);
    if !ct_ok {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ));
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(err(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "body larger than 16 KiB",
        ));
    }
    let collected = tokio::time::timeout(
        shared.io_timeout,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    .map_err(|_| {
        err(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "body not received in time",
        )
    })?;
    let body = match collected {
        Ok(c) => Zeroizing::new(c.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body larger than 16 KiB",
            ))
        }
        Err(_) => return Err(bad("body could not be read")),
    };

    let seed = registry.seed(&shared.root, &tenant_id).map_err(internal)?;
    let tenant = registry
        .tenants
        .get(&tenant_id)
        .ok_or_else(|| err(StatusCode::FORBIDDEN, "tenant_revoked", "tenant removed"))?;
    let kek = |v: u32| -> std::result::Result<Zeroizing<[u8; 32]>, ApiError> {
        shared.root.kek(&tenant_id, &seed, v).map_err(internal)
    };
    let parse_err = |e: serde_json::Error| bad(format!("malformed request: {e}"));

    match op {
        Op::Wrap => {
            let mut r: WrapRequest = serde_json::from_slice(&body).map_err(parse_err)?;
            let key = b64d(&r.key, "key");
            r.key.zeroize();
            let key = key?;
            let fs = parse_uuid(&r.fs_uuid)?;
            ev.fs_uuid = Some(hex::encode(fs));
            if key.len() != MASTER_KEY_LEN {
                return Err(bad(format!("key must be {MASTER_KEY_LEN} bytes")));
            }
            let v = tenant.current;
            ev.key_version = Some(v);
            // mkfs wraps first: this binds the new filesystem (and its anchor) to the tenant.
            if bind(shared, &tenant_id, fs, anchors::Proof::Wrap).await? == Check::OtherTenant {
                return Err(err(
                    StatusCode::FORBIDDEN,
                    "wrong_tenant",
                    "this filesystem belongs to another tenant",
                ));
            }
            let wrapped = keys::wrap(&*kek(v)?, &tenant_id, &fs, v, &key);
            reply(&WrappedReply {
                key_version: v,
                wrapped: b64e(&wrapped),
            })
        }
        Op::Unwrap | Op::Rewrap => {
            let r: UnwrapRequest = serde_json::from_slice(&body).map_err(parse_err)?;
            let fs = parse_uuid(&r.fs_uuid)?;
            ev.fs_uuid = Some(hex::encode(fs));
            ev.key_version = Some(r.key_version);
            if !tenant.version_usable(r.key_version) {
                return Err(err(
                    StatusCode::NOT_FOUND,
                    "unknown_key_version",
                    format!("key version {} unknown or retired", r.key_version),
                ));
            }
            let wrapped = b64d(&r.wrapped, "wrapped")?;
            let key = keys::unwrap(
                &*kek(r.key_version)?,
                &tenant_id,
                &fs,
                r.key_version,
                &wrapped,
            )
            .ok_or_else(|| {
                err(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unwrap_failed",
                    "wrapped key does not open for this tenant, filesystem and key version",
                )
            })?;
            // The wrap opened under this tenant's KEK: the filesystem is this tenant's.
            if bind(shared, &tenant_id, fs, anchors::Proof::Unwrap).await? == Check::OtherTenant {
                ev.reason = "the filesystem's anchor is bound to another tenant".into();
            }
            if op == Op::Unwrap {
                return reply(&KeyReply { key: b64e(&key) });
            }
            let v = tenant.current;
            let rewrapped = keys::wrap(&*kek(v)?, &tenant_id, &fs, v, &key);
            ev.reason = format!("from version {} to {v}", r.key_version);
            ev.key_version = Some(v);
            reply(&WrappedReply {
                key_version: v,
                wrapped: b64e(&rewrapped),
            })
        }
        Op::Anchor | Op::CheckAnchor => {
            let parse_digest = |h: &str| {
                let mut d = [0u8; 32];
                hex::decode_to_slice(h, &mut d)
                    .map(|()| hex::encode(d))
                    .map_err(|_| bad("digest must be 64 hex digits"))
            };
            let (fs_hex, epoch, digest) = if op == Op::Anchor {
                let r: AnchorRequest = serde_json::from_slice(&body).map_err(parse_err)?;
                let d = parse_digest(&r.digest)?;
                (hex::encode(parse_uuid(&r.fs_uuid)?), r.epoch, Some(d))
            } else {
                let r: CheckAnchorRequest = serde_json::from_slice(&body).map_err(parse_err)?;
                let d = r.digest.as_deref().map(parse_digest).transpose()?;
                (hex::encode(parse_uuid(&r.fs_uuid)?), r.epoch, d)
            };
            ev.fs_uuid = Some(fs_hex.clone());
            ev.reason = match &digest {
                Some(d) => format!("epoch {epoch} digest {}", d.get(..16).unwrap_or(d)),
                None => format!("epoch {epoch}"),
            };
            let state = shared.state.clone();
            let t = tenant_id.clone();
            let presented = digest.clone();
            let res = tokio::task::spawn_blocking(move || match (op, digest) {
                (Op::Anchor, Some(d)) => anchors::record(&state, &t, &fs_hex, epoch, &d),
                (_, d) => anchors::check(&state, &t, &fs_hex, epoch, d.as_deref()),
            })
            .await
            .map_err(|e| internal(Error::Invalid(e.to_string())))?
            .map_err(internal)?;
            match res {
                Check::Ok(newest) => reply(&AnchorReply {
                    newest_epoch: newest,
                }),
                Check::Rollback(newest) => Err(err(
                    StatusCode::CONFLICT,
                    "rollback",
                    format!("epoch {epoch} is older than the recorded epoch {newest}"),
                )),
                Check::Replaced(recorded) => Err(err(
                    StatusCode::CONFLICT,
                    "rollback",
                    format!(
                        "at epoch {epoch} the service recorded metadata digest {}…, this \
                         superblock has {}…: the metadata was replaced or rolled back under \
                         the newest superblock",
                        recorded.get(..16).unwrap_or(&recorded),
                        presented
                            .as_deref()
                            .and_then(|p| p.get(..16))
                            .unwrap_or_default()
                    ),
                )),
                Check::OtherTenant => Err(err(
                    StatusCode::FORBIDDEN,
                    "wrong_tenant",
                    "this filesystem's anchor belongs to another tenant",
                )),
                Check::Unbound => Err(err(
                    StatusCode::FORBIDDEN,
                    "wrong_tenant",
                    "this filesystem is bound to no tenant here: no key of it was wrapped or \
                     unwrapped by this tenant at this service",
                )),
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 | i))
    }

    /// Fuzzes the request bodies' decoding as `process` does it (the typed, deny-unknown-fields
    /// structs, then the uuid, base64 and digest fields): every mutated body must decode or be
    /// refused, never panic. Bodies are capped at 16 KiB before they get here.
    /// `DIGIMEDFS_FUZZ_ITERS` sets the number of inputs (default 3 000).
    #[test]
    fn request_bodies_decode_or_are_refused_never_panic() {
        let iters = digimedfs_core::testing::fuzz_iterations();
        let uuid = "0123456789abcdef0123456789abcdef";
        let seeds: Vec<Vec<u8>> = [
            format!(r#"{{"fs_uuid":"{uuid}","key":"{}"}}"#, b64e(&[7; 64])),
            format!(
                r#"{{"fs_uuid":"{uuid}","key_version":2,"wrapped":"{}"}}"#,
                b64e(&[1; 92])
            ),
            format!(
                r#"{{"fs_uuid":"{uuid}","epoch":9,"digest":"{}"}}"#,
                "ab".repeat(32)
            ),
            r#"{"fs_uuid":"01234567-89ab-cdef-0123-456789abcdef","epoch":18446744073709551615}"#
                .to_string(),
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let mut m = digimedfs_core::testing::Mutator::new(0x4B53_0002);
        let mut decoded = 0usize;
        for n in 0..iters {
            let body = m.input(&seeds);
            let outcome = std::panic::catch_unwind(|| {
                let mut ok = 0usize;
                if let Ok(r) = serde_json::from_slice::<WrapRequest>(&body) {
                    ok +=
                        usize::from(parse_uuid(&r.fs_uuid).is_ok() && b64d(&r.key, "key").is_ok());
                }
                if let Ok(r) = serde_json::from_slice::<UnwrapRequest>(&body) {
                    ok += usize::from(
                        parse_uuid(&r.fs_uuid).is_ok() && b64d(&r.wrapped, "wrapped").is_ok(),
                    );
                }
                if let Ok(r) = serde_json::from_slice::<AnchorRequest>(&body) {
                    let mut d = [0u8; 32];
                    ok += usize::from(
                        parse_uuid(&r.fs_uuid).is_ok()
                            && hex::decode_to_slice(&r.digest, &mut d).is_ok(),
                    );
                }
                if let Ok(r) = serde_json::from_slice::<CheckAnchorRequest>(&body) {
                    ok += usize::from(parse_uuid(&r.fs_uuid).is_ok());
                }
                ok
            });
            match outcome {
                Ok(k) => decoded += k,
                Err(_) => panic!("body {n} panicked: {}", String::from_utf8_lossy(&body)),
            }
        }
        assert!(decoded > 0, "no mutated body decoded at all");
    }

    /// However many addresses send noise, the aggregation table stays bounded and every
    /// request is still counted (the excess under the overflow key).
    #[test]
    fn noise_table_is_bounded_and_counts_everything() {
        let noise = Noise {
            table: Mutex::new(HashMap::new()),
        };
        for i in 0..5_000u32 {
            noise.add(ip(i), 401, "unauthorized");
            noise.add(ip(i), 401, "unauthorized");
        }
        let t = noise.table.lock().unwrap();
        assert!(t.len() <= NOISE_KEYS + 1, "{} keys", t.len());
        assert_eq!(t.values().map(|c| c.count).sum::<u64>(), 10_000);
        let overflow = t
            .iter()
            .find(|(k, _)| k.ip.is_none())
            .map(|(_, c)| c.count)
            .expect("an overflow key");
        assert_eq!(overflow, 2 * (5_000 - NOISE_KEYS as u64));
    }

    /// The limiter's tables stay bounded under fresh keys; an address or token over its
    /// limit is reported, one under it is not.
    #[test]
    fn limiter_windows_are_bounded() {
        let w: Window<u32> = Window::new(3);
        for k in 0..(LIMITER_ENTRIES as u32 + 500) {
            assert!(!w.fail(k));
        }
        assert!(w.map.lock().unwrap().len() <= LIMITER_ENTRIES);
        assert!(!w.fail(0) && !w.fail(0));
        assert!(w.fail(0), "the 4th failure of key 0 is over the limit of 3");
    }
}
