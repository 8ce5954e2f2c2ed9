//! The JSON shapes of the API (camelCase, RFC 3339 timestamps), and the request bodies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{User, Vm};
use crate::users::{DeletedUser, UserStats};

pub use crate::model::rfc3339;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    pub user_id: String,
    pub email: String,
    pub supabase_auth_id: Option<String>,
    #[schema(value_type = crate::model::Plan)]
    pub plan: String,
    #[schema(value_type = crate::model::UserStatus)]
    pub status: String,
    pub decodo_port: Option<u16>,
    pub prompt_count: u64,
    pub created_at: String,
    pub updated_at: String,
    pub last_active_at: Option<String>,
    pub version: u64,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            user_id: u.id.clone(),
            email: u.email.clone(),
            supabase_auth_id: u.supabase_auth_id.clone(),
            plan: u.plan.to_string(),
            status: u.status.to_string(),
            decodo_port: u.decodo_port,
            prompt_count: u.prompt_count,
            created_at: rfc3339(u.created_at_ms),
            updated_at: rfc3339(u.updated_at_ms),
            last_active_at: u.last_active_at_ms.map(rfc3339),
            version: u.version,
        }
    }
}

/// The answer to `DELETE /api/users/:userId`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletedUserView {
    pub user_id: String,
    pub deleted: bool,
    pub vms_destroyed: usize,
    pub released_port: Option<u16>,
}

impl From<&DeletedUser> for DeletedUserView {
    fn from(d: &DeletedUser) -> Self {
        DeletedUserView {
            user_id: d.user_id.clone(),
            deleted: true,
            vms_destroyed: d.vms_destroyed,
            released_port: d.released_port,
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmView {
    pub vm_id: String,
    pub user_id: String,
    #[schema(schema_with = super::vms::vm_type_schema)]
    pub r#type: String,
    #[schema(schema_with = super::vms::vm_status_schema)]
    pub status: String,
    pub ip_address: Option<String>,
    pub tap_device: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub created_at: String,
    pub updated_at: String,
    pub last_heartbeat: Option<String>,
    pub hibernated_at: Option<String>,
    pub version: u64,
    pub mac_address: Option<String>,
    pub agent: Option<AgentView>,
    pub error: Option<String>,
}

/// The agent's answer at the last health check.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub boot_id: String,
    pub uptime_sec: f64,
    pub checked_at: String,
}

impl From<&Vm> for VmView {
    fn from(vm: &Vm) -> Self {
        VmView {
            vm_id: vm.id.clone(),
            user_id: vm.user_id.clone(),
            r#type: vm.vm_type.to_string(),
            status: vm.status.to_string(),
            ip_address: vm.ip_address.clone(),
            tap_device: vm.tap_device.clone(),
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            created_at: rfc3339(vm.created_at_ms),
            updated_at: rfc3339(vm.updated_at_ms),
            last_heartbeat: vm.last_heartbeat_ms.map(rfc3339),
            hibernated_at: vm.hibernated_at_ms.map(rfc3339),
            version: vm.version,
            mac_address: vm.mac_address.clone(),
            agent: vm.agent.as_ref().map(|a| AgentView {
                boot_id: a.boot_id.clone(),
                uptime_sec: a.uptime_sec,
                checked_at: rfc3339(a.checked_at_ms),
            }),
            error: vm.error.clone(),
        }
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserStatsView {
    pub user_id: String,
    pub plan: String,
    pub status: String,
    pub prompt_count: u64,
    pub vms_by_status: BTreeMap<String, u64>,
    pub prompts_by_status: BTreeMap<String, u64>,
    pub prompts_by_provider: BTreeMap<String, crate::users::ProviderStats>,
    pub auth_sessions: u64,
    pub last_active_at: Option<String>,
}

impl From<&UserStats> for UserStatsView {
    fn from(s: &UserStats) -> Self {
        UserStatsView {
            user_id: s.user.id.clone(),
            plan: s.user.plan.to_string(),
            status: s.user.status.to_string(),
            prompt_count: s.user.prompt_count,
            vms_by_status: s.vms_by_status.clone(),
            prompts_by_status: s.prompts_by_status.clone(),
            prompts_by_provider: s.prompts_by_provider.clone(),
            auth_sessions: s.auth_sessions,
            last_active_at: s.user.last_active_at_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateUserBody {
    /// Its domain has a dot; kept lowercased.
    #[schema(format = Email, max_length = 254, pattern = r"\.")]
    pub email: String,
    /// Not only white space.
    #[schema(min_length = 1, max_length = 128, pattern = r"\S")]
    pub supabase_auth_id: Option<String>,
}

/// Enum fields arrive as strings so a bad value is reported with its field name.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchUserBody {
    #[schema(value_type = Option<crate::model::Plan>)]
    pub plan: Option<String>,
    #[schema(value_type = Option<crate::model::UserStatus>)]
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintTokenBody {
    /// Seconds, at most 30 days.
    #[schema(minimum = 1, maximum = 2_592_000)]
    #[serde(default, deserialize_with = "crate::model::whole_number")]
    pub ttl_sec: Option<u64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MintedToken {
    pub token: String,
    pub user_id: String,
    pub expires_at: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PromptView {
    pub prompt_id: String,
    pub user_id: String,
    pub vm_id: Option<String>,
    pub provider: String,
    pub status: String,
    pub model: Option<String>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub first_content_ms: Option<u64>,
    pub exit_code: Option<i32>,
    pub response_text: String,
    pub response_truncated: bool,
    pub error: Option<String>,
    pub usage: Option<serde_json::Value>,
    pub conversation_id: Option<String>,
    pub version: u64,
}

impl From<&crate::model::Prompt> for PromptView {
    fn from(p: &crate::model::Prompt) -> Self {
        PromptView {
            prompt_id: p.id.clone(),
            user_id: p.user_id.clone(),
            vm_id: p.vm_id.clone(),
            provider: p.provider.to_string(),
            status: p.status.to_string(),
            model: p.model.clone(),
            created_at: rfc3339(p.created_at_ms),
            started_at: p.started_at_ms.map(rfc3339),
            completed_at: p.completed_at_ms.map(rfc3339),
            duration_ms: p.duration_ms,
            first_content_ms: p.first_content_ms,
            exit_code: p.exit_code,
            response_text: p.response_text.clone(),
            response_truncated: p.response_truncated,
            error: p.error.clone(),
            usage: p
                .usage_json
                .as_deref()
                .and_then(|u| serde_json::from_str(u).ok()),
            conversation_id: p.conversation_id.clone(),
            version: p.version,
        }
    }
}

/// A conversation; its CLI session id stays inside the appliance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    pub conversation_id: String,
    pub user_id: String,
    pub provider: String,
    pub title: String,
    pub cwd: String,
    pub turns: u32,
    pub expired: bool,
    pub created_at: String,
    pub last_activity_at: String,
    pub version: u64,
}

impl From<&crate::model::Conversation> for ConversationView {
    fn from(c: &crate::model::Conversation) -> Self {
        ConversationView {
            conversation_id: c.id.clone(),
            user_id: c.user_id.clone(),
            provider: c.provider.to_string(),
            title: c.title.clone(),
            cwd: c.cwd.clone(),
            turns: c.turns,
            expired: c.expired,
            created_at: rfc3339(c.created_at_ms),
            last_activity_at: rfc3339(c.last_activity_ms),
            version: c.version,
        }
    }
}
