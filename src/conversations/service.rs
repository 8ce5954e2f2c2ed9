//! The conversation service: what the prompt service and the API call.

use super::ConversationError;
use super::records;
use crate::model::{Conversation, Prompt};
use crate::providers::Provider;
use crate::store::Store;

#[derive(Clone)]
pub struct ConversationService {
    store: Store,
}

impl ConversationService {
    pub fn new(store: Store) -> ConversationService {
        ConversationService { store }
    }

    /// A new conversation of `user_id` with `provider`, titled by its first prompt, whose
    /// turns run in `cwd` (relative to the workspace root; "" is the root).
    pub async fn start(
        &self,
        user_id: &str,
        provider: Provider,
        first_prompt: &str,
        cwd: &str,
    ) -> Result<Conversation, ConversationError> {
        let conversation = records::new_conversation(user_id, provider, first_prompt, cwd)?;
        self.store
            .write(move |tx| records::insert(tx, conversation))
            .await
    }

    pub async fn get(&self, id: &str) -> Result<Conversation, ConversationError> {
        let id = id.to_string();
        self.store.read(move |tx| records::get(tx, &id)).await
    }

    /// The conversation a new turn of `user_id` with `provider` continues: `NotOwner` when it
    /// is another user's, `WrongProvider` when it is with another CLI.
    pub async fn resume(
        &self,
        id: &str,
        user_id: &str,
        provider: Provider,
    ) -> Result<Conversation, ConversationError> {
        let conversation = self.get(id).await?;
        if conversation.user_id != user_id {
            return Err(ConversationError::NotOwner { id: id.to_string() });
        }
        if conversation.provider != provider {
            return Err(ConversationError::WrongProvider {
                id: id.to_string(),
                expected: conversation.provider,
                requested: provider,
            });
        }
        Ok(conversation)
    }

    /// Makes the stored prompt `prompt_id` the conversation's next turn: counts the turn, moves
    /// its last activity to now, indexes the prompt and sets the prompt's `conversation_id`, in
    /// one transaction. Adding a prompt that is already a turn of it changes nothing.
    pub async fn add_prompt(
        &self,
        id: &str,
        prompt_id: &str,
    ) -> Result<Conversation, ConversationError> {
        let (id, prompt_id) = (id.to_string(), prompt_id.to_string());
        self.store
            .write(move |tx| records::add_prompt(tx, &id, &prompt_id))
            .await
    }

    /// Records the CLI session a turn ran in, and the VM it lives on; clears `expired`.
    pub async fn bind_session(
        &self,
        id: &str,
        cli_session_id: &str,
        vm_id: &str,
    ) -> Result<(), ConversationError> {
        records::check_session_id(cli_session_id)?;
        let (cli_session_id, vm_id) = (cli_session_id.to_string(), vm_id.to_string());
        self.change(id, move |c| {
            c.cli_session_id = Some(cli_session_id);
            c.vm_id = Some(vm_id);
            c.expired = false;
        })
        .await
    }

    /// Marks the CLI session gone (its VM was destroyed, or the CLI no longer knows it). The
    /// session id is kept for the record; the next turn starts a new session.
    pub async fn expire(&self, id: &str) -> Result<(), ConversationError> {
        self.change(id, |c| c.expired = true).await
    }

    async fn change(
        &self,
        id: &str,
        change: impl FnOnce(&mut Conversation) + Send + 'static,
    ) -> Result<(), ConversationError> {
        let id = id.to_string();
        self.store
            .write(move |tx| records::update(tx, &id, change).map(|_| ()))
            .await
    }

    /// A page of the user's conversations, newest first (by creation: ids are UUIDv7), from
    /// after `cursor` (the last id of the previous page), at most `limit` (1 to [`MAX_PAGE`]).
    /// The cursor is stable: conversations started meanwhile appear on the first page, never
    /// twice. Answers the next page's cursor, `None` after the last page.
    ///
    /// [`MAX_PAGE`]: super::MAX_PAGE
    pub async fn list(
        &self,
        user_id: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<String>), ConversationError> {
        let (user_id, cursor) = (user_id.to_string(), cursor.map(str::to_string));
        self.store
            .read(move |tx| records::list(tx, &user_id, cursor.as_deref(), limit))
            .await
    }

    /// A page of the conversation's prompts in turn order, from turn `from_turn` (0 is the
    /// first), at most `limit` (1 to [`MAX_PAGE`]); answers the next page's first turn, `None`
    /// after the last. A prompt retention pruned is left out.
    ///
    /// [`MAX_PAGE`]: super::MAX_PAGE
    pub async fn prompts(
        &self,
        id: &str,
        from_turn: u32,
        limit: usize,
    ) -> Result<(Vec<Prompt>, Option<u32>), ConversationError> {
        let id = id.to_string();
        self.store
            .read(move |tx| records::prompts(tx, &id, from_turn, limit))
            .await
    }

    /// Removes the conversation and its indexes, and tells the mirror. Its prompts stay, as
    /// prompts of no conversation.
    pub async fn delete(&self, id: &str) -> Result<(), ConversationError> {
        let id = id.to_string();
        self.store.write(move |tx| records::delete(tx, &id)).await
    }
}

#[cfg(test)]
#[path = "service_tests.rs"]
mod tests;
