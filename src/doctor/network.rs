//! The host networking `scripts/setup-network.sh` provides: IPv4 forwarding, NAT of the guest
//! network, and the forward rules, read back from the kernel and from nftables.

use std::process::Command;

use serde_json::Value;

use super::{Check, Level, check};
use crate::config::Config;
use crate::net::Subnet;

const TABLE: &str = "master_controller";
const FIX: &str = "run scripts/setup-network.sh";

/// Missing networking breaks VMs only where VMs are configured.
fn missing(config: &Config) -> Level {
    if config.golden_kernel.is_some() {
        Level::Fail
    } else {
        Level::Warn
    }
}

pub fn checks(config: &Config) -> Vec<Check> {
    vec![forwarding(config), nat(config)]
}

fn forwarding(config: &Config) -> Check {
    match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward") {
        Ok(value) if value.trim() == "1" => check("IP forwarding", Level::Ok, "enabled"),
        Ok(_) => check(
            "IP forwarding",
            missing(config),
            format!("net.ipv4.ip_forward is off: guests cannot reach the outside; {FIX}"),
        ),
        Err(e) => check("IP forwarding", missing(config), e.to_string()),
    }
}

fn nat(config: &Config) -> Check {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .output();
    let output = match output {
        Ok(output) => output,
        Err(_) => {
            return check(
                "guest NAT",
                missing(config),
                "nft is not installed (apt-get install nftables)",
            );
        }
    };
    if !output.status.success() {
        return check(
            "guest NAT",
            missing(config),
            format!("no nftables table inet {TABLE}; {FIX}"),
        );
    }
    let ruleset: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    let rules = rules_of(&ruleset);
    let subnet = config.bridge_subnet;
    let problems = problems(&rules, &config.bridge, &subnet);
    if problems.is_empty() {
        check(
            "guest NAT",
            Level::Ok,
            format!(
                "{} masqueraded, {} isolated and closed to inbound connections",
                network_of(&subnet),
                config.bridge
            ),
        )
    } else {
        check(
            "guest NAT",
            missing(config),
            format!("{}; {FIX}", problems.join("; ")),
        )
    }
}

/// Each rule of the table as (chain, expressions).
fn rules_of(ruleset: &Value) -> Vec<(String, Vec<Value>)> {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("rule"))
        .map(|rule| {
            (
                rule["chain"].as_str().unwrap_or_default().to_string(),
                rule["expr"].as_array().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

fn network_of(subnet: &Subnet) -> String {
    format!("{}/{}", subnet.network(), subnet.prefix)
}

/// Whether an expression list matches `ip saddr <subnet>`.
fn matches_source(exprs: &[Value], subnet: &Subnet) -> bool {
    let network = subnet.network().to_string();
    exprs.iter().any(|e| {
        let m = &e["match"];
        m["left"]["payload"]["field"] == "saddr"
            && m["right"]["prefix"]["addr"] == network.as_str()
            && m["right"]["prefix"]["len"] == u64::from(subnet.prefix)
    })
}

fn matches_link(exprs: &[Value], key: &str, bridge: &str) -> bool {
    exprs
        .iter()
        .any(|e| e["match"]["left"]["meta"]["key"] == key && e["match"]["right"] == bridge)
}

fn has_verdict(exprs: &[Value], verdict: &str) -> bool {
    exprs.iter().any(|e| e.get(verdict).is_some())
}

/// What the table lacks, in words.
fn problems(rules: &[(String, Vec<Value>)], bridge: &str, subnet: &Subnet) -> Vec<String> {
    let mut problems = Vec::new();
    let masquerade = rules.iter().any(|(chain, exprs)| {
        chain == "postrouting" && matches_source(exprs, subnet) && has_verdict(exprs, "masquerade")
    });
    if !masquerade {
        problems.push(format!("{} is not masqueraded", network_of(subnet)));
    }
    let isolated = rules.iter().any(|(chain, exprs)| {
        chain == "forward"
            && matches_link(exprs, "iifname", bridge)
            && matches_link(exprs, "oifname", bridge)
            && has_verdict(exprs, "drop")
    });
    if !isolated {
        problems.push(format!(
            "guest-to-guest forwarding on {bridge} is not dropped"
        ));
    }
    let closed = rules.iter().any(|(chain, exprs)| {
        chain == "forward"
            && exprs.len() == 2
            && matches_link(exprs, "oifname", bridge)
            && has_verdict(exprs, "drop")
    });
    if !closed {
        problems.push(format!("inbound connections to {bridge} are not dropped"));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rule(chain: &str, expr: Value) -> Value {
        json!({"rule": {"family": "inet", "table": TABLE, "chain": chain, "expr": expr}})
    }

    fn link(key: &str, name: &str) -> Value {
        json!({"match": {"op": "==", "left": {"meta": {"key": key}}, "right": name}})
    }

    #[test]
    fn reads_the_rules_setup_network_writes() {
        let subnet = Subnet::parse("192.168.100.1/24").unwrap();
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
        let other_net = Subnet::parse("10.0.0.1/24").unwrap();
        assert_eq!(problems(&rules_of(&full), "fcbr0", &other_net).len(), 1);
        assert_eq!(problems(&rules_of(&json!({})), "fcbr0", &subnet).len(), 3);
    }
}
