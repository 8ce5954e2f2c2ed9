//! Shared fixtures: an in-process daemon on an ephemeral port, and a client for it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;

use master_controller::api::ApiContext;
use master_controller::config::{Config, Settings};
use master_controller::daemon::{self, Running};
use master_controller::model::{Vm, VmStatus, VmType, now_ms};
use master_controller::watchdog::Watchdog;
use serde_json::Value;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const SERVICE_TOKEN: &str = "test-service-token-0123456789";

pub struct TestDaemon {
    pub running: Option<Running>,
    pub base: String,
    pub ctx: Arc<ApiContext>,
    pub client: reqwest::Client,
    pub data_dir: tempfile::TempDir,
}

impl TestDaemon {
    pub async fn start() -> TestDaemon {
        Self::start_with(&[]).await
    }

    /// Starts a daemon whose environment is only `env` (plus the test tokens).
    pub async fn start_with(env: &[(&str, &str)]) -> TestDaemon {
        Self::start_with_host(env, None).await
    }

    /// [`TestDaemon::start_with`], with the VM manager driving `host` (fakes for scale tests).
    pub async fn start_with_host(
        env: &[(&str, &str)],
        host: Option<master_controller::vms::VmHost>,
    ) -> TestDaemon {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut vars: HashMap<String, String> = HashMap::from([
            ("MC_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("MC_SERVICE_TOKEN".into(), SERVICE_TOKEN.into()),
            ("MC_LISTEN".into(), "127.0.0.1:0".into()),
            ("MC_DATA_DIR".into(), data_dir.path().display().to_string()),
            ("MC_SHUTDOWN_TIMEOUT_SECS".into(), "5".into()),
        ]);
        for (k, v) in env {
            vars.insert(k.to_string(), v.to_string());
        }
        let config: Config =
            Config::load(None, &|name| vars.get(name).cloned(), Settings::default())
                .expect("test config is valid");
        let running = daemon::start_with(&config, &Watchdog::from_env(), host)
            .await
            .expect("daemon starts");
        TestDaemon {
            base: format!("http://{}", running.addr),
            ctx: running.ctx.clone(),
            running: Some(running),
            client: reqwest::Client::new(),
            data_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            drop(self.ctx);
            running.shutdown().await;
        }
    }

    /// Sends a request with an optional bearer token and optional raw body; returns the status,
    /// the Retry-After header, and the parsed JSON body (Null if none).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("request reaches the daemon");
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.text().await.expect("body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Reply {
            status,
            retry_after,
            json,
        }
    }

    /// Creates a user through the API and returns its id.
    pub async fn create_user(&self, email: &str) -> String {
        let reply = self
            .call(
                "POST",
                "/api/users",
                Some(ADMIN_TOKEN),
                Some(&format!(r#"{{"email":"{email}"}}"#)),
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.json);
        reply.json["userId"].as_str().expect("userId").to_string()
    }

    /// The upgrade request for `/ws` with `token`.
    pub fn ws_request(
        &self,
        token: &str,
    ) -> tokio_tungstenite::tungstenite::handshake::client::Request {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = self
            .url("/ws")
            .replace("http://", "ws://")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        request
    }

    /// A WebSocket subscribed to `user:<id>` with the service token: its JSON messages.
    pub async fn user_events(
        &self,
        user_id: &str,
    ) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Value> + Send>> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut socket, _) = tokio_tungstenite::connect_async(self.ws_request(SERVICE_TOKEN))
            .await
            .expect("ws");
        let subscribe = serde_json::json!(
            {"type": "subscribe", "payload": {"channel": format!("user:{user_id}")}}
        );
        socket
            .send(Message::text(subscribe.to_string()))
            .await
            .expect("subscribe");
        Box::pin(socket.filter_map(|m| async move {
            match m {
                Ok(Message::Text(text)) => serde_json::from_str::<Value>(&text).ok(),
                _ => None,
            }
        }))
    }

    /// Mints a user-scoped token through the API.
    pub async fn user_token(&self, user_id: &str) -> String {
        let reply = self
            .call(
                "POST",
                &format!("/api/users/{user_id}/tokens"),
                Some(SERVICE_TOKEN),
                None,
            )
            .await;
        assert_eq!(reply.status, 201, "{:?}", reply.json);
        reply.json["token"].as_str().expect("token").to_string()
    }

    /// Puts a VM record in the store, as the VM manager would.
    pub async fn seed_vm(&self, user_id: &str, status: VmStatus) -> String {
        let now = now_ms();
        let id = uuid_like(user_id, status);
        let vm = Vm {
            id: id.clone(),
            user_id: user_id.to_string(),
            vm_type: VmType::Cli,
            status,
            ip_address: Some("192.168.100.2".into()),
            tap_device: Some("mc-test".into()),
            vcpus: 1,
            memory_mib: 256,
            created_at_ms: now,
            updated_at_ms: now,
            last_heartbeat_ms: None,
            hibernated_at_ms: None,
            version: 1,
            mac_address: None,
            pid: None,
            agent_token: "seedtoken".into(),
            agent: None,
            needs_readdress: false,
            error: None,
            image: None,
            golden: None,
        };
        self.ctx.vms.insert(vm).await.expect("seed VM");
        id
    }
}

fn uuid_like(user_id: &str, status: VmStatus) -> String {
    format!(
        "vm-{}-{}",
        &user_id[user_id.len().saturating_sub(8)..],
        status
    )
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: Value,
}

impl Reply {
    pub fn error_code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or("")
    }
}

/// Writes a measurement straight to the process's stderr, past the test harness's capture, so
/// that a passing test's figures reach the CI log too.
pub fn report(text: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
}

pub mod crowd;
pub mod daemon_proc;
pub mod fake_files;
pub mod fake_sink;
pub mod fake_vmm;
pub mod firecracker_fake;
pub mod firecracker_spec;
pub mod harness;
pub mod host_agent;
pub mod internet;
pub mod local_agent;
pub mod model_server;
pub mod postgres;
pub mod postgrest;
pub mod prometheus;
pub mod scheduled;
pub mod sse;
pub mod stats;
pub mod vendor_oauth;
pub mod vmhost;
