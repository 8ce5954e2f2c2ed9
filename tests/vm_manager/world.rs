//! The test's world: the daemon child process, its data directory, and helpers over its API.

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::daemon_proc::{
    ADMIN_TOKEN, DaemonProc, LISTEN, SERVICE_TOKEN, link_exists, processes_naming,
};

pub const BRIDGE: &str = "mcbr1";
pub const GATEWAY: &str = "10.215.0.1";
pub const POOL_SIZE: u64 = 253;
/// More crashes of one user's VMs than this refuse their next VM (`MC_VM_CRASH_LIMIT`).
pub const CRASH_LIMIT: u32 = 1;
pub const MASTER_KEY: &str = "4be1c0d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9e";

pub struct World {
    pub daemon: DaemonProc,
    pub users: u32,
    /// VMs one case leaves running for the next: `(user id, VM JSON)`.
    pub kept: Vec<(String, Value)>,
    pub _dir: tempfile::TempDir,
}

impl World {
    pub fn vm_dir(&self, vm_id: &str) -> String {
        format!("{}/vms/{vm_id}/", self.daemon.data_dir.display())
    }

    pub async fn new_user(&mut self) -> String {
        self.users += 1;
        self.daemon
            .create_user(&format!("vm-user-{}@example.com", self.users))
            .await
    }

    pub async fn create_vm(&self, user: &str) -> Value {
        self.daemon.create_vm(user).await
    }

    pub async fn user_vm(&self, user: &str, action: &str, method: &str) -> (u16, Value) {
        let path = if action.is_empty() {
            format!("/api/users/{user}/vm")
        } else {
            format!("/api/users/{user}/vm/{action}")
        };
        let reply = self.daemon.call(method, &path, SERVICE_TOKEN, None).await;
        (reply.status, reply.json)
    }

    pub async fn exec(&self, vm_id: &str, script: &str) -> (i64, String) {
        self.daemon.exec(vm_id, script, 60).await
    }

    /// The VM's console tail as the diagnostics route gives it (200 lines), as one string.
    pub async fn console_tail(&self, vm_id: &str) -> String {
        let reply = self
            .daemon
            .call(
                "GET",
                &format!("/api/vms/{vm_id}/diagnostics?lines=200"),
                SERVICE_TOKEN,
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json["consoleLog"].to_string()
    }

    pub async fn pool_available(&self) -> u64 {
        let reply = self
            .daemon
            .call("GET", "/api/vms/statistics/summary", SERVICE_TOKEN, None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json["ipPoolAvailable"]
            .as_u64()
            .expect("ipPoolAvailable")
    }

    pub async fn metrics(&self) -> String {
        let reply = self.daemon.call("GET", "/metrics", ADMIN_TOKEN, None).await;
        assert_eq!(reply.status, 200);
        reply.json.as_str().unwrap_or_default().to_string()
    }

    /// After destroy: no tap, no process, no directory. `vm` is the VM as it was created.
    pub fn assert_gone(&self, vm: &Value) {
        let id = vm["vmId"].as_str().expect("vmId");
        if let Some(tap) = vm["tapDevice"].as_str() {
            assert!(!link_exists(tap), "tap {tap} left behind");
        }
        assert!(
            processes_naming(&self.vm_dir(id)).is_empty(),
            "process left"
        );
        assert!(
            !std::path::Path::new(&self.vm_dir(id)).exists(),
            "VM directory left"
        );
    }
}

/// The links attached to the test's bridge.
pub fn bridge_ports() -> Vec<String> {
    let output = Command::new("ip")
        .args(["-j", "link", "show", "master", BRIDGE])
        .output()
        .expect("ip");
    let links: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    links
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect()
}

pub fn id_of(vm: &Value) -> String {
    vm["vmId"].as_str().expect("vmId").to_string()
}

pub async fn destroy(world: &World, user: &str) -> Value {
    let (status, vm) = world.user_vm(user, "", "DELETE").await;
    assert_eq!(status, 200, "{vm:?}");
    assert_eq!(vm["status"], "destroyed");
    vm
}

pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn admin_socket() -> Socket {
    let mut request = format!("ws://{LISTEN}/ws")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket");
    let subscribe = json!({"type": "subscribe", "payload": {"channel": "admin"}});
    socket
        .send(Message::text(subscribe.to_string()))
        .await
        .expect("subscribe");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an answer to subscribe")
            .expect("open")
            .expect("message");
        if let Message::Text(text) = message
            && text.contains("\"subscribed\"")
        {
            return socket;
        }
    }
}

/// The first event named `name` (any event, for "") within `deadline`.
pub async fn wait_event(socket: &mut Socket, name: &str, deadline: Duration) -> Option<Value> {
    let started = Instant::now();
    while let Some(left) = deadline.checked_sub(started.elapsed()) {
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(left, socket.next()).await
        else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).unwrap_or_default();
        let event = value["data"]["event"].as_str().unwrap_or_default();
        if !event.is_empty() && (name.is_empty() || event == name) {
            return Some(value);
        }
    }
    None
}

/// The daemon's store and vault, opened from its data directory (with the daemon stopped: the
/// store is the daemon's while it runs). Blocking: call it off the async workers.
pub fn open_vault(
    data_dir: &std::path::Path,
) -> (
    master_controller::store::Store,
    master_controller::auth::Vault,
) {
    use master_controller::auth::{MasterKey, Vault};
    let store = master_controller::store::Store::open_blocking(data_dir).expect("store");
    let vault = Vault::open(&store, &MasterKey::parse(MASTER_KEY).expect("key")).expect("vault");
    (store, vault)
}
