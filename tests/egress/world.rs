//! The egress tests' world: the daemon child process configured with an upstream, the stand-in
//! internet, and helpers over the API and the guests.

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::daemon_proc::{ADMIN_TOKEN, DaemonProc, SERVICE_TOKEN};
use crate::support::internet::{self, Internet};
use crate::support::vmhost;

pub const BRIDGE: &str = "mcbr3";
pub const GATEWAY: &str = "10.219.0.1";
pub const GATEWAY_PORT: u16 = 3128;
/// A made-up upstream password: the tests look for it (and its Basic form) where it must not be.
pub const PASSWORD: &str = "upstream-pw-5e1f09c4d2";
/// The pool: two ports, so a third user's first VM finds it exhausted.
pub const PORTS: [u16; 2] = [20001, 20002];

pub struct World {
    pub daemon: DaemonProc,
    pub internet: Internet,
    /// Test name ("a", "b", ...) to user id.
    pub users: BTreeMap<&'static str, String>,
    /// Test name to the user's VM id.
    pub vms: BTreeMap<&'static str, String>,
    _dir: tempfile::TempDir,
}

impl World {
    pub async fn start() -> World {
        let dir = tempfile::Builder::new()
            .prefix("mce")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let mut internet = Internet::create(dir.path().to_path_buf(), PASSWORD);
        for port in PORTS {
            internet.start_upstream(port);
        }
        let mut env = vmhost::guest_daemon_env(BRIDGE, GATEWAY);
        env.extend([
            ("MC_TASKS_ENABLED", "false".into()),
            ("DECODO_HOST", internet::UPSTREAM_HOST.into()),
            ("DECODO_USER", internet::UPSTREAM_USER.into()),
            ("DECODO_PASSWORD", PASSWORD.into()),
            ("DECODO_PORT_START", PORTS[0].to_string()),
            ("DECODO_PORT_END", PORTS[1].to_string()),
            ("MC_EGRESS_GATEWAY_PORT", GATEWAY_PORT.to_string()),
            ("MC_EGRESS_BYPASS", internet::BYPASSED_SITE.into()),
            (
                "MC_EGRESS_ECHO_URL",
                format!("http://{}:{}/ip", internet::SITE, internet::SITE_PORT),
            ),
            ("MC_EGRESS_HEALTH_SPACING_MS", "100".into()),
            ("MC_EGRESS_HEALTH_TIMEOUT_SECS", "5".into()),
        ]);
        let mut daemon = DaemonProc::new(dir.path(), &env);
        daemon.start(&[]).await;
        let world = World {
            daemon,
            internet,
            users: BTreeMap::new(),
            vms: BTreeMap::new(),
            _dir: dir,
        };
        world.setup_network(false);
        world
    }

    /// Installs the host rules with the real script, in this test's namespace.
    pub fn setup_network(&self, strict: bool) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/setup-network.sh");
        let mut command = Command::new(script);
        command
            .env("MC_ENV_FILE", "/nonexistent")
            .args(["--bridge", BRIDGE, "--cidr", &format!("{GATEWAY}/24")])
            .args(["--gateway-port", &GATEWAY_PORT.to_string()]);
        if strict {
            command.arg("--strict");
        }
        let output = command.output().expect("run setup-network.sh");
        assert!(
            output.status.success(),
            "setup-network.sh: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub async fn new_user(&mut self, name: &'static str) -> String {
        let id = self
            .daemon
            .create_user(&format!("egress-{name}@example.com"))
            .await;
        self.users.insert(name, id.clone());
        id
    }

    pub fn user(&self, name: &str) -> String {
        self.users[name].clone()
    }

    /// Creates the user's VM; answers the reply's status and body.
    pub async fn create_vm(&mut self, name: &'static str) -> (u16, Value) {
        let path = format!("/api/users/{}/vm", self.user(name));
        let reply = self.daemon.call("POST", &path, SERVICE_TOKEN, None).await;
        if reply.status == 201 {
            let id = reply.json["vmId"].as_str().expect("vmId").to_string();
            self.vms.insert(name, id);
        }
        (reply.status, reply.json)
    }

    /// Creates the user and their VM unless an earlier case did (a case run alone).
    pub async fn ensure_vm(&mut self, name: &'static str) {
        if !self.users.contains_key(name) {
            self.new_user(name).await;
        }
        if !self.vms.contains_key(name) {
            let (status, vm) = self.create_vm(name).await;
            assert_eq!(status, 201, "{vm:?}\n{}", self.daemon.log_tail());
        }
    }

    /// The address of the user's VM, from its record.
    pub async fn ip_of(&self, name: &str) -> std::net::Ipv4Addr {
        let path = format!("/api/vms/{}", self.vms[name]);
        let reply = self.daemon.call("GET", &path, SERVICE_TOKEN, None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json["ipAddress"]
            .as_str()
            .and_then(|ip| ip.parse().ok())
            .unwrap_or_else(|| panic!("no address: {:?}", reply.json))
    }

    pub async fn vm_action(&self, name: &str, action: &str) -> Value {
        let path = format!("/api/users/{}/vm/{action}", self.user(name));
        let reply = self.daemon.call("POST", &path, SERVICE_TOKEN, None).await;
        assert_eq!(reply.status, 200, "{action}: {:?}", reply.json);
        reply.json
    }

    /// The user's upstream port, as the user record shows it.
    pub async fn port_of(&self, name: &str) -> Option<u16> {
        let path = format!("/api/users/{}", self.user(name));
        let reply = self.daemon.call("GET", &path, SERVICE_TOKEN, None).await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json["decodoPort"].as_u64().map(|p| p as u16)
    }

    /// Runs a shell script in the user's guest: its exit code and output.
    pub async fn sh(&self, name: &str, script: &str) -> (i64, String) {
        let reply = self
            .daemon
            .call(
                "POST",
                &format!("/api/admin/vms/{}/exec", self.vms[name]),
                ADMIN_TOKEN,
                Some(json!({"argv": ["/bin/sh", "-c", script], "timeoutSec": 60})),
            )
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        let text = |key: &str| reply.json[key].as_str().unwrap_or_default().to_string();
        let code = reply.json["exitCode"]
            .as_i64()
            .unwrap_or_else(|| panic!("no exit code: {:?}", reply.json));
        (code, format!("{}{}", text("stdout"), text("stderr")))
    }

    /// A plain HTTP GET from the guest, through the gateway proxy: the whole answer. (The
    /// image's static busybox `wget` crashes resolving through glibc's NSS; `nc` does not.)
    pub async fn get_via_gateway(&self, name: &str, url: &str) -> (i64, String) {
        let host = url
            .strip_prefix("http://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        self.sh(
            name,
            &format!(
                "printf 'GET {url} HTTP/1.1\\r\\nHost: {host}\\r\\n\\r\\n' \
                 | nc -w 20 {GATEWAY} {GATEWAY_PORT}"
            ),
        )
        .await
    }

    /// A plain HTTP GET straight to `host:port` from the guest, without the proxy.
    pub async fn get_direct(&self, name: &str, host: &str, port: u16, path: &str) -> String {
        let (_, answer) = self
            .sh(
                name,
                &format!(
                    "printf 'GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\n\\r\\n' \
                     | nc -w 5 {host} {port}"
                ),
            )
            .await;
        answer
    }

    /// A CONNECT tunnel from the guest through the gateway, with a request inside it. The
    /// guest's side stays open until `nc` has seen the tunnel close (at most 20 s), since an
    /// upstream proxy takes a client's half-close as an abort.
    pub async fn tunnel_via_gateway(&self, name: &str, target: &str, path: &str) -> (i64, String) {
        self.sh(
            name,
            &format!(
                "rm -f /tmp/tunnel.out /tmp/tunnel.done; \
                 (printf 'CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n'; sleep 1; \
                 printf 'GET {path} HTTP/1.0\\r\\nHost: {target}\\r\\n\\r\\n'; n=0; \
                 while [ ! -e /tmp/tunnel.done ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done) \
                 | {{ nc {GATEWAY} {GATEWAY_PORT} > /tmp/tunnel.out; touch /tmp/tunnel.done; }}; \
                 cat /tmp/tunnel.out"
            ),
        )
        .await
    }

    pub async fn proxy_ports(&self) -> Value {
        let reply = self
            .daemon
            .call("GET", "/api/admin/proxy-ports", ADMIN_TOKEN, None)
            .await;
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        reply.json
    }

    pub async fn metrics(&self) -> String {
        let reply = self.daemon.call("GET", "/metrics", ADMIN_TOKEN, None).await;
        assert_eq!(reply.status, 200);
        reply.json.as_str().unwrap_or_default().to_string()
    }
}

/// The value of a metric series (the line that starts with `series`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The upstream password in every form a leak could take.
pub fn secret_forms() -> Vec<String> {
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{PASSWORD}", internet::UPSTREAM_USER));
    vec![PASSWORD.to_string(), basic]
}

pub fn assert_no_secret(what: &str, text: &str) {
    for secret in secret_forms() {
        assert!(
            !text.contains(&secret),
            "{what} holds the upstream credentials"
        );
    }
}
