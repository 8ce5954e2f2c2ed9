//! The egress settings: the upstream (Decodo) account and port pool, the gateway proxy's port,
//! bounds and bypass list, strict mode and the health checks.

use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, Settings, invalid};
use crate::net::egress::{Bypass, EgressSettings, GatewayLimits, PortRange, Upstream};

pub const DEFAULT_GATEWAY_PORT: u16 = 3128;
/// Decodo's own echo service: it answers with the address the request arrived from.
pub const DEFAULT_ECHO_URL: &str = "https://ip.decodo.com/json";

pub(super) fn resolve(s: &Settings) -> Result<EgressSettings, ConfigError> {
    let upstream = match (&s.decodo_host, &s.decodo_user, &s.decodo_password) {
        (Some(host), Some(user), Some(password)) => Some(Upstream {
            host: host.clone(),
            user: user.clone(),
            password: SecretString::from(password.clone()),
        }),
        (None, None, None) => None,
        _ => {
            return Err(ConfigError::Missing {
                setting: Settings::env_name("decodo_host"),
                reason: "DECODO_HOST, DECODO_USER and DECODO_PASSWORD go together".into(),
            });
        }
    };
    if let Some(upstream) = &upstream
        && (upstream.host.is_empty() || upstream.host.contains(['/', ' ', '@']))
    {
        return Err(invalid(
            "decodo_host",
            format!("{:?} is not a host name or address", upstream.host),
        ));
    }
    let ports = PortRange {
        start: s.decodo_port_start.unwrap_or(10001),
        end: s.decodo_port_end.unwrap_or(10100),
    };
    if ports.start == 0 || ports.start > ports.end {
        return Err(invalid(
            "decodo_port_start",
            format!(
                "port range {}..={} is empty or starts at 0",
                ports.start, ports.end
            ),
        ));
    }
    let positive = |field: &'static str, value: Option<u64>, default: u64| match value {
        Some(0) => Err(invalid(field, "must be greater than 0".into())),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    let defaults = GatewayLimits::default();
    let limits = GatewayLimits {
        connections_per_vm: positive(
            "egress_max_connections_per_vm",
            s.egress_max_connections_per_vm.map(|v| v as u64),
            defaults.connections_per_vm as u64,
        )? as usize,
        connections: positive(
            "egress_max_connections",
            s.egress_max_connections.map(|v| v as u64),
            defaults.connections as u64,
        )? as usize,
        idle_timeout: Duration::from_secs(positive(
            "egress_idle_timeout_secs",
            s.egress_idle_timeout_secs,
            defaults.idle_timeout.as_secs(),
        )?),
        max_header_bytes: positive(
            "egress_max_header_bytes",
            s.egress_max_header_bytes.map(|v| v as u64),
            defaults.max_header_bytes as u64,
        )? as usize,
        ..defaults
    };
    if limits.max_header_bytes < 1024 {
        return Err(invalid(
            "egress_max_header_bytes",
            "must be at least 1024".into(),
        ));
    }
    let echo_url = s
        .egress_echo_url
        .clone()
        .unwrap_or_else(|| DEFAULT_ECHO_URL.into());
    if !(echo_url.starts_with("http://") || echo_url.starts_with("https://")) {
        return Err(invalid(
            "egress_echo_url",
            format!("{echo_url:?} is not an http(s) URL"),
        ));
    }
    Ok(EgressSettings {
        upstream,
        ports,
        gateway_port: match s.egress_gateway_port {
            Some(0) => return Err(invalid("egress_gateway_port", "must not be 0".into())),
            Some(port) => port,
            None => DEFAULT_GATEWAY_PORT,
        },
        bypass: Bypass::parse(s.egress_bypass.as_deref().unwrap_or(""))
            .map_err(|e| invalid("egress_bypass", e))?,
        strict: s.egress_strict.unwrap_or(false),
        echo_url,
        health_spacing: Duration::from_millis(s.egress_health_spacing_ms.unwrap_or(1000)),
        health_timeout: Duration::from_secs(positive(
            "egress_health_timeout_secs",
            s.egress_health_timeout_secs,
            15,
        )?),
        limits,
    })
}
