//! The bridge and taps through rtnetlink, and the host rules of `scripts/setup-network.sh`, in a
//! network namespace private to the test's thread (it vanishes with the thread). The guest-side
//! namespaces the firewall test adds are named, so a guard deletes them.

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

/// Runs the script with only the environment file given (`/nonexistent`: none).
fn run_setup_network(args: &[&str], env_file: &str) -> std::process::Output {
    std::process::Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/setup-network.sh"
    ))
    .args(args)
    .env("MC_ENV_FILE", env_file)
    .env_remove("MC_EGRESS_STRICT")
    .env_remove("MC_EGRESS_GATEWAY_PORT")
    .output()
    .expect("run setup-network.sh")
}

fn setup_network(args: &[&str]) -> String {
    let output = run_setup_network(args, "/nonexistent");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A tap's chain in the bindings' table as `nft` lists it (empty: none).
fn tap_chain(tap: &str) -> String {
    let output = std::process::Command::new("nft")
        .args(["list", "chain", "netdev", "master_controller_taps", tap])
        .output()
        .expect("nft");
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn taps_are_bound_to_their_vms_addresses_and_unbound_with_them() {
    if !have_nft() {
        return;
    }
    in_private_netns(|| async {
        use master_controller::net::TapBinding;
        let net = RtNetlink::connect().expect("netlink");
        let gateway = Ipv4Addr::new(10, 9, 0, 1);
        net.ensure_bridge("fcbr0", [2, 0x6d, 0x63, 0, 0, 1], gateway, 24)
            .await
            .expect("bridge");
        let tap = "mc0123456789abc";
        net.create_tap(tap, "fcbr0").await.expect("tap");
        let first = TapBinding::parse("06:00:0a:09:00:02", "10.9.0.2").expect("binding");
        let second = TapBinding::parse("06:00:0a:09:00:07", "10.9.0.7").expect("binding");
        net.bind_tap(tap, &first).await.expect("bind");
        net.bind_tap(tap, &first)
            .await
            .expect("binding again is fine");
        let listing = tap_chain(tap);
        assert!(
            listing.contains(&format!(
                "type filter hook ingress device \"{tap}\" priority -500; policy drop;"
            )),
            "{listing}"
        );
        assert!(
            listing.contains(
                "ether saddr 06:00:0a:09:00:02 arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
                 arp saddr ether 06:00:0a:09:00:02 arp saddr ip 10.9.0.2 accept"
            ),
            "{listing}"
        );
        assert!(
            listing.contains("ether saddr 06:00:0a:09:00:02 ip saddr 10.9.0.2 accept"),
            "{listing}"
        );
        assert_eq!(
            listing.matches(" accept").count(),
            2,
            "no duplicates: {listing}"
        );
        // A resume with a new address: the old one is no longer let through.
        net.bind_tap(tap, &second).await.expect("rebind");
        let listing = tap_chain(tap);
        assert!(
            listing.contains("10.9.0.7") && !listing.contains("10.9.0.2"),
            "{listing}"
        );
        assert_eq!(net.bound_taps().await.expect("bound"), [tap]);

        net.delete_link(tap).await.expect("delete");
        net.unbind_tap(tap).await.expect("unbind");
        net.unbind_tap(tap).await.expect("unbinding twice is fine");
        assert!(net.bound_taps().await.expect("bound").is_empty());
        assert!(tap_chain(tap).is_empty());
        assert!(net.bind_tap("mc\"; flush", &first).await.is_err());
    });
}

/// Whether `nft` is here; without it the script's tests skip (or fail where guests are required).
fn have_nft() -> bool {
    if std::process::Command::new("nft")
        .arg("--version")
        .output()
        .is_ok()
    {
        return true;
    }
    if std::env::var("MC_REQUIRE_GUESTS").as_deref() == Ok("1") {
        panic!("nft is not installed (apt-get install nftables)");
    }
    eprintln!("SKIPPED: nft is not installed (apt-get install nftables)");
    false
}

/// A config for the bridge `mcbr9` on 10.216.0.1/24 with VMs configured (so missing networking
/// is a FAIL), plus `extra`.
fn net_config(
    data_dir: &std::path::Path,
    extra: &[(&str, &str)],
) -> master_controller::config::Config {
    let data_dir_text = data_dir.display().to_string();
    let mut vars = std::collections::HashMap::from([
        ("MC_ADMIN_TOKEN", "admin-token-0123456789abcdef"),
        ("GOLDEN_KERNEL", "/nonexistent/vmlinux"),
        ("MC_BRIDGE", "mcbr9"),
        ("MC_BRIDGE_CIDR", "10.216.0.1/24"),
        ("MC_DATA_DIR", data_dir_text.as_str()),
    ]);
    vars.extend(extra.iter().copied());
    master_controller::config::Config::load(
        None,
        &|name| vars.get(name).map(|v| v.to_string()),
        master_controller::config::Settings::default(),
    )
    .expect("config")
}

#[test]
fn setup_network_is_idempotent_and_doctor_checks_it() {
    if !have_nft() {
        return;
    }
    in_private_netns(|| async {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let config = net_config(data_dir.path(), &[]);
        assert!(doctor_level(&config, "IP forwarding").starts_with("FAIL"));
        assert!(doctor_level(&config, "guest NAT").starts_with("FAIL"));
        assert!(doctor_level(&config, "guest firewall").starts_with("FAIL"));
        // The per-tap rules need only nftables, not the script: a dry run leaves nothing.
        let binding = doctor_level(&config, "tap binding");
        assert!(binding.starts_with("ok"), "{binding}");
        let ruleset = std::process::Command::new("nft")
            .args(["list", "ruleset"])
            .output();
        let ruleset = ruleset.expect("nft list ruleset").stdout;
        assert!(!String::from_utf8_lossy(&ruleset).contains("master_controller_taps"));

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
        // input 6, forward 6, postrouting 1.
        assert_eq!(
            rules, 13,
            "a second run replaces the rules, never adds: {ruleset}"
        );
        let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("sysctl");
        assert_eq!(forwarding.trim(), "1");
        assert!(doctor_level(&config, "IP forwarding").starts_with("ok"));
        let nat = doctor_level(&config, "guest NAT");
        assert!(nat.starts_with("ok"), "{nat}");
        let firewall = doctor_level(&config, "guest firewall");
        assert!(
            firewall.starts_with("ok") && firewall.contains("10.216.0.1:3128"),
            "{firewall}"
        );
        let strict = doctor_level(&config, "strict egress");
        assert!(strict.starts_with("ok not strict"), "{strict}");

        setup_network(&["--bridge", "other0", "--cidr", "10.216.0.1/24"]);
        let nat = doctor_level(&config, "guest NAT");
        assert!(nat.starts_with("FAIL") && nat.contains("mcbr9"), "{nat}");
    });
}

#[test]
fn strict_mode_and_the_gateway_port_reach_the_rules_and_doctor() {
    if !have_nft() {
        return;
    }
    in_private_netns(|| async {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let upstream = [
            ("DECODO_HOST", "gate.example.com"),
            ("DECODO_USER", "user"),
            ("DECODO_PASSWORD", "password"),
        ];
        let strict = net_config(
            data_dir.path(),
            &[
                upstream[0],
                upstream[1],
                upstream[2],
                ("MC_EGRESS_STRICT", "true"),
            ],
        );
        let args = ["--bridge", "mcbr9", "--cidr", "10.216.0.1/24"];

        // Rules that let guests out directly do not satisfy a strict config.
        setup_network(&args);
        let check = doctor_level(&strict, "strict egress");
        assert!(
            check.starts_with("FAIL") && check.contains("leave directly"),
            "{check}"
        );

        let progress = setup_network(&[&args[..], &["--strict"]].concat());
        assert!(
            progress.contains("strict: egress only through the gateway proxy"),
            "{progress}"
        );
        let check = doctor_level(&strict, "strict egress");
        assert!(check.starts_with("ok strict"), "{check}");
        let firewall = doctor_level(&strict, "guest firewall");
        assert!(firewall.starts_with("ok"), "{firewall}");
        assert!(doctor_level(&strict, "guest NAT").starts_with("ok"));

        // The environment file's MC_EGRESS_STRICT and MC_EGRESS_GATEWAY_PORT count as the flags do.
        setup_network(&args);
        let env_file = data_dir.path().join("env");
        std::fs::write(
            &env_file,
            "MC_EGRESS_STRICT=true\nMC_EGRESS_GATEWAY_PORT=3129\n",
        )
        .expect("env file");
        let env_path = env_file.display().to_string();
        let output = run_setup_network(&args, &env_path);
        assert!(output.status.success(), "{output:?}");
        assert!(doctor_level(&strict, "strict egress").starts_with("ok strict"));
        // The rules open 3129, the config's gateway listens on 3128.
        let firewall = doctor_level(&strict, "guest firewall");
        assert!(
            firewall.starts_with("FAIL") && firewall.contains("10.216.0.1:3128"),
            "{firewall}"
        );
        let moved = net_config(
            data_dir.path(),
            &[
                upstream[0],
                upstream[1],
                upstream[2],
                ("MC_EGRESS_GATEWAY_PORT", "3129"),
            ],
        );
        assert!(doctor_level(&moved, "guest firewall").starts_with("ok"));

        // Bad values are refused before any rule changes.
        for bad in ["0", "65536", "abc", "-1", "3128x"] {
            let output = run_setup_network(
                &[&args[..], &["--gateway-port", bad]].concat(),
                "/nonexistent",
            );
            assert_eq!(output.status.code(), Some(2), "port {bad}: {output:?}");
            assert!(
                String::from_utf8_lossy(&output.stderr).contains("bad gateway port"),
                "{output:?}"
            );
        }
        // Only what the daemon reads from the same file: `yes` would start it with an error.
        for bad in ["maybe", "yes", "TRUE"] {
            std::fs::write(&env_file, format!("MC_EGRESS_STRICT={bad}\n")).expect("env file");
            let output = run_setup_network(&args, &env_path);
            assert_eq!(output.status.code(), Some(2), "{bad}: {output:?}");
        }
        assert!(doctor_level(&moved, "guest firewall").starts_with("ok"));
    });
}

/// A named network namespace (`ip netns add`), deleted with its links when dropped, also when a
/// test fails.
struct NamedNetns(String);

impl NamedNetns {
    fn add(role: &str) -> NamedNetns {
        let name = format!("mc-{role}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        NamedNetns(name)
    }

    /// Runs `ip ARGS` inside the namespace.
    fn ip(&self, args: &[&str]) {
        ip(&[&["-n", self.0.as_str()], args].concat());
    }

    /// Runs `body` on a thread that has joined the namespace (a thread's namespace is its own).
    fn run<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let netns = std::fs::File::open(&path).expect("open the namespace");
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            body()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn ip(args: &[&str]) {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Connects from the guest's namespace: `Ok` on a handshake, else the error's kind (a drop by
/// the firewall is a timeout; a closed port is `ConnectionRefused`).
fn connect_from(guest: &NamedNetns, to: &str) -> Result<(), std::io::ErrorKind> {
    let to: std::net::SocketAddr = to.parse().expect("address");
    guest.run(move || {
        std::net::TcpStream::connect_timeout(&to, std::time::Duration::from_secs(1))
            .map(drop)
            .map_err(|e| e.kind())
    })
}

/// A guest (a veth on the bridge, in its own namespace) and an "internet" host (a veth routed by
/// the host) around the test's private namespace, with listeners on the gateway proxy's port, on
/// another host port, and on the internet host: what the guest can reach before and after the
/// script, strict and not.
#[test]
fn guests_reach_only_the_gateway_proxy_and_strict_mode_stops_direct_egress() {
    if !have_nft() {
        return;
    }
    in_private_netns(|| async {
        let guest = NamedNetns::add("guest");
        let internet = NamedNetns::add("internet");
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "mcbr8", "type", "bridge"]);
        ip(&["addr", "add", "10.217.0.1/24", "dev", "mcbr8"]);
        ip(&["link", "set", "mcbr8", "up"]);
        ip(&[
            "link", "add", "mcvh0", "type", "veth", "peer", "name", "mcvg0",
        ]);
        ip(&["link", "set", "mcvh0", "master", "mcbr8", "up"]);
        ip(&["link", "set", "mcvg0", "netns", &guest.0]);
        guest.ip(&["link", "set", "lo", "up"]);
        guest.ip(&["addr", "add", "10.217.0.2/24", "dev", "mcvg0"]);
        guest.ip(&["link", "set", "mcvg0", "up"]);
        guest.ip(&["route", "add", "default", "via", "10.217.0.1"]);
        ip(&[
            "link", "add", "mcvx0", "type", "veth", "peer", "name", "mcvi0",
        ]);
        ip(&["addr", "add", "198.51.100.2/24", "dev", "mcvx0"]);
        ip(&["link", "set", "mcvx0", "up"]);
        ip(&["link", "set", "mcvi0", "netns", &internet.0]);
        internet.ip(&["addr", "add", "198.51.100.1/24", "dev", "mcvi0"]);
        internet.ip(&["link", "set", "mcvi0", "up"]);

        // Listening is enough: the kernel completes the handshake from the backlog.
        let _proxy = std::net::TcpListener::bind("10.217.0.1:3128").expect("proxy port");
        let _other = std::net::TcpListener::bind("0.0.0.0:8081").expect("other port");
        let _site = internet
            .run(|| std::net::TcpListener::bind("198.51.100.1:8080"))
            .expect("internet port");
        let site = "198.51.100.1:8080";

        // Without rules, the host answers on every port: the listeners and the routes work.
        assert_eq!(connect_from(&guest, "10.217.0.1:3128"), Ok(()));
        assert_eq!(connect_from(&guest, "10.217.0.1:8081"), Ok(()));
        assert_eq!(connect_from(&guest, "198.51.100.2:8081"), Ok(()));
        // Neither forwarded nor masqueraded yet: the site is out of reach.
        assert!(connect_from(&guest, site).is_err());

        let args = ["--bridge", "mcbr8", "--cidr", "10.217.0.1/24"];
        setup_network(&args);
        assert_eq!(connect_from(&guest, "10.217.0.1:3128"), Ok(()));
        let dropped = Err(std::io::ErrorKind::TimedOut);
        assert_eq!(connect_from(&guest, "10.217.0.1:8081"), dropped);
        assert_eq!(
            connect_from(&guest, "198.51.100.2:8081"),
            dropped,
            "another host address"
        );
        assert_eq!(
            connect_from(&guest, site),
            Ok(()),
            "not strict: out directly"
        );

        setup_network(&[&args[..], &["--strict"]].concat());
        assert_eq!(connect_from(&guest, "10.217.0.1:3128"), Ok(()));
        assert_eq!(connect_from(&guest, "10.217.0.1:8081"), dropped);
        assert_eq!(
            connect_from(&guest, site),
            dropped,
            "strict: no direct egress"
        );
        // The host itself (where the gateway proxy runs) still reaches the site.
        let from_host = std::net::TcpStream::connect_timeout(
            &site.parse().expect("address"),
            std::time::Duration::from_secs(1),
        );
        assert!(from_host.is_ok(), "{from_host:?}");
    });
}
