//! Bring-up on the host: the VM's directory and data disk, its tap (bound to its MAC and
//! address), its hypervisor process, and the agent's first answer, through which the guest is
//! given its identity, clock and address. Also what a new VM will run, and the removal of a
//! tap. It keeps no state of its own: the lifecycle and reconcile sequence its steps under the
//! VM's slot.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::guest::client::AgentClient;
use crate::guest::messages::{HealthReport, NetworkConfig};
use crate::model::{AgentInfo, Vm, VmOp, VmStatus, VmType, now_ms};
use crate::net::{Netlink, TapBinding, tap_name};
use crate::vmm::{Hypervisor, VmHandle, VmSpec, disks};

use super::layout::{create_private_dir, data_disk};
use super::{VmError, VmSettings};

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

pub(super) struct BringUp {
    hypervisor: Arc<dyn Hypervisor>,
    netlink: Arc<dyn Netlink>,
    settings: Arc<VmSettings>,
}

impl BringUp {
    pub(super) fn new(
        hypervisor: Arc<dyn Hypervisor>,
        netlink: Arc<dyn Netlink>,
        settings: Arc<VmSettings>,
    ) -> BringUp {
        BringUp {
            hypervisor,
            netlink,
            settings,
        }
    }

    /// The record of a new VM of `user_id`, in `creating`: what it will run (the golden
    /// snapshot's image, else the configured one with its links resolved), its size, tap and
    /// agent token. Its address is leased when it is reserved.
    pub(super) async fn new_vm(&self, user_id: &str) -> Result<Vm, VmError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let (image, golden) = match &self.settings.golden {
            Some(golden) => (golden.meta.image.clone(), Some(golden.reference())),
            None => {
                // Resolving the links reads the disk: off the async workers.
                let settings = self.settings.clone();
                let image = tokio::task::spawn_blocking(move || settings.image_files())
                    .await
                    .map_err(|e| VmError::host(&id, VmOp::Create, e))?
                    .map_err(|e| VmError::host(&id, VmOp::Create, e))?;
                (Some(image), None)
            }
        };
        Ok(Vm {
            tap_device: Some(tap_name(&id)),
            id,
            user_id: user_id.to_string(),
            vm_type: VmType::Cli,
            status: VmStatus::Creating,
            ip_address: None,
            vcpus: self.settings.vcpus,
            memory_mib: self.settings.memory_mib,
            created_at_ms: now,
            updated_at_ms: now,
            last_heartbeat_ms: None,
            hibernated_at_ms: None,
            version: 1,
            mac_address: None,
            pid: None,
            agent_token: agent_token()?,
            agent: None,
            needs_readdress: false,
            error: None,
            image,
            golden,
        })
    }

    /// The host half of a create: directory and data disk, then a cold boot or a restore of
    /// the golden snapshot, up to the agent's first answer.
    pub(super) async fn first_boot(&self, vm: &Vm) -> Result<Started, VmError> {
        let spec = self.settings.spec_of(vm)?;
        self.prepare_dir(&spec).await?;
        match &self.settings.golden {
            Some(golden) => {
                golden
                    .stage(&spec.snapshot_dir())
                    .await
                    .map_err(|e| VmError::host(&vm.id, VmOp::Create, e))?;
                self.start(vm, &spec, Start::Golden, true).await
            }
            None => self.start(vm, &spec, Start::Boot, true).await,
        }
    }

    /// Creates the VM's directory and data disk (first boot only): a clone of the golden
    /// snapshot's disk when creates restore from one, else a freshly formatted disk.
    async fn prepare_dir(&self, spec: &VmSpec) -> Result<(), VmError> {
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
            self.netlink
                .create_tap(&net.tap, &self.settings.bridge)
                .await
                .map_err(|e| fail(&e))?;
            // Before the hypervisor starts, so the guest never sends a frame unbound.
            self.bind_tap(vm, &net.tap).await.map_err(|e| fail(&e))?;
        }
        crate::failpoint::hit(&format!("vm.{op}.after_tap"));
        let mut handle = match start {
            Start::Boot => self.hypervisor.boot(spec).await,
            Start::Resume | Start::Golden => self.hypervisor.resume(spec).await,
        }
        .map_err(|e| fail(&e))?;
        match self.greet(vm, &handle, start, address).await {
            Ok((agent, health)) => Ok(Started {
                handle,
                agent: Arc::new(agent),
                health,
            }),
            Err(e) => {
                let _ = self.hypervisor.kill(&mut handle).await;
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
        // The Hello carried the host's clock: a resumed guest's has stood still since it was
        // saved, and is set before the agent answers.
        if let Some(error) = &agent.hello().clock_error {
            return Err(format!("set clock: {error}"));
        }
        if address {
            agent
                .configure_network(self.network_config(vm, start)?)
                .await
                .map_err(|e| format!("configure network: {e}"))?;
        }
        // The greeting's health is current unless the guest was changed since (its identity,
        // its address and hostname); an agent from before it sends none.
        let greeted = agent.hello().health.clone();
        let health = match greeted {
            Some(health) if golden.is_none() && !address => health,
            _ => agent.health().await.map_err(|e| format!("health: {e}"))?,
        };
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
        self.netlink
            .bind_tap(tap, &binding)
            .await
            .map_err(|e| e.to_string())
    }

    /// Removes a tap and its binding; an error is logged, since reconcile sweeps what is left.
    /// The link goes first: a binding never outlives a guest that could still send.
    pub(super) async fn remove_tap(&self, tap: Option<&str>) {
        let Some(tap) = tap else { return };
        if let Err(e) = self.netlink.delete_link(tap).await {
            tracing::warn!(tap, error = %e, "cannot remove tap; the orphan sweep will retry");
            return;
        }
        if let Err(e) = self.netlink.unbind_tap(tap).await {
            tracing::warn!(tap, error = %e, "cannot remove the tap's binding; the orphan sweep will retry");
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
