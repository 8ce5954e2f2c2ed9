//! The checks a loaded configuration must pass before anything starts.

use super::{ConfigError, MIN_TOKEN_LEN, MIN_VM_LOG_MAX_BYTES, Resolved, Settings, invalid};

impl Resolved {
    /// Checks the settings that do not depend on the command being run.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        use secrecy::ExposeSecret;
        for (field, token) in [
            ("admin_token", &self.admin_token),
            ("service_token", &self.service_token),
            ("token_signing_key", &self.token_signing_key),
        ] {
            if let Some(token) = token
                && token.expose_secret().len() < MIN_TOKEN_LEN
            {
                return Err(invalid(
                    field,
                    format!("must be at least {MIN_TOKEN_LEN} characters"),
                ));
            }
        }
        if let (Some(admin), Some(service)) = (&self.admin_token, &self.service_token)
            && admin.expose_secret() == service.expose_secret()
        {
            return Err(invalid(
                "service_token",
                "must differ from the admin token".into(),
            ));
        }
        // Guest secrets: a relative or root directory would put credentials where the script
        // that stages them (and mounts a tmpfs there) must not.
        let secrets = self.cli_secrets_dir.trim_end_matches('/');
        if !secrets.starts_with('/') || secrets.is_empty() || secrets.contains("..") {
            return Err(invalid(
                "cli_secrets_dir",
                "must be an absolute directory other than /".into(),
            ));
        }
        let workspace = self.workspace_root.trim_end_matches('/');
        if !workspace.starts_with('/') || workspace.is_empty() || workspace.contains("/..") {
            return Err(invalid(
                "workspace_root",
                "must be an absolute directory other than /".into(),
            ));
        }
        let positive = [
            ("files_max_bytes", self.files_max_bytes),
            ("exec_timeout_secs", self.exec_timeout_secs),
            ("exec_max_timeout_secs", self.exec_max_timeout_secs),
            ("user_token_ttl_secs", self.user_token_ttl_secs),
            (
                "rate_limit_per_second",
                u64::from(self.rate_limit_per_second),
            ),
            ("rate_limit_burst", u64::from(self.rate_limit_burst)),
            ("max_body_bytes", self.max_body_bytes),
            ("ws_max_connections", self.ws_max_connections as u64),
            ("ws_queue_len", self.ws_queue_len as u64),
            ("ws_max_subscriptions", self.ws_max_subscriptions as u64),
            ("ws_ping_interval_secs", self.ws_ping_interval_secs),
            (
                "api_header_read_timeout_secs",
                self.api_header_read_timeout_secs,
            ),
            ("api_max_connections", self.api_max_connections as u64),
            ("auth_failure_burst", u64::from(self.auth_failure_burst)),
            ("max_vms", u64::from(self.max_vms)),
            ("vm_vcpus", u64::from(self.vm_vcpus)),
            ("vm_memory_mib", u64::from(self.vm_memory_mib)),
            ("vm_data_disk_mib", self.vm_data_disk_mib),
            ("ip_pool_limit", self.ip_pool_limit.map_or(1, u64::from)),
            ("vm_agent_timeout_secs", self.vm_agent_timeout_secs),
            ("max_prompt_bytes", self.max_prompt_bytes),
            ("prompt_timeout_secs", self.prompt_timeout_secs),
            ("auth_session_timeout_secs", self.auth_session_timeout_secs),
            ("outbox_max_attempts", u64::from(self.outbox_max_attempts)),
            ("prompt_max_timeout_secs", self.prompt_max_timeout_secs),
            ("prompts_per_vm", u64::from(self.prompts_per_vm)),
            ("vm_health_interval_secs", self.vm_health_interval_secs),
            ("vm_crash_window_minutes", self.vm_crash_window_minutes),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(invalid(field, "must be greater than 0".into()));
            }
        }
        if self.vm_log_max_bytes < MIN_VM_LOG_MAX_BYTES {
            return Err(invalid(
                "vm_log_max_bytes",
                format!("must be at least {MIN_VM_LOG_MAX_BYTES}"),
            ));
        }
        if self.egress.upstream.is_some() && self.egress_proxy.is_some() {
            return Err(invalid(
                "egress_proxy",
                "with DECODO_HOST set the CLIs use the built-in gateway proxy; unset MC_EGRESS_PROXY"
                    .into(),
            ));
        }
        if let Some(url) = &self.supabase_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(invalid(
                "supabase_url",
                format!("{url:?} is not an http(s) URL"),
            ));
        }
        if self.supabase_url.is_some() && self.supabase_service_key.is_none() {
            return Err(ConfigError::Missing {
                setting: Settings::env_name("supabase_service_key"),
                reason: "required when SUPABASE_URL is set".into(),
            });
        }
        let bridge_ok = !self.bridge.is_empty()
            && self.bridge.len() <= 15
            && self
                .bridge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !bridge_ok {
            return Err(invalid(
                "bridge",
                format!(
                    "{:?} is not a link name (1 to 15 of a-z, 0-9, - and _)",
                    self.bridge
                ),
            ));
        }
        if self.vm_vcpus > 32 || (self.vm_vcpus > 1 && self.vm_vcpus % 2 == 1) {
            return Err(invalid(
                "vm_vcpus",
                "must be 1 or an even number up to 32 (Firecracker's rule)".into(),
            ));
        }
        if self.prompt_timeout_secs > self.prompt_max_timeout_secs {
            return Err(invalid(
                "prompt_timeout_secs",
                format!(
                    "the default {} s is above the maximum {} s (MC_PROMPT_MAX_TIMEOUT_SECS)",
                    self.prompt_timeout_secs, self.prompt_max_timeout_secs
                ),
            ));
        }
        for (field, url) in [
            ("model_base_url", &self.model_base_url),
            ("egress_proxy", &self.egress_proxy),
        ] {
            if let Some(url) = url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(field, format!("{url:?} is not an http(s) URL")));
            }
        }
        if self.model_base_url.is_some() != self.model_api_key.is_some() {
            return Err(ConfigError::Missing {
                setting: Settings::env_name("model_api_key"),
                reason: "MC_MODEL_BASE_URL and MC_MODEL_API_KEY go together".into(),
            });
        }
        if !self.data_dir.is_absolute() {
            return Err(invalid(
                "data_dir",
                format!("{} is not an absolute path", self.data_dir.display()),
            ));
        }
        Ok(())
    }
}
