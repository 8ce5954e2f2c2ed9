//! The bridge and taps through rtnetlink, in a network namespace private to the test's thread
//! (it vanishes with the thread).

use std::net::Ipv4Addr;

use master_controller::net::{Netlink, RtNetlink};

fn in_private_netns<F: std::future::Future<Output = ()>>(
    body: impl FnOnce() -> F + Send + 'static,
) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root for a network namespace");
        return;
    }
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(body());
    })
    .join()
    .expect("test thread");
}

/// `ip -d -j link show dev NAME`, run in this thread's namespace (sysfs would show the host's).
fn link(name: &str) -> serde_json::Value {
    let output = std::process::Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", name])
        .output()
        .expect("ip");
    let links: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    links[0].clone()
}

#[test]
fn bridge_and_isolated_taps() {
    in_private_netns(|| async {
        let net = RtNetlink::connect().expect("netlink");
        let mac = [0x02, 0x6d, 0x63, 0, 0, 1];
        let gateway = Ipv4Addr::new(192, 168, 100, 1);
        net.ensure_bridge("fcbr0", mac, gateway, 24)
            .await
            .expect("bridge");
        net.ensure_bridge("fcbr0", mac, gateway, 24)
            .await
            .expect("idempotent");
        assert_eq!(link("fcbr0")["address"], "02:6d:63:00:00:01");
        assert!(
            link("fcbr0")["flags"]
                .as_array()
                .expect("flags")
                .iter()
                .any(|f| f == "UP")
        );
        let output = std::process::Command::new("ip")
            .args(["-j", "addr", "show", "dev", "fcbr0"])
            .output()
            .expect("ip");
        assert!(String::from_utf8_lossy(&output.stdout).contains("\"192.168.100.1\""));

        net.create_tap("mc0123456789abc", "fcbr0")
            .await
            .expect("tap a");
        net.create_tap("mc0123456789abd", "fcbr0")
            .await
            .expect("tap b");
        for tap in ["mc0123456789abc", "mc0123456789abd"] {
            let info = link(tap);
            assert_eq!(info["master"], "fcbr0", "{info}");
            assert_eq!(info["linkinfo"]["info_kind"], "tun", "{info}");
            assert_eq!(
                info["linkinfo"]["info_slave_data"]["isolated"], true,
                "{tap} not isolated: {info}"
            );
        }
        let mut ports = net.bridge_ports("fcbr0").await.expect("ports");
        ports.sort();
        assert_eq!(ports, ["mc0123456789abc", "mc0123456789abd"]);
        // Adding a tap does not move the bridge's MAC.
        assert_eq!(link("fcbr0")["address"], "02:6d:63:00:00:01");

        net.delete_link("mc0123456789abc").await.expect("delete");
        net.delete_link("mc0123456789abc")
            .await
            .expect("deleting a missing link is fine");
        assert_eq!(
            net.bridge_ports("fcbr0").await.expect("ports"),
            ["mc0123456789abd"]
        );
        assert!(
            net.create_tap("this-name-is-far-too-long", "fcbr0")
                .await
                .is_err()
        );
        assert!(net.create_tap("mc0123456789abe", "nobridge").await.is_err());
    });
}

fn doctor_level(config: &master_controller::config::Config, name: &str) -> String {
    let checks = master_controller::doctor::run(config);
    let found = checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no doctor check {name}"));
    format!("{} {}", found.level, found.detail)
}

fn setup_network(args: &[&str]) -> String {
    let output = std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/setup-network.sh"
    ))
    .args(args)
    .env("MC_ENV_FILE", "/nonexistent")
    .output()
    .expect("run setup-network.sh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn setup_network_is_idempotent_and_doctor_checks_it() {
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var("MC_REQUIRE_GUESTS").as_deref() == Ok("1") {
            panic!("nft is not installed (apt-get install nftables)");
        }
        eprintln!("SKIPPED: nft is not installed (apt-get install nftables)");
        return;
    }
    in_private_netns(|| async {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let data_dir_text = data_dir.path().display().to_string();
        let vars = std::collections::HashMap::from([
            ("MC_ADMIN_TOKEN", "admin-token-0123456789abcdef"),
            ("GOLDEN_KERNEL", "/nonexistent/vmlinux"),
            ("MC_BRIDGE", "mcbr9"),
            ("MC_BRIDGE_CIDR", "10.216.0.1/24"),
            ("MC_DATA_DIR", data_dir_text.as_str()),
        ]);
        let config = master_controller::config::Config::load(
            None,
            &|name| vars.get(name).map(|v| v.to_string()),
            master_controller::config::Settings::default(),
        )
        .expect("config");
        assert!(doctor_level(&config, "IP forwarding").starts_with("FAIL"));
        assert!(doctor_level(&config, "guest NAT").starts_with("FAIL"));

        let args = ["--bridge", "mcbr9", "--cidr", "10.216.0.1/24"];
        let progress = setup_network(&args);
        assert!(progress.contains("NAT and forward rules for 10.216.0.0/24 on mcbr9"));
        setup_network(&args);
        let ruleset = std::process::Command::new("nft")
            .args(["-j", "list", "ruleset"])
            .output()
            .expect("nft");
        let ruleset: serde_json::Value = serde_json::from_slice(&ruleset.stdout).expect("nft JSON");
        let rules = ruleset["nftables"]
            .as_array()
            .expect("list")
            .iter()
            .filter(|item| item.get("rule").is_some())
            .count();
        assert_eq!(
            rules, 5,
            "a second run replaces the rules, never adds: {ruleset}"
        );
        let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("sysctl");
        assert_eq!(forwarding.trim(), "1");
        assert!(doctor_level(&config, "IP forwarding").starts_with("ok"));
        let nat = doctor_level(&config, "guest NAT");
        assert!(nat.starts_with("ok"), "{nat}");

        setup_network(&["--bridge", "other0", "--cidr", "10.216.0.1/24"]);
        let nat = doctor_level(&config, "guest NAT");
        assert!(nat.starts_with("FAIL") && nat.contains("mcbr9"), "{nat}");
    });
}
