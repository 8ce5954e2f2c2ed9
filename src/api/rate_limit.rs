//! Per-token rate limiting (GCRA via governor). Keys are principals, so one user's burst never
//! slows another's. And a limit on failed authentications per source address (`AuthFailures`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Instant;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter as Governor};

use super::auth::Principal;
use super::error::ApiError;

pub struct RateLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        RateLimiter {
            limiter: Governor::keyed(Quota::per_second(per_second).allow_burst(burst)),
            clock: DefaultClock::default(),
        }
    }

    pub fn check(&self, principal: &Principal) -> Result<(), ApiError> {
        self.limiter
            .check_key(&principal.rate_key())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                ApiError::RateLimited {
                    retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                }
            })
    }

    /// Forgets keys whose buckets are full again, so the key map stays bounded.
    pub fn prune(&self) {
        self.limiter.retain_recent();
    }
}

/// How many source addresses the failed-authentication limit tracks at most. Beyond it, the
/// buckets that are full again are forgotten first; if none is, a new address goes untracked
/// (an attacker with that many addresses is not slowed by a per-address limit anyway).
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Failed authentications per source address: a token bucket of `burst` failures that refills
/// at `per_minute`. While an address's bucket is empty, every request from it that carries a
/// token is refused with 429, the right token included: otherwise a guesser would learn which
/// guess was right from the one answer that is not 429. IPv6 addresses count per /64.
pub struct AuthFailures {
    per_second: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl AuthFailures {
    /// `per_minute == 0` turns the limit off.
    pub fn new(per_minute: u32, burst: u32) -> AuthFailures {
        AuthFailures {
            per_second: f64::from(per_minute) / 60.0,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn key(addr: IpAddr) -> IpAddr {
        match addr {
            IpAddr::V4(_) => addr,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            },
        }
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
    }

    /// Refuses an address whose failures used up its bucket.
    pub fn check(&self, addr: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(addr) = addr.filter(|_| self.per_second > 0.0) else {
            return Ok(());
        };
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(bucket) = buckets.get_mut(&Self::key(addr)) else {
            return Ok(());
        };
        self.refill(bucket, Instant::now());
        if bucket.tokens >= 1.0 {
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.per_second;
        Err(ApiError::RateLimited {
            retry_after_secs: wait.ceil().max(1.0) as u64,
        })
    }

    /// Counts one failed authentication from `addr`.
    pub fn record(&self, addr: Option<IpAddr>) {
        let Some(addr) = addr.filter(|_| self.per_second > 0.0) else {
            return;
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED_ADDRESSES {
            self.retain_unfull(&mut buckets, now);
        }
        let key = Self::key(addr);
        if buckets.len() >= MAX_TRACKED_ADDRESSES && !buckets.contains_key(&key) {
            return;
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    fn retain_unfull(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, bucket| {
            self.refill(bucket, now);
            bucket.tokens < self.burst
        });
    }

    /// Forgets addresses whose buckets are full again, so the map stays small.
    pub fn prune(&self) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        self.retain_unfull(&mut buckets, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_one_address_only() {
        let failures = AuthFailures::new(1, 3);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        let b = Some(IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert!(failures.check(a).is_ok());
            failures.record(a);
        }
        assert!(matches!(
            failures.check(a),
            Err(ApiError::RateLimited { .. })
        ));
        assert!(failures.check(b).is_ok());
        assert!(failures.check(None).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64_and_zero_is_off() {
        let failures = AuthFailures::new(1, 1);
        failures.record(Some("2001:db8::1".parse().unwrap()));
        assert!(
            failures
                .check(Some("2001:db8::2".parse().unwrap()))
                .is_err()
        );
        assert!(
            failures
                .check(Some("2001:db8:0:1::1".parse().unwrap()))
                .is_ok()
        );
        let off = AuthFailures::new(0, 1);
        let a = Some(IpAddr::from([10, 0, 0, 1]));
        off.record(a);
        off.record(a);
        assert!(off.check(a).is_ok());
    }
}
