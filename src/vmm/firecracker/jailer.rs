//! Running Firecracker under its jailer: a chroot per VM, dropped privileges, cgroup v2 and an
//! optional network namespace. The jailer's chroot is `<chroot_base>/firecracker/<id>/root`, and
//! the API socket appears inside it.
//!
//! Not done yet: placing the kernel, disks and sockets inside the chroot and giving the API
//! chroot-relative paths. Until then a jailed VM needs those paths to resolve inside the chroot.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::super::{VmSpec, VmmError};

#[derive(Debug, Clone)]
pub struct JailerConfig {
    pub binary: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    /// A network namespace (`/var/run/netns/<name>`) to join.
    pub netns: Option<PathBuf>,
}

impl JailerConfig {
    pub fn chroot(&self, vm_id: &str) -> PathBuf {
        self.chroot_base
            .join("firecracker")
            .join(vm_id)
            .join("root")
    }

    /// The jailer command, and where the API socket appears on the host.
    pub async fn command(
        &self,
        firecracker: &Path,
        spec: &VmSpec,
    ) -> Result<(Command, PathBuf), VmmError> {
        let chroot = self.chroot(&spec.vm_id);
        tokio::fs::create_dir_all(chroot.join("run"))
            .await
            .map_err(|e| VmmError::io(&chroot, e))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--id")
            .arg(&spec.vm_id)
            .arg("--exec-file")
            .arg(firecracker)
            .arg("--uid")
            .arg(self.uid.to_string())
            .arg("--gid")
            .arg(self.gid.to_string())
            .arg("--chroot-base-dir")
            .arg(&self.chroot_base)
            .arg("--cgroup-version")
            .arg("2");
        if let Some(netns) = &self.netns {
            command.arg("--netns").arg(netns);
        }
        command
            .arg("--")
            .arg("--api-sock")
            .arg("/run/firecracker.socket");
        Ok((command, chroot.join("run/firecracker.socket")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn builds_the_jailer_command() {
        let base = tempfile::tempdir().unwrap();
        let jailer = JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: base.path().to_path_buf(),
            netns: Some("/var/run/netns/mc".into()),
        };
        let spec = VmSpec {
            vm_id: "vm1".into(),
            dir: base.path().join("vm1"),
            vcpus: 1,
            memory_mib: 128,
            kernel: "/k".into(),
            initrd: None,
            boot_args: String::new(),
            disks: vec![],
            net: None,
            agent_token: "t".into(),
        };
        let (command, socket) = jailer
            .command(Path::new("/usr/bin/firecracker"), &spec)
            .await
            .unwrap();
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        assert_eq!(
            args,
            [
                "--id",
                "vm1",
                "--exec-file",
                "/usr/bin/firecracker",
                "--uid",
                "123",
                "--gid",
                "456",
                "--chroot-base-dir",
                &base.path().display().to_string(),
                "--cgroup-version",
                "2",
                "--netns",
                "/var/run/netns/mc",
                "--",
                "--api-sock",
                "/run/firecracker.socket"
            ]
        );
        assert_eq!(
            socket,
            base.path()
                .join("firecracker/vm1/root/run/firecracker.socket")
        );
    }
}
