//! The HTTPS server: TLS on every connection, HTTP/1.1 + JSON, bearer-token auth.
//!
//! Endpoints (all POST with `Content-Type: application/json` and `Authorization: Bearer
//! TOKEN`, except `GET /v1/health`): `/v1/wrap`, `/v1/unwrap`, `/v1/rewrap`, `/v1/anchor`,
//! `/v1/check_anchor`. Limits: body ≤ 16 KiB (413), request headers within 10 s (slowloris),
//! body within 10 s (408), at most `max_connections` connections at once (further ones wait in
//! the kernel's accept queue), more than `failure_limit` failed authentications per client IP
//! per minute → 429. Every request except health is audited, and the audit line is fsynced
//! before the reply; if it cannot be written the reply is 500.

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
use serde::Deserialize;
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use crate::anchors::{self, Check};
use crate::audit::{AuditLog, Event};
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
    /// Concurrent connection cap.
    pub max_connections: usize,
    /// Time allowed for TLS handshake, request headers, and request body, each.
    pub io_timeout: Duration,
    /// Failed authentications per IP per minute before 429.
    pub failure_limit: u32,
}

impl ServerConfig {
    /// Defaults: 256 connections, 10 s timeouts, 10 failures per minute.
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
            io_timeout: Duration::from_secs(10),
            failure_limit: 10,
        }
    }
}

struct Limiter {
    limit: u32,
    map: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

const WINDOW: Duration = Duration::from_secs(60);

impl Limiter {
    fn blocked(&self, ip: IpAddr) -> bool {
        let Ok(m) = self.map.lock() else { return true };
        matches!(m.get(&ip), Some((start, n)) if start.elapsed() < WINDOW && *n >= self.limit)
    }

    fn fail(&self, ip: IpAddr) {
        let Ok(mut m) = self.map.lock() else { return };
        if m.len() > 10_000 {
            m.retain(|_, (s, _)| s.elapsed() < WINDOW);
        }
        let e = m.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 = e.1.saturating_add(1);
    }
}

struct Shared {
    root: RootSecret,
    state: StateDir,
    registry: RegistryView,
    audit: AuditLog,
    limiter: Limiter,
    io_timeout: Duration,
}

/// A bound, unsealed server, ready to [`Server::run`].
pub struct Server {
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    max_connections: usize,
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
        let audit = AuditLog::open(&audit_path)?;
        let tls = crate::tls::server_config(&cfg.tls_cert, &cfg.tls_key)?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| Error::Invalid(format!("listen on {}: {e}", cfg.listen)))?;
        Ok(Server {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls),
            shared: Arc::new(Shared {
                root,
                state,
                registry,
                audit,
                limiter: Limiter {
                    limit: cfg.failure_limit,
                    map: Mutex::new(HashMap::new()),
                },
                io_timeout: cfg.io_timeout,
            }),
            max_connections: cfg.max_connections.max(1),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| Error::Invalid(format!("local address: {e}")))
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.max_connections));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = sem.clone().acquire_owned() => p.map_err(|e| Error::Invalid(e.to_string()))?,
                () = &mut shutdown => return Ok(()),
            };
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let acceptor = self.acceptor.clone();
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let timeout = shared.io_timeout;
                let tls = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let svc = hyper::service::service_fn(move |req| handle(shared.clone(), peer, req));
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeout)
                    .serve_connection(TokioIo::new(tls), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
            });
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
    let result = process(&shared, peer, req, &mut ev).await;
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
            &json!({"error": "audit_failed", "message": "audit log cannot be written", "request_id": request_id}),
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
        Err(e) => json_response(
            e.status,
            &json!({"error": e.code, "message": e.message, "request_id": request_id}),
        ),
    })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WrapReq {
    fs_uuid: String,
    key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnwrapReq {
    fs_uuid: String,
    key_version: u32,
    wrapped: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorReq {
    fs_uuid: String,
    epoch: u64,
    digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckAnchorReq {
    fs_uuid: String,
    epoch: u64,
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
) -> std::result::Result<serde_json::Value, ApiError> {
    let op = match req.uri().path() {
        "/v1/wrap" => Op::Wrap,
        "/v1/unwrap" => Op::Unwrap,
        "/v1/rewrap" => Op::Rewrap,
        "/v1/anchor" => Op::Anchor,
        "/v1/check_anchor" => Op::CheckAnchor,
        _ => return Err(err(StatusCode::NOT_FOUND, "not_found", "no such endpoint")),
    };
    ev.op = op.name().into();
    if req.method() != Method::POST {
        return Err(err(StatusCode::METHOD_NOT_ALLOWED, "method", "use POST"));
    }
    let ip = peer.ip();
    if shared.limiter.blocked(ip) {
        return Err(err(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many failed authentications from this address; retry in a minute",
        ));
    }

    // Authentication.
    let registry = shared.registry.current().map_err(internal)?;
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_string()));
    let Some(token) = token else {
        shared.limiter.fail(ip);
        return Err(err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token",
        ));
    };
    let rec = match registry.find_token(&token) {
        TokenMatch::Found(r) => r,
        TokenMatch::Unknown => {
            shared.limiter.fail(ip);
            return Err(err(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown token",
            ));
        }
    };
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
            let mut r: WrapReq = serde_json::from_slice(&body).map_err(parse_err)?;
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
            let wrapped = keys::wrap(&*kek(v)?, &tenant_id, &fs, v, &key);
            Ok(json!({"key_version": v, "wrapped": b64e(&wrapped)}))
        }
        Op::Unwrap | Op::Rewrap => {
            let r: UnwrapReq = serde_json::from_slice(&body).map_err(parse_err)?;
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
            if op == Op::Unwrap {
                return Ok(json!({"key": b64e(&key)}));
            }
            let v = tenant.current;
            let rewrapped = keys::wrap(&*kek(v)?, &tenant_id, &fs, v, &key);
            ev.reason = format!("from version {} to {v}", r.key_version);
            ev.key_version = Some(v);
            Ok(json!({"key_version": v, "wrapped": b64e(&rewrapped)}))
        }
        Op::Anchor | Op::CheckAnchor => {
            let (fs_hex, epoch, digest) = if op == Op::Anchor {
                let r: AnchorReq = serde_json::from_slice(&body).map_err(parse_err)?;
                let mut d = [0u8; 32];
                hex::decode_to_slice(&r.digest, &mut d)
                    .map_err(|_| bad("digest must be 64 hex digits"))?;
                (
                    hex::encode(parse_uuid(&r.fs_uuid)?),
                    r.epoch,
                    Some(hex::encode(d)),
                )
            } else {
                let r: CheckAnchorReq = serde_json::from_slice(&body).map_err(parse_err)?;
                (hex::encode(parse_uuid(&r.fs_uuid)?), r.epoch, None)
            };
            ev.fs_uuid = Some(fs_hex.clone());
            ev.reason = format!("epoch {epoch}");
            let state = shared.state.clone();
            let t = tenant_id.clone();
            let res = tokio::task::spawn_blocking(move || match digest {
                Some(d) => anchors::record(&state, &t, &fs_hex, epoch, &d),
                None => anchors::check(&state, &t, &fs_hex, epoch),
            })
            .await
            .map_err(|e| internal(Error::Invalid(e.to_string())))?
            .map_err(internal)?;
            match res {
                Check::Ok(newest) => Ok(json!({"newest_epoch": newest})),
                Check::Rollback(newest) => Err(err(
                    StatusCode::CONFLICT,
                    "rollback",
                    format!("epoch {epoch} is older than the recorded epoch {newest}"),
                )),
                Check::OtherTenant => Err(err(
                    StatusCode::FORBIDDEN,
                    "wrong_tenant",
                    "this filesystem's anchor belongs to another tenant",
                )),
            }
        }
    }
}
