//! A fake hypervisor and fake links for control-plane scale tests only (never a substitute for
//! the real-guest tests). Each "VM" is a task serving a minimal agent on the VM's Unix socket:
//! it answers Hello, health, set-clock and configure-network, so the manager's whole path runs
//! without a guest. Hibernation writes the boot id to the snapshot directory and resume reads it
//! back, so "same boot after resume" holds as it does for real guests.
//!
//! Execs: `mkdir`, `chown`, `rm`, `true` and the credential script (`mc-secrets`) exit 0 at
//! once; the agent's own `files resolve ROOT REL` prints `ROOT/REL` (a prompt's directory);
//! any other command (a CLI) starts and then runs, silent, until it is cancelled, so prompts
//! and logins can be held open (or, with `commands_exit_at_once`, exits 0 at once).
//! The file helper's put, get and rm work on a map in memory per VM (`fake_files`), kept across
//! hibernation; nothing is written to disk. A VM can be muted: its agent then stops answering health
//! checks, as a hung guest would.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use master_controller::guest::client::AgentEndpoint;
use master_controller::guest::messages::{
    AGENT_SELF, ErrorBody, ExitStatus, HealthReport, Hello, HelloOk, Request, Response,
};
use master_controller::guest::{Frame, FrameCodec, FrameKind};
use master_controller::net::{NetError, Netlink, TapBinding};
use master_controller::vmm::{
    ExitInfo, Hibernated, Hypervisor, SnapshotFiles, VmHandle, VmSpec, VmmError,
};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::codec::Framed;

struct FakeVm {
    exit: watch::Sender<Option<ExitInfo>>,
    agent: tokio::task::JoinHandle<()>,
    muted: Arc<AtomicBool>,
}

/// A daemon whose VMs run on these fakes, at a small size; `env` adds to or overrides it.
pub async fn daemon_with_fake_vms(
    env: &[(&str, &str)],
) -> (super::TestDaemon, Arc<FakeHypervisor>, Arc<FakeNetlink>) {
    let hypervisor = Arc::new(FakeHypervisor::default());
    let netlink = Arc::new(FakeNetlink::default());
    let host = master_controller::vms::VmHost {
        hypervisor: hypervisor.clone(),
        netlink: netlink.clone(),
    };
    let mut vars = vec![
        ("GOLDEN_KERNEL", "/fake/vmlinux"),
        ("MC_VM_DATA_DISK_MIB", "8"),
        ("MC_VM_VCPUS", "1"),
        ("MC_VM_MEMORY_MIB", "256"),
    ];
    vars.extend_from_slice(env);
    let daemon = super::TestDaemon::start_with_host(&vars, Some(host)).await;
    (daemon, hypervisor, netlink)
}

#[derive(Default)]
pub struct FakeHypervisor {
    vms: Mutex<HashMap<String, FakeVm>>,
    /// Each VM's workspace, kept across hibernation as its disk would be.
    trees: Mutex<HashMap<String, super::fake_files::Tree>>,
    /// When set, every other command exits 0 at once instead of running until cancelled (for
    /// a fuzzer, whose requests must end).
    pub commands_exit_at_once: Arc<AtomicBool>,
    next_pid: AtomicU32,
    pub boots: AtomicU32,
    pub resumes: AtomicU32,
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> VmmError + '_ {
    move |e| VmmError::io(path, e)
}

impl FakeHypervisor {
    pub fn running(&self) -> usize {
        self.vms.lock().expect("fake VMs").len()
    }

    /// Whether the VM's process runs.
    pub fn is_running(&self, vm_id: &str) -> bool {
        self.vms.lock().expect("fake VMs").contains_key(vm_id)
    }

    /// From now on the VM's agent answers no health check (its process keeps running).
    pub fn mute(&self, vm_id: &str) {
        if let Some(vm) = self.vms.lock().expect("fake VMs").get(vm_id) {
            vm.muted.store(true, Ordering::Relaxed);
        }
    }

    fn start(&self, spec: &VmSpec, boot_id: String) -> Result<VmHandle, VmmError> {
        let socket = spec.dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(io(&socket))?;
        let token = spec.agent_token.clone();
        let muted = Arc::new(AtomicBool::new(false));
        let tree = self
            .trees
            .lock()
            .expect("fake trees")
            .entry(spec.vm_id.clone())
            .or_default()
            .clone();
        let agent = tokio::spawn(serve_agent(
            listener,
            token,
            boot_id,
            muted.clone(),
            tree,
            self.commands_exit_at_once.clone(),
        ));
        let (exit, exited) = watch::channel(None);
        let pid = 4_000_000 + self.next_pid.fetch_add(1, Ordering::Relaxed);
        let previous = self
            .vms
            .lock()
            .expect("fake VMs")
            .insert(spec.vm_id.clone(), FakeVm { exit, agent, muted });
        assert!(previous.is_none(), "two processes for VM {}", spec.vm_id);
        Ok(VmHandle::new(
            pid,
            AgentEndpoint::Unix(socket),
            exited,
            spec.dir.join("fake.ctl"),
        ))
    }

    fn stop(&self, vm_id: &str, info: ExitInfo) {
        if let Some(vm) = self.vms.lock().expect("fake VMs").remove(vm_id) {
            vm.agent.abort();
            let _ = vm.exit.send(Some(info));
        }
    }

    fn vm_id_of(&self, handle: &VmHandle) -> Option<String> {
        let AgentEndpoint::Unix(socket) = &handle.agent else {
            return None;
        };
        socket
            .parent()?
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
    }
}

fn boot_id_file(spec: &VmSpec) -> PathBuf {
    spec.snapshot_dir().join("boot_id")
}

#[async_trait::async_trait]
impl Hypervisor for FakeHypervisor {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn snapshot_files(&self) -> SnapshotFiles {
        SnapshotFiles {
            state: "boot_id",
            memory: None,
        }
    }

    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.boots.fetch_add(1, Ordering::Relaxed);
        self.start(spec, uuid_like(&spec.vm_id))
    }

    async fn pause(&self, _vm: &VmHandle) -> Result<(), VmmError> {
        Ok(())
    }

    async fn unpause(&self, _vm: &VmHandle) -> Result<(), VmmError> {
        Ok(())
    }

    async fn hibernate(&self, spec: &VmSpec, vm: VmHandle) -> Result<Hibernated, VmmError> {
        let dir = spec.snapshot_dir();
        tokio::fs::create_dir_all(&dir).await.map_err(io(&dir))?;
        let file = boot_id_file(spec);
        tokio::fs::write(&file, uuid_like(&spec.vm_id))
            .await
            .map_err(io(&file))?;
        let id = self.vm_id_of(&vm).unwrap_or_default();
        self.stop(
            &id,
            ExitInfo {
                code: Some(0),
                signal: None,
            },
        );
        Ok(Hibernated { state_bytes: 36 })
    }

    async fn resume(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        self.resumes.fetch_add(1, Ordering::Relaxed);
        let file = boot_id_file(spec);
        let boot_id = tokio::fs::read_to_string(&file).await.map_err(io(&file))?;
        self.start(spec, boot_id)
    }

    async fn kill(&self, vm: &mut VmHandle) -> Result<ExitInfo, VmmError> {
        let info = ExitInfo {
            code: None,
            signal: Some(9),
        };
        let id = self.vm_id_of(vm).unwrap_or_default();
        self.stop(&id, info.clone());
        Ok(info)
    }

    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<VmHandle, VmmError> {
        Err(VmmError::Control(format!(
            "the fake hypervisor cannot adopt {} (pid {pid})",
            spec.vm_id
        )))
    }
}

/// A stable per-VM boot id.
fn uuid_like(vm_id: &str) -> String {
    format!("boot-{vm_id}")
}

async fn serve_agent(
    listener: UnixListener,
    token: String,
    boot_id: String,
    muted: Arc<AtomicBool>,
    tree: super::fake_files::Tree,
    at_once: Arc<AtomicBool>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let token = token.clone();
        let boot_id = boot_id.clone();
        let muted = muted.clone();
        let mut files = super::fake_files::Helper::new(tree.clone());
        let at_once = at_once.clone();
        tokio::spawn(async move {
            let mut frames = Framed::new(stream, FrameCodec::default());
            // Execs of this connection still running (until cancelled).
            let mut held = BTreeSet::new();
            while let Some(Ok(frame)) = frames.next().await {
                let held = (!at_once.load(Ordering::Relaxed)).then_some(&mut held);
                for reply in answer(&frame, &token, &boot_id, &muted, held, &mut files) {
                    if frames.send(reply).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

fn exited(id: u64, code: Option<i32>, signal: Option<i32>) -> Frame {
    Frame::json(
        FrameKind::Exit,
        id,
        &ExitStatus {
            code,
            signal,
            timed_out: false,
            cancelled: signal.is_some(),
        },
    )
}

fn answer(
    frame: &Frame,
    token: &str,
    boot_id: &str,
    muted: &AtomicBool,
    // `None`: commands exit at once rather than being held until cancelled.
    held: Option<&mut BTreeSet<u64>>,
    files: &mut super::fake_files::Helper,
) -> Vec<Frame> {
    let id = frame.request_id;
    if frame.kind == FrameKind::Stdin
        && let Some(replies) = files.stdin(id, &frame.payload)
    {
        return replies;
    }
    if frame.kind == FrameKind::Request {
        match frame.parse::<Request>() {
            Ok(Request::Health) if muted.load(Ordering::Relaxed) => return Vec::new(),
            Ok(Request::Exec(exec)) => {
                let started =
                    Frame::json(FrameKind::Response, id, &Response::ExecStarted { pid: 7 });
                let quick = ["mkdir", "chown", "rm", "true"];
                let housekeeping = exec
                    .argv
                    .first()
                    .is_some_and(|a| quick.contains(&a.as_str()))
                    // The daemon's script that stages and clears credentials on the tmpfs.
                    || exec.argv.get(3).is_some_and(|name| name == "mc-secrets");
                if housekeeping {
                    return vec![started, exited(id, Some(0), None)];
                }
                if let [agent, files, resolve, root, rel, ..] = exec.argv.as_slice()
                    && agent == AGENT_SELF
                    && files == "files"
                    && resolve == "resolve"
                {
                    let path = format!("{root}/{rel}\n");
                    return vec![
                        started,
                        Frame::new(FrameKind::Stdout, id, path.into_bytes()),
                        exited(id, Some(0), None),
                    ];
                }
                if let Some(replies) = files.exec(id, &exec.argv) {
                    return std::iter::once(started).chain(replies).collect();
                }
                let Some(held) = held else {
                    return vec![started, exited(id, Some(0), None)];
                };
                held.insert(id);
                return vec![started];
            }
            Ok(Request::WriteFile(_)) => {
                return vec![Frame::json(FrameKind::Response, id, &Response::Done)];
            }
            Ok(Request::Cancel { request_id }) => {
                let mut replies = vec![Frame::json(FrameKind::Response, id, &Response::Done)];
                let was_held = held.is_some_and(|held| held.remove(&request_id));
                if was_held || files.cancel(request_id) {
                    replies.push(exited(request_id, None, Some(15)));
                }
                return replies;
            }
            _ => {}
        }
    }
    vec![answer_one(frame, token, boot_id)]
}

fn answer_one(frame: &Frame, token: &str, boot_id: &str) -> Frame {
    let id = frame.request_id;
    match frame.kind {
        FrameKind::Hello => match frame.parse::<Hello>() {
            Ok(hello) if hello.token == token => Frame::json(
                FrameKind::HelloOk,
                0,
                &HelloOk {
                    nonce: hello.nonce,
                    agent_version: "fake".into(),
                    boot_id: boot_id.to_string(),
                    interrupted: Vec::new(),
                    health: None,
                    clock_error: None,
                },
            ),
            _ => Frame::json(
                FrameKind::Error,
                0,
                &ErrorBody::new("unauthenticated", "wrong token"),
            ),
        },
        FrameKind::Request => match frame.parse::<Request>() {
            Ok(Request::Health) => Frame::json(
                FrameKind::Response,
                id,
                &Response::Health(HealthReport {
                    agent_version: "fake".into(),
                    boot_id: boot_id.to_string(),
                    hostname: "fake".into(),
                    uptime_sec: 1.0,
                    load: [0.0; 3],
                    mem_total_kib: 262_144,
                    mem_available_kib: 200_000,
                    disk_total_bytes: 1 << 26,
                    disk_free_bytes: 1 << 25,
                }),
            ),
            Ok(Request::SetClock { .. } | Request::ConfigureNetwork(_)) => {
                Frame::json(FrameKind::Response, id, &Response::Done)
            }
            _ => Frame::json(
                FrameKind::Error,
                id,
                &ErrorBody::new("unsupported", "the fake agent does not do that"),
            ),
        },
        _ => Frame::json(
            FrameKind::Error,
            id,
            &ErrorBody::new("bad_frame", "unexpected frame"),
        ),
    }
}

/// Links as a set of names: taps come and go, nothing touches the host. Bindings are recorded
/// by tap name.
#[derive(Default)]
pub struct FakeNetlink {
    pub taps: Mutex<BTreeSet<String>>,
    pub bindings: Mutex<HashMap<String, TapBinding>>,
}

#[async_trait::async_trait]
impl Netlink for FakeNetlink {
    async fn ensure_bridge(
        &self,
        _name: &str,
        _mac: [u8; 6],
        _address: Ipv4Addr,
        _prefix: u8,
    ) -> Result<(), NetError> {
        Ok(())
    }

    async fn create_tap(&self, name: &str, _bridge: &str) -> Result<(), NetError> {
        if !self.taps.lock().expect("taps").insert(name.to_string()) {
            return Err(NetError::Netlink(format!("tap {name} exists")));
        }
        Ok(())
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        self.taps.lock().expect("taps").remove(name);
        Ok(())
    }

    async fn bridge_ports(&self, _bridge: &str) -> Result<Vec<String>, NetError> {
        Ok(self.taps.lock().expect("taps").iter().cloned().collect())
    }

    async fn bind_tap(&self, name: &str, binding: &TapBinding) -> Result<(), NetError> {
        self.bindings
            .lock()
            .expect("bindings")
            .insert(name.to_string(), *binding);
        Ok(())
    }

    async fn unbind_tap(&self, name: &str) -> Result<(), NetError> {
        self.bindings.lock().expect("bindings").remove(name);
        Ok(())
    }

    async fn bound_taps(&self) -> Result<Vec<String>, NetError> {
        Ok(self
            .bindings
            .lock()
            .expect("bindings")
            .keys()
            .cloned()
            .collect())
    }
}
