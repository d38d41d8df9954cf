//! Prometheus metrics (text exposition format 0.0.4) on a listener of their own: plain HTTP,
//! `GET /metrics`, enabled by `serve --metrics-listen ADDR` (docs/keyservice.md, "Metrics").
//!
//! Why not a `/metrics` endpoint on the TLS listener: that listener faces every client
//! network, and each unauthenticated endpoint there is more for anyone to probe; a scraper
//! would need the service's CA, and a token would need its own role. The separate listener is
//! off unless asked for, and meant for loopback (a local Prometheus or agent); it answers
//! nothing but `GET /metrics`, at most [`MAX_CONNECTIONS`] connections at a time.
//!
//! What the metrics hold: counters and gauges only, with label values from fixed sets (endpoint
//! names, result classes), never from a request, and no tenant or token names (tenant ids name
//! projects, docs/threat-model.md); tenants and key versions are totals.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// totals.
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
}
