//! Request processing: routing, authentication and its limits, the per-endpoint operations
//! (wrap, unwrap, rewrap, anchor, check_anchor), their audit records and the JSON replies.
//! Every authenticated request is audited before it is answered; an unwritable audit log
//! refuses it (500).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use rand::RngCore;
use serde_json::json;
use zeroize::{Zeroize, Zeroizing};

use super::metrics::Outcome;
use super::{Shared, MAX_BODY};
use crate::anchors::{self, Check};
use crate::audit::Event;
use crate::client::protocol::{
    AnchorReply, AnchorRequest, CheckAnchorRequest, ErrorReply, KeyReply, UnwrapRequest,
    WrapRequest, WrappedReply, PATH_ANCHOR, PATH_CHECK_ANCHOR, PATH_REWRAP, PATH_UNWRAP, PATH_WRAP,
};
use crate::keys::{self, MASTER_KEY_LEN};
use crate::registry::{Role, TenantState, TokenMatch};
use crate::Error;

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

pub(super) async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let started = std::time::Instant::now();
    let path = req.uri().path().to_string();
    if path == "/v1/health" && req.method() == Method::GET {
        shared
            .metrics
            .request(&path, Outcome::Ok, started.elapsed());
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
    let mut caller = Caller::default();
    let result = process(&shared, peer, req, &mut ev, &mut caller).await;
    if let (Err(e), false) = (&result, caller.authenticated) {
        // Refused before a token authenticated: counted, summarized per interval, never
        // written (let alone fsynced) one by one, so it cannot fill the disk or slow the log.
        shared.noise.add(peer.ip(), e.status.as_u16(), e.code);
        shared
            .metrics
            .request(&path, Outcome::Unauthenticated, started.elapsed());
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
        shared.metrics.audit_failed();
        shared
            .metrics
            .request(&path, Outcome::Error, started.elapsed());
        if let Some(t) = &caller.tenant {
            shared.metrics.tenant(t, &path, Outcome::Error);
        }
        return Ok(json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &error_reply("audit_failed", "audit log cannot be written", &request_id),
        ));
    }
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(e) if e.status.is_server_error() => Outcome::Error,
        Err(_) => Outcome::Refused,
    };
    shared.metrics.request(&path, outcome, started.elapsed());
    if let Some(t) = &caller.tenant {
        shared.metrics.tenant(t, &path, outcome);
    }
    if result.is_ok() && path == PATH_UNWRAP {
        shared.metrics.key_released();
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

/// Who a request authenticated as; [`process`] fills it in as it learns it.
#[derive(Default)]
struct Caller {
    /// A token matched (revoked or not): the request is audited on its own.
    authenticated: bool,
    /// The tenant of that token if it is a tenant token and the registry has the tenant
    /// (active or revoked): the only source of the per-tenant metrics' `tenant` label, so a
    /// request can never add a label value of its own choosing.
    tenant: Option<String>,
}

async fn process(
    shared: &Shared,
    peer: SocketAddr,
    req: Request<Incoming>,
    ev: &mut Event,
    caller: &mut Caller,
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
    caller.authenticated = true;
    caller.tenant = rec
        .tenant
        .as_ref()
        .filter(|t| rec.role == Role::Tenant && registry.tenants.contains_key(t.as_str()))
        .cloned();
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
        shared.metrics.kek_derived();
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
}
