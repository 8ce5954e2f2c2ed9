//! Tests of `network`.
use super::*;
use serde_json::json;

/// `nft -j list table inet master_controller` after `setup-network.sh --bridge fcbr0` (nft
/// 1.0.6), one item a line.
const NFT_OPEN: &str = r#"{"nftables": [
{"metainfo":{"version":"1.0.6","release_name":"Lester Gooch #5","json_schema_version":1}},
{"table":{"family":"inet","name":"master_controller","handle":2}},
{"chain":{"family":"inet","table":"master_controller","name":"input","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}},
{"chain":{"family":"inet","table":"master_controller","name":"forward","handle":2,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
{"chain":{"family":"inet","table":"master_controller","name":"postrouting","handle":3,"type":"nat","hook":"postrouting","prio":100,"policy":"accept"}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":4,"comment":"guests have only IPv4: no link-local way onto the host","expr":[{"match":{"op":"==","left":{"meta":{"key":"nfproto"}},"right":"ipv6"}},{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":5,"comment":"answers to the host's own connections","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":6,"comment":"the gateway proxy","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.100.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":3128}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":7,"comment":"DNS on the gateway","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.100.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":53}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":8,"comment":"DNS on the gateway","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.100.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":53}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":9,"comment":"guests reach nothing else on the host","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":10,"comment":"guests have only IPv4","expr":[{"match":{"op":"==","left":{"meta":{"key":"nfproto"}},"right":"ipv6"}},{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":11,"comment":"no guest-to-guest traffic through the host","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":12,"comment":"guests open connections out","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.168.100.0","len":24}}}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":13,"comment":"but only from their own addresses","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":14,"comment":"and get their answers","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"fcbr0"}},{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":15,"comment":"nothing opens connections into the guests","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"postrouting","handle":16,"comment":"guests leave with the host's address","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.168.100.0","len":24}}}},{"match":{"op":"!=","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"192.168.100.0","len":24}}}},{"masquerade":null}]}}
]}"#;

/// The same after `setup-network.sh --bridge fcbr0 --strict`.
const NFT_STRICT: &str = r#"{"nftables": [
{"metainfo":{"version":"1.0.6","release_name":"Lester Gooch #5","json_schema_version":1}},
{"table":{"family":"inet","name":"master_controller","handle":2}},
{"chain":{"family":"inet","table":"master_controller","name":"input","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}},
{"chain":{"family":"inet","table":"master_controller","name":"forward","handle":2,"type":"filter","hook":"forward","prio":0,"policy":"accept"}},
{"chain":{"family":"inet","table":"master_controller","name":"postrouting","handle":3,"type":"nat","hook":"postrouting","prio":100,"policy":"accept"}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":4,"comment":"guests have only IPv4: no link-local way onto the host","expr":[{"match":{"op":"==","left":{"meta":{"key":"nfproto"}},"right":"ipv6"}},{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":5,"comment":"answers to the host's own connections","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":6,"comment":"the gateway proxy","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.100.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":3128}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":7,"comment":"DNS on the gateway","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.100.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"udp","field":"dport"}},"right":53}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":8,"comment":"DNS on the gateway","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":"192.168.100.1"}},{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":53}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"input","handle":9,"comment":"guests reach nothing else on the host","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":10,"comment":"guests have only IPv4","expr":[{"match":{"op":"==","left":{"meta":{"key":"nfproto"}},"right":"ipv6"}},{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":11,"comment":"no guest-to-guest traffic through the host","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":12,"comment":"strict: guests leave only through the gateway proxy","expr":[{"match":{"op":"==","left":{"meta":{"key":"iifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":13,"comment":"and get their answers","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"fcbr0"}},{"match":{"op":"in","left":{"ct":{"key":"state"}},"right":["established","related"]}},{"accept":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"forward","handle":14,"comment":"nothing opens connections into the guests","expr":[{"match":{"op":"==","left":{"meta":{"key":"oifname"}},"right":"fcbr0"}},{"drop":null}]}},
{"rule":{"family":"inet","table":"master_controller","chain":"postrouting","handle":15,"comment":"guests leave with the host's address","expr":[{"match":{"op":"==","left":{"payload":{"protocol":"ip","field":"saddr"}},"right":{"prefix":{"addr":"192.168.100.0","len":24}}}},{"match":{"op":"!=","left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"prefix":{"addr":"192.168.100.0","len":24}}}},{"masquerade":null}]}}
]}"#;

fn parse(text: &str) -> Value {
    serde_json::from_str(text).expect("captured nft JSON")
}

fn rule(chain: &str, expr: Value) -> Value {
    json!({"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}})
}

fn link(key: &str, name: &str) -> Value {
    json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": name}})
}

fn default_subnet() -> Subnet {
    Subnet::parse("192.168.100.1/24").expect("subnet")
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 1);

fn config(vars: &[(&str, &str)]) -> Config {
    let lookup = |name: &str| {
        vars.iter()
            .chain(&[("MC_ADMIN_TOKEN", "admin-token-for-doctor")])
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_string())
    };
    Config::load(None, &lookup, crate::config::Settings::default()).expect("config")
}

const UPSTREAM: [(&str, &str); 3] = [
    ("DECODO_HOST", "gate.example.com"),
    ("DECODO_USER", "user"),
    ("DECODO_PASSWORD", "password"),
];

#[test]
fn reads_the_rules_setup_network_writes() {
    let subnet = default_subnet();
    let saddr = json!({"match": {"op": "==",
        "left": {"payload": {"protocol": "ip", "field": "saddr"}},
        "right": {"prefix": {"addr": "192.168.100.0", "len": 24}}}});
    let full = json!({"nftables": [
        rule("forward", json!([link("iifname", "fcbr0"), link("oifname", "fcbr0"), {"drop": null}])),
        rule("forward", json!([link("oifname", "fcbr0"), {"drop": null}])),
        rule("postrouting", json!([saddr, {"masquerade": null}])),
    ]});
    assert!(problems(&rules_of(&full), "fcbr0", &subnet).is_empty());
    let other_bridge = problems(&rules_of(&full), "br1", &subnet);
    assert_eq!(other_bridge.len(), 2, "{other_bridge:?}");
    let other_net = Subnet::parse("10.0.0.1/24").expect("subnet");
    assert_eq!(problems(&rules_of(&full), "fcbr0", &other_net).len(), 1);
    assert_eq!(problems(&rules_of(&json!({})), "fcbr0", &subnet).len(), 3);
    for captured in [NFT_OPEN, NFT_STRICT] {
        let rules = rules_of(&parse(captured));
        assert!(problems(&rules, "fcbr0", &subnet).is_empty());
    }
}

#[test]
fn the_guest_firewall_is_read_from_the_input_chain() {
    for captured in [NFT_OPEN, NFT_STRICT] {
        let ruleset = parse(captured);
        let found = firewall_problems(&ruleset, "fcbr0", GATEWAY, 3128);
        assert!(found.is_empty(), "{found:?}");

        let other_port = firewall_problems(&ruleset, "fcbr0", GATEWAY, 3129);
        assert_eq!(other_port.len(), 1, "{other_port:?}");
        assert!(
            other_port[0].contains("192.168.100.1:3129"),
            "{other_port:?}"
        );
        let other_gateway =
            firewall_problems(&ruleset, "fcbr0", Ipv4Addr::new(192, 168, 100, 2), 3128);
        assert_eq!(other_gateway.len(), 1, "{other_gateway:?}");
        let other_bridge = firewall_problems(&ruleset, "br1", GATEWAY, 3128);
        assert_eq!(other_bridge.len(), 2, "{other_bridge:?}");
    }
    let none = firewall_problems(&json!({"nftables": []}), "fcbr0", GATEWAY, 3128);
    assert_eq!(none.len(), 1);
    assert!(none[0].contains("no input chain"), "{none:?}");
}

#[test]
fn an_accept_after_the_bridge_drop_does_not_count() {
    let mut ruleset = parse(NFT_OPEN);
    let items = ruleset["nftables"].as_array_mut().expect("items");
    let proxy = items
        .iter()
        .position(|item| item["rule"]["comment"] == "the gateway proxy")
        .expect("the proxy's rule");
    let moved = items.remove(proxy);
    let drop = items
        .iter()
        .position(|item| item["rule"]["comment"] == "guests reach nothing else on the host")
        .expect("the drop");
    items.insert(drop + 1, moved);
    let found = firewall_problems(&ruleset, "fcbr0", GATEWAY, 3128);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("gateway proxy"), "{found:?}");
}

#[test]
fn strict_egress_is_read_from_the_forward_chain() {
    let strict = rules_of(&parse(NFT_STRICT));
    let open = rules_of(&parse(NFT_OPEN));
    assert!(guests_leave_only_through_proxy(&strict, "fcbr0"));
    assert!(!guests_leave_only_through_proxy(&strict, "br1"));
    assert!(!guests_leave_only_through_proxy(&open, "fcbr0"));
    assert!(!guests_leave_only_through_proxy(&[], "fcbr0"));
    // The IPv6 drop and the guest-to-guest drop alone leave IPv4 out open.
    let partial = json!({"nftables": [
        rule("forward", json!([{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv6"}},
            link("iifname", "fcbr0"), {"drop": null}])),
        rule("forward", json!([link("iifname", "fcbr0"), link("oifname", "fcbr0"), {"drop": null}])),
    ]});
    assert!(!guests_leave_only_through_proxy(
        &rules_of(&partial),
        "fcbr0"
    ));
}

#[test]
fn the_strict_check_compares_the_rules_with_the_config() {
    let strict_config = config(&[
        UPSTREAM[0],
        UPSTREAM[1],
        UPSTREAM[2],
        ("MC_EGRESS_STRICT", "true"),
    ]);
    let open_config = config(&UPSTREAM);
    let vm_config = config(&[
        UPSTREAM[0],
        UPSTREAM[1],
        UPSTREAM[2],
        ("MC_EGRESS_STRICT", "true"),
        ("GOLDEN_KERNEL", "/nonexistent/vmlinux"),
    ]);
    let strict_rules = Ok(parse(NFT_STRICT));
    let open_rules = Ok(parse(NFT_OPEN));
    let no_table: Result<Value, String> = Err(format!("no nftables table inet {TABLE}; {FIX}"));

    let ok = strict_egress(&strict_config, &strict_rules);
    assert_eq!(
        (ok.level, ok.detail.starts_with("strict")),
        (Level::Ok, true),
        "{ok:?}"
    );
    let open = strict_egress(&strict_config, &open_rules);
    assert_eq!(open.level, Level::Warn, "{open:?}");
    assert!(open.detail.contains("leave directly"), "{open:?}");
    assert_eq!(strict_egress(&vm_config, &open_rules).level, Level::Fail);
    assert_eq!(strict_egress(&vm_config, &no_table).level, Level::Fail);

    let not_strict = strict_egress(&open_config, &open_rules);
    assert_eq!(not_strict.level, Level::Ok);
    assert_eq!(
        not_strict.detail,
        "not strict: guests may also leave directly (MC_EGRESS_STRICT)"
    );
    assert_eq!(strict_egress(&open_config, &no_table).level, Level::Ok);
    assert_eq!(strict_egress(&open_config, &strict_rules).level, Level::Ok);

    // Strict rules without an upstream: there is no gateway proxy to leave through.
    let no_upstream = strict_egress(&config(&[("MC_EGRESS_STRICT", "true")]), &strict_rules);
    assert_eq!(no_upstream.level, Level::Warn, "{no_upstream:?}");
    assert!(
        no_upstream.detail.contains("cannot leave at all"),
        "{no_upstream:?}"
    );
}
