//! The daemon binary as a child process, for tests that kill and restart it. It runs in the
//! test's own network namespace, so it listens on a fixed port there and creates its bridge
//! there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::sse::{Frame, SseStream};

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
pub const SERVICE_TOKEN: &str = "service-token-for-tests-0123456789";
pub const LISTEN: &str = "127.0.0.1:4000";

pub struct DaemonProc {
    pub data_dir: PathBuf,
    pub env: BTreeMap<String, String>,
    child: Option<Child>,
    http: reqwest::Client,
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub json: Value,
}

impl DaemonProc {
    pub fn new(data_dir: &Path, env: &[(&str, String)]) -> DaemonProc {
        let mut all: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in [
            ("MC_LISTEN", LISTEN.to_string()),
            ("MC_DATA_DIR", data_dir.display().to_string()),
            ("MC_ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("MC_SERVICE_TOKEN", SERVICE_TOKEN.into()),
            ("MC_RATE_LIMIT_PER_SECOND", "1000".into()),
            ("MC_RATE_LIMIT_BURST", "1000".into()),
            ("MC_SHUTDOWN_TIMEOUT_SECS", "5".into()),
            ("RUST_LOG", "info".into()),
        ] {
            all.insert(key.into(), value);
        }
        for (key, value) in env {
            all.insert(key.to_string(), value.clone());
        }
        DaemonProc {
            data_dir: data_dir.to_path_buf(),
            env: all,
            child: None,
            http: reqwest::Client::new(),
        }
    }

    /// Starts the daemon (with `extra` environment on top) and waits until it is ready.
    pub async fn start(&mut self, extra: &[(&str, &str)]) {
        assert!(self.child.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("daemon.log"))
            .expect("daemon log");
        // MC_TEST_DAEMON_BIN runs another build of the daemon (e.g. one with a fix reverted,
        // to see an attack test fail without it).
        let binary = std::env::var("MC_TEST_DAEMON_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_master-controller").to_string());
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(&self.env)
            .envs(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.child = Some(command.spawn().expect("start the daemon"));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                panic!(
                    "the daemon exited during start ({status}):\n{}",
                    self.log_tail()
                );
            }
            if let Ok(reply) = self.http.get(format!("http://{LISTEN}/ready")).send().await
                && reply.status().is_success()
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(180),
                "daemon not ready within 180 s:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILLs the daemon, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILLs the daemon and every VM process it left (they outlive it by design).
    pub fn kill_with_vms(&mut self) {
        self.kill();
        for pid in processes_naming(&format!("{}/vms/", self.data_dir.display())) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Waits for a daemon that is expected to die (a failpoint) and reaps it.
    pub async fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            let child = self.child.as_mut().expect("daemon running");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            assert!(started.elapsed() < deadline, "the daemon did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let status = self.wait_exit(Duration::from_secs(30)).await;
            assert!(
                status.success(),
                "daemon exit {status}:\n{}",
                self.log_tail()
            );
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("http://{LISTEN}{path}"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(300));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, json }
    }

    /// Sends a request that the daemon is expected to die in the middle of.
    /// Creates a user through the API with the service token and returns its id.
    pub async fn create_user(&self, email: &str) -> String {
        let reply = self
            .call(
                "POST",
                "/api/users",
                SERVICE_TOKEN,
                Some(serde_json::json!({ "email": email })),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.json);
        reply.json["userId"].as_str().expect("userId").to_string()
    }

    /// Creates the user's VM through the API; it must answer 201 with the VM running.
    pub async fn create_vm(&self, user: &str) -> Value {
        let reply = self
            .call(
                "POST",
                &format!("/api/users/{user}/vm"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}\n{}", reply.json, self.log_tail());
        assert_eq!(reply.json["status"], "running", "{:?}", reply.json);
        reply.json
    }

    /// Runs `script` in the VM as root (`POST /api/admin/vms/:id/exec`, up to `timeout_sec`);
    /// returns the exit code and stdout.
    pub async fn exec(&self, vm_id: &str, script: &str, timeout_sec: u64) -> (i64, String) {
        let reply = self
            .call(
                "POST",
                &format!("/api/admin/vms/{vm_id}/exec"),
                ADMIN_TOKEN,
                Some(serde_json::json!({
                    "argv": ["/bin/sh", "-c", script],
                    "timeoutSec": timeout_sec,
                })),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        (
            reply.json["exitCode"].as_i64().unwrap_or(-1),
            reply.json["stdout"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    }

    /// `POST /api/prompts/execute` with `body`, its SSE frames collected.
    pub async fn execute_prompt(&self, body: Value) -> Vec<Frame> {
        let response = self
            .http
            .post(format!("http://{LISTEN}/api/prompts/execute"))
            .bearer_auth(SERVICE_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("execute");
        let stream = SseStream::new(response);
        assert_eq!(stream.status, 200);
        stream.collect().await
    }

    /// A login session as `GET /api/auth/session/:id` shows it.
    pub async fn auth_session(&self, id: &str) -> Value {
        let reply = self
            .call(
                "GET",
                &format!("/api/auth/session/{id}"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json
    }

    pub async fn call_expecting_crash(&self, method: &str, path: &str) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let sent = self
            .http
            .request(method, format!("http://{LISTEN}{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(120))
            .send()
            .await;
        assert!(sent.is_err(), "the request should have lost its daemon");
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Processes whose command line names `needle` (a VM's directory), excluding zombies.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&raw).contains(needle) {
            found.push(pid);
        }
    }
    found
}

/// Whether a link of that name exists in this network namespace.
pub fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
