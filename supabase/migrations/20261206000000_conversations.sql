-- Conversations (src/sync/rows.rs says what each row holds): the turns one user has with one
-- CLI, each turn a prompt that names its conversation.
--
-- As in the first migration: re-appliable (`if not exists`, `or replace`), and no foreign keys,
-- neither to users nor between prompts and conversations. The outbox delivers each entity on
-- its own schedule, so a prompt may arrive before its conversation and a user's tombstone before
-- their conversations'; the appliance deletes a user's conversations with the user (one
-- tombstone each), so the mirror converges without a cascade.
--
-- The CLI's own session id is not mirrored: it means something only to the CLI on its VM.

create table if not exists public.conversations (
    id text primary key,
    user_id text not null,
    provider text not null,
    -- The start of the first prompt, at most 80 characters.
    title text not null,
    -- Relative to the workspace root; '' is the root.
    cwd text not null,
    vm_id text,
    -- u32 in the appliance: wider than integer.
    turns bigint not null,
    -- The CLI session is gone; the next turn starts a new one.
    expired boolean not null,
    created_at timestamptz not null,
    last_activity_at timestamptz not null,
    version bigint not null
);

alter table public.prompts add column if not exists conversation_id text;

-- The web app lists a user's conversations by recent activity, and a conversation's prompts.
create index if not exists conversations_user_id_idx
    on public.conversations (user_id, last_activity_at desc);
create index if not exists prompts_conversation_id_idx
    on public.prompts (conversation_id, created_at)
    where conversation_id is not null;

create or replace trigger conversations_version_guard before update on public.conversations
    for each row execute function public.mirror_version_guard();

alter table public.conversations enable row level security;
