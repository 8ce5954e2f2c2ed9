//! How long the worker waits after a failed send: exponential backoff with full jitter
//! (a uniformly random wait up to the exponential cap), or what `Retry-After` asks.

use std::time::Duration;

use super::sink::SinkError;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The exponential cap after `failures` consecutive failures (1 for the first).
    pub fn cap(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The wait after `failures` consecutive failures, `unit` in [0, 1) being the jitter.
    pub fn wait(&self, failures: u32, unit: f64) -> Duration {
        self.cap(failures).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// What to do about an error.
#[derive(Debug, Clone, PartialEq)]
pub enum Remedy {
    /// Try again after exactly this long (the server said so).
    RetryAfter(Duration),
    /// Try again after a jittered backoff.
    Backoff,
    /// Never going to work as it is: dead-letter it now.
    Bury,
    /// A client error that might clear (auth, not found): count it, bury after N.
    Count,
}

pub fn remedy(error: &SinkError) -> Remedy {
    match error {
        SinkError::Unreachable(_) => Remedy::Backoff,
        SinkError::Status {
            status: 429 | 503,
            retry_after: Some(after),
            ..
        } => Remedy::RetryAfter(*after),
        SinkError::Status {
            status: 400 | 422, ..
        } => Remedy::Bury,
        SinkError::Status { status, .. } if (400..500).contains(status) && *status != 429 => {
            Remedy::Count
        }
        SinkError::Status { .. } => Remedy::Backoff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, after: Option<u64>) -> SinkError {
        SinkError::Status {
            status: code,
            retry_after: after.map(Duration::from_secs),
            body: String::new(),
        }
    }

    #[test]
    fn the_cap_doubles_up_to_the_maximum() {
        let backoff = Backoff::default();
        assert_eq!(backoff.cap(1), Duration::from_millis(500));
        assert_eq!(backoff.cap(2), Duration::from_secs(1));
        assert_eq!(backoff.cap(4), Duration::from_secs(4));
        assert_eq!(backoff.cap(30), Duration::from_secs(300));
        assert_eq!(backoff.cap(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn full_jitter_stays_under_the_cap() {
        let backoff = Backoff::default();
        assert_eq!(backoff.wait(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.wait(3, 0.5), Duration::from_secs(1));
        assert!(backoff.wait(3, 0.999) < backoff.cap(3));
    }

    #[test]
    fn each_answer_has_its_remedy() {
        assert_eq!(
            remedy(&status(503, Some(7))),
            Remedy::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(
            remedy(&status(429, Some(2))),
            Remedy::RetryAfter(Duration::from_secs(2))
        );
        assert_eq!(remedy(&status(429, None)), Remedy::Backoff);
        assert_eq!(remedy(&status(503, None)), Remedy::Backoff);
        assert_eq!(remedy(&status(500, None)), Remedy::Backoff);
        assert_eq!(remedy(&status(400, None)), Remedy::Bury);
        assert_eq!(remedy(&status(422, None)), Remedy::Bury);
        assert_eq!(remedy(&status(401, None)), Remedy::Count);
        assert_eq!(remedy(&status(404, None)), Remedy::Count);
        assert_eq!(
            remedy(&SinkError::Unreachable("refused".into())),
            Remedy::Backoff
        );
    }
}
