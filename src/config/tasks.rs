//! The background jobs' settings: each job's schedule (an interval or a daily time, not both)
//! and the thresholds they act on.

use std::time::Duration;

use super::{ConfigError, Settings, invalid};
use crate::tasks::{Schedule, TaskSettings};

/// A job's schedule from its `_interval_secs` and `_at` settings, else `default`.
fn schedule(
    interval_field: &'static str,
    interval: Option<u64>,
    at_field: &'static str,
    at: Option<&str>,
    default: Schedule,
) -> Result<Schedule, ConfigError> {
    match (interval, at) {
        (Some(_), Some(_)) => Err(invalid(
            at_field,
            format!(
                "set either {} or {}, not both",
                Settings::env_name(interval_field),
                Settings::env_name(at_field)
            ),
        )),
        (Some(0), None) => Err(invalid(interval_field, "must be greater than 0".into())),
        (Some(secs), None) => Ok(Schedule::Every(Duration::from_secs(secs))),
        (None, Some(text)) => Schedule::parse_daily(text).map_err(|e| invalid(at_field, e)),
        (None, None) => Ok(default),
    }
}

pub(super) fn resolve(s: &Settings) -> Result<TaskSettings, ConfigError> {
    let d = TaskSettings::default();
    let positive = |field: &'static str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(invalid(field, "must be greater than 0".into())),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    Ok(TaskSettings {
        enabled: s.tasks_enabled.unwrap_or(d.enabled),
        hibernate_idle: schedule(
            "task_hibernate_idle_interval_secs",
            s.task_hibernate_idle_interval_secs,
            "task_hibernate_idle_at",
            s.task_hibernate_idle_at.as_deref(),
            d.hibernate_idle,
        )?,
        destroy_inactive: schedule(
            "task_destroy_inactive_interval_secs",
            s.task_destroy_inactive_interval_secs,
            "task_destroy_inactive_at",
            s.task_destroy_inactive_at.as_deref(),
            d.destroy_inactive,
        )?,
        metrics_sample: schedule(
            "task_metrics_sample_interval_secs",
            s.task_metrics_sample_interval_secs,
            "task_metrics_sample_at",
            s.task_metrics_sample_at.as_deref(),
            d.metrics_sample,
        )?,
        expire_auth_sessions: schedule(
            "task_expire_auth_sessions_interval_secs",
            s.task_expire_auth_sessions_interval_secs,
            "task_expire_auth_sessions_at",
            s.task_expire_auth_sessions_at.as_deref(),
            d.expire_auth_sessions,
        )?,
        validate_credentials: schedule(
            "task_validate_credentials_interval_secs",
            s.task_validate_credentials_interval_secs,
            "task_validate_credentials_at",
            s.task_validate_credentials_at.as_deref(),
            d.validate_credentials,
        )?,
        vm_health: schedule(
            "task_vm_health_interval_secs",
            s.task_vm_health_interval_secs,
            "task_vm_health_at",
            s.task_vm_health_at.as_deref(),
            d.vm_health,
        )?,
        proxy_health: schedule(
            "task_proxy_health_interval_secs",
            s.task_proxy_health_interval_secs,
            "task_proxy_health_at",
            s.task_proxy_health_at.as_deref(),
            d.proxy_health,
        )?,
        idle_hibernate_after: Duration::from_secs(positive(
            "idle_hibernate_after_secs",
            s.idle_hibernate_after_secs,
            d.idle_hibernate_after.as_secs(),
        )?),
        inactive_destroy_after_days: positive(
            "inactive_destroy_after_days",
            s.inactive_destroy_after_days.map(u64::from),
            u64::from(d.inactive_destroy_after_days),
        )? as u32,
        auth_session_max_age: Duration::from_secs(positive(
            "auth_session_max_age_secs",
            s.auth_session_max_age_secs,
            d.auth_session_max_age.as_secs(),
        )?),
        metrics_samples_kept: positive(
            "metrics_samples_kept",
            s.metrics_samples_kept.map(|n| n as u64),
            d.metrics_samples_kept as u64,
        )? as usize,
        prune_prompts: schedule(
            "task_prune_prompts_interval_secs",
            s.task_prune_prompts_interval_secs,
            "task_prune_prompts_at",
            s.task_prune_prompts_at.as_deref(),
            d.prune_prompts,
        )?,
        prompt_retention_days: positive(
            "prompt_retention_days",
            s.prompt_retention_days.map(u64::from),
            u64::from(d.prompt_retention_days),
        )? as u32,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::config::Config;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, &|name| map.get(name).cloned(), Settings::default())
    }

    #[test]
    fn defaults() {
        let tasks = load(&[]).expect("defaults").tasks;
        assert_eq!(tasks, TaskSettings::default());
        assert!(tasks.enabled);
        assert_eq!(
            tasks.hibernate_idle,
            Schedule::Every(Duration::from_secs(300))
        );
        assert_eq!(
            tasks.destroy_inactive,
            Schedule::DailyAt { hour: 2, minute: 0 }
        );
        assert_eq!(tasks.vm_health, Schedule::Every(Duration::from_secs(60)));
        assert_eq!(tasks.idle_hibernate_after, Duration::from_secs(1800));
        assert_eq!(tasks.inactive_destroy_after_days, 14);
        assert_eq!(tasks.auth_session_max_age, Duration::from_secs(7200));
        assert_eq!(tasks.metrics_samples_kept, 1008);
    }

    #[test]
    fn from_the_environment() {
        let tasks = load(&[
            ("MC_TASKS_ENABLED", "false"),
            ("MC_TASK_HIBERNATE_IDLE_INTERVAL_SECS", "60"),
            ("MC_TASK_DESTROY_INACTIVE_AT", "03:30"),
            ("MC_TASK_METRICS_SAMPLE_AT", "00:00"),
            ("MC_TASK_DESTROY_INACTIVE_INTERVAL_SECS", ""),
            ("MC_IDLE_HIBERNATE_AFTER_SECS", "600"),
            ("MC_INACTIVE_DESTROY_AFTER_DAYS", "30"),
            ("MC_AUTH_SESSION_MAX_AGE_SECS", "3600"),
            ("MC_METRICS_SAMPLES_KEPT", "10"),
        ]);
        // An empty number is still a setting, and not a number.
        assert!(tasks.is_err());
        let tasks = load(&[
            ("MC_TASKS_ENABLED", "false"),
            ("MC_TASK_HIBERNATE_IDLE_INTERVAL_SECS", "60"),
            ("MC_TASK_DESTROY_INACTIVE_AT", "03:30"),
            ("MC_TASK_METRICS_SAMPLE_AT", "00:00"),
            ("MC_IDLE_HIBERNATE_AFTER_SECS", "600"),
            ("MC_INACTIVE_DESTROY_AFTER_DAYS", "30"),
            ("MC_AUTH_SESSION_MAX_AGE_SECS", "3600"),
            ("MC_METRICS_SAMPLES_KEPT", "10"),
        ])
        .expect("valid")
        .tasks;
        assert!(!tasks.enabled);
        assert_eq!(
            tasks.hibernate_idle,
            Schedule::Every(Duration::from_secs(60))
        );
        assert_eq!(
            tasks.destroy_inactive,
            Schedule::DailyAt {
                hour: 3,
                minute: 30
            }
        );
        assert_eq!(
            tasks.metrics_sample,
            Schedule::DailyAt { hour: 0, minute: 0 }
        );
        assert_eq!(tasks.idle_hibernate_after, Duration::from_secs(600));
        assert_eq!(tasks.inactive_destroy_after_days, 30);
        assert_eq!(tasks.auth_session_max_age, Duration::from_secs(3600));
        assert_eq!(tasks.metrics_samples_kept, 10);
    }

    #[test]
    fn bad_settings_name_themselves() {
        let cases = [
            (
                vec![("MC_TASK_DESTROY_INACTIVE_AT", "2am")],
                "MC_TASK_DESTROY_INACTIVE_AT",
            ),
            (
                vec![("MC_TASK_VM_HEALTH_AT", "24:00")],
                "MC_TASK_VM_HEALTH_AT",
            ),
            (
                vec![
                    ("MC_TASK_VM_HEALTH_AT", "01:00"),
                    ("MC_TASK_VM_HEALTH_INTERVAL_SECS", "60"),
                ],
                "MC_TASK_VM_HEALTH_AT",
            ),
            (
                vec![("MC_TASK_HIBERNATE_IDLE_INTERVAL_SECS", "0")],
                "MC_TASK_HIBERNATE_IDLE_INTERVAL_SECS",
            ),
            (
                vec![("MC_IDLE_HIBERNATE_AFTER_SECS", "0")],
                "MC_IDLE_HIBERNATE_AFTER_SECS",
            ),
            (
                vec![("MC_INACTIVE_DESTROY_AFTER_DAYS", "0")],
                "MC_INACTIVE_DESTROY_AFTER_DAYS",
            ),
            (
                vec![("MC_METRICS_SAMPLES_KEPT", "0")],
                "MC_METRICS_SAMPLES_KEPT",
            ),
            (vec![("MC_TASKS_ENABLED", "yes")], "MC_TASKS_ENABLED"),
        ];
        for (pairs, name) in cases {
            let err = load(&pairs).expect_err("refused");
            assert!(err.to_string().contains(name), "{pairs:?}: {err}");
        }
    }
}
