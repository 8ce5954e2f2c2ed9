//! A "hypervisor" whose VMs are the real `vm-agent` binary running as a host process: the
//! daemon's whole prompt path (VM manager, agent protocol, exec, SSE) with the real Node-based
//! CLIs, which are too heavy for the small guest test image. The issue allows the agent on the
//! host for these tests; it is never used where a real guest is asked for. Run it only inside
//! private network, UTS and mount namespaces ([`enter_namespaces`]): the agent configures `eth0`,
//! writes `/etc/resolv.conf` and sets the hostname.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use master_controller::guest::client::AgentEndpoint;
use master_controller::vmm::{
    ExitInfo, Hibernated, Hypervisor, SnapshotFiles, VmHandle, VmSpec, VmmError,
};
use master_controller::vms::VmHost;
use tokio::sync::watch;

use super::TestDaemon;
use super::fake_vmm::FakeNetlink;

#[derive(Default)]
pub struct HostAgentHypervisor {
    pids: Mutex<HashMap<String, u32>>,
}

impl HostAgentHypervisor {
    fn start(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let socket = spec.dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_vm-agent"))
            .args([
                "--channel",
                &format!("unix:{}", socket.display()),
                "--token",
                &spec.agent_token,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // The test's runtime ends these agents with it: nothing is left on the host.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| VmmError::Spawn {
                binary: "vm-agent".into(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let status = child.wait().await;
            let info = match status {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    ExitInfo {
                        code: status.code(),
                        signal: status.signal(),
                    }
                }
                Err(_) => ExitInfo::unknown(),
            };
            let _ = tx.send(Some(info));
        });
        self.pids
            .lock()
            .expect("pids")
            .insert(spec.vm_id.clone(), pid);
        Ok(VmHandle::new(
            pid,
            AgentEndpoint::Unix(socket),
            rx,
            spec.dir.join("host-agent"),
        ))
    }
}

#[async_trait::async_trait]
impl Hypervisor for HostAgentHypervisor {
    fn name(&self) -> &'static str {
        "host-agent"
    }

    fn snapshot_files(&self) -> SnapshotFiles {
        SnapshotFiles {
            state: "state",
            memory: None,
        }
    }

    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.start(spec)
    }

    async fn pause(&self, _vm: &VmHandle) -> Result<(), VmmError> {
        Ok(())
    }

    async fn unpause(&self, _vm: &VmHandle) -> Result<(), VmmError> {
        Ok(())
    }

    /// A host process cannot be saved: "hibernating" stops it, and resume starts a new one.
    async fn hibernate(&self, spec: &VmSpec, mut vm: VmHandle) -> Result<Hibernated, VmmError> {
        let dir = spec.snapshot_dir();
        std::fs::create_dir_all(&dir).map_err(|e| VmmError::io(&dir, e))?;
        std::fs::write(dir.join("state"), b"host agent").map_err(|e| VmmError::io(&dir, e))?;
        self.kill(&mut vm).await?;
        Ok(Hibernated { state_bytes: 10 })
    }

    async fn resume(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.start(spec)
    }

    async fn kill(&self, vm: &mut VmHandle) -> Result<ExitInfo, VmmError> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(vm.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        Ok(vm.wait_exit().await)
    }

    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<VmHandle, VmmError> {
        Err(VmmError::Control(format!(
            "host agents are not adopted ({} pid {pid})",
            spec.vm_id
        )))
    }
}

/// A daemon whose VMs are host agents, with `cli_home` as the CLIs' HOME and their secrets in a
/// fresh directory on /dev/shm named `secrets_prefix…` (already a tmpfs, so the daemon mounts
/// nothing on this host). `extra` settings come after the common ones. The directory must be
/// held as long as the daemon.
pub async fn start_daemon(
    cli_home: &Path,
    secrets_prefix: &str,
    extra: &[(&str, &str)],
) -> (TestDaemon, tempfile::TempDir) {
    let secrets = tempfile::Builder::new()
        .prefix(secrets_prefix)
        .tempdir_in("/dev/shm")
        .expect("secrets dir");
    let home = cli_home.display().to_string();
    let secrets_dir = secrets.path().display().to_string();
    let mut env = vec![
        ("GOLDEN_KERNEL", "/host-agent/none"),
        ("MC_VM_DATA_DISK_MIB", "8"),
        ("MC_VM_VCPUS", "1"),
        ("MC_VM_MEMORY_MIB", "256"),
        ("MC_CLI_HOME", home.as_str()),
        ("MC_CLI_SECRETS_DIR", secrets_dir.as_str()),
        // Host agents run as root, in a HOME that is a temporary directory of root's.
        ("MC_CLI_USER", "root"),
    ];
    env.extend_from_slice(extra);
    let host = VmHost {
        hypervisor: Arc::new(HostAgentHypervisor::default()),
        netlink: Arc::new(FakeNetlink::default()),
    };
    (TestDaemon::start_with_host(&env, Some(host)).await, secrets)
}

/// Moves this process into network, UTS and mount namespaces of its own, with loopback up and
/// an `eth0` (a bridge with no ports) for the agent to configure. The agent writes
/// `/etc/resolv.conf` when it configures the network: a network namespace alone leaves that file
/// shared with the host (an earlier run overwrote the host's resolver this way), so a private copy
/// is bind-mounted over it, visible only in this process's mount namespace. Must run before any
/// other thread.
pub fn enter_namespaces() {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};

    unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS)
        .expect("unshare");
    // Mounts made from here on must not propagate back to the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .expect("make / private");
    let private = std::env::temp_dir().join(format!("mc-host-agent-resolv-{}", std::process::id()));
    std::fs::copy("/etc/resolv.conf", &private).expect("copy /etc/resolv.conf");
    mount(
        Some(&private),
        "/etc/resolv.conf",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind a private /etc/resolv.conf");
    // The mount holds the file; its name is not needed, and nothing is left behind in /tmp.
    std::fs::remove_file(&private).expect("remove the private resolv.conf's name");
    for args in [
        &["link", "set", "lo", "up"][..],
        &["link", "add", "eth0", "type", "bridge"],
    ] {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    }
}
