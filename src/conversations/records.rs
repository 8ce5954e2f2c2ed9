//! Conversation records and their two indexes, always changed in one write transaction: the
//! record (`CONVERSATIONS`), the user's list (`CONVERSATIONS_BY_USER`) and the turns
//! (`CONVERSATION_PROMPTS`).

use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::ConversationError;
use crate::model::tables;
use crate::model::{Conversation, Prompt, User, now_ms, title_of};
use crate::providers::Provider;
use crate::store::{self, StoreError};
use crate::sync::outbox::record_delete;
use crate::sync::{put_mirrored, update_mirrored};

/// The most conversations, or prompts of one conversation, one page holds.
pub const MAX_PAGE: usize = 200;
/// The longest `cwd` a conversation takes, in bytes.
const MAX_CWD_BYTES: usize = 1024;
/// The longest CLI session id taken from a guest, in bytes.
const MAX_SESSION_ID_BYTES: usize = 128;

/// `cwd` as stored: relative to the workspace root, without `.` or empty components ("" is
/// the root). Refuses what could leave the workspace (absolute, `..`) or could not be a path.
pub fn normalize_cwd(cwd: &str) -> Result<String, ConversationError> {
    let invalid = |reason: &str| ConversationError::Invalid {
        field: "cwd",
        reason: reason.to_string(),
    };
    if cwd.len() > MAX_CWD_BYTES {
        return Err(invalid(&format!("longer than {MAX_CWD_BYTES} bytes")));
    }
    if cwd.starts_with('/') {
        return Err(invalid("must be relative to the workspace"));
    }
    if cwd.chars().any(char::is_control) {
        return Err(invalid("must not hold control characters"));
    }
    let mut parts = Vec::new();
    for part in cwd.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(invalid("must stay inside the workspace (no ..)")),
            part => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// A session id comes from the CLI's output in a guest, so it is bounded and plain.
pub fn check_session_id(id: &str) -> Result<(), ConversationError> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES || !id.chars().all(plain) {
        return Err(ConversationError::Invalid {
            field: "cliSessionId",
            reason: format!(
                "must be 1 to {MAX_SESSION_ID_BYTES} letters, digits, '-', '_', '.' or ':'"
            ),
        });
    }
    Ok(())
}

pub fn new_conversation(
    user_id: &str,
    provider: Provider,
    first_prompt: &str,
    cwd: &str,
) -> Result<Conversation, ConversationError> {
    let now = now_ms();
    Ok(Conversation {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_string(),
        provider,
        cli_session_id: None,
        cwd: normalize_cwd(cwd)?,
        vm_id: None,
        title: title_of(first_prompt),
        turns: 0,
        created_at_ms: now,
        last_activity_ms: now,
        expired: false,
        version: 1,
    })
}

pub fn insert(
    tx: &WriteTransaction,
    conversation: Conversation,
) -> Result<Conversation, ConversationError> {
    let user: Option<User> = store::get(&tx.open_table(tables::USERS)?, &conversation.user_id)?;
    if user.is_none() {
        return Err(ConversationError::UserNotFound(conversation.user_id));
    }
    put_mirrored(tx, tables::CONVERSATIONS, &conversation.id, &conversation)?;
    tx.open_table(tables::CONVERSATIONS_BY_USER)?.insert(
        (conversation.user_id.as_str(), conversation.id.as_str()),
        (),
    )?;
    Ok(conversation)
}

pub fn get(tx: &ReadTransaction, id: &str) -> Result<Conversation, ConversationError> {
    store::get(&tx.open_table(tables::CONVERSATIONS)?, id)?
        .ok_or_else(|| ConversationError::NotFound(id.to_string()))
}

/// Applies `change`, raising the version and telling the mirror when it changed anything.
pub fn update(
    tx: &WriteTransaction,
    id: &str,
    change: impl FnOnce(&mut Conversation),
) -> Result<Conversation, ConversationError> {
    let changed = update_mirrored(tx, tables::CONVERSATIONS, id, |c| {
        change(c);
        Ok::<_, ConversationError>(())
    })?
    .ok_or_else(|| ConversationError::NotFound(id.to_string()))?;
    Ok(changed.new)
}

pub fn add_prompt(
    tx: &WriteTransaction,
    id: &str,
    prompt_id: &str,
) -> Result<Conversation, ConversationError> {
    let conversation: Conversation = store::get(&tx.open_table(tables::CONVERSATIONS)?, id)?
        .ok_or_else(|| ConversationError::NotFound(id.to_string()))?;
    let prompt: Prompt = store::get(&tx.open_table(tables::PROMPTS)?, prompt_id)?
        .ok_or_else(|| ConversationError::PromptNotFound(prompt_id.to_string()))?;
    if prompt.user_id != conversation.user_id {
        return Err(ConversationError::NotOwner { id: id.to_string() });
    }
    match prompt.conversation_id.as_deref() {
        Some(other) if other != id => {
            return Err(ConversationError::PromptTaken {
                prompt_id: prompt_id.to_string(),
                conversation_id: other.to_string(),
            });
        }
        // Linking sets the prompt's conversation, so only a prompt naming this one may
        // already be a turn of it.
        Some(_) if turn_of(tx, id, prompt_id)?.is_some() => return Ok(conversation),
        _ => {}
    }
    let turn = conversation.turns;
    let next = turn
        .checked_add(1)
        .ok_or_else(|| ConversationError::Invalid {
            field: "conversationId",
            reason: "the conversation has as many turns as it may".into(),
        })?;
    tx.open_table(tables::CONVERSATION_PROMPTS)?
        .insert((id, turn), prompt_id)?;
    let linked = Some(id.to_string());
    update_mirrored(tx, tables::PROMPTS, prompt_id, |p: &mut Prompt| {
        p.conversation_id = linked;
        Ok::<_, ConversationError>(())
    })?;
    update(tx, id, |c| {
        c.turns = next;
        c.last_activity_ms = now_ms().max(c.last_activity_ms);
    })
}

/// The turn `prompt_id` is of the conversation, if it is one.
fn turn_of(tx: &WriteTransaction, id: &str, prompt_id: &str) -> Result<Option<u32>, StoreError> {
    let turns = tx.open_table(tables::CONVERSATION_PROMPTS)?;
    for entry in turns.range((id, 0)..=(id, u32::MAX))? {
        let (key, value) = entry?;
        if value.value() == prompt_id {
            return Ok(Some(key.value().1));
        }
    }
    Ok(None)
}

pub fn list(
    tx: &ReadTransaction,
    user_id: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<(Vec<Conversation>, Option<String>), ConversationError> {
    let limit = limit.clamp(1, MAX_PAGE);
    if store::get::<User, _>(&tx.open_table(tables::USERS)?, user_id)?.is_none() {
        return Err(ConversationError::UserNotFound(user_id.to_string()));
    }
    let index = tx.open_table(tables::CONVERSATIONS_BY_USER)?;
    // The first key past every one of this user's: no string lies between `user_id` and
    // `user_id` followed by NUL.
    let past_user = format!("{user_id}\0");
    let range = match cursor {
        Some(cursor) => index.range((user_id, "")..(user_id, cursor))?,
        None => index.range((user_id, "")..(past_user.as_str(), ""))?,
    };
    let mut ids = Vec::with_capacity(limit + 1);
    for entry in range.rev().take(limit + 1) {
        let (key, _) = entry?;
        ids.push(key.value().1.to_string());
    }
    let next = if ids.len() > limit {
        ids.truncate(limit);
        ids.last().cloned()
    } else {
        None
    };
    let records = tx.open_table(tables::CONVERSATIONS)?;
    let mut page = Vec::with_capacity(ids.len());
    for id in &ids {
        if let Some(conversation) = store::get(&records, id)? {
            page.push(conversation);
        }
    }
    Ok((page, next))
}

pub fn prompts(
    tx: &ReadTransaction,
    id: &str,
    from_turn: u32,
    limit: usize,
) -> Result<(Vec<Prompt>, Option<u32>), ConversationError> {
    let limit = limit.clamp(1, MAX_PAGE);
    get(tx, id)?;
    let turns = tx.open_table(tables::CONVERSATION_PROMPTS)?;
    let mut linked = Vec::with_capacity(limit + 1);
    for entry in turns
        .range((id, from_turn)..=(id, u32::MAX))?
        .take(limit + 1)
    {
        let (key, value) = entry?;
        linked.push((key.value().1, value.value().to_string()));
    }
    let next = if linked.len() > limit {
        linked.pop().map(|(turn, _)| turn)
    } else {
        None
    };
    let records = tx.open_table(tables::PROMPTS)?;
    let mut page = Vec::with_capacity(linked.len());
    for (_, prompt_id) in &linked {
        // Retention prunes old prompts without touching their conversations.
        if let Some(prompt) = store::get(&records, prompt_id)? {
            page.push(prompt);
        }
    }
    Ok((page, next))
}

pub fn delete(tx: &WriteTransaction, id: &str) -> Result<(), ConversationError> {
    let conversation: Conversation = store::get(&tx.open_table(tables::CONVERSATIONS)?, id)?
        .ok_or_else(|| ConversationError::NotFound(id.to_string()))?;
    let prompt_ids = remove(tx, &conversation)?;
    for prompt_id in prompt_ids {
        update_mirrored(tx, tables::PROMPTS, &prompt_id, |p: &mut Prompt| {
            if p.conversation_id.as_deref() == Some(id) {
                p.conversation_id = None;
            }
            Ok::<_, ConversationError>(())
        })?;
    }
    Ok(())
}

/// Removes the record and its index rows and enqueues its tombstone; answers the ids of the
/// prompts that were its turns.
fn remove(tx: &WriteTransaction, conversation: &Conversation) -> Result<Vec<String>, StoreError> {
    let id = conversation.id.as_str();
    tx.open_table(tables::CONVERSATIONS)?.remove(id)?;
    tx.open_table(tables::CONVERSATIONS_BY_USER)?
        .remove((conversation.user_id.as_str(), id))?;
    let mut turns = tx.open_table(tables::CONVERSATION_PROMPTS)?;
    let mut linked = Vec::new();
    for entry in turns.range((id, 0)..=(id, u32::MAX))? {
        let (key, value) = entry?;
        linked.push((key.value().1, value.value().to_string()));
    }
    for (turn, _) in &linked {
        turns.remove((id, *turn))?;
    }
    record_delete::<Conversation>(tx, id, id)?;
    Ok(linked.into_iter().map(|(_, prompt_id)| prompt_id).collect())
}

/// Removes every conversation of the user, with its indexes, and enqueues their tombstones.
/// For the user delete's transaction (which removes the user's prompts itself).
pub fn remove_user_conversations(
    tx: &WriteTransaction,
    user_id: &str,
) -> Result<usize, StoreError> {
    let past_user = format!("{user_id}\0");
    let mut ids = Vec::new();
    for entry in tx
        .open_table(tables::CONVERSATIONS_BY_USER)?
        .range((user_id, "")..(past_user.as_str(), ""))?
    {
        let (key, _) = entry?;
        ids.push(key.value().1.to_string());
    }
    let mut removed = 0;
    for id in &ids {
        let conversation: Option<Conversation> =
            store::get(&tx.open_table(tables::CONVERSATIONS)?, id)?;
        match conversation {
            Some(conversation) => {
                remove(tx, &conversation)?;
                removed += 1;
            }
            None => {
                tx.open_table(tables::CONVERSATIONS_BY_USER)?
                    .remove((user_id, id.as_str()))?;
            }
        }
    }
    Ok(removed)
}
