//! When jobs run: a plain interval or a daily local time, the jitter added to each run, and the
//! scheduler's clock.

use std::fmt;
use std::time::Duration;

use jiff::civil::{DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ZonedDateTime};
use serde::Serialize;

/// The most any run is delayed by jitter.
const MAX_JITTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every so often, counted from the end of the previous run (first: one period after start).
    Every(Duration),
    /// Once a day at this local wall-clock time.
    DailyAt { hour: u8, minute: u8 },
}

impl Schedule {
    /// Parses a daily time `HH:MM` (24-hour).
    pub fn parse_daily(text: &str) -> Result<Schedule, String> {
        let bad = || format!("{text:?} is not a time of day HH:MM (00:00 to 23:59)");
        let (h, m) = text.trim().split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        if hour > 23 || minute > 59 {
            return Err(bad());
        }
        Ok(Schedule::DailyAt { hour, minute })
    }

    /// The next run strictly after `now_ms` (before jitter).
    pub fn next_after(&self, now_ms: i64, tz: &TimeZone) -> i64 {
        match *self {
            Schedule::Every(period) => now_ms.saturating_add(period.as_millis() as i64),
            Schedule::DailyAt { hour, minute } => next_daily(now_ms, hour, minute, tz),
        }
    }

    /// The largest random delay added to a run: a tenth of the period, at most 30 s.
    pub fn max_jitter(&self) -> Duration {
        match *self {
            Schedule::Every(period) => (period / 10).min(MAX_JITTER),
            Schedule::DailyAt { .. } => MAX_JITTER,
        }
    }

    /// How the API shows it.
    pub fn view(&self, tz: &TimeZone) -> ScheduleView {
        match *self {
            Schedule::Every(period) => ScheduleView {
                kind: "interval",
                every_sec: Some(period.as_secs()),
                at: None,
                time_zone: None,
            },
            Schedule::DailyAt { hour, minute } => ScheduleView {
                kind: "daily",
                every_sec: None,
                at: Some(format!("{hour:02}:{minute:02}")),
                time_zone: Some(zone_name(tz)),
            },
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Schedule::Every(period) => write!(f, "every {} s", period.as_secs()),
            Schedule::DailyAt { hour, minute } => write!(f, "daily at {hour:02}:{minute:02}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleView {
    /// `interval` (every `everySec` seconds) or `daily` (at `at`, in `timeZone`).
    #[schema(value_type = String)]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub every_sec: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub time_zone: Option<String>,
}

pub fn zone_name(tz: &TimeZone) -> String {
    tz.iana_name().unwrap_or("local").to_string()
}

/// The host's time zone; UTC when it cannot be read.
pub fn local_zone() -> TimeZone {
    match TimeZone::try_system() {
        Ok(tz) => tz,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the host's time zone; daily tasks use UTC");
            TimeZone::UTC
        }
    }
}

/// The first `hour:minute` in `tz` strictly after `now_ms`. On a day when that time does not
/// exist (a DST gap) it is the moment the clocks jump over it; on a day when it happens twice,
/// the first.
pub fn next_daily(now_ms: i64, hour: u8, minute: u8, tz: &TimeZone) -> i64 {
    let fallback = now_ms.saturating_add(24 * 3600 * 1000);
    let Ok(now) = Timestamp::from_millisecond(now_ms) else {
        return fallback;
    };
    let Ok(time) = Time::new(hour as i8, minute as i8, 0, 0) else {
        return fallback;
    };
    let today = now.to_zoned_datetime(tz.clone()).date();
    let at = |date| {
        DateTime::from_parts(date, time)
            .to_zoned_datetime(tz.clone())
            .map(|z: ZonedDateTime| z.timestamp())
    };
    match at(today) {
        Ok(t) if t > now => t.as_millisecond(),
        _ => today
            .tomorrow()
            .and_then(at)
            .map(Timestamp::as_millisecond)
            .unwrap_or(fallback),
    }
}

/// A random delay from zero to `max`, so that jobs due together do not fire in lockstep.
pub fn jitter(max: Duration) -> Duration {
    let max_ms = max.as_millis() as u64;
    if max_ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(getrandom::u64().unwrap_or(0) % (max_ms + 1))
}

/// The scheduler's wall clock: the wall time read once at start, moved on by tokio's monotonic
/// clock. Sleeps and timestamps then agree (a job due at 02:00 sleeps exactly until the clock
/// says 02:00), and tests that pause tokio's clock move this one with it. A step of the host's
/// clock after start (NTP) shifts daily times until the next start; hosts set their clock at
/// boot, before the daemon starts.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: i64,
    origin: tokio::time::Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            wall_ms: crate::model::now_ms(),
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.wall_ms
            .saturating_add(self.origin.elapsed().as_millis() as i64)
    }

    /// How long from now until `at_ms` (zero when it has passed).
    pub fn until(&self, at_ms: i64) -> Duration {
        Duration::from_millis(at_ms.saturating_sub(self.now_ms()).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>()
            .expect("timestamp")
            .as_millisecond()
    }

    #[test]
    fn parses_daily_times() {
        assert_eq!(
            Schedule::parse_daily("02:00"),
            Ok(Schedule::DailyAt { hour: 2, minute: 0 })
        );
        assert_eq!(
            Schedule::parse_daily("23:59"),
            Ok(Schedule::DailyAt {
                hour: 23,
                minute: 59
            })
        );
        for bad in [
            "24:00", "2:00", "02:60", "0200", "", "ab:cd", "-1:00", "02:00:00",
        ] {
            assert!(Schedule::parse_daily(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn next_daily_in_utc() {
        let utc = TimeZone::UTC;
        let at = |now| next_daily(ms(now), 2, 0, &utc);
        assert_eq!(at("2026-05-10T01:00:00Z"), ms("2026-05-10T02:00:00Z"));
        assert_eq!(
            at("2026-05-10T02:00:00Z"),
            ms("2026-05-11T02:00:00Z"),
            "strictly after"
        );
        assert_eq!(at("2026-05-10T02:00:00.001Z"), ms("2026-05-11T02:00:00Z"));
        assert_eq!(at("2026-05-10T23:59:59Z"), ms("2026-05-11T02:00:00Z"));
        assert_eq!(
            at("2026-12-31T03:00:00Z"),
            ms("2027-01-01T02:00:00Z"),
            "year end"
        );
        assert_eq!(
            at("2028-02-28T05:00:00Z"),
            ms("2028-02-29T02:00:00Z"),
            "leap day"
        );
    }

    #[test]
    fn next_daily_with_a_fixed_offset() {
        let plus2 = TimeZone::fixed(jiff::tz::offset(2));
        // 23:30 UTC is 01:30 the next day at +02:00; 02:00 there is 00:00 UTC.
        assert_eq!(
            next_daily(ms("2026-05-09T23:30:00Z"), 2, 0, &plus2),
            ms("2026-05-10T00:00:00Z")
        );
        let minus5 = TimeZone::fixed(jiff::tz::offset(-5));
        // 06:00 UTC is 01:00 at -05:00: 02:00 there is 07:00 UTC the same day.
        assert_eq!(
            next_daily(ms("2026-05-10T06:00:00Z"), 2, 0, &minus5),
            ms("2026-05-10T07:00:00Z")
        );
    }

    #[test]
    fn next_daily_across_daylight_saving() {
        let berlin = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("posix zone");
        // 2026-03-29: clocks jump 02:00 → 03:00 CET→CEST; 02:00 does not exist, the run is at
        // the jump (01:00 UTC).
        assert_eq!(
            next_daily(ms("2026-03-28T12:00:00Z"), 2, 0, &berlin),
            ms("2026-03-29T01:00:00Z")
        );
        // The day after, 02:00 CEST is 00:00 UTC.
        assert_eq!(
            next_daily(ms("2026-03-29T12:00:00Z"), 2, 0, &berlin),
            ms("2026-03-30T00:00:00Z")
        );
        // 2026-10-25: 03:00 CEST → 02:00 CET; 02:30 happens twice, the first (00:30 UTC) counts.
        assert_eq!(
            next_daily(ms("2026-10-24T12:00:00Z"), 2, 30, &berlin),
            ms("2026-10-25T00:30:00Z")
        );
        // In winter 02:00 CET is 01:00 UTC.
        assert_eq!(
            next_daily(ms("2026-12-01T12:00:00Z"), 2, 0, &berlin),
            ms("2026-12-02T01:00:00Z")
        );
    }

    #[test]
    fn intervals_and_jitter() {
        let every = Schedule::Every(Duration::from_secs(300));
        assert_eq!(every.next_after(1_000, &TimeZone::UTC), 301_000);
        assert_eq!(every.max_jitter(), Duration::from_secs(30));
        assert_eq!(
            Schedule::Every(Duration::from_secs(60)).max_jitter(),
            Duration::from_secs(6)
        );
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(6)) <= Duration::from_secs(6));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        assert_eq!(every.to_string(), "every 300 s");
        assert_eq!(
            Schedule::DailyAt { hour: 2, minute: 5 }.to_string(),
            "daily at 02:05"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_moves_with_tokio_time() {
        let clock = Clock::start();
        let before = clock.now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now_ms();
        assert!(after - before >= 3_600_000 && after - before < 3_601_000);
        assert_eq!(clock.until(after - 5), Duration::ZERO);
    }
}
