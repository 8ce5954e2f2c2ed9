//! The host side of VM operations: each VM's directory, data disk, tap and spec, starting its
//! process, and giving the guest its identity through the agent.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::guest::client::AgentClient;
use crate::guest::messages::{HealthReport, NetworkConfig};
use crate::model::{AgentInfo, GuestImage, Vm, VmOp, now_ms};
use crate::net::TapBinding;
use crate::vmm::{DiskSpec, NetSpec, VmHandle, VmSpec, disks};

use super::{VmError, VmManager, VmSettings};

const DATA_DISK: &str = "data.ext4";
/// Written once a hibernation's files are complete; reconcile trusts nothing else.
const SNAPSHOT_COMPLETE: &str = "complete";
const GUEST_INTERFACE: &str = "eth0";

/// How a VM's process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Start {
    Boot,
    Resume,
    /// A create restored from the golden snapshot.
    Golden,
}

/// A started VM whose agent answered.
pub(super) struct Started {
    pub handle: VmHandle,
    pub agent: Arc<AgentClient>,
    pub health: HealthReport,
}

pub(super) fn snapshot_marker(spec: &VmSpec) -> PathBuf {
    spec.snapshot_dir().join(SNAPSHOT_COMPLETE)
}

/// Empties a running VM's snapshot directory before it hibernates, and makes it and the VM's
/// directory 0700. What is there is stale for a running VM: links to the golden snapshot a
/// create left, or the image a resume restored, with its marker.
pub(super) async fn fresh_snapshot_dir(spec: &VmSpec) -> std::io::Result<()> {
    let (vm_dir, dir) = (spec.dir.clone(), spec.snapshot_dir());
    tokio::task::spawn_blocking(move || {
        crate::vmm::private::private_dir(&vm_dir)?;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        crate::vmm::private::private_dir(&dir)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Records, durably, that the snapshot directory holds a whole hibernation image.
pub(super) async fn write_marker(path: &Path) -> std::io::Result<()> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        crate::vmm::private::write_new(&path, b"")?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Durably withdraws the marker: the image is no longer the VM's current state.
pub(super) async fn remove_marker(spec: &VmSpec) -> std::io::Result<()> {
    let path = snapshot_marker(spec);
    tokio::task::spawn_blocking(move || {
        crate::vmm::private::discard(&path)?;
        if let Some(dir) = path.parent()
            && let Ok(dir) = std::fs::File::open(dir)
        {
            dir.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}

pub(super) fn agent_info(health: &HealthReport) -> AgentInfo {
    AgentInfo {
        boot_id: health.boot_id.clone(),
        uptime_sec: health.uptime_sec,
        checked_at_ms: now_ms(),
    }
}

/// A 32-character alphanumeric secret for the agent's `Hello`.
pub(super) fn agent_token() -> Result<String, VmError> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| VmError::Corrupt(format!("no randomness for the agent token: {e}")))?;
    Ok(bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect())
}

impl VmSettings {
    /// The configured image with every link resolved, so that it names one image version (an
    /// `images/<id>/` directory of `image/build-golden.sh` behind its `current` link) for as
    /// long as a VM uses it.
    /// A file that is not there stays as it is named: the hypervisor's start reports it.
    pub fn image_files(&self) -> Result<GuestImage, String> {
        let resolve = |path: &Path| match std::fs::canonicalize(path) {
            Ok(resolved) => Ok(resolved),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
            Err(e) => Err(format!("the guest image file {}: {e}", path.display())),
        };
        let kernel = self
            .kernel
            .as_deref()
            .ok_or("no guest kernel (set GOLDEN_KERNEL)")?;
        Ok(GuestImage {
            kernel: resolve(kernel)?,
            initrd: self.initrd.as_deref().map(resolve).transpose()?,
            rootfs: self.rootfs.as_deref().map(resolve).transpose()?,
        })
    }

    /// The configured image as it is named, for records from before images were recorded.
    pub(super) fn configured_image(&self) -> Result<GuestImage, VmError> {
        Ok(GuestImage {
            kernel: self.kernel.clone().ok_or(VmError::NotConfigured(
                "no guest kernel (set GOLDEN_KERNEL)",
            ))?,
            initrd: self.initrd.clone(),
            rootfs: self.rootfs.clone(),
        })
    }

    /// The spec of a VM on this host, booting `image`. Golden snapshots are built with it too,
    /// so that their devices are the ones every VM has.
    pub fn spec(
        &self,
        vm_id: &str,
        image: &GuestImage,
        vcpus: u32,
        memory_mib: u32,
        net: Option<NetSpec>,
        agent_token: &str,
    ) -> Result<VmSpec, VmError> {
        let dir = self.root.join(vm_id);
        let mut disks = Vec::new();
        if let Some(rootfs) = &image.rootfs {
            disks.push(DiskSpec {
                id: "rootfs".into(),
                path: rootfs.clone(),
                read_only: true,
                root: true,
            });
        }
        disks.push(DiskSpec {
            id: "data".into(),
            path: dir.join(DATA_DISK),
            read_only: false,
            root: false,
        });
        Ok(VmSpec {
            vm_id: vm_id.to_string(),
            dir,
            vcpus,
            memory_mib,
            kernel: image.kernel.clone(),
            initrd: image.initrd.clone(),
            boot_args: String::new(),
            disks,
            net,
            agent_token: agent_token.to_string(),
        })
    }
}

impl VmManager {
    pub(super) fn dir_of(&self, vm_id: &str) -> PathBuf {
        self.settings.root.join(vm_id)
    }

    /// The spec a VM boots or resumes with, from its record and this host's settings.
    pub(super) fn spec(&self, vm: &Vm) -> Result<VmSpec, VmError> {
        let net = match (&vm.tap_device, &vm.mac_address) {
            (Some(tap), Some(mac)) => Some(NetSpec {
                tap: tap.clone(),
                mac: mac.clone(),
            }),
            _ => None,
        };
        let image = match &vm.image {
            Some(image) => image.clone(),
            None => self.settings.configured_image()?,
        };
        self.settings.spec(
            &vm.id,
            &image,
            vm.vcpus,
            vm.memory_mib,
            net,
            &vm.agent_token,
        )
    }

    /// Creates the VM's directory and data disk (first boot only): a clone of the golden
    /// snapshot's disk when creates restore from one, else a freshly formatted disk.
    pub(super) async fn prepare_dir(&self, spec: &VmSpec) -> Result<(), VmError> {
        let fail = |e: &dyn std::fmt::Display| VmError::host(&spec.vm_id, VmOp::Create, e);
        match &self.settings.golden {
            Some(golden) => {
                create_private_dir(&spec.dir)
                    .await
                    .map_err(|e| fail(&format!("{}: {e}", spec.dir.display())))?;
                golden
                    .clone_data_disk(&data_disk(spec).map_err(|e| fail(&e))?.path)
                    .await
                    .map_err(|e| fail(&e))
            }
            None => prepare_dir(spec, self.settings.data_disk_mib)
                .await
                .map_err(|e| fail(&e)),
        }
    }

    /// Creates the tap, starts the process, and waits for the agent. With `address` the guest
    /// is given its address, gateway and hostname (a first boot, or a resume after its old
    /// address went to another VM). On error nothing of the process is left running; the tap
    /// is the caller's to remove.
    pub(super) async fn start(
        &self,
        vm: &Vm,
        spec: &VmSpec,
        start: Start,
        address: bool,
    ) -> Result<Started, VmError> {
        let op = match start {
            Start::Boot | Start::Golden => VmOp::Create,
            Start::Resume => VmOp::Resume,
        };
        let fail = |e: &dyn std::fmt::Display| VmError::host(&vm.id, op, e);
        if let Some(net) = &spec.net {
            self.host
                .netlink
                .create_tap(&net.tap, &self.settings.bridge)
                .await
                .map_err(|e| fail(&e))?;
            // Before the hypervisor starts, so the guest never sends a frame unbound.
            self.bind_tap(vm, &net.tap).await.map_err(|e| fail(&e))?;
        }
        crate::failpoint::hit(&format!("vm.{op}.after_tap"));
        let mut handle = match start {
            Start::Boot => self.host.hypervisor.boot(spec).await,
            Start::Resume | Start::Golden => self.host.hypervisor.resume(spec).await,
        }
        .map_err(|e| fail(&e))?;
        match self.greet(vm, &handle, start, address).await {
            Ok((agent, health)) => Ok(Started {
                handle,
                agent: Arc::new(agent),
                health,
            }),
            Err(e) => {
                let _ = self.host.hypervisor.kill(&mut handle).await;
                Err(fail(&e))
            }
        }
    }

    async fn greet(
        &self,
        vm: &Vm,
        handle: &VmHandle,
        start: Start,
        address: bool,
    ) -> Result<(AgentClient, HealthReport), String> {
        // A clone of the golden snapshot still expects the golden VM's token until it is given
        // its own.
        let golden = match (start, &self.settings.golden) {
            (Start::Golden, Some(golden)) => Some(golden),
            (Start::Golden, None) => return Err("no golden snapshot is configured".into()),
            _ => None,
        };
        let token = golden.map_or(vm.agent_token.as_str(), |g| g.meta.agent_token.as_str());
        let connect = AgentClient::connect(&handle.agent, token, self.settings.agent_timeout);
        let exited = handle.exit_watch();
        let agent = tokio::select! {
            agent = connect => agent.map_err(|e| e.to_string())?,
            info = exited => return Err(format!("the hypervisor exited before the agent answered: {info}")),
        };
        if golden.is_some() {
            let mut seed = [0u8; 64];
            getrandom::fill(&mut seed).map_err(|e| format!("no randomness for the seed: {e}"))?;
            agent
                .set_identity(&vm.agent_token, &seed)
                .await
                .map_err(|e| format!("set identity: {e}"))?;
        }
        if start != Start::Boot {
            agent
                .set_clock(now_ms())
                .await
                .map_err(|e| format!("set clock: {e}"))?;
        }
        if address {
            agent
                .configure_network(self.network_config(vm, start)?)
                .await
                .map_err(|e| format!("configure network: {e}"))?;
        }
        let health = agent.health().await.map_err(|e| format!("health: {e}"))?;
        Ok((agent, health))
    }

    fn network_config(&self, vm: &Vm, start: Start) -> Result<NetworkConfig, String> {
        let ip: Ipv4Addr = vm
            .ip_address
            .as_deref()
            .and_then(|ip| ip.parse().ok())
            .ok_or_else(|| format!("VM {} has no address", vm.id))?;
        let gateway = self.settings.limits.subnet.gateway.to_string();
        Ok(NetworkConfig {
            interface: GUEST_INTERFACE.into(),
            address: self.settings.limits.subnet.cidr_of(ip),
            gateway: Some(gateway.clone()),
            dns: vec![gateway],
            hostname: Some(hostname_of(&vm.id)),
            // After a resume (or a golden restore) the NIC still carries the MAC it was saved with.
            mac: (start != Start::Boot)
                .then(|| vm.mac_address.clone())
                .flatten(),
        })
    }

    /// Binds the VM's tap to the VM's MAC and address (the record's: after a readdress, the new
    /// one), so its guest cannot send as another VM.
    pub(super) async fn bind_tap(&self, vm: &Vm, tap: &str) -> Result<(), String> {
        let (Some(mac), Some(ip)) = (&vm.mac_address, &vm.ip_address) else {
            return Err(format!(
                "VM {} has a tap but no address to bind it to",
                vm.id
            ));
        };
        let binding = TapBinding::parse(mac, ip).map_err(|e| e.to_string())?;
        self.host
            .netlink
            .bind_tap(tap, &binding)
            .await
            .map_err(|e| e.to_string())
    }

    /// Removes a tap and its binding; an error is logged, since reconcile sweeps what is left.
    /// The link goes first: a binding never outlives a guest that could still send.
    pub(super) async fn remove_tap(&self, tap: Option<&str>) {
        let Some(tap) = tap else { return };
        if let Err(e) = self.host.netlink.delete_link(tap).await {
            tracing::warn!(tap, error = %e, "cannot remove tap; the orphan sweep will retry");
            return;
        }
        if let Err(e) = self.host.netlink.unbind_tap(tap).await {
            tracing::warn!(tap, error = %e, "cannot remove the tap's binding; the orphan sweep will retry");
        }
    }

    pub(super) async fn remove_dir(&self, dir: &Path) {
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove VM directory")
            }
        }
    }
}

/// `vm-` and the first 12 hex digits of the id: a valid, recognisable hostname.
fn hostname_of(vm_id: &str) -> String {
    let digits: String = vm_id
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(12)
        .collect();
    format!("vm-{digits}")
}

/// Creates a VM's directory (private to root) and its sparse, formatted data disk.
pub(super) async fn prepare_dir(spec: &VmSpec, data_disk_mib: u64) -> Result<(), String> {
    create_private_dir(&spec.dir)
        .await
        .map_err(|e| format!("{}: {e}", spec.dir.display()))?;
    disks::create_data_disk(&data_disk(spec)?.path, data_disk_mib)
        .await
        .map_err(|e| e.to_string())
}

fn data_disk(spec: &VmSpec) -> Result<&DiskSpec, &'static str> {
    spec.disks
        .iter()
        .find(|d| !d.read_only)
        .ok_or("the spec has no data disk")
}

/// Creates `dir` and its parents, readable by root only; an existing `dir` is tightened to 0700.
pub(crate) async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::vmm::private::private_dir(&dir))
        .await
        .map_err(std::io::Error::other)?
}
