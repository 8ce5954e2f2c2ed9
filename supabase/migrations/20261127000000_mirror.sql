-- The Supabase mirror of the appliance's entities (src/sync/rows.rs says what each row holds).
--
-- The appliance is the source of truth; these tables are a read model the web app queries. The
-- daemon's outbox worker upserts whole rows through PostgREST with
-- `Prefer: resolution=merge-duplicates` and deletes tombstones by id.
--
-- Written to be re-applied harmlessly (`if not exists`, `or replace`), since a half-provisioned
-- project may see it twice.
--
-- No foreign keys between these tables: the outbox delivers each entity on its own schedule, so
-- after an outage a VM, prompt or credential may arrive before its user, and a user's tombstone
-- before its VMs'. A foreign key would turn that ordinary reordering into rows rejected as
-- poison. The appliance keeps the references consistent; the mirror only has to converge.
--
-- Row level security is on with no policies: PostgREST answers the anon and authenticated keys
-- (which ship to browsers) with nothing, while the service key the daemon uses bypasses RLS.
-- A later migration adds policies for what the web app may read directly.

create table if not exists public.users (
    id text primary key,
    email text not null,
    supabase_auth_id text,
    plan text not null,
    status text not null,
    decodo_port integer,
    prompt_count bigint not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    last_active_at timestamptz,
    version bigint not null
);

create table if not exists public.vms (
    id text primary key,
    user_id text not null,
    vm_type text not null,
    status text not null,
    ip_address text,
    tap_device text,
    mac_address text,
    vcpus integer not null,
    -- u32 in the appliance: wider than integer.
    memory_mib bigint not null,
    boot_id text,
    error text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    last_heartbeat_at timestamptz,
    hibernated_at timestamptz,
    version bigint not null
);

create table if not exists public.auth_sessions (
    id text primary key,
    user_id text not null,
    provider text not null,
    status text not null,
    vm_id text,
    rotation boolean not null,
    error text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    completed_at timestamptz,
    version bigint not null
);

create table if not exists public.prompts (
    id text primary key,
    user_id text not null,
    vm_id text,
    provider text not null,
    status text not null,
    model text,
    prompt_bytes bigint not null,
    response_text text not null,
    response_truncated boolean not null,
    exit_code integer,
    error text,
    -- The CLI's own token accounting, whose shape differs by provider.
    usage jsonb,
    first_content_ms bigint,
    duration_ms bigint,
    created_at timestamptz not null,
    started_at timestamptz,
    completed_at timestamptz,
    version bigint not null
);

create table if not exists public.credentials (
    id text primary key,
    user_id text not null,
    provider text not null,
    is_valid boolean not null,
    reason text,
    expires_at timestamptz,
    last_verified_at timestamptz,
    -- Base64 of the vault's sealed bytes, present only when the operator mirrors ciphertexts;
    -- never plaintext.
    ciphertext text,
    key_id text,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    version bigint not null
);

-- The web app's lookups are by user.
create index if not exists users_supabase_auth_id_idx on public.users (supabase_auth_id);
create index if not exists vms_user_id_idx on public.vms (user_id);
create index if not exists auth_sessions_user_id_idx on public.auth_sessions (user_id);
create index if not exists prompts_user_id_idx on public.prompts (user_id, created_at desc);
create index if not exists credentials_user_id_idx on public.credentials (user_id);

-- Retries and reordered deliveries are normal for an outbox, so an upsert may arrive after a
-- newer one for the same row. Skipping the update (returning null) when the incoming version
-- is not newer keeps the newest write; an equal version is a redelivery and changes nothing.
-- An empty search_path, because a trigger function should not resolve names through the
-- caller's.
create or replace function public.mirror_version_guard() returns trigger
language plpgsql
set search_path = ''
as $$
begin
    if new.version <= old.version then
        return null;
    end if;
    return new;
end;
$$;

create or replace trigger users_version_guard before update on public.users
    for each row execute function public.mirror_version_guard();
create or replace trigger vms_version_guard before update on public.vms
    for each row execute function public.mirror_version_guard();
create or replace trigger auth_sessions_version_guard before update on public.auth_sessions
    for each row execute function public.mirror_version_guard();
create or replace trigger prompts_version_guard before update on public.prompts
    for each row execute function public.mirror_version_guard();
create or replace trigger credentials_version_guard before update on public.credentials
    for each row execute function public.mirror_version_guard();

alter table public.users enable row level security;
alter table public.vms enable row level security;
alter table public.auth_sessions enable row level security;
alter table public.prompts enable row level security;
alter table public.credentials enable row level security;
