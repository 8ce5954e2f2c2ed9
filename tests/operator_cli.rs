//! The operator's command line through the real binary: `doctor` with no flags on an
//! installation laid out as `appliance/install.sh` leaves `/etc/master-controller` (under a
//! temporary root, `MC_INSTALL_ROOT`, so the host's own is never read or written), its JSON,
//! `--version`, the completions and the man page.

use std::path::Path;
use std::process::{Command, Output};

const BINARY: &str = env!("CARGO_BIN_EXE_master-controller");
const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// The binary with a clean environment: no secret or setting from the test's own.
fn master_controller(root: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    command.env_clear().args(args);
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    if let Some(root) = root {
        command.env("MC_INSTALL_ROOT", root);
    }
    command.output().expect("run master-controller")
}

/// What install.sh leaves: config.toml from the example (the data dir moved into the temporary
/// root), env from the example, the two generated credentials 0600 in a 0700 directory.
fn install(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let etc = root.join("etc/master-controller");
    let credentials = etc.join("credentials");
    std::fs::create_dir_all(&credentials).expect("etc");
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700)).expect("mode");
    let data_dir = root.join("var/lib/master-controller");
    std::fs::create_dir_all(&data_dir).expect("data dir");
    let example = std::fs::read_to_string(repo.join("appliance/config.example.toml"))
        .expect("config example");
    let config: String = example
        .lines()
        .map(|line| {
            if line.starts_with("data_dir = ") {
                format!("data_dir = {:?}\n", data_dir.display().to_string())
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    std::fs::write(etc.join("config.toml"), config).expect("config");
    std::fs::copy(repo.join("appliance/env.example"), etc.join("env")).expect("env");
    for (name, value) in [
        ("admin-token", ADMIN_TOKEN.to_string()),
        ("encryption-master-key", "ab".repeat(32)),
    ] {
        let path = credentials.join(name);
        std::fs::write(&path, value).expect("credential");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("mode");
    }
}

fn doctor_json(root: &Path) -> serde_json::Value {
    let output = master_controller(Some(root), &["doctor", "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains(ADMIN_TOKEN),
        "doctor printed the admin token"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json: {e}: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn level<'a>(report: &'a serde_json::Value, name: &str) -> &'a str {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {report}"))["level"]
        .as_str()
        .expect("level")
}

#[test]
fn doctor_with_no_flags_sees_the_installed_configuration() {
    let root = tempfile::tempdir().expect("tempdir");
    install(root.path());
    let report = doctor_json(root.path());
    assert_eq!(level(&report, "admin token"), "ok", "{report}");
    assert_eq!(level(&report, "vault key"), "ok", "{report}");
    assert_eq!(level(&report, "config"), "ok", "{report}");
    let disk = report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["name"] == "disk"))
        .expect("disk check");
    assert!(
        disk["detail"]
            .as_str()
            .is_some_and(|d| d.contains("180 VMs × 2048 MiB")),
        "{disk}"
    );

    // The text form says the same.
    let text = master_controller(Some(root.path()), &["doctor"]);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok") && l.contains("admin token")),
        "{stdout}"
    );
}

#[test]
fn doctor_without_the_installed_credentials_fails_the_admin_token() {
    let root = tempfile::tempdir().expect("tempdir");
    install(root.path());
    std::fs::remove_file(
        root.path()
            .join("etc/master-controller/credentials/admin-token"),
    )
    .expect("remove");
    let report = doctor_json(root.path());
    assert_eq!(level(&report, "admin token"), "fail", "{report}");
    assert_eq!(report["ok"], false);
}

#[test]
fn version_completions_and_man_page() {
    let version = master_controller(None, &["--version"]);
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("master-controller {}", env!("CARGO_PKG_VERSION"))
    );
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = master_controller(None, &["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("rotate-key"), "{shell}: {text}");
    }
    let man = master_controller(None, &["man"]);
    assert!(man.status.success());
    let text = String::from_utf8_lossy(&man.stdout);
    assert!(text.contains(".TH master-controller"), "{text}");
}
