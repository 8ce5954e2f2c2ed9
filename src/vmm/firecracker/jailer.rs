//! Running Firecracker under its jailer: a chroot per VM, dropped privileges, cgroup v2 and an
//! optional network namespace. The jail is `<chroot_base>/firecracker/<id>/root`. The VM's
//! kernel, initrd and disks are hard-linked into it (so a data disk written in the jail is the
//! VM's own file), its sockets, logs and snapshots live in it, and Firecracker is given
//! jail-relative paths.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::super::{VmSpec, VmmError};

#[derive(Debug, Clone)]
pub struct JailerConfig {
    pub binary: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
    /// The cgroup (relative to the cgroup v2 root) under which each VM's cgroup is made.
    pub parent_cgroup: Option<String>,
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

    /// `spec` as Firecracker sees it inside the jail.
    pub fn jailed_spec(spec: &VmSpec) -> VmSpec {
        let mut jailed = spec.clone();
        jailed.dir = PathBuf::from("/");
        jailed.kernel = PathBuf::from("/vmlinux");
        jailed.initrd = spec.initrd.as_ref().map(|_| PathBuf::from("/initrd"));
        for disk in &mut jailed.disks {
            disk.path = PathBuf::from(format!("/{}.img", disk.id));
        }
        jailed
    }

    /// Hard-links the VM's files into its jail and hands the writable ones to the jail's user.
    pub async fn stage(&self, spec: &VmSpec) -> Result<(), VmmError> {
        let root = self.chroot(&spec.vm_id);
        let snapshot = root.join("snapshot");
        tokio::fs::create_dir_all(&snapshot)
            .await
            .map_err(|e| VmmError::io(&snapshot, e))?;
        let jailed = Self::jailed_spec(spec);
        let mut links: Vec<(PathBuf, PathBuf, bool)> =
            vec![(spec.kernel.clone(), jailed.kernel.clone(), false)];
        if let (Some(from), Some(to)) = (&spec.initrd, &jailed.initrd) {
            links.push((from.clone(), to.clone(), false));
        }
        for (disk, inside) in spec.disks.iter().zip(&jailed.disks) {
            links.push((disk.path.clone(), inside.path.clone(), !disk.read_only));
        }
        for (from, inside, writable) in links {
            let to = root.join(inside.strip_prefix("/").unwrap_or(&inside));
            let _ = tokio::fs::remove_file(&to).await;
            tokio::fs::hard_link(&from, &to)
                .await
                .map_err(|e| VmmError::io(&from, e))?;
            if writable {
                self.give(&to)?;
            }
        }
        for dir in [&root, &snapshot] {
            self.give(dir)?;
        }
        Ok(())
    }

    /// Hands `path` to the jail's user: Firecracker, jailed, writes it as that user.
    pub(super) fn give(&self, path: &Path) -> Result<(), VmmError> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| VmmError::io(path, e))
    }

    /// The jailer command, and where the API socket appears on the host.
    pub async fn command(
        &self,
        firecracker: &Path,
        spec: &VmSpec,
    ) -> Result<(Command, PathBuf), VmmError> {
        let chroot = self.chroot(&spec.vm_id);
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
        if let Some(parent) = &self.parent_cgroup {
            command.arg("--parent-cgroup").arg(parent);
        }
        if let Some(netns) = &self.netns {
            command.arg("--netns").arg(netns);
        }
        let inside = super::api::Layout::at(Path::new("/")).api_socket;
        command.arg("--").arg("--api-sock").arg(&inside);
        Ok((command, super::api::Layout::at(&chroot).api_socket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_files_into_the_jail() {
        let base = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let jailer = JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: me.0,
            gid: me.1,
            chroot_base: base.path().join("jails"),
            parent_cgroup: None,
            netns: None,
        };
        std::fs::write(base.path().join("vmlinux"), b"kernel").unwrap();
        std::fs::write(base.path().join("data.img"), b"data").unwrap();
        let spec = VmSpec {
            vm_id: "vm2".into(),
            dir: base.path().join("vm2"),
            vcpus: 1,
            memory_mib: 128,
            kernel: base.path().join("vmlinux"),
            initrd: None,
            boot_args: String::new(),
            disks: vec![crate::vmm::DiskSpec {
                id: "data".into(),
                path: base.path().join("data.img"),
                read_only: false,
                root: false,
            }],
            net: None,
            agent_token: "t".into(),
        };
        jailer.stage(&spec).await.unwrap();
        let root = jailer.chroot("vm2");
        assert_eq!(std::fs::read(root.join("vmlinux")).unwrap(), b"kernel");
        // The jail's disk is the VM's own file, not a copy.
        std::fs::write(root.join("data.img"), b"written in the jail").unwrap();
        assert_eq!(
            std::fs::read(base.path().join("data.img")).unwrap(),
            b"written in the jail"
        );
        let jailed = JailerConfig::jailed_spec(&spec);
        assert_eq!(jailed.kernel, PathBuf::from("/vmlinux"));
        assert_eq!(jailed.disks[0].path, PathBuf::from("/data.img"));
    }

    #[tokio::test]
    async fn builds_the_jailer_command() {
        let base = tempfile::tempdir().unwrap();
        let jailer = JailerConfig {
            binary: "/usr/bin/jailer".into(),
            uid: 123,
            gid: 456,
            chroot_base: base.path().to_path_buf(),
            parent_cgroup: Some("master-controller".into()),
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
                "--parent-cgroup",
                "master-controller",
                "--netns",
                "/var/run/netns/mc",
                "--",
                "--api-sock",
                "/firecracker.sock"
            ]
        );
        assert_eq!(
            socket,
            base.path().join("firecracker/vm1/root/firecracker.sock")
        );
    }
}
