//! Guest facts and settings: health, the clock, the network.

use super::AgentError;
use crate::guest::messages::{HealthReport, NetworkConfig};

pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn meminfo_kib(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

pub async fn health(boot_id: &str) -> Result<HealthReport, AgentError> {
    let read = |path: &'static str| async move {
        tokio::fs::read_to_string(path).await.unwrap_or_default()
    };
    let uptime = read("/proc/uptime").await;
    let loadavg = read("/proc/loadavg").await;
    let meminfo = read("/proc/meminfo").await;
    let mut load = [0.0; 3];
    for (slot, value) in load.iter_mut().zip(loadavg.split_whitespace()) {
        *slot = value.parse().unwrap_or(0.0);
    }
    let (disk_total_bytes, disk_free_bytes) = match nix::sys::statvfs::statvfs("/") {
        Ok(s) => (
            s.blocks() * s.fragment_size(),
            s.blocks_available() * s.fragment_size(),
        ),
        Err(_) => (0, 0),
    };
    Ok(HealthReport {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        boot_id: boot_id.to_string(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().to_string())
            .unwrap_or_default(),
        uptime_sec: uptime
            .split_whitespace()
            .next()
            .and_then(|u| u.parse().ok())
            .unwrap_or(0.0),
        load,
        mem_total_kib: meminfo_kib(&meminfo, "MemTotal"),
        mem_available_kib: meminfo_kib(&meminfo, "MemAvailable"),
        disk_total_bytes,
        disk_free_bytes,
    })
}

/// How far the guest's clock may be from the host's before a `Hello` sets it: a resumed guest's
/// stood still for the whole hibernation, while a guest that kept running (a daemon restart) is
/// within a frame's travel of the host and is left alone.
const CLOCK_TOLERANCE_MS: i64 = 50;

/// Whether a clock reading `own_ms` must be set to the host's `host_ms`.
fn clock_is_off(own_ms: i64, host_ms: i64) -> bool {
    (own_ms - host_ms).abs() > CLOCK_TOLERANCE_MS
}

/// Sets the clock to the host's, only when it is off.
pub fn sync_clock(host_ms: i64) -> Result<(), AgentError> {
    let own_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    if clock_is_off(own_ms, host_ms) {
        set_clock(host_ms)
    } else {
        Ok(())
    }
}

pub fn set_clock(unix_ms: i64) -> Result<(), AgentError> {
    let spec = nix::sys::time::TimeSpec::new(
        unix_ms.div_euclid(1000),
        unix_ms.rem_euclid(1000) * 1_000_000,
    );
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, spec)
        .map_err(|e| AgentError::request("io", format!("clock_settime: {e}")))
}

fn valid_interface(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

async fn ip(args: &[&str]) -> Result<(), AgentError> {
    let output = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| AgentError::request("io", format!("ip: {e}")))?;
    if !output.status.success() {
        return Err(AgentError::request(
            "network",
            format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Gives the guest its address, default route, resolvers and hostname. The guest image's `ip`
/// (busybox or iproute2) does the work.
pub async fn configure_network(config: NetworkConfig) -> Result<(), AgentError> {
    if !valid_interface(&config.interface) {
        return Err(AgentError::request(
            "bad_request",
            format!("bad interface name {:?}", config.interface),
        ));
    }
    let (addr, prefix) = config
        .address
        .split_once('/')
        .ok_or_else(|| AgentError::request("bad_request", "address must be a.b.c.d/prefix"))?;
    let valid =
        addr.parse::<std::net::Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32);
    let gateway_ok = config
        .gateway
        .as_deref()
        .is_none_or(|g| g.parse::<std::net::Ipv4Addr>().is_ok());
    let dns_ok = config
        .dns
        .iter()
        .all(|d| d.parse::<std::net::IpAddr>().is_ok());
    if !valid || !gateway_ok || !dns_ok {
        return Err(AgentError::request(
            "bad_request",
            "addresses must be literal IPs",
        ));
    }
    let mac_ok = config.mac.as_deref().is_none_or(|mac| {
        mac.len() == 17
            && mac
                .split(':')
                .all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()))
    });
    if !mac_ok {
        return Err(AgentError::request(
            "bad_request",
            "mac must be aa:bb:cc:dd:ee:ff",
        ));
    }
    let iface = config.interface.as_str();
    if let Some(mac) = &config.mac {
        ip(&["link", "set", iface, "address", mac]).await?;
    }
    ip(&["link", "set", iface, "up"]).await?;
    ip(&["addr", "flush", "dev", iface]).await?;
    ip(&["addr", "add", &config.address, "dev", iface]).await?;
    if let Some(gateway) = &config.gateway {
        ip(&["route", "replace", "default", "via", gateway, "dev", iface]).await?;
    }
    if !config.dns.is_empty() {
        let resolv: String = config
            .dns
            .iter()
            .map(|d| format!("nameserver {d}\n"))
            .collect();
        tokio::fs::write("/etc/resolv.conf", resolv)
            .await
            .map_err(|e| AgentError::request("io", format!("/etc/resolv.conf: {e}")))?;
    }
    if let Some(hostname) = &config.hostname {
        let valid = !hostname.is_empty()
            && hostname.len() <= 63
            && hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(AgentError::request(
                "bad_request",
                format!("bad hostname {hostname:?}"),
            ));
        }
        nix::unistd::sethostname(hostname)
            .map_err(|e| AgentError::request("io", format!("sethostname: {e}")))?;
    }
    Ok(())
}

/// Mixes host-supplied bytes into the kernel's entropy pool. Writing to `/dev/urandom` mixes
/// without crediting entropy, which is all a snapshot clone needs to stop sharing its state.
pub async fn mix_entropy(seed_base64: &str) -> Result<(), AgentError> {
    use base64::Engine;
    use tokio::io::AsyncWriteExt;
    let seed = base64::engine::general_purpose::STANDARD
        .decode(seed_base64)
        .map_err(|e| AgentError::request("bad_request", format!("seed: {e}")))?;
    if seed.len() < 16 || seed.len() > 4096 {
        return Err(AgentError::request(
            "bad_request",
            "the seed must be 16 to 4096 bytes",
        ));
    }
    tokio::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .await
        .map_err(|e| AgentError::request("io", format!("/dev/urandom: {e}")))?
        .write_all(&seed)
        .await
        .map_err(|e| AgentError::request("io", format!("/dev/urandom: {e}")))
}

#[cfg(test)]
mod clock_tests {
    use super::clock_is_off;

    #[test]
    fn a_clock_within_the_tolerance_is_left_alone() {
        assert!(!clock_is_off(1_000_000, 1_000_000));
        assert!(!clock_is_off(1_000_000, 1_000_049));
        assert!(!clock_is_off(1_000_049, 1_000_000));
        assert!(clock_is_off(1_000_000, 1_000_051));
        // A guest resumed after a minute's hibernation.
        assert!(clock_is_off(1_000_000, 1_060_000));
        assert!(clock_is_off(1_060_000, 1_000_000));
    }
}
