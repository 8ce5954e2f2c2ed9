//! The publish side of the WebSocket hub. Services publish typed [`HubEvent`]s to a
//! [`Channel`] (a user's, or the admin one); the hub in `api::ws` delivers them to the
//! subscribers that may see them. The broadcast buffer is bounded: a subscriber that falls
//! behind it is dropped. This is the one place an event's JSON shape is written.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{AuthSessionStatus, PromptStatus, VmStatus};
use crate::providers::Provider;

pub const ADMIN_CHANNEL: &str = "admin";

/// Where an event goes: a user's channel, `user:<id>`. Every event is about one user; admin
/// subscribers (`ADMIN_CHANNEL`) see them all, so nothing is published to `admin` itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel(String);

impl Channel {
    pub fn user(user_id: &str) -> Channel {
        Channel(user_id.to_string())
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "user:{}", self.0)
    }
}

/// Every event the hub carries, as subscribers receive it (`{"event": "<name>", ...}` with
/// camelCase fields).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(
    tag = "event",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum HubEvent {
    VmStatusChanged {
        vm_id: String,
        user_id: String,
        status: VmStatus,
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_status: Option<VmStatus>,
    },
    /// A hibernated VM's address went to another VM; it gets a new one when it resumes.
    VmIpReclaimed {
        vm_id: String,
        ip: String,
    },
    VmCrashed {
        vm_id: String,
        user_id: String,
        reason: String,
    },
    VmDestroyedInactive {
        vm_id: String,
        user_id: String,
        inactive_days: u32,
    },
    AuthProgress {
        session_id: String,
        provider: Provider,
        status: AuthSessionStatus,
        error: Option<String>,
    },
    AuthCompleted {
        session_id: String,
        provider: Provider,
        credential_id: String,
        rotation: bool,
    },
    AuthCredentialRefreshed {
        provider: Provider,
    },
    PromptStarted {
        prompt_id: String,
        provider: Provider,
    },
    PromptCompleted {
        prompt_id: String,
        status: PromptStatus,
        exit_code: Option<i32>,
    },
}

/// An event as the hub delivers it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub channel: String,
    pub data: serde_json::Value,
}

#[derive(Clone)]
pub struct EventHub {
    sender: broadcast::Sender<Arc<Event>>,
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        let (sender, _) = broadcast::channel(capacity.max(1));
        EventHub { sender }
    }

    /// Publishes `event` to `channel`. Subscribers of the admin channel see every event.
    /// Returns how many connections were reached; zero is not an error.
    pub fn publish(&self, channel: &Channel, event: HubEvent) -> usize {
        let data = match serde_json::to_value(&event) {
            Ok(data) => data,
            Err(e) => {
                // Every variant is plain data; this would be a bug, not a condition to handle.
                tracing::error!(error = %e, ?event, "cannot encode a hub event");
                return 0;
            }
        };
        let event = Arc::new(Event {
            channel: channel.to_string(),
            data,
        });
        self.sender.send(event).unwrap_or(0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_keep_the_wire_shape_subscribers_read() {
        let changed = HubEvent::VmStatusChanged {
            vm_id: "v".into(),
            user_id: "u".into(),
            status: VmStatus::Running,
            previous_status: None,
        };
        assert_eq!(
            serde_json::to_value(&changed).unwrap(),
            json!({"event": "vm_status_changed", "vmId": "v", "userId": "u", "status": "running"})
        );
        let finished = HubEvent::PromptCompleted {
            prompt_id: "p".into(),
            status: PromptStatus::Completed,
            exit_code: None,
        };
        assert_eq!(
            serde_json::to_value(&finished).unwrap(),
            json!({"event": "prompt_completed", "promptId": "p", "status": "completed", "exitCode": null})
        );
        let inactive = HubEvent::VmDestroyedInactive {
            vm_id: "v".into(),
            user_id: "u".into(),
            inactive_days: 15,
        };
        assert_eq!(serde_json::to_value(&inactive).unwrap()["inactiveDays"], 15);
    }

    #[test]
    fn channels_are_named_as_subscribers_name_them() {
        assert_eq!(Channel::user("abc").to_string(), "user:abc");
    }
}
