//! How the hypervisors are confined: the user QEMU runs as, and the Firecracker jailer.

use super::{ConfigError, Settings, invalid};
use crate::vmm::firecracker::JailerConfig;

/// The system user the appliance creates for QEMU (`appliance/install.sh`).
pub const DEFAULT_QEMU_USER: &str = "mc-vmm";
/// The jails' default home, under `data_dir`: the VMs' disks are hard-linked into them, which
/// needs one filesystem.
pub const DEFAULT_JAILER_CHROOT_DIR: &str = "jailer";

/// `qemu_user`: `None` when set to `root` (QEMU keeps root: for debugging only).
pub(super) fn qemu_user(s: &Settings) -> Result<Option<String>, ConfigError> {
    let user = s.qemu_user.as_deref().unwrap_or(DEFAULT_QEMU_USER).trim();
    if user == "root" {
        return Ok(None);
    }
    let plain = !user.is_empty()
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !plain {
        return Err(invalid("qemu_user", format!("{user:?} is not a user name")));
    }
    Ok(Some(user.to_string()))
}

/// The jailer is on when `jailer_binary` is set; it then needs a user and group other than
/// root's.
pub(super) fn jailer(
    s: &Settings,
    data_dir: &std::path::Path,
) -> Result<Option<JailerConfig>, ConfigError> {
    let Some(binary) = &s.jailer_binary else {
        let stray = [
            ("jailer_uid", s.jailer_uid.is_some()),
            ("jailer_gid", s.jailer_gid.is_some()),
            ("jailer_chroot_base", s.jailer_chroot_base.is_some()),
            ("jailer_cgroup", s.jailer_cgroup.is_some()),
        ];
        if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
            return Err(ConfigError::Missing {
                setting: Settings::env_name("jailer_binary"),
                reason: format!("{} is set but the jailer is off", Settings::env_name(field)),
            });
        }
        return Ok(None);
    };
    if !binary.is_absolute() {
        return Err(invalid(
            "jailer_binary",
            format!("{} is not an absolute path", binary.display()),
        ));
    }
    let id = |field: &'static str, value: Option<u32>| match value {
        None => Err(ConfigError::Missing {
            setting: Settings::env_name(field),
            reason: "the jailer needs the uid and gid Firecracker runs as".into(),
        }),
        Some(0) => Err(invalid(field, "must not be root's (0)".into())),
        Some(id) => Ok(id),
    };
    let chroot_base = s
        .jailer_chroot_base
        .clone()
        .unwrap_or_else(|| data_dir.join(DEFAULT_JAILER_CHROOT_DIR));
    if !chroot_base.is_absolute() {
        return Err(invalid(
            "jailer_chroot_base",
            format!("{} is not an absolute path", chroot_base.display()),
        ));
    }
    let parent_cgroup = match s.jailer_cgroup.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(cgroup) if cgroup.starts_with('/') || cgroup.split('/').any(|p| p == "..") => {
            return Err(invalid(
                "jailer_cgroup",
                format!("{cgroup:?} must be relative to the cgroup root, without `..`"),
            ));
        }
        Some(cgroup) => Some(cgroup.to_string()),
    };
    Ok(Some(JailerConfig {
        binary: binary.clone(),
        uid: id("jailer_uid", s.jailer_uid)?,
        gid: id("jailer_gid", s.jailer_gid)?,
        chroot_base,
        parent_cgroup,
        netns: None,
    }))
}
