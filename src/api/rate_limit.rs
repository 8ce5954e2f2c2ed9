//! Per-token rate limiting (GCRA via governor). Keys are principals, so one user's burst never
//! slows another's.

use std::num::NonZeroU32;

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
