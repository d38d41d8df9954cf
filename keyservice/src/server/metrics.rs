//! Prometheus metrics (text exposition format 0.0.4) on a listener of their own: plain HTTP,
//! `GET /metrics`, enabled by `serve --metrics-listen ADDR` (docs/keyservice.md, "Metrics").
//!
//! Why not a `/metrics` endpoint on the TLS listener: that listener faces every client
//! network, and each unauthenticated endpoint there is more for anyone to probe; a scraper
//! would need the service's CA, and a token would need its own role. The separate listener is
//! off unless asked for, and meant for loopback (a local Prometheus or agent); it answers
//! nothing but `GET /metrics`, at most [`MAX_CONNECTIONS`] connections at a time.
//!
//! What the metrics hold: counters and gauges only. Label values come from fixed sets (endpoint
//! names, result classes) or, for the per-tenant counters of wraps, unwraps and rewraps, from
//! the service's own registry: the tenant of the token a request authenticated with, and only
//! if the registry has that tenant. Nothing a client sends becomes a label value, so the
//! number of series is bounded by the tenants the registry held since the start (a revoked
//! tenant keeps its series; one dropped from the registry keeps the series it had until the
//! service restarts). No token or filesystem is named; key versions are totals.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::registry::{Registry, TenantState};

/// Concurrent connections to the metrics listener; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;

/// The endpoints requests are counted by; anything else is `other`.
const ENDPOINTS: [&str; 7] = [
    "wrap",
    "unwrap",
    "rewrap",
    "anchor",
    "check_anchor",
    "health",
    "other",
];

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered 200.
    Ok = 0,
    /// Refused after its token authenticated (4xx): revoked, wrong tenant, rollback, ...
    Refused = 1,
    /// Failed in the service (5xx), e.g. the audit log could not be written.
    Error = 2,
    /// Refused before a token authenticated: no or unknown token, rate limit, unknown
    /// endpoint or method.
    Unauthenticated = 3,
}

const OUTCOMES: [&str; 4] = ["ok", "refused", "error", "unauthenticated"];

/// The endpoints counted per tenant, each as (path, metric name, what it counts).
const TENANT_OPS: [(&str, &str, &str); 3] = [
    ("/v1/wrap", "digimed_keyservice_wraps_total", "Wrap"),
    ("/v1/unwrap", "digimed_keyservice_unwraps_total", "Unwrap"),
    ("/v1/rewrap", "digimed_keyservice_rewraps_total", "Rewrap"),
];

/// The results counted per tenant: the first three [`OUTCOMES`], since a request counted for a
/// tenant has authenticated.
const TENANT_OUTCOMES: usize = 3;

/// One tenant's requests to the [`TENANT_OPS`] endpoints, by [`Outcome`].
type TenantCounts = [[u64; TENANT_OUTCOMES]; TENANT_OPS.len()];

/// Upper bounds of the request duration histogram's buckets, in microseconds: from a cached
/// unwrap (well under a millisecond) to one that waits on a slow audit disk.
const DURATION_BUCKETS_US: [u64; 9] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 500_000, 2_000_000,
];

/// How long one endpoint's requests took: a count per bucket of [`DURATION_BUCKETS_US`] (and
/// one beyond the last), their sum and their number.
#[derive(Default)]
struct Durations {
    buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

/// The service's counters; updated by request handling, read by [`Metrics::render`].
pub(crate) struct Metrics {
    start: f64,
    requests: [[AtomicU64; OUTCOMES.len()]; ENDPOINTS.len()],
    durations: [Durations; ENDPOINTS.len()],
    kek_derivations: AtomicU64,
    keys_released: AtomicU64,
    audit_failures: AtomicU64,
    connections: AtomicU64,
    /// Requests per tenant id; keys only ever come from the registry (see [`Metrics::tenant`]).
    tenants: Mutex<BTreeMap<String, TenantCounts>>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            start: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            requests: Default::default(),
            durations: Default::default(),
            kek_derivations: AtomicU64::new(0),
            keys_released: AtomicU64::new(0),
            audit_failures: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            tenants: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts a request to `path` by `tenant` that ended with `outcome`, if `path` is one of
    /// [`TENANT_OPS`]. `tenant` must be the registry's tenant of the token the request
    /// authenticated with (the registry has it), never anything the request itself names:
    /// every call adds a tenant's series for good.
    pub(crate) fn tenant(&self, tenant: &str, path: &str, outcome: Outcome) {
        let Some(op) = TENANT_OPS.iter().position(|&(p, _, _)| p == path) else {
            return;
        };
        if outcome as usize >= TENANT_OUTCOMES {
            return;
        }
        // A panic elsewhere while holding the lock leaves plain counters, still usable.
        let mut map = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.contains_key(tenant) {
            map.insert(tenant.to_string(), TenantCounts::default());
        }
        if let Some(c) = map
            .get_mut(tenant)
            .and_then(|t| t.get_mut(op))
            .and_then(|row| row.get_mut(outcome as usize))
        {
            *c += 1;
        }
    }

    /// Counts a request to `path` that ended with `outcome` after `took`.
    pub(crate) fn request(&self, path: &str, outcome: Outcome, took: Duration) {
        let name = path.strip_prefix("/v1/").unwrap_or_default();
        let e = ENDPOINTS
            .iter()
            .position(|&n| n == name)
            .unwrap_or(ENDPOINTS.len() - 1);
        if let Some(c) = self
            .requests
            .get(e)
            .and_then(|row| row.get(outcome as usize))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(d) = self.durations.get(e) {
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            let b = DURATION_BUCKETS_US
                .iter()
                .position(|&le| us <= le)
                .unwrap_or(DURATION_BUCKETS_US.len());
            if let Some(c) = d.buckets.get(b) {
                c.fetch_add(1, Ordering::Relaxed);
            }
            d.sum_us.fetch_add(us, Ordering::Relaxed);
            d.count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one derivation of a tenant's key-encryption key.
    pub(crate) fn kek_derived(&self) {
        self.kek_derivations.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a master key handed out (a successful unwrap).
    pub(crate) fn key_released(&self) {
        self.keys_released.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an audit record that could not be written (the request was refused).
    pub(crate) fn audit_failed(&self) {
        self.audit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an accepted TCP connection on the API listener.
    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text; `registry` (if it could be read) gives the tenant and key version
    /// totals, and the tenants whose per-tenant counters are shown at 0 before their first
    /// request (so that `increase()` sees that request too).
    pub(crate) fn render(&self, registry: Option<&Registry>) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let head = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut o,
            "digimed_keyservice_start_time_seconds",
            "gauge",
            "Start time of the service since the Unix epoch.",
        );
        let _ = writeln!(o, "digimed_keyservice_start_time_seconds {}", self.start);
        head(
            &mut o,
            "digimed_keyservice_requests_total",
            "counter",
            "API requests by endpoint and result (ok, refused after authentication, error in \
             the service, unauthenticated).",
        );
        for (e, row) in ENDPOINTS.iter().zip(&self.requests) {
            for (r, c) in OUTCOMES.iter().zip(row) {
                let _ = writeln!(
                    o,
                    "digimed_keyservice_requests_total{{endpoint=\"{e}\",result=\"{r}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        head(
            &mut o,
            "digimed_keyservice_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its answer (audit record written), by endpoint.",
        );
        for (e, d) in ENDPOINTS.iter().zip(&self.durations) {
            let name = "digimed_keyservice_request_duration_seconds";
            let mut cumulative = 0;
            for (le, c) in DURATION_BUCKETS_US.iter().zip(&d.buckets) {
                cumulative += c.load(Ordering::Relaxed);
                let le = *le as f64 / 1e6;
                let _ = writeln!(
                    o,
                    "{name}_bucket{{endpoint=\"{e}\",le=\"{le}\"}} {cumulative}"
                );
            }
            // Read after the buckets: a request counted meanwhile may make the count exceed
            // the +Inf bucket by one until the next scrape, never fall below it.
            let count = d.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "{name}_bucket{{endpoint=\"{e}\",le=\"+Inf\"}} {}",
                count.max(cumulative)
            );
            let sum = d.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "{name}_sum{{endpoint=\"{e}\"}} {sum}");
            let _ = writeln!(
                o,
                "{name}_count{{endpoint=\"{e}\"}} {}",
                count.max(cumulative)
            );
        }
        for (name, help, c) in [
            (
                "digimed_keyservice_kek_derivations_total",
                "Derivations of a tenant key-encryption key (wrap, unwrap, rewrap, all tenants).",
                &self.kek_derivations,
            ),
            (
                "digimed_keyservice_keys_released_total",
                "Master keys handed out by unwrap (all tenants).",
                &self.keys_released,
            ),
            (
                "digimed_keyservice_audit_failures_total",
                "Audit records that could not be written (each refused its request).",
                &self.audit_failures,
            ),
            (
                "digimed_keyservice_connections_total",
                "TCP connections accepted on the API listener.",
                &self.connections,
            ),
        ] {
            head(&mut o, name, "counter", help);
            let _ = writeln!(o, "{name} {}", c.load(Ordering::Relaxed));
        }
        let mut per_tenant = self
            .tenants
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for id in registry.iter().flat_map(|r| r.tenants.keys()) {
            per_tenant.entry(id.clone()).or_default();
        }
        for (op, (_, name, what)) in TENANT_OPS.iter().enumerate() {
            head(
                &mut o,
                name,
                "counter",
                &format!(
                    "{what} requests that authenticated with a token of the tenant, by result \
                     (ok, refused after authentication, error in the service)."
                ),
            );
            for (tenant, counts) in &per_tenant {
                let tenant = escape_label(tenant);
                let row = counts.get(op).copied().unwrap_or_default();
                for (r, n) in OUTCOMES.iter().zip(row) {
                    let _ = writeln!(o, "{name}{{tenant=\"{tenant}\",result=\"{r}\"}} {n}");
                }
            }
        }
        if let Some(reg) = registry {
            let (mut active, mut revoked, mut usable, mut retired, mut newest) = (0, 0, 0, 0, 0);
            for t in reg.tenants.values() {
                match t.state {
                    TenantState::Active => active += 1,
                    _ => revoked += 1,
                }
                let r = t
                    .retired
                    .iter()
                    .filter(|&&v| v >= 1 && v <= t.current)
                    .count();
                retired += r;
                usable += (t.current as usize).saturating_sub(r);
                newest = newest.max(t.current);
            }
            head(
                &mut o,
                "digimed_keyservice_tenants",
                "gauge",
                "Tenants by state.",
            );
            let _ = writeln!(o, "digimed_keyservice_tenants{{state=\"active\"}} {active}");
            let _ = writeln!(
                o,
                "digimed_keyservice_tenants{{state=\"revoked\"}} {revoked}"
            );
            head(
                &mut o,
                "digimed_keyservice_key_versions",
                "gauge",
                "Key versions of all tenants: usable (unwrap works) or retired.",
            );
            let _ = writeln!(
                o,
                "digimed_keyservice_key_versions{{state=\"usable\"}} {usable}"
            );
            let _ = writeln!(
                o,
                "digimed_keyservice_key_versions{{state=\"retired\"}} {retired}"
            );
            head(
                &mut o,
                "digimed_keyservice_newest_key_version",
                "gauge",
                "The highest current key version of any tenant.",
            );
            let _ = writeln!(o, "digimed_keyservice_newest_key_version {newest}");
        }
        o
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<super::Shared>,
    io_timeout: Duration,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics listener: too many connections; closed");
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&shared, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(io_timeout)
                .serve_connection(TokioIo::new(tcp), svc);
            // A scraper that stops reading cannot hold its slot forever.
            match tokio::time::timeout(io_timeout * 3, conn).await {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

/// A label value escaped as the text format requires: backslash, double quote and line feed.
/// Tenant ids are checked when `tenant add` creates them (1 to 64 of `A-Z a-z 0-9 . _ -`,
/// `keys::check_tenant_id`), but `registry.json` is read without checking them again, so an
/// edited registry could hold any string; escaping keeps the exposition well formed anyway.
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 8);
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

fn answer<B>(shared: &super::Shared, req: &hyper::Request<B>) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() != "/metrics" {
        (StatusCode::NOT_FOUND, "only /metrics here\n".to_string())
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        (StatusCode::METHOD_NOT_ALLOWED, "use GET\n".to_string())
    } else {
        let registry = shared.registry.current();
        if let Err(e) = &registry {
            tracing::warn!(error = %e, "metrics: registry unreadable; tenant totals left out");
        }
        (
            StatusCode::OK,
            shared.metrics.render(registry.ok().as_deref()),
        )
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_known_endpoint_only() {
        let m = Metrics::new();
        let ms = Duration::from_millis;
        m.request("/v1/unwrap", Outcome::Ok, ms(0));
        m.request("/v1/unwrap", Outcome::Ok, ms(3));
        m.request("/v1/<script>", Outcome::Unauthenticated, ms(0));
        m.request("/metrics", Outcome::Unauthenticated, ms(0));
        let text = m.render(None);
        assert!(text
            .contains("digimed_keyservice_requests_total{endpoint=\"unwrap\",result=\"ok\"} 2\n"));
        assert!(text.contains(
            "digimed_keyservice_requests_total{endpoint=\"other\",result=\"unauthenticated\"} 2\n"
        ));
        assert!(
            !text.contains("script"),
            "a request path became a label: {text}"
        );
        // Durations: cumulative buckets, 0 ms in the first, 3 ms from the 5 ms bucket on.
        let d = "digimed_keyservice_request_duration_seconds";
        for (le, n) in [
            ("0.0005", 1),
            ("0.0025", 1),
            ("0.005", 2),
            ("2", 2),
            ("+Inf", 2),
        ] {
            let line = format!("{d}_bucket{{endpoint=\"unwrap\",le=\"{le}\"}} {n}\n");
            assert!(text.contains(&line), "no {line:?} in {text}");
        }
        assert!(text.contains(&format!("{d}_count{{endpoint=\"unwrap\"}} 2\n")));
        assert!(text.contains(&format!("{d}_sum{{endpoint=\"unwrap\"}} 0.003\n")));
        assert!(text.contains(&format!("{d}_count{{endpoint=\"wrap\"}} 0\n")));
        assert_eq!(text.matches(&format!("# TYPE {d} histogram")).count(), 1);
    }

    #[test]
    fn tenant_counters_start_at_zero_for_registry_tenants_and_escape_ids() {
        let tenant = |state| crate::registry::Tenant {
            seed_sealed: String::new(),
            current: 1,
            retired: Default::default(),
            state,
        };
        let mut reg = Registry::default();
        reg.tenants
            .insert("idle".into(), tenant(TenantState::Active));
        reg.tenants
            .insert("gone".into(), tenant(TenantState::Revoked));
        let m = Metrics::new();
        m.tenant("lab-1", "/v1/unwrap", Outcome::Ok);
        m.tenant("lab-1", "/v1/unwrap", Outcome::Ok);
        m.tenant("lab-1", "/v1/unwrap", Outcome::Refused);
        m.tenant("lab-1", "/v1/rewrap", Outcome::Error);
        m.tenant("lab-1", "/v1/anchor", Outcome::Ok);
        m.tenant("lab-1", "/v1/unwrap", Outcome::Unauthenticated);
        // Only an edited registry.json could hold such an id; it must not break the format.
        m.tenant("a\"b\\c\nd", "/v1/wrap", Outcome::Ok);
        let text = m.render(Some(&reg));
        let u = "digimed_keyservice_unwraps_total";
        for (t, r, n) in [
            ("lab-1", "ok", 2),
            ("lab-1", "refused", 1),
            ("lab-1", "error", 0),
            ("idle", "ok", 0),
            ("gone", "refused", 0),
        ] {
            let line = format!("{u}{{tenant=\"{t}\",result=\"{r}\"}} {n}\n");
            assert!(text.contains(&line), "no {line:?} in {text}");
        }
        assert!(text
            .contains("digimed_keyservice_rewraps_total{tenant=\"lab-1\",result=\"error\"} 1\n"));
        assert!(text.contains(
            "digimed_keyservice_wraps_total{tenant=\"a\\\"b\\\\c\\nd\",result=\"ok\"} 1\n"
        ));
        assert!(
            !text
                .lines()
                .any(|l| l.contains("tenant=") && l.contains("unauthenticated")),
            "{text}"
        );
        // Without the registry, only tenants that made requests are shown.
        let text = m.render(None);
        assert!(text.contains(&format!("{u}{{tenant=\"lab-1\",result=\"ok\"}} 2\n")));
        assert!(!text.contains("idle"), "{text}");
        assert_eq!(text.matches(&format!("# TYPE {u} counter")).count(), 1);
    }
}
