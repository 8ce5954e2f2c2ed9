//! `master-controller doctor`: what the host has and lacks. Each check says ok, warn (works,
//! but a capability is off) or fail (serve cannot work), and why.

mod confinement;
mod network;
mod operator;

use std::fmt;
use std::path::Path;

use crate::config::Config;
use crate::store::{Store, StoreError};
use crate::tokens;
pub use operator::{render_json, sources};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
    }
}

/// Runs every check. Blocking: call it from a blocking context.
pub fn run(config: &Config) -> Vec<Check> {
    let mut checks = vec![
        admin_token(config),
        data_dir(&config.data_dir),
        operator::hibernation_room(config),
        log_trim(&config.data_dir),
        state_file(&config.data_dir),
        signing_key(config),
        vault_key(config),
        device(
            "/dev/kvm",
            "KVM",
            "VMs run under TCG software emulation (slow)",
        ),
        device(
            "/dev/net/tun",
            "TUN/TAP",
            "VMs cannot get network interfaces",
        ),
        cgroup_v2(),
        binary("qemu-system-x86_64", "QEMU", "the qemu backend cannot run"),
        binary(
            "mkfs.ext4",
            "mkfs.ext4",
            "VM data disks cannot be formatted (install e2fsprogs)",
        ),
        firecracker(config),
        supabase(config),
        decodo(config),
        guest_image(config),
        golden_snapshot(config),
    ];
    checks.extend(confinement::checks(config));
    checks.extend(network::checks(config));
    checks
}

pub fn render(checks: &[Check]) -> String {
    checks
        .iter()
        .map(|c| format!("{:<5} {:<14} {}\n", c.level, c.name, c.detail))
        .collect()
}

fn admin_token(config: &Config) -> Check {
    match config.require_admin_token() {
        Ok(()) => check("admin token", Level::Ok, "configured"),
        Err(e) => check("admin token", Level::Fail, e.to_string()),
    }
}

fn data_dir(path: &Path) -> Check {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let probe = path.join(".doctor-probe");
            match std::fs::write(&probe, b"") {
                Ok(()) => {
                    let _ = std::fs::remove_file(&probe);
                    check(
                        "data dir",
                        Level::Ok,
                        format!("{} is writable", path.display()),
                    )
                }
                Err(e) => check(
                    "data dir",
                    Level::Fail,
                    format!("{} is not writable: {e}", path.display()),
                ),
            }
        }
        Ok(_) => check(
            "data dir",
            Level::Fail,
            format!("{} is not a directory", path.display()),
        ),
        Err(_) => check(
            "data dir",
            Level::Warn,
            format!("{} does not exist yet; serve creates it", path.display()),
        ),
    }
}

/// How running VMs' console logs are kept under `vm_log_max_bytes` on this filesystem.
fn log_trim(dir: &Path) -> Check {
    const NAME: &str = "VM log trim";
    if !dir.is_dir() {
        return check(NAME, Level::Warn, "no data dir to probe yet");
    }
    match crate::vmm::logcap::trims_in_place(dir) {
        Ok(true) => check(
            NAME,
            Level::Ok,
            "console logs are cut in place (FALLOC_FL_COLLAPSE_RANGE)",
        ),
        Ok(false) => check(
            NAME,
            Level::Warn,
            format!(
                "{} cannot collapse file ranges: console logs are trimmed by copying, which may drop a few lines (use ext4 or XFS)",
                dir.display()
            ),
        ),
        Err(e) => check(
            NAME,
            Level::Warn,
            format!("cannot probe {}: {e}", dir.display()),
        ),
    }
}

fn state_file(dir: &Path) -> Check {
    let path = dir.join(Store::FILE_NAME);
    if !path.exists() {
        return check(
            "state file",
            Level::Ok,
            format!("{} will be created", path.display()),
        );
    }
    match Store::open_blocking(dir) {
        Ok(_) => check(
            "state file",
            Level::Ok,
            format!("{} opens, schema is current", path.display()),
        ),
        Err(StoreError::AlreadyOpen { .. }) => check(
            "state file",
            Level::Ok,
            format!("{} is open in a running daemon", path.display()),
        ),
        Err(e) => check("state file", Level::Fail, e.to_string()),
    }
}

fn signing_key(config: &Config) -> Check {
    if config.api.token_signing_key.is_some() {
        return check("token key", Level::Ok, "MC_TOKEN_SIGNING_KEY is configured");
    }
    let path = config.data_dir.join(tokens::KEY_FILE_NAME);
    if path.exists() {
        check("token key", Level::Ok, format!("{} exists", path.display()))
    } else {
        check(
            "token key",
            Level::Ok,
            format!("{} is generated at first start", path.display()),
        )
    }
}

fn vault_key(config: &Config) -> Check {
    use secrecy::ExposeSecret;
    match &config.encryption_master_key {
        None => check(
            "vault key",
            Level::Warn,
            "ENCRYPTION_MASTER_KEY (or the systemd credential encryption-master-key) is unset: \
             logins and stored credentials are off",
        ),
        Some(text) => match crate::auth::MasterKey::parse(text.expose_secret()) {
            Ok(_) => check(
                "vault key",
                Level::Ok,
                "well-formed; serve checks it against the vault's key at start",
            ),
            Err(e) => check("vault key", Level::Fail, e.to_string()),
        },
    }
}

fn device(path: &str, name: &'static str, without: &str) -> Check {
    if Path::new(path).exists() {
        check(name, Level::Ok, format!("{path} present"))
    } else {
        check(name, Level::Warn, format!("{path} missing: {without}"))
    }
}

fn cgroup_v2() -> Check {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        check("cgroup v2", Level::Ok, "unified hierarchy mounted")
    } else {
        check(
            "cgroup v2",
            Level::Warn,
            "not mounted: the Firecracker jailer needs it",
        )
    }
}

fn find_in_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

fn binary(name: &str, label: &'static str, without: &str) -> Check {
    match find_in_path(name) {
        Some(path) => check(label, Level::Ok, format!("{}", path.display())),
        None => check(
            label,
            Level::Warn,
            format!("{name} not found in PATH: {without}"),
        ),
    }
}

fn firecracker(config: &Config) -> Check {
    match &config.hypervisor.firecracker_base {
        Some(base) if base.exists() => check(
            "Firecracker",
            Level::Ok,
            format!("{} present", base.display()),
        ),
        Some(base) => check(
            "Firecracker",
            Level::Warn,
            format!("FIRECRACKER_BASE {} does not exist", base.display()),
        ),
        None => match find_in_path("firecracker") {
            Some(path) => check("Firecracker", Level::Ok, format!("{}", path.display())),
            None => check(
                "Firecracker",
                Level::Warn,
                "not installed; only the qemu backend can run",
            ),
        },
    }
}

fn supabase(config: &Config) -> Check {
    match &config.mirror.url {
        Some(url) => check("Supabase", Level::Ok, format!("mirroring to {url}")),
        None => check(
            "Supabase",
            Level::Warn,
            "SUPABASE_URL unset: changes stay in the local outbox",
        ),
    }
}

/// The upstream is configured, and its first port takes connections from this host.
fn decodo(config: &Config) -> Check {
    use std::net::{TcpStream, ToSocketAddrs};
    let egress = &config.egress;
    let Some(upstream) = &egress.upstream else {
        return check(
            "upstream proxy",
            Level::Warn,
            "DECODO_HOST/DECODO_USER/DECODO_PASSWORD unset: no dedicated egress, no gateway proxy",
        );
    };
    let port = egress.ports.start;
    let ports = format!("ports {}-{}", egress.ports.start, egress.ports.end);
    let reached = (upstream.host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", upstream.host))
        .and_then(|mut addrs| {
            let addr = addrs
                .next()
                .ok_or_else(|| format!("{} has no address", upstream.host))?;
            TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
                .map_err(|e| format!("{}:{port} does not take connections: {e}", upstream.host))
        });
    match reached {
        Ok(_) => check(
            "upstream proxy",
            Level::Ok,
            format!("{}, {ports}; {port} takes connections", upstream.host),
        ),
        Err(problem) => check(
            "upstream proxy",
            Level::Warn,
            format!("{problem} ({ports}); guests' egress through the gateway will fail"),
        ),
    }
}

fn guest_image(config: &Config) -> Check {
    let Some(kernel) = &config.vms.kernel else {
        return check(
            "guest kernel",
            Level::Warn,
            "GOLDEN_KERNEL is not set: VMs are off (creates answer 503)",
        );
    };
    let mut missing: Vec<String> = [
        Some(kernel),
        config.vms.initrd.as_ref(),
        config.vms.rootfs.as_ref(),
    ]
    .into_iter()
    .flatten()
    .filter(|path| !path.is_file())
    .map(|path| path.display().to_string())
    .collect();
    if missing.is_empty() {
        check("guest kernel", Level::Ok, kernel.display().to_string())
    } else {
        missing.sort();
        check(
            "guest kernel",
            Level::Fail,
            format!("missing: {}", missing.join(", ")),
        )
    }
}

fn golden_snapshot(config: &Config) -> Check {
    let Some(snapshot) = &config.golden_snapshot else {
        return check(
            "golden snapshot",
            Level::Warn,
            "GOLDEN_SNAPSHOT is not set: creates cold-boot (build one with scripts/build-golden-snapshot.sh)",
        );
    };
    match crate::vms::golden::Golden::inspect(snapshot) {
        Ok(meta) => check(
            "golden snapshot",
            Level::Ok,
            match &meta.image {
                Some(image) => format!("{} (of {image})", snapshot.display()),
                None => snapshot.display().to_string(),
            },
        ),
        Err(e) => check(
            "golden snapshot",
            Level::Fail,
            format!("{e}: the daemon will not start (run scripts/build-golden-snapshot.sh)"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn vault_check(key: Option<&str>) -> Check {
        let lookup = |name: &str| match name {
            "MC_ADMIN_TOKEN" => Some("admin-token-for-doctor".to_string()),
            "ENCRYPTION_MASTER_KEY" => key.map(str::to_string),
            _ => None,
        };
        let config = Config::load(None, &lookup, Settings::default()).expect("config");
        vault_key(&config)
    }

    #[test]
    fn the_vault_key_is_checked_for_form_without_echoing_it() {
        assert_eq!(vault_check(None).level, Level::Warn);
        assert_eq!(vault_check(Some(&"ab".repeat(32))).level, Level::Ok);
        let bad = vault_check(Some("not-a-key-zzzz"));
        assert_eq!(bad.level, Level::Fail);
        assert!(!bad.detail.contains("not-a-key-zzzz"), "{}", bad.detail);
    }

    fn upstream_check(port: u16) -> Check {
        let lookup = move |name: &str| match name {
            "MC_ADMIN_TOKEN" => Some("admin-token-for-doctor".to_string()),
            "DECODO_HOST" => Some("127.0.0.1".to_string()),
            "DECODO_USER" => Some("user".to_string()),
            "DECODO_PASSWORD" => Some("doctor-secret-pw".to_string()),
            "DECODO_PORT_START" => Some(port.to_string()),
            "DECODO_PORT_END" => Some(port.to_string()),
            _ => None,
        };
        let config = Config::load(None, &lookup, Settings::default()).expect("config");
        decodo(&config)
    }

    #[test]
    fn the_upstreams_first_port_must_take_connections() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let open = upstream_check(port);
        assert_eq!(open.level, Level::Ok, "{}", open.detail);
        drop(listener);
        let closed = upstream_check(port);
        assert_eq!(closed.level, Level::Warn, "{}", closed.detail);
        assert!(
            closed.detail.contains("does not take connections"),
            "{}",
            closed.detail
        );
        assert!(!closed.detail.contains("doctor-secret-pw"));
    }
}
