//! The rows the Supabase mirror receives: one per entity, snake_case, RFC 3339 timestamps, and
//! the entity's `version` (the database ignores a write older than the row it holds). Secrets
//! never appear: no agent token, no login URL or device code, and a credential's ciphertext only
//! when the operator turns that on. `supabase/migrations/` must have a column for every field
//! here; a test checks it against a real PostgreSQL.

use serde_json::{Value, json};

use crate::model::{AuthSession, Conversation, Credential, Prompt, User, Vm, rfc3339};

/// A mirrored table and the id of the entity a row stands for.
pub trait Mirrored {
    /// The table's name in Supabase (`/rest/v1/<table>`).
    const TABLE: &'static str;
    fn entity_id(&self) -> &str;
    fn entity_version(&self) -> u64;
    /// Marks the record as one change newer (see `sync::write`).
    fn bump_version(&mut self);
    fn row(&self, options: &RowOptions) -> Value;
    /// The counter of `RECORD_COUNTS` this record counts under (see `sync::tally`), for the
    /// records the metrics count by state.
    fn tally(&self) -> Option<String> {
        None
    }
}

/// What the operator chose to mirror.
#[derive(Debug, Clone, Copy, Default)]
pub struct RowOptions {
    /// Mirror credentials' ciphertexts (sealed by the vault; never the plaintext).
    pub credential_ciphertexts: bool,
}

fn at(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |ms| Value::String(rfc3339(ms)))
}

impl Mirrored for User {
    const TABLE: &'static str = "users";
    fn tally(&self) -> Option<String> {
        Some(super::tally::user_key(self.status))
    }
    fn entity_id(&self) -> &str {
        &self.id
    }
    fn entity_version(&self) -> u64 {
        self.version
    }
    fn bump_version(&mut self) {
        self.version += 1;
    }
    fn row(&self, _: &RowOptions) -> Value {
        json!({
            "id": self.id,
            "email": self.email,
            "supabase_auth_id": self.supabase_auth_id,
            "plan": self.plan.as_str(),
            "status": self.status.as_str(),
            "decodo_port": self.decodo_port,
            "prompt_count": self.prompt_count,
            "created_at": at(Some(self.created_at_ms)),
            "updated_at": at(Some(self.updated_at_ms)),
            "last_active_at": at(self.last_active_at_ms),
            "version": self.version,
        })
    }
}

impl Mirrored for Vm {
    const TABLE: &'static str = "vms";
    fn tally(&self) -> Option<String> {
        Some(super::tally::vm_key(self.status, self.vm_type))
    }
    fn entity_id(&self) -> &str {
        &self.id
    }
    fn entity_version(&self) -> u64 {
        self.version
    }
    fn bump_version(&mut self) {
        self.version += 1;
    }
    fn row(&self, _: &RowOptions) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "vm_type": self.vm_type.as_str(),
            "status": self.status.as_str(),
            "ip_address": self.ip_address,
            "tap_device": self.tap_device,
            "mac_address": self.mac_address,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "boot_id": self.agent.as_ref().map(|a| a.boot_id.clone()),
            "error": self.error,
            "created_at": at(Some(self.created_at_ms)),
            "updated_at": at(Some(self.updated_at_ms)),
            "last_heartbeat_at": at(self.last_heartbeat_ms),
            "hibernated_at": at(self.hibernated_at_ms),
            "version": self.version,
        })
    }
}

impl Mirrored for AuthSession {
    const TABLE: &'static str = "auth_sessions";
    fn entity_id(&self) -> &str {
        &self.id
    }
    fn entity_version(&self) -> u64 {
        self.version
    }
    fn bump_version(&mut self) {
        self.version += 1;
    }
    fn row(&self, _: &RowOptions) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "provider": self.provider.as_str(),
            "status": self.status.as_str(),
            "vm_id": self.vm_id,
            "rotation": self.rotation,
            "error": self.error,
            "created_at": at(Some(self.created_at_ms)),
            "updated_at": at(Some(self.updated_at_ms)),
            "completed_at": at(self.completed_at_ms),
            "version": self.version,
        })
    }
}

impl Mirrored for Prompt {
    const TABLE: &'static str = "prompts";
    fn entity_id(&self) -> &str {
        &self.id
    }
    fn entity_version(&self) -> u64 {
        self.version
    }
    fn bump_version(&mut self) {
        self.version += 1;
    }
    fn row(&self, _: &RowOptions) -> Value {
        let usage = self
            .usage_json
            .as_deref()
            .and_then(|u| serde_json::from_str::<Value>(u).ok());
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "vm_id": self.vm_id,
            "provider": self.provider.as_str(),
            "status": self.status.as_str(),
            "model": self.model,
            "prompt_bytes": self.prompt_bytes,
            "response_text": self.response_text,
            "response_truncated": self.response_truncated,
            "exit_code": self.exit_code,
            "error": self.error,
            "usage": usage,
            "first_content_ms": self.first_content_ms,
            "duration_ms": self.duration_ms,
            "created_at": at(Some(self.created_at_ms)),
            "started_at": at(self.started_at_ms),
            "completed_at": at(self.completed_at_ms),
            "conversation_id": self.conversation_id,
            "version": self.version,
        })
    }
}

/// The CLI's session id stays in the appliance: it only means something to the CLI on the VM.
impl Mirrored for Conversation {
    const TABLE: &'static str = "conversations";
    fn entity_id(&self) -> &str {
        &self.id
    }
    fn entity_version(&self) -> u64 {
        self.version
    }
    fn bump_version(&mut self) {
        self.version += 1;
    }
    fn row(&self, _: &RowOptions) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "provider": self.provider.as_str(),
            "title": self.title,
            "cwd": self.cwd,
            "vm_id": self.vm_id,
            "turns": self.turns,
            "expired": self.expired,
            "created_at": at(Some(self.created_at_ms)),
            "last_activity_at": at(Some(self.last_activity_ms)),
            "version": self.version,
        })
    }
}

impl Mirrored for Credential {
    const TABLE: &'static str = "credentials";
    fn entity_id(&self) -> &str {
        &self.id
    }
    fn entity_version(&self) -> u64 {
        self.version
    }
    fn bump_version(&mut self) {
        self.version += 1;
    }
    fn row(&self, options: &RowOptions) -> Value {
        use base64::Engine;
        let (ciphertext, key_id) = if options.credential_ciphertexts {
            (
                Value::String(base64::engine::general_purpose::STANDARD.encode(&self.ciphertext)),
                Value::String(self.key_id.clone()),
            )
        } else {
            (Value::Null, Value::Null)
        };
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "provider": self.provider.as_str(),
            "is_valid": self.is_valid,
            "reason": self.reason,
            "expires_at": at(self.expires_at_ms),
            "last_verified_at": at(self.last_verified_ms),
            "ciphertext": ciphertext,
            "key_id": key_id,
            "created_at": at(Some(self.created_at_ms)),
            "updated_at": at(Some(self.updated_at_ms)),
            "version": self.version,
        })
    }
}

/// One row of each mirrored table, with every optional field set, for the schema test: a
/// field the code sends must have a column.
pub fn samples(options: &RowOptions) -> Vec<(&'static str, Value)> {
    use crate::model::*;
    use crate::providers;
    let now = now_ms();
    let user = User {
        id: "u-sample".into(),
        email: "sample@example.com".into(),
        supabase_auth_id: Some("sb-1".into()),
        plan: Plan::ALL[0],
        status: UserStatus::ALL[0],
        decodo_port: Some(10001),
        prompt_count: 1,
        created_at_ms: now,
        updated_at_ms: now,
        last_active_at_ms: Some(now),
        version: 1,
    };
    let vm = Vm {
        id: "vm-sample".into(),
        user_id: user.id.clone(),
        vm_type: VmType::ALL[0],
        status: VmStatus::Running,
        ip_address: Some("192.168.100.2".into()),
        tap_device: Some("fc-tap-1".into()),
        vcpus: 2,
        memory_mib: 2048,
        created_at_ms: now,
        updated_at_ms: now,
        last_heartbeat_ms: Some(now),
        hibernated_at_ms: Some(now),
        version: 1,
        mac_address: Some("02:00:00:00:00:02".into()),
        pid: Some(1),
        agent_token: "never-mirrored".into(),
        agent: Some(AgentInfo {
            boot_id: "boot".into(),
            uptime_sec: 1.0,
            checked_at_ms: now,
        }),
        needs_readdress: false,
        error: Some("e".into()),
        image: None,
        golden: None,
    };
    let session = AuthSession {
        id: "as-sample".into(),
        user_id: user.id.clone(),
        provider: providers::CLAUDE_CODE,
        status: AuthSessionStatus::Completed,
        created_at_ms: now,
        updated_at_ms: now,
        error: Some("e".into()),
        version: 1,
        vm_id: Some(vm.id.clone()),
        auth_url: Some("https://never-mirrored".into()),
        device_code: Some("NEVER".into()),
        verification_url: None,
        instructions: None,
        last_activity_ms: now,
        completed_at_ms: Some(now),
        rotation: true,
    };
    let prompt = Prompt {
        id: "p-sample".into(),
        user_id: user.id.clone(),
        vm_id: Some(vm.id.clone()),
        provider: providers::CODEX,
        status: PromptStatus::Completed,
        created_at_ms: now,
        started_at_ms: Some(now),
        completed_at_ms: Some(now),
        exit_code: Some(0),
        error: Some("e".into()),
        version: 1,
        model: Some("m".into()),
        prompt_bytes: 5,
        response_text: "hi".into(),
        response_truncated: false,
        first_content_ms: Some(1),
        duration_ms: Some(2),
        usage_json: Some(r#"{"input_tokens":1}"#.into()),
        conversation_id: Some("conv-sample".into()),
    };
    let conversation = Conversation {
        id: "conv-sample".into(),
        user_id: user.id.clone(),
        provider: providers::CODEX,
        cli_session_id: Some("never-mirrored".into()),
        cwd: "src/app".into(),
        vm_id: Some(vm.id.clone()),
        title: "fix the build".into(),
        turns: 1,
        created_at_ms: now,
        last_activity_ms: now,
        expired: true,
        version: 1,
    };
    let credential = Credential {
        id: "c-sample".into(),
        user_id: user.id.clone(),
        provider: providers::GEMINI_CLI,
        ciphertext: vec![1, 2, 3],
        key_id: "k".into(),
        is_valid: true,
        reason: Some("ok".into()),
        expires_at_ms: Some(now),
        last_verified_ms: Some(now),
        created_at_ms: now,
        updated_at_ms: now,
        version: 1,
    };
    vec![
        (User::TABLE, user.row(options)),
        (Vm::TABLE, vm.row(options)),
        (AuthSession::TABLE, session.row(options)),
        (Prompt::TABLE, prompt.row(options)),
        (Conversation::TABLE, conversation.row(options)),
        (Credential::TABLE, credential.row(options)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secret_reaches_a_row() {
        for options in [
            RowOptions::default(),
            RowOptions {
                credential_ciphertexts: true,
            },
        ] {
            let text = serde_json::to_string(&samples(&options)).unwrap_or_default();
            assert!(!text.contains("never-mirrored"), "{text}");
            assert!(!text.contains("NEVER"), "{text}");
        }
        let plain = serde_json::to_string(&samples(&RowOptions::default())).unwrap_or_default();
        assert!(plain.contains(r#""ciphertext":null"#));
    }

    #[test]
    fn every_row_has_its_id_and_version() {
        for (table, row) in samples(&RowOptions::default()) {
            assert!(row["id"].is_string(), "{table}");
            assert_eq!(row["version"], 1, "{table}");
            assert!(
                row["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{table}"
            );
        }
    }
}
