use std::collections::HashMap;
use std::io::Write;

use secrecy::ExposeSecret;

use super::*;

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

#[test]
fn defaults_apply() {
    let config = Config::load(None, &env(&[]), Settings::default()).unwrap();
    assert_eq!(config.api.listen.to_string(), "0.0.0.0:4000");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/master-controller"));
    assert_eq!(config.vms.limits.max_running, 180);
    assert_eq!(
        (config.egress.ports.start, config.egress.ports.end),
        (10001, 10100)
    );
    assert!(config.require_admin_token().is_err());
    assert_eq!(config.hypervisor.choice, HypervisorChoice::Auto);
    assert_eq!(config.vms.bridge, "fcbr0");
    assert_eq!(config.vms.limits.subnet.pool_size(), 253);
}

#[test]
fn vm_settings_from_the_environment() {
    let lookup = env(&[
        ("MC_HYPERVISOR", "qemu"),
        ("MC_BRIDGE", "mcbr1"),
        ("MC_BRIDGE_CIDR", "10.9.0.1/28"),
        ("MC_INITRD", "/images/initramfs.cpio.gz"),
        ("GOLDEN_KERNEL", "/images/vmlinux"),
    ]);
    let config = Config::load(None, &lookup, Settings::default()).unwrap();
    assert_eq!(config.hypervisor.choice, HypervisorChoice::Qemu);
    assert_eq!(config.vms.bridge, "mcbr1");
    assert_eq!(config.vms.limits.subnet.pool_size(), 13);
    assert_eq!(
        config.vms.initrd,
        Some(PathBuf::from("/images/initramfs.cpio.gz"))
    );
    assert_eq!(config.vms.kernel, Some(PathBuf::from("/images/vmlinux")));
}

#[test]
fn file_then_env_then_flags() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "listen = \"127.0.0.1:1000\"\nmax_vms = 5\ndecodo_host = \"file-host\"\ndata_dir = \"/srv/file\""
    )
    .unwrap();
    let lookup = env(&[
        ("MC_MAX_VMS", "7"),
        ("DECODO_HOST", "env-host"),
        ("DECODO_USER", "env-user"),
        ("DECODO_PASSWORD", "env-password"),
        ("MC_DATA_DIR", "/srv/env"),
    ]);
    let flags = Settings {
        data_dir: Some(PathBuf::from("/srv/flag")),
        ..Settings::default()
    };
    let config = Config::load(Some(file.path()), &lookup, flags).unwrap();
    assert_eq!(config.api.listen.to_string(), "127.0.0.1:1000");
    assert_eq!(config.vms.limits.max_running, 7);
    let upstream = config.egress.upstream.as_ref().expect("upstream");
    assert_eq!(upstream.host, "env-host");
    assert_eq!(config.data_dir, PathBuf::from("/srv/flag"));
}

#[test]
fn mc_name_wins_over_seed_name() {
    let lookup = env(&[
        ("SUPABASE_URL", "https://seed.example"),
        ("MC_SUPABASE_URL", "https://mc.example"),
        ("SUPABASE_SERVICE_KEY", "k"),
    ]);
    let config = Config::load(None, &lookup, Settings::default()).unwrap();
    assert_eq!(config.mirror.url.as_deref(), Some("https://mc.example"));
}

#[test]
fn bad_values_name_the_setting() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("MC_LISTEN", "nowhere")], "MC_LISTEN"),
        (&[("MC_MAX_VMS", "many")], "MC_MAX_VMS"),
        (&[("MC_MAX_VMS", "0")], "MC_MAX_VMS"),
        (
            &[("DECODO_PORT_START", "20"), ("DECODO_PORT_END", "10")],
            "MC_DECODO_PORT_START",
        ),
        (&[("MC_ADMIN_TOKEN", "short")], "MC_ADMIN_TOKEN"),
        (&[("SUPABASE_URL", "ftp://x")], "MC_SUPABASE_URL"),
        (&[("SUPABASE_URL", "https://x")], "MC_SUPABASE_SERVICE_KEY"),
        (&[("MC_DATA_DIR", "relative/dir")], "MC_DATA_DIR"),
        (&[("MC_LOG_FORMAT", "xml")], "MC_LOG_FORMAT"),
        (&[("MC_HYPERVISOR", "vmware")], "MC_HYPERVISOR"),
        (&[("MC_BRIDGE_CIDR", "192.168.100.0/24")], "MC_BRIDGE_CIDR"),
        (&[("MC_BRIDGE", "a-bridge-name-too-long")], "MC_BRIDGE"),
        (&[("MC_VM_VCPUS", "3")], "MC_VM_VCPUS"),
    ];
    for (pairs, setting) in cases {
        let err = Config::load(None, &env(pairs), Settings::default())
            .err()
            .unwrap_or_else(|| panic!("{pairs:?} must be rejected"));
        let line = err.to_string();
        assert!(line.contains(setting), "{line} should name {setting}");
        assert!(!line.contains('\n'), "one line: {line}");
    }
}

#[test]
fn unknown_file_keys_are_rejected() {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "listn = \"127.0.0.1:1\"").unwrap();
    let err = Config::load(Some(file.path()), &env(&[]), Settings::default())
        .expect_err("typo must be rejected");
    assert!(err.to_string().contains("listn"), "{err}");
}

#[test]
fn secrets_come_from_files_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("admin-token"),
        "admin-token-from-credential\n",
    )
    .unwrap();
    let token_file = dir.path().join("svc");
    std::fs::write(&token_file, "service-token-from-a-file").unwrap();
    let creds = dir.path().to_string_lossy().to_string();
    let file = token_file.to_string_lossy().to_string();
    let lookup = env(&[
        ("CREDENTIALS_DIRECTORY", creds.as_str()),
        ("MC_SERVICE_TOKEN_FILE", file.as_str()),
    ]);
    let config = Config::load(None, &lookup, Settings::default()).unwrap();
    assert_eq!(
        config.api.admin_token.unwrap().expose_secret(),
        "admin-token-from-credential"
    );
    assert_eq!(
        config.api.service_token.unwrap().expose_secret(),
        "service-token-from-a-file"
    );
}

#[test]
fn debug_output_hides_secrets() {
    let lookup = env(&[
        ("MC_ADMIN_TOKEN", "super-secret-admin-token"),
        ("DECODO_HOST", "gate.example"),
        ("DECODO_USER", "user"),
        ("DECODO_PASSWORD", "hunter2hunter2"),
    ]);
    let config = Config::load(None, &lookup, Settings::default()).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains("super-secret-admin-token"));
    assert!(!debug.contains("hunter2hunter2"));
}

#[test]
fn the_upstream_settings_go_together() {
    let lookup = env(&[("DECODO_HOST", "gate.example"), ("DECODO_USER", "user")]);
    let error = Config::load(None, &lookup, Settings::default()).unwrap_err();
    assert!(error.to_string().contains("go together"), "{error}");
    let lookup = env(&[
        ("DECODO_HOST", "gate.example"),
        ("DECODO_USER", "user"),
        ("DECODO_PASSWORD", "pw"),
        ("MC_EGRESS_BYPASS", "claude,http://x"),
    ]);
    let error = Config::load(None, &lookup, Settings::default()).unwrap_err();
    assert!(error.to_string().contains("MC_EGRESS_BYPASS"), "{error}");
}

#[test]
fn the_example_config_loads_with_the_hardening_settings() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("appliance/config.example.toml");
    let config = Config::load(Some(&example), &env(&[]), Settings::default()).unwrap();
    assert_eq!(
        config.api.listener.header_read_timeout,
        std::time::Duration::from_secs(30)
    );
    assert_eq!(config.api.listener.max_connections, 4096);
    assert_eq!(
        (
            config.api.auth_failures_per_minute,
            config.api.auth_failure_burst
        ),
        (10, 20)
    );
    assert_eq!(config.tasks.prompt_retention_days, 30);
    let defaults = Config::load(None, &env(&[]), Settings::default()).unwrap();
    assert_eq!(defaults.tasks.prompt_retention_days, 30);
    let off = Config::load(
        None,
        &env(&[("MC_AUTH_FAILURES_PER_MINUTE", "0")]),
        Settings::default(),
    );
    assert_eq!(off.unwrap().api.auth_failures_per_minute, 0);
    let bad = Config::load(
        None,
        &env(&[("MC_API_MAX_CONNECTIONS", "0")]),
        Settings::default(),
    );
    assert!(bad.is_err());
}

#[test]
fn qemu_drops_to_an_unprivileged_user_by_default() {
    let config = Config::load(None, &env(&[]), Settings::default()).unwrap();
    assert_eq!(config.hypervisor.qemu_user.as_deref(), Some("mc-vmm"));
    let root = Config::load(None, &env(&[("MC_QEMU_USER", "root")]), Settings::default());
    assert_eq!(root.unwrap().hypervisor.qemu_user, None);
    let bad = Config::load(None, &env(&[("MC_QEMU_USER", "a,b")]), Settings::default());
    assert!(bad.is_err());
}

#[test]
fn the_jailer_settings_turn_it_on() {
    assert!(
        Config::load(None, &env(&[]), Settings::default())
            .unwrap()
            .hypervisor
            .jailer
            .is_none()
    );
    let on = env(&[
        ("MC_JAILER_BINARY", "/usr/local/bin/jailer"),
        ("MC_JAILER_UID", "990"),
        ("MC_JAILER_GID", "991"),
        ("MC_JAILER_CGROUP", "master-controller"),
    ]);
    let jailer = Config::load(None, &on, Settings::default())
        .unwrap()
        .hypervisor
        .jailer
        .unwrap();
    assert_eq!(
        (jailer.uid, jailer.gid, jailer.chroot_base.clone()),
        (990, 991, PathBuf::from("/var/lib/master-controller/jailer"))
    );
    assert_eq!(jailer.parent_cgroup.as_deref(), Some("master-controller"));
    for wrong in [
        vec![
            ("MC_JAILER_BINARY", "/usr/local/bin/jailer"),
            ("MC_JAILER_UID", "990"),
        ],
        vec![
            ("MC_JAILER_BINARY", "/usr/local/bin/jailer"),
            ("MC_JAILER_UID", "0"),
            ("MC_JAILER_GID", "0"),
        ],
        vec![("MC_JAILER_UID", "990"), ("MC_JAILER_GID", "990")],
        vec![
            ("MC_JAILER_BINARY", "jailer"),
            ("MC_JAILER_UID", "990"),
            ("MC_JAILER_GID", "990"),
        ],
    ] {
        let result = Config::load(None, &env(&wrong), Settings::default());
        assert!(result.is_err(), "{wrong:?} accepted");
    }
}

#[test]
fn the_clis_run_as_the_golden_images_user_in_its_workspace() {
    let config = Config::load(None, &env(&[]), Settings::default()).unwrap();
    let cli = &config.prompts.cli;
    assert_eq!(cli.owner, Some((1000, 1000)));
    assert_eq!(cli.home, "/home/dev");
    assert_eq!(cli.workspace_root, "/home/dev/work");
    assert_eq!(config.workspace.max_file_bytes, 100 << 20);

    let config = Config::load(
        None,
        &env(&[("MC_CLI_USER", "root"), ("MC_CLI_HOME", "/root/")]),
        Settings::default(),
    )
    .unwrap();
    assert_eq!(config.prompts.cli.owner, None);
    assert_eq!(config.workspace.cli.workspace_root, "/root/work");
    let single = Config::load(None, &env(&[("MC_CLI_USER", "1500")]), Settings::default());
    assert_eq!(single.unwrap().auth.cli.owner, Some((1500, 1500)));

    for (name, value) in [
        ("MC_CLI_USER", "dev"),
        ("MC_CLI_USER", "1000:"),
        ("MC_WORKSPACE_ROOT", "work"),
        ("MC_WORKSPACE_ROOT", "/"),
        ("MC_WORKSPACE_ROOT", "/home/../etc"),
        ("MC_FILES_MAX_BYTES", "0"),
    ] {
        let error = Config::load(None, &env(&[(name, value)]), Settings::default())
            .err()
            .unwrap_or_else(|| panic!("{name}={value} is refused"));
        assert!(error.to_string().contains(name), "{name}: {error}");
    }
}
