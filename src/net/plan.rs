//! The address plan, as pure functions: which addresses the pool hands out, the MAC each one
//! gets, and each VM's tap name.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use super::NetError;

/// The bridge's network: the gateway is the bridge's own address, the pool is every other host
/// address (`.2`–`.254` of a /24).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub gateway: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    /// Parses `a.b.c.d/prefix`, the bridge's address and prefix (`MC_BRIDGE_CIDR`).
    pub fn parse(cidr: &str) -> Result<Subnet, NetError> {
        let bad = |reason: &str| NetError::Config {
            setting: "MC_BRIDGE_CIDR",
            reason: format!("{cidr:?}: {reason}"),
        };
        let (addr, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| bad("expected a.b.c.d/prefix"))?;
        let gateway: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix"))?;
        if !(16..=29).contains(&prefix) {
            return Err(bad("prefix must be between 16 and 29"));
        }
        let subnet = Subnet { gateway, prefix };
        if gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(bad("the bridge address must be a host address"));
        }
        Ok(subnet)
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) & self.mask())
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.gateway) | !self.mask())
    }

    /// Every address the pool may lease, in order.
    pub fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let first = u32::from(self.network()) + 1;
        let last = u32::from(self.broadcast()) - 1;
        (first..=last)
            .map(Ipv4Addr::from)
            .filter(move |ip| *ip != self.gateway)
    }

    pub fn pool_size(&self) -> u64 {
        self.pool().count() as u64
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network())
    }

    /// The lowest pool address not in `leased`.
    pub fn first_free(&self, leased: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        self.pool().find(|ip| !leased.contains(ip))
    }

    /// `a.b.c.d/prefix` for a guest address.
    pub fn cidr_of(&self, ip: Ipv4Addr) -> String {
        format!("{ip}/{}", self.prefix)
    }
}

/// The fixed MAC of the guest bridge (locally administered). A bridge without one takes its
/// lowest port's MAC, which changes as taps come and go, and guests keep sending to the old one.
pub const BRIDGE_MAC: [u8; 6] = [0x02, 0x6d, 0x63, 0x00, 0x00, 0x01];

/// A locally administered unicast MAC carrying the IP: `06:00:a:b:c:d`.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("06:00:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// `mc` and the last 13 hex digits of the VM id, within the kernel's 15 characters. VM ids are
/// UUIDv7, whose leading digits are a timestamp shared by VMs created in the same millisecond;
/// the trailing 52 bits are random.
pub fn tap_name(vm_id: &str) -> String {
    let digits: Vec<char> = vm_id.chars().filter(char::is_ascii_hexdigit).collect();
    let tail: String = digits[digits.len().saturating_sub(13)..].iter().collect();
    format!("mc{}", tail.to_ascii_lowercase())
}

/// Whether `name` has the shape of a VM tap (so the orphan sweep may remove it).
pub fn is_tap_name(name: &str) -> bool {
    name.len() == 15
        && name.starts_with("mc")
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_is_2_to_254() {
        let subnet = Subnet::parse("192.168.100.1/24").unwrap();
        let pool: Vec<Ipv4Addr> = subnet.pool().collect();
        assert_eq!(pool.len(), 253);
        assert_eq!(pool[0], Ipv4Addr::new(192, 168, 100, 2));
        assert_eq!(pool[252], Ipv4Addr::new(192, 168, 100, 254));
        assert!(subnet.contains(Ipv4Addr::new(192, 168, 100, 77)));
        assert!(!subnet.contains(Ipv4Addr::new(192, 168, 101, 77)));
        assert_eq!(subnet.cidr_of(pool[0]), "192.168.100.2/24");
    }

    #[test]
    fn first_free_skips_leases_and_runs_out() {
        let subnet = Subnet::parse("10.0.0.1/29").unwrap();
        let mut leased = BTreeSet::new();
        let mut handed = Vec::new();
        while let Some(ip) = subnet.first_free(&leased) {
            leased.insert(ip);
            handed.push(ip.to_string());
        }
        assert_eq!(
            handed,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        leased.remove(&Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(subnet.first_free(&leased), Some(Ipv4Addr::new(10, 0, 0, 4)));
    }

    #[test]
    fn rejects_bad_cidrs() {
        for bad in [
            "192.168.100.1",
            "192.168.100.0/24",
            "192.168.100.255/24",
            "1.2.3.4/8",
            "x/24",
            "1.2.3.4/33",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_and_macs() {
        assert_eq!(
            mac_for(Ipv4Addr::new(192, 168, 100, 2)),
            "06:00:c0:a8:64:02"
        );
        let tap = tap_name("01a21a55-bbfb-740a-a261-bb464dc5b8a2");
        assert_eq!(tap, "mc1bb464dc5b8a2");
        assert!(is_tap_name(&tap));
        assert!(!is_tap_name("mcbr0"));
        assert!(!is_tap_name("eth0"));
        assert_ne!(
            tap_name("01a21a55-bbfb-740a-a261-000000000001"),
            tap_name("01a21a55-bbfb-740a-a261-000000000002"),
            "VMs created in the same millisecond get distinct taps"
        );
    }
}
