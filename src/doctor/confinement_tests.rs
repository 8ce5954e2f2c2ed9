use super::*;
use crate::config::Settings;

fn config(pairs: &[(&str, String)]) -> Config {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let lookup = move |name: &str| {
        if name == "MC_ADMIN_TOKEN" {
            return Some("admin-token-for-doctor".to_string());
        }
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Config::load(None, &lookup, Settings::default()).expect("config")
}

#[test]
fn the_qemu_user_must_exist_and_not_be_root() {
    let ok = qemu_user(&config(&[("MC_QEMU_USER", "nobody".into())]));
    assert_eq!(ok.level, Level::Ok, "{}", ok.detail);
    let missing = qemu_user(&config(&[
        ("MC_HYPERVISOR", "qemu".into()),
        ("MC_QEMU_USER", "no-such-user-mc".into()),
    ]));
    assert_eq!(missing.level, Level::Fail, "{}", missing.detail);
    let root = qemu_user(&config(&[("MC_QEMU_USER", "root".into())]));
    assert_eq!(root.level, Level::Warn, "{}", root.detail);
}

#[test]
fn firecracker_without_the_jailer_is_reported() {
    let off = jailer(&config(&[("MC_HYPERVISOR", "firecracker".into())]));
    assert_eq!(off.level, Level::Warn, "{}", off.detail);
}

#[test]
fn the_jailer_binary_and_chroot_base_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = dir.path().join("jails");
    std::fs::create_dir_all(&data).unwrap();
    let binary = dir.path().join("jailer");
    let settings = |binary: &std::path::Path| {
        vec![
            ("MC_HYPERVISOR", "firecracker".to_string()),
            ("MC_DATA_DIR", data.display().to_string()),
            ("MC_JAILER_BINARY", binary.display().to_string()),
            ("MC_JAILER_UID", "990".into()),
            ("MC_JAILER_GID", "990".into()),
            ("MC_JAILER_CHROOT_BASE", base.display().to_string()),
        ]
    };
    let absent = jailer(&config(&settings(&binary)));
    assert_eq!(absent.level, Level::Fail, "{}", absent.detail);
    assert!(absent.detail.contains("jailer"), "{}", absent.detail);
    // On a QEMU host the jailer is not used: a broken one is only a warning.
    let mut on_qemu = settings(&binary);
    on_qemu[0].1 = "qemu".into();
    assert_eq!(jailer(&config(&on_qemu)).level, Level::Warn);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&binary, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::create_dir_all(&base).unwrap();
    let ok = jailer(&config(&settings(&binary)));
    assert_eq!(ok.level, Level::Ok, "{}", ok.detail);
}
