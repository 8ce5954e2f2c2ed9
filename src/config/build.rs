//! Each service's settings, built from the resolved values once: the services never see the
//! configuration, and the daemon only hands them what is theirs.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Config, Resolved};
use crate::api::{ApiLimits, ApiSettings, ListenerLimits};
use crate::auth::AuthSettings;
use crate::net::Subnet;
use crate::prompts::PromptSettings;
use crate::sync::rows::RowOptions;
use crate::sync::{MirrorSettings, SyncSettings};
use crate::vmm::HypervisorSettings;
use crate::vms::{CliEnvironment, CrashLimit, Limits, VmSettings};
use crate::workspace::WorkspaceSettings;

impl Config {
    /// The gateway proxy listens on the bridge's own address, the guests' default gateway.
    pub fn gateway_addr(&self) -> SocketAddr {
        gateway_addr(&self.vms.limits.subnet, self.egress.gateway_port)
    }
}

fn gateway_addr(subnet: &Subnet, port: u16) -> SocketAddr {
    SocketAddr::from((subnet.gateway, port))
}

impl Resolved {
    pub(super) fn build(self) -> Config {
        let gateway = gateway_addr(&self.bridge_subnet, self.egress.gateway_port);
        let cli = CliEnvironment {
            home: self.cli_home.clone(),
            path: self.cli_path.clone(),
            egress_proxy: match self.egress.upstream {
                Some(_) => Some(format!("http://{gateway}")),
                None => self.egress_proxy.clone(),
            },
            owner: self.cli_user,
            workspace_root: self.workspace_root.trim_end_matches('/').to_string(),
            secrets_dir: self.cli_secrets_dir.clone(),
        };
        Config {
            api: ApiSettings {
                listen: self.listen,
                metrics_listen: self.metrics_listen,
                admin_token: self.admin_token,
                service_token: self.service_token,
                token_signing_key: self.token_signing_key,
                rate_limit_per_second: self.rate_limit_per_second,
                rate_limit_burst: self.rate_limit_burst,
                auth_failures_per_minute: self.auth_failures_per_minute,
                auth_failure_burst: self.auth_failure_burst,
                ws_queue_len: self.ws_queue_len,
                limits: ApiLimits {
                    max_body_bytes: self.max_body_bytes,
                    user_token_ttl_secs: self.user_token_ttl_secs,
                    ws_max_connections: self.ws_max_connections,
                    ws_max_subscriptions: self.ws_max_subscriptions,
                    ws_ping_interval: Duration::from_secs(self.ws_ping_interval_secs),
                },
                listener: ListenerLimits {
                    header_read_timeout: Duration::from_secs(self.api_header_read_timeout_secs),
                    max_connections: self.api_max_connections,
                },
            },
            mirror: MirrorSettings {
                url: self.supabase_url,
                service_key: self.supabase_service_key,
                worker: SyncSettings {
                    max_attempts: self.outbox_max_attempts,
                    rows: RowOptions {
                        credential_ciphertexts: self.supabase_mirror_ciphertexts,
                    },
                    ..SyncSettings::default()
                },
            },
            hypervisor: HypervisorSettings {
                choice: self.hypervisor,
                firecracker_base: self.firecracker_base,
                qemu_binary: self.qemu_binary,
                qemu_accel: self.qemu_accel,
                qemu_user: self.qemu_user,
                jailer: self.jailer,
            },
            vms: VmSettings {
                root: self.data_dir.join("vms"),
                kernel: self.golden_kernel,
                initrd: self.initrd,
                rootfs: self.golden_rootfs,
                vcpus: self.vm_vcpus,
                memory_mib: self.vm_memory_mib,
                data_disk_mib: self.vm_data_disk_mib,
                bridge: self.bridge,
                limits: Limits {
                    max_running: self.max_vms,
                    subnet: self.bridge_subnet,
                    pool_limit: self.ip_pool_limit,
                    ports: self.egress.lease_range(),
                },
                agent_timeout: Duration::from_secs(self.vm_agent_timeout_secs),
                health_interval: Duration::from_secs(self.vm_health_interval_secs),
                crash_limit: CrashLimit {
                    max: self.vm_crash_limit,
                    window: Duration::from_secs(self.vm_crash_window_minutes * 60),
                },
                log_max_bytes: self.vm_log_max_bytes,
                // Loaded by the daemon from `golden_snapshot`, once the hypervisor is known.
                golden: None,
            },
            prompts: PromptSettings {
                max_prompt_bytes: self.max_prompt_bytes,
                default_timeout: Duration::from_secs(self.prompt_timeout_secs),
                max_timeout: Duration::from_secs(self.prompt_max_timeout_secs),
                per_vm: self.prompts_per_vm,
                when_busy: self.prompt_when_busy,
                endpoint: match (&self.model_base_url, &self.model_api_key) {
                    (Some(base_url), Some(key)) => Some(crate::providers::Endpoint {
                        base_url: base_url.clone(),
                        api_key: key.expose_secret().to_string(),
                    }),
                    _ => None,
                },
                cli: cli.clone(),
                log_bounds: crate::prompts::log::LogBounds {
                    max_events: 20_000,
                    max_bytes: 8 << 20,
                },
                retained_runs: 256,
            },
            workspace: WorkspaceSettings {
                cli: cli.clone(),
                max_file_bytes: self.files_max_bytes,
                exec_default_timeout: Duration::from_secs(self.exec_timeout_secs),
                exec_max_timeout: Duration::from_secs(self.exec_max_timeout_secs),
                max_execs: 64,
            },
            auth: AuthSettings {
                cli,
                session_timeout: Duration::from_secs(self.auth_session_timeout_secs),
                live_check_timeout: Duration::from_secs(60),
            },
            data_dir: self.data_dir,
            log_format: self.log_format,
            shutdown_timeout_secs: self.shutdown_timeout_secs,
            encryption_master_key: self.encryption_master_key,
            golden_snapshot: self.golden_snapshot,
            golden_memory: self.golden_memory,
            egress: self.egress,
            tasks: self.tasks,
        }
    }
}
