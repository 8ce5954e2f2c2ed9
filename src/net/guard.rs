//! Each tap bound to its VM's addresses. The gateway proxy knows a connection's user only by its
//! source address, so a guest that could send as its neighbour would leave through the
//! neighbour's upstream port. A base chain of nftables' `netdev` family on the tap's ingress sees
//! every frame the guest sends before the bridge does, so what it drops reaches neither the host
//! nor another guest. It accepts IPv4 from the VM's MAC and address, and ARP from the VM's MAC
//! naming both as sender; its policy drops the rest: other addresses, IPv6 (guests have none),
//! VLAN tags and every other protocol. Guests are configured statically by the agent, so there is
//! no DHCP to let through.
//!
//! The scripts are pure functions of the binding; [`Nft`] runs them through `nft -f -` in the
//! daemon's own network namespace. Each script is one nftables transaction: a rebinding replaces
//! the tap's rules whole, and a tap is never half-bound.

use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::NetError;

/// The table holding one chain per bound tap, named after the tap.
pub const TABLE: &str = "master_controller_taps";
/// Before anything else on the tap's ingress.
const PRIORITY: i32 = -500;

/// The addresses a tap carries: its VM's MAC and IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapBinding {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

impl TapBinding {
    /// From a VM record's MAC (`aa:bb:cc:dd:ee:ff`) and address.
    pub fn parse(mac: &str, ip: &str) -> Result<TapBinding, NetError> {
        let bad = |reason: String| NetError::Guard(reason);
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| bad(format!("{ip:?} is not an IPv4 address")))?;
        let parts: Vec<&str> = mac.split(':').collect();
        let mut bytes = [0u8; 6];
        let well_formed = parts.len() == 6
            && parts.iter().zip(bytes.iter_mut()).all(|(part, byte)| {
                part.len() == 2
                    && part.bytes().all(|b| b.is_ascii_hexdigit())
                    && u8::from_str_radix(part, 16)
                        .map(|value| *byte = value)
                        .is_ok()
            });
        if !well_formed {
            return Err(bad(format!("{mac:?} is not a MAC address")));
        }
        Ok(TapBinding { mac: bytes, ip })
    }

    fn mac_text(&self) -> String {
        self.mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

/// A link name that can go into a script as it is: it names the chain and the device.
fn checked(tap: &str) -> Result<&str, NetError> {
    let mut bytes = tap.bytes();
    let ok = (1..=15).contains(&tap.len())
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(tap)
    } else {
        Err(NetError::Guard(format!("bad tap name {tap:?}")))
    }
}

/// Binds `tap` to `binding`, replacing whatever rules it had.
pub fn bind_script(tap: &str, binding: &TapBinding) -> Result<String, NetError> {
    let tap = checked(tap)?;
    let mac = binding.mac_text();
    let ip = binding.ip;
    Ok(format!(
        "add table netdev {TABLE}\n\
         add chain netdev {TABLE} {tap} {{ type filter hook ingress device \"{tap}\" priority {PRIORITY}; policy drop; }}\n\
         flush chain netdev {TABLE} {tap}\n\
         add rule netdev {TABLE} {tap} ether saddr {mac} ether type arp arp htype 1 arp ptype ip \
         arp hlen 6 arp plen 4 arp saddr ether {mac} arp saddr ip {ip} accept comment \"ARP as the VM\"\n\
         add rule netdev {TABLE} {tap} ether saddr {mac} ether type ip ip saddr {ip} accept \
         comment \"IPv4 from the VM\"\n"
    ))
}

/// Removes `tap`'s chain. Declaring it first makes the delete succeed when it is already gone
/// (kernels before 6.16 remove a device's chain with the device; later ones keep it).
pub fn unbind_script(tap: &str) -> Result<String, NetError> {
    let tap = checked(tap)?;
    Ok(format!(
        "add table netdev {TABLE}\n\
         add chain netdev {TABLE} {tap}\n\
         delete chain netdev {TABLE} {tap}\n"
    ))
}

/// The bound taps in `nft -j list chains netdev` output: the chains of [`TABLE`].
pub fn bound_in(listing: &serde_json::Value) -> Vec<String> {
    listing["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|chain| chain["family"] == "netdev" && chain["table"] == TABLE)
        .filter_map(|chain| chain["name"].as_str().map(str::to_string))
        .collect()
}

/// The OS edge: the `nft` binary, in the calling process's network namespace.
#[derive(Debug, Default, Clone, Copy)]
pub struct Nft;

impl Nft {
    pub async fn bind(&self, tap: &str, binding: &TapBinding) -> Result<(), NetError> {
        run(&["-f", "-"], Some(&bind_script(tap, binding)?))
            .await
            .map(drop)
    }

    pub async fn unbind(&self, tap: &str) -> Result<(), NetError> {
        run(&["-f", "-"], Some(&unbind_script(tap)?))
            .await
            .map(drop)
    }

    pub async fn bound(&self) -> Result<Vec<String>, NetError> {
        let out = run(&["-j", "list", "chains", "netdev"], None).await?;
        let listing: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| NetError::Guard(format!("nft -j printed no JSON: {e}")))?;
        Ok(bound_in(&listing))
    }
}

/// Runs `nft args`, with `script` on its standard input: its standard output.
pub(crate) async fn run(args: &[&str], script: Option<&str>) -> Result<Vec<u8>, NetError> {
    let failed =
        |e: &dyn std::fmt::Display| NetError::Guard(format!("nft {}: {e}", args.join(" ")));
    let mut child = tokio::process::Command::new("nft")
        .args(args)
        .stdin(if script.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| failed(&format!("cannot run it ({e}; apt-get install nftables)")))?;
    if let (Some(script), Some(mut stdin)) = (script, child.stdin.take()) {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| failed(&e))?;
    }
    let output = child.wait_with_output().await.map_err(|e| failed(&e))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or("failed").trim().to_string();
        return Err(failed(&first));
    }
    Ok(output.stdout)
}

#[cfg(test)]
#[path = "guard_tests.rs"]
mod tests;
