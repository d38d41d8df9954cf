//! What refused traffic may cost: failed authentications counted per presented token and
//! per address in bounded one-minute windows, and refused unauthenticated requests counted
//! per (address, status, code) in a bounded table written to the audit log as summaries.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;

use crate::audit::{AuditLog, Event};

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
pub(super) struct Limiter {
    tokens: Window<[u8; 32]>,
    addrs: Window<IpAddr>,
}

impl Limiter {
    /// At most `token_limit` failures a minute per presented token and `address_limit` per
    /// address.
    pub(super) fn new(token_limit: u32, address_limit: u32) -> Limiter {
        Limiter {
            tokens: Window::new(token_limit),
            addrs: Window::new(address_limit),
        }
    }

    /// Records a failed authentication (`token`: the hash of the presented token, if any);
    /// true if the request is to be answered with 429 rather than 401.
    pub(super) fn fail(&self, ip: IpAddr, token: Option<[u8; 32]>) -> bool {
        let by_addr = self.addrs.fail(ip);
        let by_token = token.is_some_and(|t| self.tokens.fail(t));
        by_addr || by_token
    }
}

/// Refused unauthenticated requests, counted per (address, status, code) and written to the
/// audit log as one summary record per key and interval. At most [`NOISE_KEYS`] keys; the
/// rest are counted under one overflow key without an address.
pub(super) struct Noise {
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
    /// An empty table.
    pub(super) fn new() -> Noise {
        Noise {
            table: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn add(&self, ip: IpAddr, status: u16, code: &'static str) {
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
    pub(super) fn flush(&self, audit: &AuditLog) {
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
