//! The real `vm-agent` binary serving a Unix socket on the host: the agent's protocol and its
//! exec without a VM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use master_controller::guest::client::{AgentClient, AgentEndpoint};

pub const TOKEN: &str = "per-vm-test-token";

pub struct LocalAgent {
    pub child: Child,
    pub endpoint: AgentEndpoint,
    _dir: tempfile::TempDir,
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl LocalAgent {
    pub fn start() -> LocalAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        // Mount and UTS namespaces of its own: the agent writes `/etc/resolv.conf` and sets
        // the hostname when told to configure a network, which must never reach the host.
        let child = Command::new("unshare")
            .args(["--mount", "--uts", "--propagation", "private", "--"])
            .arg(env!("CARGO_BIN_EXE_vm-agent"))
            .args([
                "--channel",
                &format!("unix:{}", socket.display()),
                "--token",
                TOKEN,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn vm-agent");
        LocalAgent {
            child,
            endpoint: AgentEndpoint::Unix(socket),
            _dir: dir,
        }
    }

    pub async fn connect(&self) -> AgentClient {
        AgentClient::connect(&self.endpoint, TOKEN, Duration::from_secs(10))
            .await
            .expect("agent answers")
    }
}
