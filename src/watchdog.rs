//! sd-notify: READY, STATUS, WATCHDOG, STOPPING and EXTEND_TIMEOUT. WATCHDOG=1 is sent only
//! by the daemon's main loop after it has seen the store answer; never from a timer of its own.

use std::time::Duration;

use sd_notify::NotifyState;

pub struct Watchdog {
    interval: Option<Duration>,
}

impl Watchdog {
    /// Reads `WATCHDOG_USEC` (and `WATCHDOG_PID`, which when set must be this process, as
    /// `sd_watchdog_enabled` does).
    pub fn from_env() -> Watchdog {
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && for_us);
        Watchdog {
            interval: usec.map(|usec| Duration::from_micros(usec / 2)),
        }
    }

    /// How often to ping: half of `WATCHDOG_USEC`, or `None` when no watchdog is armed.
    pub fn ping_interval(&self) -> Option<Duration> {
        self.interval
    }

    pub fn ready(&self, status: &str) {
        notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        notify(&[NotifyState::Status(status)]);
    }

    /// Asks systemd for more start-up or shutdown time while long work runs.
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    pub fn ping(&self) {
        if self.interval.is_some() {
            notify(&[NotifyState::Watchdog]);
        }
    }

    pub fn stopping(&self, status: &str) {
        notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
