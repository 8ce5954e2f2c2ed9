//! The workspace's service: each call makes sure the user's VM runs (resuming it as a prompt
//! would), counts as a use of it, and keeps the user busy while a transfer or command lasts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::busy::Busy;
use super::exec::{ExecFrame, ExecRun, ExecSpec, FRAME_QUEUE, pump};
use super::{WorkspaceError, WorkspaceSettings, guest_files};
use crate::guest::client::AgentClient;
use crate::guest::messages::ExecRequest;
use crate::model::Vm;
use crate::vms::{VmError, VmService};

/// Chunks of a download read ahead of its client.
const READ_AHEAD: usize = 16;
/// How long a download's client may take no data before the download is dropped.
const CLIENT_STALL: Duration = Duration::from_secs(30);

type FileBody =
    futures_util::stream::BoxStream<'static, Result<Bytes, guest_files::WorkspaceError>>;

/// The file's chunks through a small queue a task fills from the guest. The guest's frames
/// share one connection with everything else of that VM (prompt output included), so a client
/// that stops reading must not hold them up: past `CLIENT_STALL` without taking a chunk it
/// loses the download, which stops the guest's side. The user stays busy until the end.
fn decoupled(mut body: FileBody, busy: super::busy::Use) -> FileBody {
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    tokio::spawn(async move {
        let _busy = busy;
        while let Some(chunk) = body.next().await {
            let failed = chunk.is_err();
            if tx.send_timeout(chunk, CLIENT_STALL).await.is_err() || failed {
                break;
            }
        }
    });
    Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

pub struct WorkspaceService {
    vms: VmService,
    settings: WorkspaceSettings,
    busy: Arc<Busy>,
    /// Running commands by id (with their user), for their cancel.
    execs: Arc<Mutex<Execs>>,
}

type Execs = HashMap<String, (String, CancellationToken)>;

fn lock(execs: &Mutex<Execs>) -> std::sync::MutexGuard<'_, Execs> {
    execs.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkspaceService {
    pub fn new(vms: VmService, settings: WorkspaceSettings) -> WorkspaceService {
        WorkspaceService {
            vms,
            settings,
            busy: Arc::default(),
            execs: Arc::default(),
        }
    }

    /// Whether a transfer or a command of the user's is running.
    pub fn has_running(&self, user_id: &str) -> bool {
        self.busy.has(user_id)
    }

    async fn agent_for(&self, user_id: &str) -> Result<(Vm, Arc<AgentClient>), WorkspaceError> {
        let vm = self.vms.ensure_running(user_id, |_| {}).await?;
        self.vms.touch(&vm.id);
        let agent = self.vms.agent(&vm.id).await?;
        Ok((vm, agent))
    }

    /// Writes the body to `path` (relative to the workspace root), streamed; refused past the
    /// cap, also when `declared` (the Content-Length) says so before a byte is sent.
    pub async fn upload<S, E>(
        &self,
        user_id: &str,
        path: &str,
        declared: Option<u64>,
        body: S,
    ) -> Result<u64, WorkspaceError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        guest_files::check_relative(path)?;
        let max = self.settings.max_file_bytes;
        if declared.is_some_and(|len| len > max) {
            return Err(WorkspaceError::TooLarge { max });
        }
        let _use = self.busy.enter(user_id);
        let (vm, agent) = self.agent_for(user_id).await?;
        let written = guest_files::upload(
            &agent,
            &self.settings.cli.workspace(),
            path,
            0o644,
            max,
            body,
        )
        .await
        .map_err(|e| match e {
            guest_files::WorkspaceError::TooLarge { max } => WorkspaceError::TooLarge { max },
            other => WorkspaceError::Files(other),
        })?;
        self.vms.touch(&vm.id);
        Ok(written)
    }

    /// A file's bytes as a stream (the user stays busy until it ends or is dropped), or a
    /// directory's listing.
    pub async fn download(
        &self,
        user_id: &str,
        path: &str,
    ) -> Result<guest_files::Download, WorkspaceError> {
        guest_files::check_relative(path)?;
        let busy = self.busy.enter(user_id);
        let (_, agent) = self.agent_for(user_id).await?;
        let workspace = self.settings.cli.workspace();
        if guest_files::components(path).is_empty() {
            // A new VM's workspace is made on first use; its listing is then empty, not 404.
            guest_files::resolve_dir(&agent, &workspace, "", true).await?;
        }
        let download = guest_files::download(&agent, &workspace, path).await?;
        Ok(match download {
            guest_files::Download::File { size, body } => guest_files::Download::File {
                size,
                body: decoupled(body, busy),
            },
            listing => listing,
        })
    }

    pub async fn remove(&self, user_id: &str, path: &str) -> Result<(), WorkspaceError> {
        guest_files::check_relative(path)?;
        let _use = self.busy.enter(user_id);
        let (_, agent) = self.agent_for(user_id).await?;
        guest_files::remove(&agent, &self.settings.cli.workspace(), path).await?;
        Ok(())
    }

    /// Starts a command in the workspace; its frames stream from the returned run.
    pub async fn exec(&self, user_id: &str, spec: ExecSpec) -> Result<ExecRun, WorkspaceError> {
        let argv = spec.argv().map_err(|reason| WorkspaceError::Invalid {
            field: "command",
            reason: reason.into(),
        })?;
        guest_files::check_relative(&spec.cwd)?;
        let timeout = match spec.timeout_sec {
            None => self.settings.exec_default_timeout,
            Some(secs) if secs == 0 || secs > super::exec::MAX_TIMEOUT_SECS => {
                return Err(WorkspaceError::Invalid {
                    field: "timeoutSec",
                    reason: format!("must be from 1 to {}", super::exec::MAX_TIMEOUT_SECS),
                });
            }
            Some(secs) => Duration::from_secs(secs).min(self.settings.exec_max_timeout),
        };
        let limit = self.settings.max_execs;
        if self.lock_execs().len() >= limit {
            return Err(WorkspaceError::Busy { limit });
        }
        let use_ = self.busy.enter(user_id);
        let (vm, agent) = self.agent_for(user_id).await?;
        let target = self.settings.cli.workspace();
        let cwd = guest_files::resolve_dir(&agent, &target, &spec.cwd, true).await?;
        let cli = &self.settings.cli;
        let stream = agent
            .exec(ExecRequest {
                argv,
                env: cli.env(),
                cwd: Some(cwd.clone()),
                uid: Some(target.uid),
                gid: Some(target.gid),
                timeout_sec: Some(timeout.as_secs().max(1)),
                ..ExecRequest::default()
            })
            .await
            .map_err(|e| {
                WorkspaceError::Vm(VmError::AgentUnavailable {
                    id: vm.id.clone(),
                    reason: e.to_string(),
                })
            })?;
        let id = uuid::Uuid::now_v7().to_string();
        let cancel = CancellationToken::new();
        let (tx, frames) = mpsc::channel(FRAME_QUEUE);
        let _ = tx.try_send(ExecFrame::Started {
            exec_id: id.clone(),
            cwd,
        });
        self.lock_execs()
            .insert(id.clone(), (user_id.to_string(), cancel.clone()));
        let vms = self.vms.clone();
        let vm_id = vm.id.clone();
        let execs = self.execs.clone();
        let (run_id, run_cancel) = (id.clone(), cancel.clone());
        tokio::spawn(async move {
            pump(stream, tx, run_cancel, timeout, use_).await;
            vms.touch(&vm_id);
            lock(&execs).remove(&run_id);
        });
        Ok(ExecRun { id, frames, cancel })
    }

    /// The user a running command belongs to, for the cancel route's check.
    pub fn exec_owner(&self, exec_id: &str) -> Result<String, WorkspaceError> {
        self.lock_execs()
            .get(exec_id)
            .map(|(user, _)| user.clone())
            .ok_or_else(|| WorkspaceError::ExecNotFound(exec_id.to_string()))
    }

    pub fn cancel_exec(&self, exec_id: &str) -> Result<(), WorkspaceError> {
        let execs = self.lock_execs();
        let (_, cancel) = execs
            .get(exec_id)
            .ok_or_else(|| WorkspaceError::ExecNotFound(exec_id.to_string()))?;
        cancel.cancel();
        Ok(())
    }

    fn lock_execs(&self) -> std::sync::MutexGuard<'_, Execs> {
        lock(&self.execs)
    }
}
