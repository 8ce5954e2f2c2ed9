//! The Firecracker backend (production default). Boot configures the VM through the API
//! socket; hibernate pauses, writes a snapshot and stops the process; resume starts a new
//! process and loads the snapshot with `resume_vm`. The agent is reached over hybrid vsock.
//!
//! A VM's first hibernation writes a Full snapshot. Once it has been restored from a memory file
//! of its own, its next hibernation writes a Diff (the pages dirtied since the restore), which
//! is merged into that file once the process is gone, so each restore still loads one whole
//! file (`base.rs`, `merge.rs`).

pub mod api;
mod base;
mod jailer;
pub mod merge;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::process::{ExitInfo, kill_and_wait, spawn_supervised, wait_exited};
use super::{Hibernated, Hypervisor, SnapshotFiles, VmHandle, VmSpec, VmmError, console_tail};
use crate::guest::client::AgentEndpoint;
use crate::guest::messages::{CMDLINE_CHANNEL, CMDLINE_TOKEN, DEFAULT_VSOCK_PORT};
use api::{FirecrackerApi, Layout, SnapshotType};
use base::MemoryBase;
pub use jailer::JailerConfig;

const API_DEADLINE: Duration = Duration::from_secs(10);
const GUEST_CID: u32 = 3;

#[derive(Debug, Clone)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary (`FIRECRACKER_BASE`).
    pub binary: PathBuf,
    pub jailer: Option<JailerConfig>,
}

pub struct FirecrackerBackend {
    config: FirecrackerConfig,
}

struct Placement {
    host: Layout,
    api: Layout,
    api_spec: VmSpec,
}

/// What resume needs to know about the snapshot's VM.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotMeta {
    tap: Option<String>,
    /// The memory is the base plus a diff, which may still be pending (see `base.rs`).
    #[serde(default)]
    diff: bool,
}

impl FirecrackerBackend {
    pub fn new(config: FirecrackerConfig) -> FirecrackerBackend {
        FirecrackerBackend { config }
    }

    pub fn boot_args(spec: &VmSpec) -> String {
        let mut args = vec![
            "console=ttyS0".to_string(),
            "reboot=k".into(),
            "panic=1".into(),
            "pci=off".into(),
            format!("{CMDLINE_TOKEN}={}", spec.agent_token),
            format!("{CMDLINE_CHANNEL}=vsock:{DEFAULT_VSOCK_PORT}"),
        ];
        if !spec.boot_args.trim().is_empty() {
            args.push(spec.boot_args.trim().to_string());
        }
        args.join(" ")
    }

    /// Where the VM's files are on the host, and the spec and files as Firecracker sees them
    /// (the same, unless it runs in a jail).
    fn placement(&self, spec: &VmSpec) -> Placement {
        match &self.config.jailer {
            Some(jailer) => Placement {
                host: Layout::at(&jailer.chroot(&spec.vm_id)),
                api: Layout::at(std::path::Path::new("/")),
                api_spec: JailerConfig::jailed_spec(spec),
            },
            None => Placement {
                host: Layout::of(spec),
                api: Layout::of(spec),
                api_spec: spec.clone(),
            },
        }
    }

    /// Starts a fresh Firecracker process (under the jailer when configured) and waits for its
    /// API.
    async fn launch(&self, spec: &VmSpec) -> Result<(VmHandle, FirecrackerApi), VmmError> {
        let dir = spec.dir.clone();
        blocking(move || super::private::private_dir(&dir))
            .await
            .map_err(|e| VmmError::io(&spec.dir, e))?;
        if let Some(jailer) = &self.config.jailer {
            jailer.stage(spec).await?;
        }
        let layout = self.placement(spec).host;
        // A socket left by the previous process would make the new one fail to bind.
        for stale in [&layout.api_socket, &layout.vsock_socket] {
            let _ = tokio::fs::remove_file(stale).await;
        }
        for file in [&layout.log, &layout.metrics] {
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .await
                .map_err(|e| VmmError::io(file, e))?;
            // Made by the daemon as root; jailed, Firecracker opens them as the jail's user.
            if let Some(jailer) = &self.config.jailer {
                jailer.give(file)?;
            }
        }
        super::rotate_console_log(spec).await;
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.console_log())
            .map_err(|e| VmmError::io(&spec.console_log(), e))?;
        let (command, api_socket) = match &self.config.jailer {
            Some(jailer) => jailer.command(&self.config.binary, spec).await?,
            None => {
                let mut command = Command::new(&self.config.binary);
                command
                    .arg("--api-sock")
                    .arg(&layout.api_socket)
                    .arg("--id")
                    .arg(&spec.vm_id);
                (command, layout.api_socket.clone())
            }
        };
        let binary = self.config.binary.display().to_string();
        let (pid, exited) = spawn_supervised(command, &binary, Stdio::from(console))?;
        let handle = VmHandle {
            pid,
            agent: AgentEndpoint::HybridVsock {
                uds: layout.vsock_socket.clone(),
                port: DEFAULT_VSOCK_PORT,
            },
            exited,
            control: api_socket.clone(),
        };
        let api = FirecrackerApi::new(&api_socket);
        let ready = tokio::select! {
            ready = api.wait_ready(API_DEADLINE) => ready,
            info = wait_exited(handle.exited.clone()) => Err(VmmError::Exited(info)),
        };
        if let Err(e) = ready {
            kill_and_wait(handle.pid, handle.exited.clone()).await;
            return Err(VmmError::Startup(
                "firecracker",
                format!("{e}; console: {}", console_tail(spec).await),
            ));
        }
        Ok((handle, api))
    }

    async fn fail(&self, handle: VmHandle, error: VmmError) -> VmmError {
        kill_and_wait(handle.pid, handle.exited.clone()).await;
        error
    }
}

#[async_trait::async_trait]
impl Hypervisor for FirecrackerBackend {
    fn name(&self) -> &'static str {
        "firecracker"
    }

    fn snapshot_files(&self) -> SnapshotFiles {
        SnapshotFiles {
            state: "vmstate",
            memory: Some("memory"),
        }
    }

    fn growing_files(&self, spec: &VmSpec) -> Vec<PathBuf> {
        let host = self.placement(spec).host;
        vec![spec.console_log(), host.log, host.metrics]
    }

    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let base = MemoryBase::of(spec);
        blocking(move || base.forget_process())
            .await
            .map_err(|e| VmmError::io(&spec.dir, e))?;
        let (handle, api) = self.launch(spec).await?;
        let placement = self.placement(spec);
        let requests = api::boot_requests(
            &placement.api_spec,
            &placement.api,
            GUEST_CID,
            &Self::boot_args(spec),
        );
        match api.send_all(&requests).await {
            Ok(()) => Ok(handle),
            Err(e) => Err(self.fail(handle, e).await),
        }
    }

    async fn pause(&self, vm: &VmHandle) -> Result<(), VmmError> {
        FirecrackerApi::new(&vm.control)
            .send(&api::set_state("Paused"))
            .await
            .map(|_| ())
    }

    async fn unpause(&self, vm: &VmHandle) -> Result<(), VmmError> {
        FirecrackerApi::new(&vm.control)
            .send(&api::set_state("Resumed"))
            .await
            .map(|_| ())
    }

    async fn hibernate(&self, spec: &VmSpec, vm: VmHandle) -> Result<Hibernated, VmmError> {
        let Placement {
            host, api: inside, ..
        } = self.placement(spec);
        let base = MemoryBase::of(spec);
        // Firecracker creates the snapshot files with O_TRUNC, through any link in their place,
        // and the directory may still hold links to the golden snapshot: it writes fresh names
        // only, which are renamed over whatever is there once complete.
        let (fresh, fresh_inside) = (host.partial(), inside.partial());
        let planned = {
            let (dir, fresh, base) = (host.snapshot_dir(), host.partial(), base.clone());
            let memory = host.snapshot_memory.clone();
            blocking(move || {
                super::private::private_dir(&dir)?;
                // Until the new description is published, no snapshot here counts as whole.
                super::private::discard(&dir.join("meta.json"))?;
                for partial in [
                    &fresh.snapshot_state,
                    &fresh.snapshot_memory,
                    &fresh.snapshot_diff,
                ] {
                    super::private::discard(partial)?;
                }
                base.plan(&dir, &memory)
            })
            .await
        };
        let kind = planned.map_err(|e| VmmError::io(&host.snapshot_dir(), e))?;
        let api = FirecrackerApi::new(&vm.control);
        api.send(&api::set_state("Paused")).await?;
        if let Err(e) = api.send(&api::snapshot_create(&fresh_inside, kind)).await {
            let _ = api.send(&api::set_state("Resumed")).await;
            return Err(e);
        }
        let meta = SnapshotMeta {
            tap: spec.net.as_ref().map(|n| n.tap.clone()),
            diff: kind == SnapshotType::Diff,
        };
        let meta = serde_json::to_vec(&meta).unwrap_or_default();
        let (dir, committing) = (host.snapshot_dir(), base.clone());
        let (state, memory) = (host.snapshot_state.clone(), host.snapshot_memory.clone());
        let published = blocking(move || {
            super::private::publish(&fresh.snapshot_state, &state)?;
            let bytes = match kind {
                SnapshotType::Full => super::private::publish(&fresh.snapshot_memory, &memory)?,
                SnapshotType::Diff => committing.commit(&fresh.snapshot_diff)?,
            };
            // Last: resume takes the snapshot for whole only once its description is there.
            let meta_partial = dir.join("meta.json.partial");
            super::private::write_new(&meta_partial, &meta)?;
            super::private::publish(&meta_partial, &dir.join("meta.json"))?;
            Ok(bytes)
        })
        .await;
        // On failure the paused process still runs, for the caller to adopt and unpause.
        let mut memory_bytes = published.map_err(|e| VmmError::io(&host.snapshot_dir(), e))?;
        // The snapshot holds everything; the paused process has nothing left to do.
        kill_and_wait(vm.pid, vm.exited.clone()).await;
        if kind == SnapshotType::Diff {
            // Only now: the process mapped the base, which must not change under it.
            let memory = host.snapshot_memory.clone();
            match blocking(move || base.finish(&memory)).await {
                Ok(merged) => memory_bytes = merged.map_or(memory_bytes, |m| m.bytes),
                // The image is whole (base + diff); the next resume merges before it loads.
                Err(e) => tracing::warn!(vm = %spec.vm_id, error = %e,
                    "cannot merge the diff snapshot yet; the resume will"),
            }
        }
        // For a Diff, the memory bytes this hibernation wrote: the pages the guest dirtied.
        Ok(Hibernated {
            state_bytes: memory_bytes,
        })
    }

    async fn resume(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let Placement {
            host, api: inside, ..
        } = self.placement(spec);
        let meta_path = host.snapshot_dir().join("meta.json");
        let meta: SnapshotMeta = match tokio::fs::read(&meta_path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| VmmError::Control(format!("{}: {e}", meta_path.display())))?,
            Err(_) => return Err(VmmError::NoSnapshot(host.snapshot_dir())),
        };
        let (base, memory, diff) = (
            MemoryBase::of(spec),
            host.snapshot_memory.clone(),
            meta.diff,
        );
        let prepared = blocking(move || {
            // A diff left pending by a hibernation cut short is merged before anything loads.
            if diff {
                base.finish(&memory)?;
            }
            base.track(&memory)
        })
        .await;
        prepared.map_err(|e| VmmError::io(&host.snapshot_dir(), e))?;
        let (handle, api) = self.launch(spec).await?;
        let new_tap = spec
            .net
            .as_ref()
            .map(|n| n.tap.as_str())
            .filter(|tap| meta.tap.as_deref() != Some(*tap));
        let mut requests = api::observability_requests(&inside);
        requests.push(api::snapshot_load(&inside, new_tap));
        match api.send_all(&requests).await {
            Ok(()) => Ok(handle),
            Err(e) => Err(self.fail(handle, e).await),
        }
    }

    async fn kill(&self, vm: &mut VmHandle) -> Result<ExitInfo, VmmError> {
        Ok(kill_and_wait(vm.pid, vm.exited.clone()).await)
    }

    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<VmHandle, VmmError> {
        let host = self.placement(spec).host;
        // Jailed, the command line names the jail-relative socket; the jail's id names the VM.
        let marker = match &self.config.jailer {
            Some(_) => std::path::PathBuf::from(&spec.vm_id),
            None => host.api_socket.clone(),
        };
        let mut handle = super::adopt_process(
            pid,
            marker,
            AgentEndpoint::HybridVsock {
                uds: host.vsock_socket.clone(),
                port: DEFAULT_VSOCK_PORT,
            },
        )?;
        handle.control = host.api_socket.clone();
        FirecrackerApi::new(&handle.control)
            .wait_ready(API_DEADLINE)
            .await?;
        Ok(handle)
    }
}

/// File work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(std::io::Error::other)?
}
