//! A guest that takes its running neighbour's address: first A's IPv4 with its own MAC, announced
//! by gratuitous ARP (so the host would send A's answers to it), then A's MAC and IPv4 together.
//! Either way it tries to leave through the gateway proxy as A (A's upstream port, billed to A)
//! and to reach the host as A. A watch in the bridge's prerouting hook, in this test's namespace,
//! counts every frame from B's tap that carries anything but B's own MAC and IPv4: it sits after
//! the taps' ingress and before both the host and the other ports, so a spoofed frame it counts
//! is one that got onto the bridge.

use std::net::Ipv4Addr;
use std::process::Command;

use master_controller::net::{mac_for, tap_name};
use serde_json::Value;

use crate::support::internet::{SITE, SITE_PORT};
use crate::support::vmhost::nft;
use crate::world::{BRIDGE, GATEWAY, GATEWAY_PORT, World};

const WATCH: &str = "mc_spoof_watch";

/// Counters on B's tap: frames with a foreign source, and frames that are B's own.
fn install_watch(tap: &str, mac: &str, ip: Ipv4Addr) {
    nft(&format!(
        "table bridge {WATCH}\ndelete table bridge {WATCH}\n\
         table bridge {WATCH} {{\n  chain prerouting {{\n\
           type filter hook prerouting priority -300; policy accept;\n\
           iifname \"{tap}\" ether saddr != {mac} counter comment \"foreign\"\n\
           iifname \"{tap}\" ether type ip ip saddr != {ip} counter comment \"foreign\"\n\
           iifname \"{tap}\" ether type arp arp saddr ip != {ip} counter comment \"foreign\"\n\
           iifname \"{tap}\" ether type arp arp saddr ether != {mac} counter comment \"foreign\"\n\
           iifname \"{tap}\" ether saddr {mac} ether type ip ip saddr {ip} counter comment \"own\"\n\
         }}\n}}\n"
    ));
}

/// Packets counted by the watch's rules with `comment`.
fn watched(comment: &str) -> u64 {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "bridge", WATCH])
        .output()
        .expect("nft list");
    let listing: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("rule"))
        .filter(|rule| rule["comment"] == comment)
        .flat_map(|rule| rule["expr"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["counter"]["packets"].as_u64())
        .sum()
}

/// The MAC this namespace's neighbour table holds for `ip` on the bridge, if any.
fn host_neighbour(ip: Ipv4Addr) -> Option<String> {
    let output = Command::new("ip")
        .args(["-j", "neigh", "show", &ip.to_string(), "dev", BRIDGE])
        .output()
        .expect("ip neigh");
    let entries: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    entries[0]["lladdr"].as_str().map(str::to_string)
}

fn requests_naming(world: &World, port: u16, path: &str) -> usize {
    world
        .internet
        .upstream_requests(port)
        .iter()
        .filter(|r| r.contains(path))
        .count()
}

/// Shell that sends, from the guest, a request through the gateway and pings the host, both
/// from `ip` (a host route with that preferred source: busybox `nc` has no `-s`), then removes
/// the route. Prints `nc=<status>` and the answer.
fn as_source(ip: Ipv4Addr, path: &str) -> String {
    format!(
        "ip route replace {GATEWAY}/32 dev eth0 src {ip}; \
         printf 'GET http://{SITE}:{SITE_PORT}{path} HTTP/1.1\\r\\nHost: {SITE}\\r\\n\\r\\n' \
         | nc -w 10 {GATEWAY} {GATEWAY_PORT}; echo \"nc=$?\"; \
         ping -c 2 -W 2 {GATEWAY} >/dev/null 2>&1; \
         ip route del {GATEWAY}/32 dev eth0"
    )
}

pub async fn a_guest_cannot_use_its_neighbours_address(world: &mut World) {
    for name in ["a", "b"] {
        world.ensure_vm(name).await;
    }
    let (ip_a, ip_b) = (world.ip_of("a").await, world.ip_of("b").await);
    let (mac_a, mac_b) = (mac_for(ip_a), mac_for(ip_b));
    let tap_b = tap_name(&world.vms["b"]);
    let port_a = world.port_of("a").await.expect("a's port");
    let port_b = world.port_of("b").await.expect("b's port");
    // The host knows A where A is.
    let (code, body) = world
        .get_via_gateway("a", &format!("http://{SITE}:{SITE_PORT}/a-before"))
        .await;
    assert_eq!(code, 0, "{body}");
    assert_eq!(host_neighbour(ip_a).as_deref(), Some(mac_a.as_str()));
    install_watch(&tap_b, &mac_b, ip_b);

    // A's IPv4 with B's MAC, announced to the host by gratuitous ARP (request and reply forms).
    let (_, out) = world
        .sh(
            "b",
            &format!(
                "ip addr add {ip_a}/32 dev eth0; \
                 arping -U -c 2 -s {ip_a} -I eth0 {ip_a} >/dev/null 2>&1; \
                 arping -A -c 2 -s {ip_a} -I eth0 {ip_a} >/dev/null 2>&1; \
                 {}; ip addr del {ip_a}/32 dev eth0",
                as_source(ip_a, "/spoofed-ip")
            ),
        )
        .await;
    // Every breach is collected, so that a run without the bindings shows each of them.
    let mut breaches = Vec::new();
    if out.contains("nc=0") || out.contains("200 OK") {
        breaches.push(format!("with A's IPv4, B's connection opened: {out}"));
    }
    if host_neighbour(ip_a).as_deref() == Some(mac_b.as_str()) {
        breaches.push("the host took B's ARP claim to A's address".to_string());
    }

    // A's MAC and A's IPv4 together. The MAC change takes the link down and up, which drops
    // the routes; they are put back.
    let (_, out) = world
        .sh(
            "b",
            &format!(
                "ip link set eth0 down; ip link set eth0 address {mac_a}; ip link set eth0 up; \
                 ip addr add {ip_a}/32 dev eth0; \
                 arping -U -c 2 -s {ip_a} -I eth0 {ip_a} >/dev/null 2>&1; \
                 {}; ip addr del {ip_a}/32 dev eth0; \
                 ip link set eth0 down; ip link set eth0 address {mac_b}; ip link set eth0 up; \
                 ip route replace default via {GATEWAY}",
                as_source(ip_a, "/spoofed-mac")
            ),
        )
        .await;
    if out.contains("nc=0") || out.contains("200 OK") {
        breaches.push(format!(
            "with A's MAC and IPv4, B's connection opened: {out}"
        ));
    }

    for path in ["/spoofed-ip", "/spoofed-mac"] {
        for (port, whose) in [(port_a, "A's"), (port_b, "B's")] {
            let seen = requests_naming(world, port, path);
            if seen > 0 {
                breaches.push(format!(
                    "{path}: {seen} request(s) on {whose} upstream port"
                ));
            }
        }
    }
    let foreign = watched("foreign");
    if foreign > 0 {
        breaches.push(format!(
            "{foreign} frame(s) from B's tap with a source other than B's reached the bridge"
        ));
    }
    assert!(breaches.is_empty(), "{}", breaches.join("\n"));

    // Each guest still leaves as itself, through its own port.
    for (name, port) in [("b", port_b), ("a", port_a)] {
        let path = format!("/{name}-after-spoofing");
        let (code, body) = world
            .get_via_gateway(name, &format!("http://{SITE}:{SITE_PORT}{path}"))
            .await;
        assert_eq!(code, 0, "{name}: {body}");
        assert!(body.contains(&format!("GET {path} ")), "{name}: {body}");
        assert_eq!(requests_naming(world, port, &path), 1, "{name}");
    }
    assert!(watched("own") > 0, "the watch saw B's own traffic");
    nft(&format!("delete table bridge {WATCH}\n"));
}
