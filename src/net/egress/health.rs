//! Health checks of the leased upstream ports: a request through each port to an echo service,
//! recording the port's external address and the latency. Checks run one at a time with a
//! pause between them, so a round never bursts against the upstream.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{EgressError, EgressSettings, Upstream, ports};
use crate::metrics::Metrics;
use crate::metrics::egress::{PortCheckLabels, PortLabels};
use crate::model::{PortHealth, now_ms};
use crate::store::Store;

/// The most of an echo answer that is read.
const MAX_ECHO_BYTES: usize = 64 * 1024;

/// One round's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    pub checked: u64,
    pub unhealthy: u64,
}

pub struct HealthChecker {
    store: Store,
    /// Ports with series in the metrics, so a freed port's series go when its lease does.
    observed: std::sync::Mutex<std::collections::BTreeSet<u16>>,
    upstream: Upstream,
    echo_url: String,
    spacing: Duration,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl HealthChecker {
    /// `None` when no upstream is configured: there is nothing to check.
    pub fn new(
        settings: &EgressSettings,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Option<HealthChecker> {
        Some(HealthChecker {
            store,
            observed: Default::default(),
            upstream: settings.upstream.clone()?,
            echo_url: settings.echo_url.clone(),
            spacing: settings.health_spacing,
            timeout: settings.health_timeout,
            metrics,
        })
    }

    /// Checks every leased port once, in port order, and records each result.
    pub async fn check_all(&self, cancel: &CancellationToken) -> Result<Round, EgressError> {
        let leases = self.store.read(ports::leases).await?;
        self.forget_freed(&leases);
        let mut round = Round::default();
        for (n, lease) in leases.iter().enumerate() {
            if n > 0 {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.spacing) => {}
                }
            }
            let health = self.check(lease.port).await;
            round.checked += 1;
            if !health.healthy {
                round.unhealthy += 1;
                tracing::warn!(
                    port = lease.port,
                    user_id = %lease.user_id,
                    error = health.error.as_deref().unwrap_or(""),
                    "upstream proxy port unhealthy"
                );
            }
            self.observe(lease.port, &health);
            let port = lease.port;
            self.store
                .write(move |tx| ports::record_health(tx, port, health))
                .await?;
        }
        Ok(round)
    }

    fn forget_freed(&self, leases: &[crate::model::PortLease]) {
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        observed.retain(|port| {
            let leased = leases.iter().any(|l| l.port == *port);
            if !leased {
                self.metrics.egress.forget_port(*port);
            }
            leased
        });
    }

    fn observe(&self, port: u16, health: &PortHealth) {
        self.observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port);
        let labels = PortLabels {
            port: port.to_string(),
        };
        let egress = &self.metrics.egress;
        egress
            .port_healthy
            .get_or_create(&labels)
            .set(i64::from(health.healthy));
        egress
            .port_latency
            .get_or_create(&labels)
            .set(health.latency_ms as f64 / 1000.0);
        egress
            .port_checks
            .get_or_create(&PortCheckLabels {
                port: port.to_string(),
                outcome: if health.healthy {
                    "healthy"
                } else {
                    "unhealthy"
                }
                .into(),
            })
            .inc();
    }

    /// One request through `port`. Errors are described in words of our own: a client
    /// library's message could carry the proxy's address with its credentials.
    pub async fn check(&self, port: u16) -> PortHealth {
        let started = Instant::now();
        let outcome = self.fetch(port).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let checked_at_ms = now_ms();
        match outcome {
            Ok(external_ip) => PortHealth {
                healthy: true,
                checked_at_ms,
                latency_ms,
                external_ip,
                error: None,
            },
            Err(error) => PortHealth {
                healthy: false,
                checked_at_ms,
                latency_ms,
                external_ip: None,
                error: Some(error),
            },
        }
    }

    async fn fetch(&self, port: u16) -> Result<Option<String>, String> {
        use secrecy::ExposeSecret;
        let proxy = reqwest::Proxy::all(format!("http://{}:{port}", self.upstream.host))
            .map_err(|_| format!("{}:{port} is not a proxy address", self.upstream.host))?
            .basic_auth(&self.upstream.user, self.upstream.password.expose_secret());
        let client = reqwest::Client::builder()
            .proxy(proxy)
            .timeout(self.timeout)
            .build()
            .map_err(|_| "cannot build an HTTP client".to_string())?;
        let response = client.get(&self.echo_url).send().await.map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {} s", self.timeout.as_secs())
            } else if e.is_connect() {
                format!(
                    "cannot connect through the upstream port {}:{port}",
                    self.upstream.host
                )
            } else {
                "the request through the upstream port failed".to_string()
            }
        })?;
        let status = response.status();
        if status == reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            return Err("the upstream refused the proxy credentials (407)".into());
        }
        if !status.is_success() {
            return Err(format!("the echo service answered {}", status.as_u16()));
        }
        let body = read_bounded(response)
            .await
            .map_err(|_| "the echo service's answer broke off".to_string())?;
        Ok(external_ip(&body))
    }
}

async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_ECHO_BYTES.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ECHO_BYTES {
            break;
        }
    }
    Ok(body)
}

/// The address an echo service reports: a bare address, or JSON with `ip` (ipify and the
/// like), `proxy.ip` (Decodo) or `origin` (httpbin).
pub fn external_ip(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let json: Value = serde_json::from_str(text).ok()?;
    [&json["proxy"]["ip"], &json["ip"], &json["origin"]]
        .into_iter()
        .filter_map(Value::as_str)
        .find_map(|s| s.trim().parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::external_ip;

    #[test]
    fn echo_answers_of_the_usual_shapes() {
        assert_eq!(
            external_ip(b"203.0.113.9\n").as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(
            external_ip(br#"{"proxy":{"ip":"198.51.100.4"},"isp":{}}"#).as_deref(),
            Some("198.51.100.4")
        );
        assert_eq!(
            external_ip(br#"{"ip":"2001:db8::1"}"#).as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(
            external_ip(br#"{"origin":"192.0.2.1"}"#).as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(external_ip(b"<html>nope</html>"), None);
        assert_eq!(external_ip(br#"{"ip":"not an address"}"#), None);
    }
}
