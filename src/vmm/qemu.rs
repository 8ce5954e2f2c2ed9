//! The QEMU backend: the microvm machine with virtio-mmio devices, the agent on a virtio-serial
//! port backed by a Unix socket, and QMP on another. Hibernation migrates the stopped VM into a
//! file; resume starts a new QEMU with `-incoming defer` and feeds it that file.
//!
//! QEMU runs the guest's devices, so it is confined: a cleared environment, its seccomp sandbox
//! (no exec, no privilege or resource changes), an unprivileged user (`-runas`) once it has
//! opened its disks, tap and sockets, and no secret in its arguments (the kernel command line,
//! which carries the agent's token, comes from a 0600 file given to `-readconfig`). The
//! migration files are opened by the daemon and handed over as descriptors.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use tokio::process::Command;

use super::image_file::{Writeback, sync_and_publish};
use super::process::{ExitInfo, kill_and_wait, spawn_supervised, wait_exited};
pub use super::qemu_confine::DiskFds;
use super::qemu_confine::{sandbox_args, write_boot_config};
use super::qemu_migration::{run_resumed, wait_migrated};
pub use super::qemu_probe::{host_tsc_khz, probe_accel};
use super::qmp::Qmp;
use super::{Hibernated, Hypervisor, SnapshotFiles, VmHandle, VmSpec, VmmError, console_tail};
use crate::guest::client::AgentEndpoint;
use crate::guest::messages::{CMDLINE_CHANNEL, CMDLINE_TOKEN, DEFAULT_SERIAL_PORT_NAME};

const QMP_DEADLINE: Duration = Duration::from_secs(10);
const EXIT_DEADLINE: Duration = Duration::from_secs(10);
/// Migration is throttled to 32 MiB/s by default; a stopped VM's memory should go at disk speed.
const MIGRATION_BANDWIDTH: u64 = 10 << 30;
const STATE_FILE: &str = "state";
/// The `-readconfig` file holding the kernel command line; removed once QEMU has read it.
const BOOT_CONFIG_FILE: &str = "qemu.cfg";
/// The name the migration file's descriptor gets in QEMU (`getfd`).
const MIGRATION_FD: &str = "mc-migration";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub binary: String,
    pub accel: Accel,
    /// The user QEMU switches to once started (`-runas`); `None` leaves it root.
    pub user: Option<String>,
}

pub struct QemuBackend {
    config: QemuConfig,
    tsc_khz: Option<u64>,
}

/// QEMU option values cannot hold a comma unescaped, and `exec:` migration URIs go through a
/// shell, so every path handed to QEMU is held to a plain alphabet.
fn plain_path(path: &Path) -> Result<String, VmmError> {
    let text = path
        .to_str()
        .ok_or_else(|| VmmError::Spec(format!("{} is not UTF-8", path.display())))?;
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b'@'));
    if !plain {
        return Err(VmmError::Spec(format!(
            "path {text:?} has characters QEMU options cannot carry"
        )));
    }
    Ok(text.to_string())
}

impl QemuBackend {
    pub fn new(config: QemuConfig) -> QemuBackend {
        QemuBackend {
            tsc_khz: host_tsc_khz(),
            config,
        }
    }

    pub fn agent_socket(spec: &VmSpec) -> PathBuf {
        spec.dir.join("agent.sock")
    }

    pub fn qmp_socket(spec: &VmSpec) -> PathBuf {
        spec.dir.join("qmp.sock")
    }

    /// Where QEMU reads its kernel command line from.
    pub fn boot_config(spec: &VmSpec) -> PathBuf {
        spec.dir.join(BOOT_CONFIG_FILE)
    }

    /// Writes the kernel command line, with the agent's token, for `-readconfig`.
    pub fn write_boot_config(&self, spec: &VmSpec) -> Result<PathBuf, VmmError> {
        let path = Self::boot_config(spec);
        write_boot_config(&spec.dir, &path, &self.kernel_args(spec))?;
        Ok(path)
    }

    fn kernel_args(&self, spec: &VmSpec) -> String {
        let mut args = vec![
            "console=ttyS0".to_string(),
            "reboot=k".into(),
            "panic=-1".into(),
            format!("{CMDLINE_TOKEN}={}", spec.agent_token),
            format!("{CMDLINE_CHANNEL}=virtio-serial:{DEFAULT_SERIAL_PORT_NAME}"),
        ];
        if self.config.accel == Accel::Tcg
            && let Some(khz) = self.tsc_khz
        {
            args.push(format!("tsc_early_khz={khz}"));
        }
        if spec.disks.first().is_some_and(|d| d.root) {
            args.push("root=/dev/vda".into());
        }
        if !spec.boot_args.trim().is_empty() {
            args.push(spec.boot_args.trim().to_string());
        }
        args.join(" ")
    }

    /// QEMU's arguments for `spec`; with `incoming`, QEMU waits for a migration stream
    /// (`migrate-incoming`). The kernel command line is in [`Self::write_boot_config`]'s file.
    /// Public so that the lifecycle benchmark can time QEMU itself with exactly the backend's
    /// arguments.
    pub fn args(
        &self,
        spec: &VmSpec,
        incoming: bool,
        disks: &DiskFds,
    ) -> Result<Vec<String>, VmmError> {
        if spec.agent_token.is_empty()
            || !spec.agent_token.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(VmmError::Spec(
                "the agent token must be non-empty and alphanumeric".into(),
            ));
        }
        let accel = match self.config.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        };
        let mut args: Vec<String> = [
            "-M",
            "microvm,pit=on,pic=on,rtc=on",
            "-accel",
            accel,
            "-nographic",
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let mut push = |flag: &str, value: String| {
            args.push(flag.to_string());
            args.push(value);
        };
        push("-m", format!("{}M", spec.memory_mib));
        push("-smp", spec.vcpus.to_string());
        if self.config.accel == Accel::Tcg {
            // TCG's default model (qemu64) lacks AVX2, which native CLIs such as Claude Code's
            // are built for: they die of SIGILL at their first instruction.
            push("-cpu", "max".into());
        }
        push("-kernel", plain_path(&spec.kernel)?);
        if let Some(initrd) = &spec.initrd {
            push("-initrd", plain_path(initrd)?);
        }
        push("-readconfig", plain_path(&Self::boot_config(spec))?);
        // Appended to, so the log keeps what the guest printed before each hibernation.
        push(
            "-chardev",
            format!(
                "file,id=console,path={},append=on",
                plain_path(&spec.console_log())?
            ),
        );
        push("-serial", "chardev:console".into());
        let (fd_args, disk_paths) = disks.args();
        if disk_paths.len() != spec.disks.len() {
            return Err(VmmError::Spec("the opened disks are not the spec's".into()));
        }
        args.extend(fd_args);
        let mut push = |flag: &str, value: String| {
            args.push(flag.to_string());
            args.push(value);
        };
        for (disk, path) in spec.disks.iter().zip(disk_paths) {
            let read_only = if disk.read_only { ",readonly=on" } else { "" };
            if !disk
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(VmmError::Spec(format!("disk id {:?}", disk.id)));
            }
            push(
                "-drive",
                format!("id={},file={path},format=raw,if=none{read_only}", disk.id),
            );
            push("-device", format!("virtio-blk-device,drive={}", disk.id));
        }
        if let Some(net) = &spec.net {
            push(
                "-netdev",
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
            );
            push(
                "-device",
                format!("virtio-net-device,netdev=net0,mac={}", net.mac),
            );
        }
        push("-device", "virtio-serial-device".into());
        push(
            "-chardev",
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                plain_path(&Self::agent_socket(spec))?
            ),
        );
        push(
            "-device",
            format!("virtserialport,chardev=agent,name={DEFAULT_SERIAL_PORT_NAME}"),
        );
        push(
            "-qmp",
            format!(
                "unix:{},server=on,wait=off",
                plain_path(&Self::qmp_socket(spec))?
            ),
        );
        if incoming {
            push("-incoming", "defer".into());
        }
        args.extend(sandbox_args(self.config.user.as_deref())?);
        Ok(args)
    }

    pub fn binary(&self) -> &str {
        &self.config.binary
    }

    async fn start(&self, spec: &VmSpec, incoming: bool) -> Result<(VmHandle, Qmp), VmmError> {
        tokio::fs::create_dir_all(&spec.dir)
            .await
            .map_err(|e| VmmError::io(&spec.dir, e))?;
        for socket in [Self::agent_socket(spec), Self::qmp_socket(spec)] {
            let _ = tokio::fs::remove_file(&socket).await;
        }
        super::rotate_console_log(spec).await;
        let disks = DiskFds::open(spec)?;
        let args = self.args(spec, incoming, &disks)?;
        let boot_config = self.write_boot_config(spec)?;
        let mut command = std::process::Command::new(&self.config.binary);
        command.args(args);
        disks.inherit(&mut command);
        let command = Command::from(command);
        let spawned = spawn_supervised(command, &self.config.binary, std::process::Stdio::null());
        // QEMU holds its own copies now.
        drop(disks);
        let (pid, exited) = match spawned {
            Ok(spawned) => spawned,
            Err(e) => {
                let _ = tokio::fs::remove_file(&boot_config).await;
                return Err(e);
            }
        };
        let handle = VmHandle {
            pid,
            agent: AgentEndpoint::Unix(Self::agent_socket(spec)),
            exited,
            control: Self::qmp_socket(spec),
        };
        let qmp = tokio::select! {
            qmp = Qmp::connect(&handle.control, QMP_DEADLINE) => qmp,
            info = wait_exited(handle.exited.clone()) => Err(VmmError::Exited(info)),
        };
        // QEMU read its options before it opened the monitor; the token leaves the host's disk.
        let _ = tokio::fs::remove_file(&boot_config).await;
        match qmp {
            Ok(qmp) => Ok((handle, qmp)),
            Err(e) => {
                let mut handle = handle;
                let _ = self.kill(&mut handle).await;
                Err(VmmError::Startup(
                    "qemu",
                    format!("{e}; console: {}", console_tail(spec).await),
                ))
            }
        }
    }

    async fn control(&self, vm: &VmHandle) -> Result<Qmp, VmmError> {
        Qmp::connect(&vm.control, QMP_DEADLINE).await
    }
}

#[async_trait::async_trait]
impl Hypervisor for QemuBackend {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn snapshot_files(&self) -> SnapshotFiles {
        // The migration stream carries the memory.
        SnapshotFiles {
            state: STATE_FILE,
            memory: None,
        }
    }

    async fn boot(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let (handle, _qmp) = self.start(spec, false).await?;
        Ok(handle)
    }

    async fn pause(&self, vm: &VmHandle) -> Result<(), VmmError> {
        self.control(vm)
            .await?
            .execute("stop", None)
            .await
            .map(|_| ())
    }

    async fn unpause(&self, vm: &VmHandle) -> Result<(), VmmError> {
        self.control(vm)
            .await?
            .execute("cont", None)
            .await
            .map(|_| ())
    }

    async fn hibernate(&self, spec: &VmSpec, mut vm: VmHandle) -> Result<Hibernated, VmmError> {
        let snapshot = spec.snapshot_dir();
        let partial = snapshot.join("state.partial");
        let state = snapshot.join(STATE_FILE);
        // 0700, and the image is written under a fresh name (see `vmm::private`).
        let (dir, fresh) = (snapshot.clone(), partial.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            super::private::private_dir(&dir)?;
            super::private::discard(&fresh)
        });
        // The monitor is reached while the directory is made ready.
        let (prepared, qmp) = tokio::join!(prepared, self.control(&vm));
        prepared
            .map_err(|e| VmmError::Control(e.to_string()))?
            .map_err(|e| VmmError::io(&snapshot, e))?;
        let mut qmp = qmp?;
        // The daemon opens the image: QEMU, sandboxed and unprivileged, could not.
        let image = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|e| VmmError::io(&partial, e))?
        };
        let writeback = Writeback::start(&image, &partial)?;
        qmp.execute("stop", None).await?;
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": MIGRATION_BANDWIDTH })),
        )
        .await?;
        let migrating = async {
            use std::os::fd::AsFd;
            qmp.send_fd(MIGRATION_FD, image.as_fd()).await?;
            let uri = format!("fd:{MIGRATION_FD}");
            qmp.execute("migrate", Some(json!({ "uri": uri }))).await
        }
        .await;
        if let Err(e) = migrating {
            let _ = qmp
                .execute("closefd", Some(json!({ "fdname": MIGRATION_FD })))
                .await;
            let _ = qmp.execute("cont", None).await;
            return Err(e);
        }
        wait_migrated(&mut qmp).await?;
        drop(writeback);
        drop(image);
        // The image is whole once the migration completed: it is made durable while QEMU
        // quits, not after.
        let stopped = async {
            // The monitor may close before it answers `quit`.
            let _ = qmp.execute("quit", None).await;
            if tokio::time::timeout(EXIT_DEADLINE, vm.wait_exit())
                .await
                .is_err()
            {
                self.kill(&mut vm).await?;
            }
            Ok::<_, VmmError>(())
        };
        let (stopped, published) = tokio::join!(stopped, sync_and_publish(&partial, &state));
        stopped?;
        Ok(Hibernated {
            state_bytes: published?,
        })
    }

    async fn resume(&self, spec: &VmSpec) -> Result<VmHandle, VmmError> {
        let state = spec.snapshot_dir().join(STATE_FILE);
        if !tokio::fs::try_exists(&state).await.unwrap_or(false) {
            return Err(VmmError::NoSnapshot(spec.snapshot_dir()));
        }
        // Opened here, as root: QEMU may run as a user that cannot read the VM's directory.
        let image = std::fs::File::open(&state).map_err(|e| VmmError::io(&state, e))?;
        let (mut handle, mut qmp) = self.start(spec, true).await?;
        let fed = async {
            use std::os::fd::AsFd;
            qmp.send_fd(MIGRATION_FD, image.as_fd()).await?;
            qmp.execute(
                "migrate-incoming",
                Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })),
            )
            .await
        }
        .await;
        drop(image);
        if let Err(e) = fed {
            let _ = self.kill(&mut handle).await;
            return Err(e);
        }
        // A QEMU that fails to resume is stopped, not left behind.
        if let Err(e) = run_resumed(&mut qmp).await {
            let _ = self.kill(&mut handle).await;
            return Err(e);
        }
        Ok(handle)
    }

    async fn kill(&self, vm: &mut VmHandle) -> Result<ExitInfo, VmmError> {
        Ok(kill_and_wait(vm.pid, vm.exited.clone()).await)
    }

    async fn adopt(&self, spec: &VmSpec, pid: u32) -> Result<VmHandle, VmmError> {
        let handle = super::adopt_process(
            pid,
            Self::qmp_socket(spec),
            AgentEndpoint::Unix(Self::agent_socket(spec)),
        )?;
        // The monitor must answer too: a QEMU that lost its QMP socket cannot be hibernated.
        self.control(&handle).await?;
        Ok(handle)
    }
}
