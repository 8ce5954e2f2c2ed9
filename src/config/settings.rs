//! The raw, layered settings: every field optional, so the TOML file, the environment and the
//! command line can each supply some of them and be overlaid in that order.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;

use super::ConfigError;

/// Declares `Settings` with one optional field per setting, the environment names each is read
/// from (the first set one wins), and the overlay of one layer on another.
macro_rules! settings {
    ($($field:ident: $ty:ty = [$($env:literal),+]),+ $(,)?) => {
        #[derive(Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(pub $field: Option<$ty>,)+
        }

        impl Settings {
            /// Reads every setting from the environment through `lookup`.
            pub fn from_env(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
                Ok(Settings {
                    $($field: parse_env(lookup, &[$($env),+])?,)+
                })
            }

            /// `top`'s values win over `self`'s.
            pub fn overlay(self, top: Settings) -> Settings {
                Settings {
                    $($field: top.$field.or(self.$field),)+
                }
            }

            /// The primary environment name of a setting, for error messages.
            pub fn env_name(field: &str) -> &'static str {
                match field {
                    $(stringify!($field) => [$($env),+][0],)+
                    _ => "",
                }
            }
        }
    };
}

settings! {
    listen: SocketAddr = ["MC_LISTEN"],
    metrics_listen: SocketAddr = ["MC_METRICS_LISTEN"],
    data_dir: PathBuf = ["MC_DATA_DIR"],
    log_format: String = ["MC_LOG_FORMAT"],
    admin_token: String = ["MC_ADMIN_TOKEN"],
    admin_token_file: PathBuf = ["MC_ADMIN_TOKEN_FILE"],
    service_token: String = ["MC_SERVICE_TOKEN"],
    service_token_file: PathBuf = ["MC_SERVICE_TOKEN_FILE"],
    token_signing_key: String = ["MC_TOKEN_SIGNING_KEY"],
    user_token_ttl_secs: u64 = ["MC_USER_TOKEN_TTL_SECS"],
    rate_limit_per_second: u32 = ["MC_RATE_LIMIT_PER_SECOND"],
    rate_limit_burst: u32 = ["MC_RATE_LIMIT_BURST"],
    max_body_bytes: u64 = ["MC_MAX_BODY_BYTES"],
    ws_max_connections: usize = ["MC_WS_MAX_CONNECTIONS"],
    ws_queue_len: usize = ["MC_WS_QUEUE_LEN"],
    ws_max_subscriptions: usize = ["MC_WS_MAX_SUBSCRIPTIONS"],
    ws_ping_interval_secs: u64 = ["MC_WS_PING_INTERVAL_SECS"],
    max_vms: u32 = ["MC_MAX_VMS"],
    shutdown_timeout_secs: u64 = ["MC_SHUTDOWN_TIMEOUT_SECS"],
    supabase_url: String = ["MC_SUPABASE_URL", "SUPABASE_URL"],
    supabase_service_key: String = ["MC_SUPABASE_SERVICE_KEY", "SUPABASE_SERVICE_KEY"],
    encryption_master_key: String = ["MC_ENCRYPTION_MASTER_KEY", "ENCRYPTION_MASTER_KEY"],
    decodo_user: String = ["MC_DECODO_USER", "DECODO_USER"],
    decodo_password: String = ["MC_DECODO_PASSWORD", "DECODO_PASSWORD"],
    decodo_host: String = ["MC_DECODO_HOST", "DECODO_HOST"],
    decodo_port_start: u16 = ["MC_DECODO_PORT_START", "DECODO_PORT_START"],
    decodo_port_end: u16 = ["MC_DECODO_PORT_END", "DECODO_PORT_END"],
    firecracker_base: PathBuf = ["MC_FIRECRACKER_BASE", "FIRECRACKER_BASE"],
    golden_snapshot: PathBuf = ["MC_GOLDEN_SNAPSHOT", "GOLDEN_SNAPSHOT"],
    golden_memory: PathBuf = ["MC_GOLDEN_MEMORY", "GOLDEN_MEMORY"],
    golden_kernel: PathBuf = ["MC_GOLDEN_KERNEL", "GOLDEN_KERNEL"],
    golden_rootfs: PathBuf = ["MC_GOLDEN_ROOTFS", "GOLDEN_ROOTFS"],
    hypervisor: String = ["MC_HYPERVISOR"],
    qemu_binary: String = ["MC_QEMU_BINARY"],
    qemu_accel: String = ["MC_QEMU_ACCEL"],
    qemu_user: String = ["MC_QEMU_USER"],
    jailer_binary: PathBuf = ["MC_JAILER_BINARY"],
    jailer_uid: u32 = ["MC_JAILER_UID"],
    jailer_gid: u32 = ["MC_JAILER_GID"],
    jailer_chroot_base: PathBuf = ["MC_JAILER_CHROOT_BASE"],
    jailer_cgroup: String = ["MC_JAILER_CGROUP"],
    initrd: PathBuf = ["MC_INITRD"],
    bridge: String = ["MC_BRIDGE"],
    bridge_cidr: String = ["MC_BRIDGE_CIDR"],
    vm_vcpus: u32 = ["MC_VM_VCPUS"],
    vm_memory_mib: u32 = ["MC_VM_MEMORY_MIB"],
    vm_data_disk_mib: u64 = ["MC_VM_DATA_DISK_MIB"],
    ip_pool_limit: u32 = ["MC_IP_POOL_LIMIT"],
    vm_agent_timeout_secs: u64 = ["MC_VM_AGENT_TIMEOUT_SECS"],
    vm_health_interval_secs: u64 = ["MC_VM_HEALTH_INTERVAL_SECS"],
    vm_crash_limit: u32 = ["MC_VM_CRASH_LIMIT"],
    vm_crash_window_minutes: u64 = ["MC_VM_CRASH_WINDOW_MINUTES"],
    vm_log_max_bytes: u64 = ["MC_VM_LOG_MAX_BYTES"],
    tasks_enabled: bool = ["MC_TASKS_ENABLED"],
    task_hibernate_idle_interval_secs: u64 = ["MC_TASK_HIBERNATE_IDLE_INTERVAL_SECS"],
    task_hibernate_idle_at: String = ["MC_TASK_HIBERNATE_IDLE_AT"],
    task_destroy_inactive_interval_secs: u64 = ["MC_TASK_DESTROY_INACTIVE_INTERVAL_SECS"],
    task_destroy_inactive_at: String = ["MC_TASK_DESTROY_INACTIVE_AT"],
    task_metrics_sample_interval_secs: u64 = ["MC_TASK_METRICS_SAMPLE_INTERVAL_SECS"],
    task_metrics_sample_at: String = ["MC_TASK_METRICS_SAMPLE_AT"],
    task_expire_auth_sessions_interval_secs: u64 = ["MC_TASK_EXPIRE_AUTH_SESSIONS_INTERVAL_SECS"],
    task_expire_auth_sessions_at: String = ["MC_TASK_EXPIRE_AUTH_SESSIONS_AT"],
    task_validate_credentials_interval_secs: u64 = ["MC_TASK_VALIDATE_CREDENTIALS_INTERVAL_SECS"],
    task_validate_credentials_at: String = ["MC_TASK_VALIDATE_CREDENTIALS_AT"],
    task_vm_health_interval_secs: u64 = ["MC_TASK_VM_HEALTH_INTERVAL_SECS"],
    task_vm_health_at: String = ["MC_TASK_VM_HEALTH_AT"],
    idle_hibernate_after_secs: u64 = ["MC_IDLE_HIBERNATE_AFTER_SECS"],
    inactive_destroy_after_days: u32 = ["MC_INACTIVE_DESTROY_AFTER_DAYS"],
    auth_session_max_age_secs: u64 = ["MC_AUTH_SESSION_MAX_AGE_SECS"],
    metrics_samples_kept: usize = ["MC_METRICS_SAMPLES_KEPT"],
    max_prompt_bytes: u64 = ["MC_MAX_PROMPT_BYTES"],
    prompt_timeout_secs: u64 = ["MC_PROMPT_TIMEOUT_SECS"],
    prompt_max_timeout_secs: u64 = ["MC_PROMPT_MAX_TIMEOUT_SECS"],
    prompts_per_vm: u32 = ["MC_PROMPTS_PER_VM"],
    prompt_when_busy: String = ["MC_PROMPT_WHEN_BUSY"],
    model_base_url: String = ["MC_MODEL_BASE_URL"],
    model_api_key: String = ["MC_MODEL_API_KEY"],
    cli_home: String = ["MC_CLI_HOME"],
    cli_path: String = ["MC_CLI_PATH"],
    cli_secrets_dir: String = ["MC_CLI_SECRETS_DIR"],
    cli_user: String = ["MC_CLI_USER"],
    workspace_root: String = ["MC_WORKSPACE_ROOT"],
    files_max_bytes: u64 = ["MC_FILES_MAX_BYTES"],
    exec_timeout_secs: u64 = ["MC_EXEC_TIMEOUT_SECS"],
    exec_max_timeout_secs: u64 = ["MC_EXEC_MAX_TIMEOUT_SECS"],
    egress_proxy: String = ["MC_EGRESS_PROXY"],
    egress_gateway_port: u16 = ["MC_EGRESS_GATEWAY_PORT"],
    egress_bypass: String = ["MC_EGRESS_BYPASS"],
    egress_strict: bool = ["MC_EGRESS_STRICT"],
    egress_echo_url: String = ["MC_EGRESS_ECHO_URL"],
    egress_health_spacing_ms: u64 = ["MC_EGRESS_HEALTH_SPACING_MS"],
    egress_health_timeout_secs: u64 = ["MC_EGRESS_HEALTH_TIMEOUT_SECS"],
    egress_max_connections_per_vm: usize = ["MC_EGRESS_MAX_CONNECTIONS_PER_VM"],
    egress_max_connections: usize = ["MC_EGRESS_MAX_CONNECTIONS"],
    egress_idle_timeout_secs: u64 = ["MC_EGRESS_IDLE_TIMEOUT_SECS"],
    egress_max_header_bytes: usize = ["MC_EGRESS_MAX_HEADER_BYTES"],
    task_proxy_health_interval_secs: u64 = ["MC_TASK_PROXY_HEALTH_INTERVAL_SECS"],
    task_proxy_health_at: String = ["MC_TASK_PROXY_HEALTH_AT"],
    // Hardening (issue 15): the API listener, failed authentication, prompt retention.
    api_header_read_timeout_secs: u64 = ["MC_API_HEADER_READ_TIMEOUT_SECS"],
    api_max_connections: usize = ["MC_API_MAX_CONNECTIONS"],
    auth_failures_per_minute: u32 = ["MC_AUTH_FAILURES_PER_MINUTE"],
    auth_failure_burst: u32 = ["MC_AUTH_FAILURE_BURST"],
    prompt_retention_days: u32 = ["MC_PROMPT_RETENTION_DAYS"],
    task_prune_prompts_interval_secs: u64 = ["MC_TASK_PRUNE_PROMPTS_INTERVAL_SECS"],
    task_prune_prompts_at: String = ["MC_TASK_PRUNE_PROMPTS_AT"],
    auth_session_timeout_secs: u64 = ["MC_AUTH_SESSION_TIMEOUT_SECS"],
    supabase_mirror_ciphertexts: bool = ["MC_SUPABASE_MIRROR_CIPHERTEXTS"],
    outbox_max_attempts: u32 = ["MC_OUTBOX_MAX_ATTEMPTS"],
}

fn parse_env<T: FromStr>(
    lookup: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Result<Option<T>, ConfigError>
where
    T::Err: std::fmt::Display,
{
    for name in names {
        if let Some(raw) = lookup(name) {
            return raw
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| ConfigError::Invalid {
                    setting: name,
                    reason: format!("{:?}: {e}", raw.trim()),
                });
        }
    }
    Ok(None)
}
