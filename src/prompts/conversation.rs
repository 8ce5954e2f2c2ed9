//! The conversation a prompt is a turn of: the one its request names, checked (its user, its
//! provider, its directory, its CLI session still there), or a new one started by it. Turns of
//! one conversation never run at once: two resumes of one CLI session would interleave its
//! writes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::{PromptError, PromptRequest};
use crate::conversations::{ConversationService, normalize_cwd};
use crate::model::Conversation;
use crate::vms::{VmError, VmService};

/// Conversations with a turn running.
#[derive(Default)]
pub(super) struct InFlight {
    ids: Mutex<HashSet<String>>,
}

/// A turn holding its conversation; dropping it lets the next turn in.
pub(super) struct Hold {
    in_flight: Arc<InFlight>,
    id: String,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.in_flight.lock().remove(&self.id);
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn hold(self: &Arc<Self>, id: &str) -> Result<Hold, PromptError> {
        if !self.lock().insert(id.to_string()) {
            return Err(PromptError::ConversationBusy(id.to_string()));
        }
        Ok(Hold {
            in_flight: self.clone(),
            id: id.to_string(),
        })
    }
}

/// The conversation `request` is a turn of, held for the turn.
pub(super) async fn open(
    conversations: &ConversationService,
    vms: &VmService,
    in_flight: &Arc<InFlight>,
    request: &PromptRequest,
) -> Result<(Conversation, Hold), PromptError> {
    let cwd = request.cwd.clone().unwrap_or_default();
    let Some(id) = &request.conversation_id else {
        let conversation = conversations
            .start(&request.user_id, request.provider, &request.prompt, &cwd)
            .await?;
        let hold = in_flight.hold(&conversation.id)?;
        return Ok((conversation, hold));
    };
    let conversation = conversations
        .resume(id, &request.user_id, request.provider)
        .await?;
    let asked = request.cwd.as_deref().map(normalize_cwd).transpose()?;
    if asked.is_some_and(|cwd| cwd != conversation.cwd) {
        return Err(crate::conversations::ConversationError::WrongCwd {
            id: id.clone(),
            cwd: conversation.cwd,
        }
        .into());
    }
    let hold = in_flight.hold(id)?;
    if conversation.expired {
        return Err(PromptError::ConversationExpired(id.clone()));
    }
    // Its CLI session lives on the disk of the VM it ran on; a user's new VM has none of it.
    if let Some(vm_id) = &conversation.vm_id {
        let current = match vms.user_vm(&request.user_id).await {
            Ok(vm) => Some(vm.id),
            Err(VmError::NoVm(_)) => None,
            Err(e) => return Err(e.into()),
        };
        if current.as_deref() != Some(vm_id) {
            conversations.expire(id).await?;
            return Err(PromptError::ConversationExpired(id.clone()));
        }
    }
    Ok((conversation, hold))
}
