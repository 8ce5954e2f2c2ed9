//! How the AI CLIs run inside a user's VM: their HOME, PATH and egress, shared by prompts and
//! logins; and making sure the user's VM is running before either starts.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{VmError, VmManager};
use crate::model::{Vm, VmOp, VmStatus};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long a caller waits for a VM that another operation is creating or saving.
const VM_SETTLE_DEADLINE: Duration = Duration::from_secs(300);

/// Where and how the CLIs run in the guest.
#[derive(Debug, Clone)]
pub struct CliEnvironment {
    /// The CLIs' HOME, where their configuration and credentials live.
    pub home: String,
    /// Prepended to the guest's PATH.
    pub path: Option<String>,
    /// The proxy the CLIs' traffic leaves through.
    pub egress_proxy: Option<String>,
    /// The guest user (uid, gid) that owns the CLIs' files; `None` is root.
    pub owner: Option<(u32, u32)>,
    /// A directory on a tmpfs in the guest (mounted there if it is not) where credentials
    /// and login HOMEs live, so none reaches the data disk.
    pub secrets_dir: String,
}

impl CliEnvironment {
    /// The environment every CLI process gets, before its provider's own variables.
    pub fn env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let path = match &self.path {
            Some(extra) => format!("{extra}:{DEFAULT_PATH}"),
            None => DEFAULT_PATH.to_string(),
        };
        env.insert("PATH".into(), path);
        env.insert("HOME".into(), self.home.clone());
        if let Some(proxy) = &self.egress_proxy {
            for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                env.insert(name.into(), proxy.clone());
            }
            env.insert("NO_PROXY".into(), "localhost,127.0.0.1".into());
        }
        env
    }
}

/// What `ensure_running` is doing, for callers that report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmStep {
    Resuming,
    Creating,
}

impl VmManager {
    /// The user's VM, running: resumed if hibernated, created if there is none; waits while
    /// another operation owns it.
    pub async fn ensure_running(
        self: &Arc<Self>,
        user_id: &str,
        progress: impl Fn(VmStep),
    ) -> Result<Vm, VmError> {
        let deadline = tokio::time::Instant::now() + VM_SETTLE_DEADLINE;
        loop {
            let vm = match self.user_vm(user_id).await {
                Ok(vm) => Some(vm),
                Err(VmError::NoVm(_)) => None,
                Err(e) => return Err(e),
            };
            match vm {
                Some(vm) if vm.status == VmStatus::Running => {
                    // Looked at again under the VM's slot, so that an idle hibernation deciding
                    // at this moment either sees this use or has finished (then it resumes).
                    let slot = self.slot(&vm.id);
                    let _live = slot.lock().await;
                    if self.get(&vm.id).await?.status == VmStatus::Running {
                        self.touch(&vm.id);
                        return Ok(vm);
                    }
                }
                Some(vm) if vm.status == VmStatus::Hibernated => {
                    progress(VmStep::Resuming);
                    return self.resume(&vm.id).await;
                }
                Some(vm) if vm.is_live() => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(VmError::WrongStatus {
                            id: vm.id,
                            op: VmOp::Resume,
                            status: vm.status,
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => {
                    progress(VmStep::Creating);
                    match self.create(user_id).await {
                        // A concurrent caller created it first; wait for that one.
                        Err(VmError::AlreadyHasVm { .. }) => {}
                        other => return other,
                    }
                }
            }
        }
    }
}
