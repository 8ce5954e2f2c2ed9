//! The golden-image tests' world: a golden image of this test's own (built by
//! `image/build-golden.sh` into the test's directory, from the cached base rootfs), the daemon
//! child process serving VMs of it under QEMU/TCG, and the fake model server the real CLIs in
//! the guests talk to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon_proc::{DaemonProc, SERVICE_TOKEN};
use crate::support::model_server::ModelServer;
use crate::support::vmhost;

pub const BRIDGE: &str = "mcbr4";
pub const GATEWAY: &str = "10.221.0.1";
pub const WORDS: [&str; 5] = ["Hello", " from", " the", " golden", " guest."];
pub const MODEL_KEY: &str = "fake-model-key-for-golden-tests";
/// Logins need the vault.
const MASTER_KEY: &str = "5ae1c0d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9f";
pub const PROVIDERS: [&str; 3] = ["claude_code", "codex", "gemini_cli"];

pub struct World {
    pub daemon: DaemonProc,
    pub server: ModelServer,
    /// Where this test's image versions are (`current`, `images/<id>/`).
    pub images: PathBuf,
    /// The base rootfs file every VM shares, and its checksum before any VM ran.
    pub rootfs: PathBuf,
    pub rootfs_sha256: String,
    pub users: u32,
    /// The user whose VM the CLI cases share.
    pub cli_user: Option<String>,
    /// That user's conversation with each provider.
    pub conversations: Vec<String>,
    pub _dir: tempfile::TempDir,
}

/// Builds a golden image version into `out` with the build script; returns its id and what the
/// script printed.
pub fn build_image(out: &Path, agent: Option<&Path>) -> (String, String) {
    let mut command = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/image/build-golden.sh"
    ));
    command.arg(out);
    if let Some(agent) = agent {
        command.env("MC_VM_AGENT_BIN", agent);
    }
    let output = command.output().expect("run image/build-golden.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in stdout.lines() {
        eprintln!("    {line}");
    }
    let current = std::fs::read_link(out.join("current")).expect("the current link");
    let id = current
        .file_name()
        .expect("images/<id>")
        .to_string_lossy()
        .to_string();
    (id, stdout.to_string())
}

pub fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(output.status.success());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

impl World {
    pub fn daemon_env(images: &Path, model_url: &str) -> Vec<(&'static str, String)> {
        let mut env = vmhost::golden_daemon_env(&images.join("current"), BRIDGE, GATEWAY);
        env.extend([
            ("MC_PROMPT_TIMEOUT_SECS", "300".into()),
            ("MC_MODEL_BASE_URL", model_url.to_string()),
            ("MC_MODEL_API_KEY", MODEL_KEY.into()),
            ("ENCRYPTION_MASTER_KEY", MASTER_KEY.into()),
            // The idle job hibernates the conversations' VM when the test runs it.
            ("MC_IDLE_HIBERNATE_AFTER_SECS", "2".into()),
        ]);
        env
    }

    pub async fn start() -> World {
        let dir = tempfile::Builder::new()
            .prefix("mcg")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let images = dir.path().join("images");
        let (id, _) = build_image(&images, None);
        // Unchanged inputs: nothing is rebuilt, and the same version stays current.
        let (again, stdout) = build_image(&images, None);
        assert_eq!(again, id);
        assert!(stdout.contains("build-golden: up to date"), "{stdout}");
        let rootfs =
            std::fs::canonicalize(images.join("current/rootfs.ext4")).expect("the base rootfs");
        let rootfs_sha256 = sha256(&rootfs);
        // Every address of this namespace: the guests reach it on the bridge's.
        let server = ModelServer::start_on("0.0.0.0:0", &WORDS, Duration::from_millis(20)).await;
        let model_url = format!("http://{GATEWAY}:{}", server.addr.port());
        let data = dir.path().join("data");
        let daemon = DaemonProc::new(&data, &World::daemon_env(&images, &model_url));
        World {
            daemon,
            server,
            images,
            rootfs,
            rootfs_sha256,
            users: 0,
            cli_user: None,
            conversations: Vec::new(),
            _dir: dir,
        }
    }

    pub fn golden_snapshot(&self) -> PathBuf {
        self.daemon.data_dir.join("golden/state")
    }

    /// Runs `master-controller golden-snapshot` with the daemon's settings.
    pub fn build_golden_snapshot(&self) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_master-controller"))
            .arg("golden-snapshot")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.daemon.env)
            .env("GOLDEN_SNAPSHOT", self.golden_snapshot())
            // Not the host's installation, if it has one: only the daemon's settings.
            .env("MC_INSTALL_ROOT", &self.daemon.data_dir)
            .output()
            .expect("run master-controller golden-snapshot");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for line in stdout.lines() {
            eprintln!("    {line}");
        }
        stdout
    }

    pub async fn start_daemon(&mut self) {
        let golden = self.golden_snapshot().display().to_string();
        self.daemon
            .start(&[("GOLDEN_SNAPSHOT", golden.as_str())])
            .await;
    }

    pub async fn new_user(&mut self) -> String {
        self.users += 1;
        self.daemon
            .create_user(&format!("golden-user-{}@example.com", self.users))
            .await
    }

    pub async fn create_vm(&self, user: &str) -> Value {
        self.daemon.create_vm(user).await
    }

    /// `POST|GET|DELETE /api/users/:user/vm[/action]`, expecting 200.
    pub async fn user_vm(&self, user: &str, action: &str, method: &str) -> Value {
        let path = if action.is_empty() {
            format!("/api/users/{user}/vm")
        } else {
            format!("/api/users/{user}/vm/{action}")
        };
        let reply = self.daemon.call(method, &path, SERVICE_TOKEN, None).await;
        assert_eq!(
            reply.status,
            200,
            "{method} {path}: {:?}\n{}",
            reply.json,
            self.daemon.log_tail()
        );
        reply.json
    }

    /// Runs `script` in the VM as root; returns the exit code and stdout.
    pub async fn exec(&self, vm_id: &str, script: &str) -> (i64, String) {
        self.daemon.exec(vm_id, script, 120).await
    }

    /// The VM's data disk on the host.
    pub fn data_disk(&self, vm_id: &str) -> PathBuf {
        self.daemon.data_dir.join(format!("vms/{vm_id}/data.ext4"))
    }
}

pub fn id_of(vm: &Value) -> String {
    vm["vmId"].as_str().expect("vmId").to_string()
}
