//! One `Config`: the TOML file, then the environment (`MC_*` and the seed's names), then the
//! command-line flags, validated once at start.

mod build;
mod confinement;
mod egress;
mod installed;
mod secrets;
mod settings;
mod tasks;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use crate::api::ApiSettings;
use crate::auth::AuthSettings;
use crate::net::egress::EgressSettings;
use crate::prompts::{PromptSettings, WhenBusy};
use crate::sync::MirrorSettings;
use crate::tasks::TaskSettings;
use crate::vmm::{HypervisorChoice, HypervisorSettings};
use crate::vms::VmSettings;
use crate::workspace::WorkspaceSettings;
pub use installed::{INSTALL_ROOT_ENV, Sources};
pub use secrets::{SECRETS, Secret};
pub use settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
    #[error("missing setting {setting}: {reason}")]
    Missing {
        setting: &'static str,
        reason: String,
    },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The validated configuration: each service's settings, built from the layers once. Secrets
/// are wrapped so they never reach `Debug` output.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub shutdown_timeout_secs: u64,
    pub api: ApiSettings,
    pub mirror: MirrorSettings,
    pub encryption_master_key: Option<SecretString>,
    pub hypervisor: HypervisorSettings,
    /// A golden snapshot that creates restore from, and its memory file when apart from it.
    pub golden_snapshot: Option<PathBuf>,
    pub golden_memory: Option<PathBuf>,
    /// The upstream (Decodo) account and port pool, and the gateway proxy in front of it.
    pub egress: EgressSettings,
    pub vms: VmSettings,
    /// The background jobs' schedules and thresholds.
    pub tasks: TaskSettings,
    pub prompts: PromptSettings,
    pub auth: AuthSettings,
    pub workspace: WorkspaceSettings,
}

/// Every setting resolved to its value and checked (`validate`), before it is built into the
/// services' settings (`build`).
#[derive(Debug, Clone)]
struct Resolved {
    listen: SocketAddr,
    /// Where `/metrics` is served without a token; `None` means on `listen`.
    metrics_listen: Option<SocketAddr>,
    data_dir: PathBuf,
    log_format: LogFormat,
    admin_token: Option<SecretString>,
    service_token: Option<SecretString>,
    token_signing_key: Option<SecretString>,
    user_token_ttl_secs: u64,
    rate_limit_per_second: u32,
    rate_limit_burst: u32,
    max_body_bytes: u64,
    ws_max_connections: usize,
    ws_queue_len: usize,
    ws_max_subscriptions: usize,
    /// The hub pings each WebSocket this often and closes one that has not answered the
    /// previous ping by the next.
    ws_ping_interval_secs: u64,
    // Hardening (issue 15): the API listener and failed authentication.
    /// A connection that has not sent a whole request head this long is closed.
    api_header_read_timeout_secs: u64,
    /// Connections each listener serves at once (WebSockets, once upgraded, are counted by
    /// `ws_max_connections` instead).
    api_max_connections: usize,
    /// Failed authentications a source address may make per minute after its burst; 0: no
    /// limit (e.g. behind a proxy that makes every client one address).
    auth_failures_per_minute: u32,
    auth_failure_burst: u32,
    max_vms: u32,
    shutdown_timeout_secs: u64,
    supabase_url: Option<String>,
    supabase_service_key: Option<SecretString>,
    /// Mirror credentials' ciphertexts (never their plaintext) to Supabase too.
    supabase_mirror_ciphertexts: bool,
    /// Other 4xx answers a change may get before it is dead-lettered.
    outbox_max_attempts: u32,
    encryption_master_key: Option<SecretString>,
    /// The upstream (Decodo) account and port pool, and the gateway proxy in front of it.
    egress: EgressSettings,
    firecracker_base: Option<PathBuf>,
    golden_snapshot: Option<PathBuf>,
    golden_memory: Option<PathBuf>,
    golden_kernel: Option<PathBuf>,
    golden_rootfs: Option<PathBuf>,
    hypervisor: HypervisorChoice,
    qemu_binary: String,
    /// `None`: probe whether guests boot under KVM, else use TCG.
    qemu_accel: Option<crate::vmm::qemu::Accel>,
    /// The user QEMU switches to once started (`-runas`); `None`: it stays root.
    qemu_user: Option<String>,
    /// Firecracker runs under its jailer when set.
    jailer: Option<crate::vmm::firecracker::JailerConfig>,
    /// The initramfs used as root (the test image).
    initrd: Option<PathBuf>,
    bridge: String,
    /// The bridge's own address and prefix; the VM pool is the rest of that network.
    bridge_subnet: crate::net::Subnet,
    vm_vcpus: u32,
    vm_memory_mib: u32,
    vm_data_disk_mib: u64,
    /// Hand out at most this many pool addresses (`None`: the whole network).
    ip_pool_limit: Option<u32>,
    vm_agent_timeout_secs: u64,
    vm_health_interval_secs: u64,
    /// More VM crashes of one user than this within the window refuse their next create.
    vm_crash_limit: u32,
    vm_crash_window_minutes: u64,
    /// A running VM's console log (and Firecracker's log and metrics) is trimmed to its newest
    /// half past this size.
    vm_log_max_bytes: u64,
    /// The background jobs' schedules and thresholds.
    tasks: TaskSettings,
    max_prompt_bytes: u64,
    prompt_timeout_secs: u64,
    /// A login waiting on the user this long ends as `timeout`.
    auth_session_timeout_secs: u64,
    prompt_max_timeout_secs: u64,
    prompts_per_vm: u32,
    prompt_when_busy: WhenBusy,
    /// A model server for every provider's CLI instead of the vendors' (a gateway; tests).
    model_base_url: Option<String>,
    model_api_key: Option<SecretString>,
    /// HOME of the CLIs in the guest, where their configuration and credentials live.
    cli_home: String,
    /// Prepended to the CLIs' PATH in the guest.
    cli_path: Option<String>,
    /// The tmpfs directory in the guest that holds credentials while a CLI uses them.
    cli_secrets_dir: String,
    /// The guest user (uid, gid) the CLIs, exec and the files API run as; `None` is root.
    cli_user: Option<(u32, u32)>,
    /// The directory in the guest that prompts' `cwd`, exec and the files API are relative to.
    workspace_root: String,
    /// The largest file the files API accepts.
    files_max_bytes: u64,
    exec_timeout_secs: u64,
    exec_max_timeout_secs: u64,
    /// `HTTP_PROXY`/`HTTPS_PROXY` for the CLIs' egress when there is no gateway proxy (no
    /// DECODO_HOST).
    egress_proxy: Option<String>,
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:4000";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/master-controller";
pub const DEFAULT_BRIDGE: &str = "fcbr0";
pub const DEFAULT_CLI_SECRETS_DIR: &str = "/run/mc/secrets";
/// The golden image's unprivileged user `dev` (`image/golden/rootfs.sh`) and its HOME.
pub const DEFAULT_CLI_USER: &str = "1000:1000";
pub const DEFAULT_CLI_HOME: &str = "/home/dev";
pub const DEFAULT_FILES_MAX_BYTES: u64 = 100 << 20;
pub const DEFAULT_BRIDGE_CIDR: &str = "192.168.100.1/24";
/// 8 MiB of console: thousands of lines of boot and crash output for diagnostics.
pub const DEFAULT_VM_LOG_MAX_BYTES: u64 = 8 << 20;
/// Below this a trim would keep too little to diagnose anything.
const MIN_VM_LOG_MAX_BYTES: u64 = 64 * 1024;
const MIN_TOKEN_LEN: usize = 16;

impl Config {
    /// Loads the layers in precedence order: file, environment, then `flags`.
    pub fn load(
        file: Option<&Path>,
        lookup: &dyn Fn(&str) -> Option<String>,
        flags: Settings,
    ) -> Result<Config, ConfigError> {
        let from_file = match file {
            Some(path) => read_file(path)?,
            None => Settings::default(),
        };
        let merged = from_file
            .overlay(Settings::from_env(lookup)?)
            .overlay(flags);
        Config::resolve(merged, lookup)
    }

    /// Loads from the process environment.
    pub fn from_process(file: Option<&Path>, flags: Settings) -> Result<Config, ConfigError> {
        Config::load(file, &|name| std::env::var(name).ok(), flags)
    }

    fn resolve(
        s: Settings,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let resolved = Resolved::resolve(s, lookup)?;
        resolved.validate()?;
        Ok(resolved.build())
    }

    /// `serve` cannot run without an admin token: every route needs a token, and admin routes
    /// need this one.
    pub fn require_admin_token(&self) -> Result<(), ConfigError> {
        if self.api.admin_token.is_none() {
            return Err(ConfigError::Missing {
                setting: "MC_ADMIN_TOKEN",
                reason: "serve needs an admin token (MC_ADMIN_TOKEN, MC_ADMIN_TOKEN_FILE, or the systemd credential admin-token)".into(),
            });
        }
        Ok(())
    }
}

impl Resolved {
    fn resolve(
        mut s: Settings,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Resolved, ConfigError> {
        let credentials_dir = lookup("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        secrets::fill(&mut s, credentials_dir.as_deref())?;
        let tasks = tasks::resolve(&s)?;
        let egress = egress::resolve(&s)?;
        let qemu_user = confinement::qemu_user(&s)?;
        let jailer = confinement::jailer(
            &s,
            s.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR)),
        )?;
        Ok(Resolved {
            listen: s.listen.unwrap_or_else(|| parse_default(DEFAULT_LISTEN)),
            metrics_listen: s.metrics_listen,
            data_dir: s
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            log_format: match s.log_format.as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(invalid(
                        "log_format",
                        format!("{other:?} is not text or json"),
                    ));
                }
            },
            admin_token: s.admin_token.map(SecretString::from),
            service_token: s.service_token.map(SecretString::from),
            token_signing_key: s.token_signing_key.map(SecretString::from),
            user_token_ttl_secs: s.user_token_ttl_secs.unwrap_or(24 * 3600),
            rate_limit_per_second: s.rate_limit_per_second.unwrap_or(50),
            rate_limit_burst: s.rate_limit_burst.unwrap_or(100),
            max_body_bytes: s.max_body_bytes.unwrap_or(64 * 1024),
            ws_max_connections: s.ws_max_connections.unwrap_or(1024),
            ws_queue_len: s.ws_queue_len.unwrap_or(256),
            ws_max_subscriptions: s.ws_max_subscriptions.unwrap_or(64),
            ws_ping_interval_secs: s.ws_ping_interval_secs.unwrap_or(30),
            api_header_read_timeout_secs: s.api_header_read_timeout_secs.unwrap_or(30),
            api_max_connections: s.api_max_connections.unwrap_or(4096),
            auth_failures_per_minute: s.auth_failures_per_minute.unwrap_or(10),
            auth_failure_burst: s.auth_failure_burst.unwrap_or(20),
            max_vms: s.max_vms.unwrap_or(180),
            shutdown_timeout_secs: s.shutdown_timeout_secs.unwrap_or(20),
            supabase_url: s.supabase_url,
            supabase_service_key: s.supabase_service_key.map(SecretString::from),
            supabase_mirror_ciphertexts: s.supabase_mirror_ciphertexts.unwrap_or(false),
            outbox_max_attempts: s.outbox_max_attempts.unwrap_or(8),
            encryption_master_key: s.encryption_master_key.map(SecretString::from),
            egress,
            firecracker_base: s.firecracker_base,
            golden_snapshot: s.golden_snapshot,
            golden_memory: s.golden_memory,
            golden_kernel: s.golden_kernel,
            golden_rootfs: s.golden_rootfs,
            hypervisor: match s.hypervisor.as_deref() {
                None | Some("auto") => HypervisorChoice::Auto,
                Some("firecracker") => HypervisorChoice::Firecracker,
                Some("qemu") => HypervisorChoice::Qemu,
                Some(other) => {
                    return Err(invalid(
                        "hypervisor",
                        format!("{other:?} is not firecracker, qemu or auto"),
                    ));
                }
            },
            qemu_binary: s.qemu_binary.unwrap_or_else(|| "qemu-system-x86_64".into()),
            qemu_accel: match s.qemu_accel.as_deref() {
                None | Some("auto") => None,
                Some("kvm") => Some(crate::vmm::qemu::Accel::Kvm),
                Some("tcg") => Some(crate::vmm::qemu::Accel::Tcg),
                Some(other) => {
                    return Err(invalid(
                        "qemu_accel",
                        format!("{other:?} is not kvm, tcg or auto"),
                    ));
                }
            },
            qemu_user,
            jailer,
            initrd: s.initrd,
            bridge: s.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.into()),
            bridge_subnet: crate::net::Subnet::parse(
                s.bridge_cidr.as_deref().unwrap_or(DEFAULT_BRIDGE_CIDR),
            )
            .map_err(|e| invalid("bridge_cidr", e.to_string()))?,
            vm_vcpus: s.vm_vcpus.unwrap_or(2),
            vm_memory_mib: s.vm_memory_mib.unwrap_or(2048),
            vm_data_disk_mib: s.vm_data_disk_mib.unwrap_or(10 * 1024),
            ip_pool_limit: s.ip_pool_limit,
            vm_agent_timeout_secs: s.vm_agent_timeout_secs.unwrap_or(60),
            vm_health_interval_secs: s.vm_health_interval_secs.unwrap_or(30),
            vm_crash_limit: s.vm_crash_limit.unwrap_or(3),
            vm_crash_window_minutes: s.vm_crash_window_minutes.unwrap_or(10),
            vm_log_max_bytes: s.vm_log_max_bytes.unwrap_or(DEFAULT_VM_LOG_MAX_BYTES),
            tasks,
            max_prompt_bytes: s.max_prompt_bytes.unwrap_or(32 * 1024),
            prompt_timeout_secs: s.prompt_timeout_secs.unwrap_or(600),
            auth_session_timeout_secs: s.auth_session_timeout_secs.unwrap_or(15 * 60),
            prompt_max_timeout_secs: s.prompt_max_timeout_secs.unwrap_or(3600),
            prompts_per_vm: s.prompts_per_vm.unwrap_or(1),
            prompt_when_busy: match s.prompt_when_busy.as_deref() {
                None | Some("reject") => WhenBusy::Reject,
                Some("queue") => WhenBusy::Queue,
                Some(other) => {
                    return Err(invalid(
                        "prompt_when_busy",
                        format!("{other:?} is not queue or reject"),
                    ));
                }
            },
            model_base_url: s.model_base_url,
            model_api_key: s.model_api_key.map(SecretString::from),
            cli_user: parse_cli_user(s.cli_user.as_deref().unwrap_or(DEFAULT_CLI_USER))?,
            workspace_root: s.workspace_root.unwrap_or_else(|| {
                let home = s.cli_home.as_deref().unwrap_or(DEFAULT_CLI_HOME);
                format!("{}/work", home.trim_end_matches('/'))
            }),
            cli_home: s.cli_home.unwrap_or_else(|| DEFAULT_CLI_HOME.into()),
            cli_path: s.cli_path,
            cli_secrets_dir: s
                .cli_secrets_dir
                .unwrap_or_else(|| DEFAULT_CLI_SECRETS_DIR.into()),
            files_max_bytes: s.files_max_bytes.unwrap_or(DEFAULT_FILES_MAX_BYTES),
            exec_timeout_secs: s.exec_timeout_secs.unwrap_or(600),
            exec_max_timeout_secs: s.exec_max_timeout_secs.unwrap_or(3600),
            egress_proxy: s.egress_proxy,
        })
    }
}

/// `uid:gid`, a bare `uid` (its gid the same number), or `root`; root is `None`.
fn parse_cli_user(text: &str) -> Result<Option<(u32, u32)>, ConfigError> {
    let bad = || {
        invalid(
            "cli_user",
            format!("{text:?} is not uid:gid, a uid, or root"),
        )
    };
    if text.trim() == "root" {
        return Ok(None);
    }
    let (uid, gid) = match text.trim().split_once(':') {
        Some((uid, gid)) => (uid, gid),
        None => (text.trim(), text.trim()),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = gid.parse().map_err(|_| bad())?;
    Ok(if uid == 0 && gid == 0 {
        None
    } else {
        Some((uid, gid))
    })
}

fn invalid(field: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        setting: Settings::env_name(field),
        reason,
    }
}

fn parse_default<T: std::str::FromStr>(text: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    text.parse().expect("built-in default parses")
}

fn read_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::File {
        path: path.to_path_buf(),
        reason: e.message().to_string(),
    })
}

#[cfg(test)]
mod tests;
