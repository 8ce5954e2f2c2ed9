//! The host networking `scripts/setup-network.sh` provides: IPv4 forwarding, NAT of the guest
//! network, the forward rules and the guests' firewall on the host, read back from the kernel and
//! from nftables. The readers are pure functions over `nft -j` JSON, so they are tested on it.
//! Also whether nftables takes the daemon's own per-tap rules (`net::guard`).

use std::net::Ipv4Addr;
use std::process::Command;

use serde_json::Value;

use super::{Check, Level, check};
use crate::config::Config;
use crate::net::Subnet;
use crate::net::guard::{TapBinding, bind_script};

const TABLE: &str = "master_controller";
const FIX: &str = "run scripts/setup-network.sh";

/// Missing networking breaks VMs only where VMs are configured.
fn missing(config: &Config) -> Level {
    if config.vms.kernel.is_some() {
        Level::Fail
    } else {
        Level::Warn
    }
}

pub fn checks(config: &Config) -> Vec<Check> {
    let table = read_table();
    vec![
        forwarding(config),
        nat(config, &table),
        firewall(config, &table),
        strict_egress(config, &table),
        tap_binding(config),
    ]
}

/// Whether the kernel takes the rules that bind each tap to its VM's addresses: the daemon
/// installs them per tap and refuses to start a VM without them. A dry run (`nft -c`) of a
/// binding on `lo`, which every namespace has; nothing is installed.
fn tap_binding(config: &Config) -> Check {
    use std::io::Write;
    const NAME: &str = "tap binding";
    let binding = TapBinding {
        mac: [0x06, 0, 0xc0, 0xa8, 0x64, 0x02],
        ip: Ipv4Addr::new(192, 168, 100, 2),
    };
    let script = match bind_script("lo", &binding) {
        Ok(script) => script,
        Err(e) => return check(NAME, Level::Fail, e.to_string()),
    };
    let child = Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(_) => {
            return check(
                NAME,
                missing(config),
                "nft is not installed (apt-get install nftables): VMs cannot start",
            );
        }
    };
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(script.as_bytes()));
    match (written, child.wait_with_output()) {
        (Some(Ok(())), Ok(output)) if output.status.success() => check(
            NAME,
            Level::Ok,
            "nftables takes the per-tap rules (netdev ingress: each tap carries only its VM's \
             MAC, IPv4 and ARP)",
        ),
        (_, Ok(output)) => check(
            NAME,
            missing(config),
            format!(
                "nftables refuses the per-tap rules (netdev ingress, arp and ether matches): {}; \
                 VMs cannot start",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        ),
        (_, Err(e)) => check(NAME, missing(config), format!("nft: {e}")),
    }
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

/// The table as `nft -j` prints it, or why it cannot be read (one line, with the fix).
fn read_table() -> Result<Value, String> {
    let output = Command::new("nft")
        .args(["-j", "list", "table", "inet", TABLE])
        .output()
        .map_err(|_| "nft is not installed (apt-get install nftables)".to_string())?;
    if !output.status.success() {
        return Err(format!("no nftables table inet {TABLE}; {FIX}"));
    }
    serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("nft -j printed no JSON ({e}); {FIX}"))
}

fn nat(config: &Config, table: &Result<Value, String>) -> Check {
    let ruleset = match table {
        Ok(ruleset) => ruleset,
        Err(e) => return check("guest NAT", missing(config), e.clone()),
    };
    let rules = rules_of(ruleset);
    let subnet = config.vms.limits.subnet;
    let problems = problems(&rules, &config.vms.bridge, &subnet);
    verdict(
        "guest NAT",
        config,
        &problems,
        format!(
            "{} masqueraded, {} isolated and closed to inbound connections",
            network_of(&subnet),
            config.vms.bridge
        ),
    )
}

/// Ok with `ok_detail` when nothing is wrong, else the problems and the fix.
fn verdict(name: &'static str, config: &Config, problems: &[String], ok_detail: String) -> Check {
    if problems.is_empty() {
        check(name, Level::Ok, ok_detail)
    } else {
        check(
            name,
            missing(config),
            format!("{}; {FIX}", problems.join("; ")),
        )
    }
}

/// What guests on the bridge reach on the host itself: the gateway proxy and nothing else.
fn firewall(config: &Config, table: &Result<Value, String>) -> Check {
    let ruleset = match table {
        Ok(ruleset) => ruleset,
        Err(e) => return check("guest firewall", missing(config), e.clone()),
    };
    let gateway = config.vms.limits.subnet.gateway;
    let port = config.egress.gateway_port;
    let problems = firewall_problems(ruleset, &config.vms.bridge, gateway, port);
    verdict(
        "guest firewall",
        config,
        &problems,
        format!(
            "guests on {} reach {gateway}:{port} (the gateway proxy), DNS and nothing else on the host",
            config.vms.bridge
        ),
    )
}

/// Whether the rules match `MC_EGRESS_STRICT`: strict means guests leave only through the
/// gateway proxy, which runs on the host, so none of their traffic may be forwarded out.
fn strict_egress(config: &Config, table: &Result<Value, String>) -> Check {
    let strict_rules = match table {
        Ok(ruleset) => guests_leave_only_through_proxy(&rules_of(ruleset), &config.vms.bridge),
        Err(_) => false,
    };
    let no_gateway = config.egress.upstream.is_none();
    match (config.egress.strict, strict_rules) {
        (_, true) if no_gateway => check(
            "strict egress",
            Level::Warn,
            "guests may leave only through the gateway proxy, but without an upstream proxy \
             (DECODO_*) it does not run: guests cannot leave at all",
        ),
        (true, true) => check(
            "strict egress",
            Level::Ok,
            "strict: guests leave only through the gateway proxy",
        ),
        (true, false) => check(
            "strict egress",
            missing(config),
            match table {
                Err(e) => e.clone(),
                Ok(_) => format!(
                    "MC_EGRESS_STRICT is on but the forward rules let guests on {} leave directly; \
                     {FIX} --strict",
                    config.vms.bridge
                ),
            },
        ),
        (false, true) => check(
            "strict egress",
            Level::Ok,
            "not strict in the config, but the rules are: guests leave only through the gateway proxy",
        ),
        (false, false) => check(
            "strict egress",
            Level::Ok,
            "not strict: guests may also leave directly (MC_EGRESS_STRICT)",
        ),
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
    exprs.iter().any(|e| {
        let m = &e["match"];
        m["op"] == "==" && m["left"]["meta"]["key"] == key && m["right"] == bridge
    })
}

/// Whether an expression list matches `<protocol> <field> == <value>`.
fn matches_field(exprs: &[Value], protocol: &str, field: &str, value: &Value) -> bool {
    exprs.iter().any(|e| {
        let m = &e["match"];
        m["op"] == "=="
            && m["left"]["payload"]["protocol"] == protocol
            && m["left"]["payload"]["field"] == field
            && &m["right"] == value
    })
}

/// `iifname "<bridge>" drop` and nothing more: everything from the guests that gets this far.
fn drops_all_from(exprs: &[Value], bridge: &str) -> bool {
    exprs.len() == 2 && matches_link(exprs, "iifname", bridge) && has_verdict(exprs, "drop")
}

/// Whether the table has a base chain hooked at `hook`.
fn has_hook(ruleset: &Value, hook: &str) -> bool {
    ruleset["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|item| item["chain"]["hook"] == hook)
}

/// What the guests' firewall on the host lacks, in words. Rules count only in their order: an
/// accept after the bridge's drop is never reached.
fn firewall_problems(ruleset: &Value, bridge: &str, gateway: Ipv4Addr, port: u16) -> Vec<String> {
    if !has_hook(ruleset, "input") {
        return vec![format!(
            "no input chain: guests on {bridge} reach every service on the host"
        )];
    }
    let input: Vec<Vec<Value>> = rules_of(ruleset)
        .into_iter()
        .filter(|(chain, _)| chain == "input")
        .map(|(_, exprs)| exprs)
        .collect();
    let drop_at = input.iter().position(|exprs| drops_all_from(exprs, bridge));
    let proxy_at = input.iter().position(|exprs| {
        matches_link(exprs, "iifname", bridge)
            && matches_field(exprs, "ip", "daddr", &Value::from(gateway.to_string()))
            && matches_field(exprs, "tcp", "dport", &Value::from(port))
            && has_verdict(exprs, "accept")
    });
    let mut problems = Vec::new();
    if drop_at.is_none() {
        problems.push(format!(
            "input from {bridge} is not dropped: guests reach every service on the host"
        ));
    }
    match (proxy_at, drop_at) {
        (Some(proxy), Some(drop)) if proxy < drop => {}
        (Some(_), None) => {}
        _ => problems.push(format!(
            "guests on {bridge} cannot reach the gateway proxy at {gateway}:{port}"
        )),
    }
    problems
}

/// Whether forwarding drops everything from the guests before anything accepts it: the first
/// forward rule from the bridge with a verdict on all of it (not only IPv6, not only to the
/// bridge) decides. Without such a drop the chain's policy, accept, lets them out.
fn guests_leave_only_through_proxy(rules: &[(String, Vec<Value>)], bridge: &str) -> bool {
    for (chain, exprs) in rules {
        if chain != "forward" || !matches_link(exprs, "iifname", bridge) {
            continue;
        }
        if has_verdict(exprs, "accept") {
            return false;
        }
        if drops_all_from(exprs, bridge) {
            return true;
        }
    }
    false
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
#[path = "network_tests.rs"]
mod tests;
