use serde_json::json;

use super::*;

fn binding() -> TapBinding {
    TapBinding::parse("06:00:0a:DB:00:02", "10.219.0.2").expect("binding")
}

#[test]
fn parses_a_records_addresses() {
    let b = binding();
    assert_eq!(b.mac, [6, 0, 10, 0xdb, 0, 2]);
    assert_eq!(b.ip, Ipv4Addr::new(10, 219, 0, 2));
    assert_eq!(b.mac_text(), "06:00:0a:db:00:02");
    for (mac, ip) in [
        ("06:00:0a:db:00", "10.219.0.2"),
        ("06:00:0a:db:00:02:03", "10.219.0.2"),
        ("06:00:0a:db:00:2", "10.219.0.2"),
        ("06:00:0a:db:00:zz", "10.219.0.2"),
        ("06:00:0a:db:00:+2", "10.219.0.2"),
        ("06:00:0a:db:00:02", "10.219.0"),
        ("06:00:0a:db:00:02", "10.219.0.2/24"),
        ("06:00:0a:db:00:02", "::1"),
    ] {
        assert!(TapBinding::parse(mac, ip).is_err(), "{mac} {ip}");
    }
}

#[test]
fn the_bind_script_accepts_only_the_vms_own_frames() {
    let script = bind_script("mc1bb464dc5b8a2", &binding()).expect("script");
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines.len(), 5, "{script}");
    assert_eq!(lines[0], "add table netdev master_controller_taps");
    // A base chain on the tap's own ingress, dropping by default: a frame no rule accepts
    // (another address, IPv6, a VLAN tag) never reaches the bridge.
    assert_eq!(
        lines[1],
        "add chain netdev master_controller_taps mc1bb464dc5b8a2 { type filter hook ingress \
         device \"mc1bb464dc5b8a2\" priority -500; policy drop; }"
    );
    // Flushed in the same transaction: a rebinding (a new address after a resume) leaves no
    // rule for the old address.
    assert_eq!(
        lines[2],
        "flush chain netdev master_controller_taps mc1bb464dc5b8a2"
    );
    let accepts: Vec<&str> = lines[3..].to_vec();
    assert!(accepts.iter().all(|rule| rule.contains(" accept ")));
    assert!(
        accepts
            .iter()
            .all(|rule| rule.contains("ether saddr 06:00:0a:db:00:02 "))
    );
    assert!(accepts[0].contains("ether type arp "), "{}", accepts[0]);
    assert!(accepts[0].contains("arp saddr ether 06:00:0a:db:00:02 arp saddr ip 10.219.0.2 "));
    assert!(accepts[1].contains("ether type ip ip saddr 10.219.0.2 "));
    assert!(!script.contains("ip6"), "no IPv6 is let through");
}

#[test]
fn the_unbind_script_is_idempotent_by_construction() {
    assert_eq!(
        unbind_script("mc1bb464dc5b8a2").expect("script"),
        "add table netdev master_controller_taps\n\
         add chain netdev master_controller_taps mc1bb464dc5b8a2\n\
         delete chain netdev master_controller_taps mc1bb464dc5b8a2\n"
    );
}

#[test]
fn a_name_that_could_change_the_script_is_refused() {
    for tap in [
        "",
        "0abc",
        "mc\"; flush ruleset",
        "mc x",
        "mc\nflush",
        "a23456789012345x",
    ] {
        assert!(bind_script(tap, &binding()).is_err(), "{tap:?}");
        assert!(unbind_script(tap).is_err(), "{tap:?}");
    }
    assert!(bind_script("fc-build_0", &binding()).is_ok());
}

#[test]
fn bound_taps_are_the_chains_of_the_table() {
    let listing = json!({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"chain": {"family": "netdev", "table": "master_controller_taps", "name": "mcaaa", "handle": 1,
                   "type": "filter", "hook": "ingress", "prio": -500, "policy": "drop", "dev": "mcaaa"}},
        {"chain": {"family": "netdev", "table": "other", "name": "mcbbb", "handle": 2}},
        {"chain": {"family": "netdev", "table": "master_controller_taps", "name": "mcccc", "handle": 3}},
    ]});
    assert_eq!(bound_in(&listing), ["mcaaa", "mcccc"]);
    assert!(bound_in(&json!({"nftables": []})).is_empty());
    assert!(bound_in(&json!({})).is_empty());
}
