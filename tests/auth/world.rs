//! The daemon with host agents and the scripted login CLI on the CLIs' PATH.

use std::time::{Duration, Instant};

use master_controller::auth::{MasterKey, Vault};
use master_controller::model::tables;
use master_controller::model::{Credential, Provider, credential_key};
use master_controller::store;
use serde_json::{Value, json};

use crate::support::host_agent;
use crate::support::{Reply, SERVICE_TOKEN, TestDaemon};

pub const MASTER_KEY: &str = "7f3c9a1e5b2d4f6081a3c5e7092b4d6f8a1c3e5079b2d4f6a8c0e1f3a5b7c9d1";
/// Short, so the timeout case does not wait 15 minutes; the other cases answer well within it.
pub const SESSION_TIMEOUT_SECS: u64 = 6;
/// Where the scripted codex login looks for the user's answer on the "vendor's page".
const DEVICE_ANSWERS: &str = "/tmp/fake-device-auth";

pub struct World {
    pub daemon: TestDaemon,
    pub cli_home: tempfile::TempDir,
    _cli_bin: tempfile::TempDir,
    _secrets: tempfile::TempDir,
    users: u32,
}

impl World {
    pub async fn start() -> World {
        let cli_home = tempfile::tempdir().expect("cli home");
        let cli_bin = tempfile::tempdir().expect("cli bin");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/fake-login-cli");
        for name in ["claude", "codex", "gemini"] {
            std::os::unix::fs::symlink(script, cli_bin.path().join(name)).expect("symlink");
        }
        std::fs::create_dir_all(DEVICE_ANSWERS).expect("device answers dir");
        let path = cli_bin.path().display().to_string();
        let timeout = SESSION_TIMEOUT_SECS.to_string();
        let (daemon, secrets) = host_agent::start_daemon(
            cli_home.path(),
            &secrets_prefix(),
            &[
                ("MC_CLI_PATH", path.as_str()),
                ("ENCRYPTION_MASTER_KEY", MASTER_KEY),
                ("MC_AUTH_SESSION_TIMEOUT_SECS", timeout.as_str()),
                ("MC_RATE_LIMIT_PER_SECOND", "1000"),
                ("MC_RATE_LIMIT_BURST", "1000"),
            ],
        )
        .await;
        World {
            daemon,
            cli_home,
            _cli_bin: cli_bin,
            _secrets: secrets,
            users: 0,
        }
    }

    pub async fn user(&mut self) -> String {
        self.users += 1;
        self.daemon
            .create_user(&format!("login-{}@example.com", self.users))
            .await
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        self.call_as(SERVICE_TOKEN, method, path, body).await
    }

    pub async fn call_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string());
        self.daemon
            .call(method, path, Some(token), body.as_deref())
            .await
    }

    /// Starts a login and checks the immediate 202.
    pub async fn start_login(&self, user: &str, provider: &str) -> String {
        let reply = self
            .call(
                "POST",
                "/api/auth/start",
                Some(json!({"userId": user, "provider": provider})),
            )
            .await;
        assert_eq!(reply.status, 202, "{:?}", reply.json);
        assert!(
            ["created", "starting_vm"].contains(&reply.json["status"].as_str().unwrap_or("")),
            "{:?}",
            reply.json
        );
        reply.json["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string()
    }

    pub async fn session(&self, id: &str) -> Value {
        let reply = self
            .call("GET", &format!("/api/auth/session/{id}"), None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json
    }

    /// Polls the session until its status is `status` (panics on another final status).
    pub async fn wait_for(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let session = self.session(id).await;
            let now = session["status"].as_str().unwrap_or_default().to_string();
            if now == status {
                return session;
            }
            let terminal = ["completed", "failed", "cancelled", "timeout"].contains(&now.as_str());
            assert!(
                !terminal && Instant::now() < deadline,
                "waited for {status}, the session is {session:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn post_code(&self, id: &str, code: &str) -> Reply {
        self.call(
            "POST",
            &format!("/api/auth/session/{id}/code"),
            Some(json!({ "code": code })),
        )
        .await
    }

    /// The user's answer on the vendor's device page, for the scripted codex login.
    pub fn answer_device_code(&self, code: &str, answer: &str) {
        std::fs::write(format!("{DEVICE_ANSWERS}/{code}"), answer).expect("device answer");
    }

    /// Reads the sealed credential straight from the store and opens it with the master key.
    pub async fn vault_plaintext(&self, user: &str, provider: Provider) -> (Credential, String) {
        let store = self.daemon.ctx.store.clone();
        let key = credential_key(user, provider);
        let credential: Credential = store
            .read(move |tx| store::get::<Credential, _>(&tx.open_table(tables::CREDENTIALS)?, &key))
            .await
            .expect("read")
            .expect("a credential is stored");
        let sealed = credential.clone();
        let plaintext = tokio::task::spawn_blocking(move || {
            let vault =
                Vault::open(&store, &MasterKey::parse(MASTER_KEY).expect("key")).expect("vault");
            let plaintext = vault
                .unseal(&sealed.key_id, &sealed.ciphertext)
                .expect("unseal");
            String::from_utf8(plaintext.to_vec()).expect("utf-8")
        })
        .await
        .expect("vault task");
        (credential, plaintext)
    }
}

/// This process's secrets directory starts with this; the logins' HOMEs are in it.
fn secrets_prefix() -> String {
    format!("mc-auth-secrets-{}-", std::process::id())
}

/// The login's HOME, in the world's secrets directory.
fn login_home(session_id: &str) -> String {
    let dir = std::fs::read_dir("/dev/shm")
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&secrets_prefix())
        })
        .map(|e| e.path().display().to_string())
        .unwrap_or_default();
    format!("{dir}/login-{session_id}")
}

/// The processes whose environment names the login's HOME.
pub fn login_processes(session_id: &str) -> Vec<u32> {
    let needle = format!("HOME={}", login_home(session_id));
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            found.push(pid);
        }
    }
    found
}

/// Waits until the login's processes and its HOME are gone.
pub async fn assert_cleaned_up(session_id: &str) {
    let home = login_home(session_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let procs = login_processes(session_id);
        let home_exists = std::path::Path::new(&home).exists();
        if procs.is_empty() && !home_exists {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "login left behind: processes {procs:?}, HOME exists: {home_exists}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `good-code-<tag>#<state>` for the scripted Claude login, the state taken from the URL.
pub fn claude_code(session: &Value, tag: &str) -> String {
    let url = session["authUrl"].as_str().expect("authUrl");
    let state = url.split("state=").nth(1).expect("a state in the URL");
    format!("good-code-{tag}#{state}")
}
