//! Links on the host: the bridge and the VMs' taps. The daemon reaches them only through the
//! [`Netlink`] trait, whose production implementation speaks rtnetlink; taps are created with
//! the tun driver's ioctls, which netlink does not offer.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoBridgePort, InfoPortData, InfoPortKind, LinkAttribute, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec};

use super::NetError;
use super::guard::{Nft, TapBinding};

#[async_trait::async_trait]
pub trait Netlink: Send + Sync {
    /// Creates the bridge if needed, with a fixed MAC (a bridge otherwise takes its lowest
    /// port's, which changes as taps come and go) and its address, and brings it up.
    async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError>;
    /// Creates a persistent tap, attaches it to the bridge with port isolation (guests cannot
    /// reach each other), and brings it up.
    async fn create_tap(&self, name: &str, bridge: &str) -> Result<(), NetError>;
    /// Deletes a link; a link that is already gone is fine.
    async fn delete_link(&self, name: &str) -> Result<(), NetError>;
    /// The names of the links attached to `bridge`.
    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>, NetError>;
    /// Binds a tap to its VM's MAC and IPv4 address: from then on the host takes from it only
    /// the VM's own IPv4 and ARP, and drops every other frame before the bridge sees it
    /// (`net::guard`). Idempotent; a rebinding replaces the tap's earlier binding whole.
    async fn bind_tap(&self, name: &str, binding: &TapBinding) -> Result<(), NetError>;
    /// Removes a tap's binding; a tap without one is fine.
    async fn unbind_tap(&self, name: &str) -> Result<(), NetError>;
    /// The taps that have a binding, whether or not they still exist.
    async fn bound_taps(&self) -> Result<Vec<String>, NetError>;
}

pub struct RtNetlink {
    handle: Handle,
}

fn netlink(e: rtnetlink::Error) -> NetError {
    NetError::Netlink(e.to_string())
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

impl RtNetlink {
    /// Opens a netlink connection in the calling thread's network namespace.
    pub fn connect() -> Result<RtNetlink, NetError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| NetError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(RtNetlink { handle })
    }

    async fn find(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(None),
            Err(e) => Err(netlink(e)),
        }
    }

    async fn index(&self, name: &str) -> Result<u32, NetError> {
        self.find(name)
            .await?
            .map(|link| link.header.index)
            .ok_or_else(|| NetError::NoSuchLink(name.to_string()))
    }
}

/// `struct ifreq` as TUNSETIFF reads it: the name, the flags, and padding to its full size.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
nix::ioctl_write_ptr_bad!(tun_set_iff, 0x4004_54ca, IfReq);
nix::ioctl_write_int_bad!(tun_set_persist, 0x4004_54cb);

fn create_persistent_tap(name: &str) -> Result<(), NetError> {
    let tap_error = |source: std::io::Error| NetError::Tap {
        name: name.to_string(),
        source,
    };
    if name.is_empty() || name.len() > 15 {
        return Err(tap_error(std::io::Error::other(
            "a link name has 1 to 15 bytes",
        )));
    }
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(tap_error)?;
    let mut request = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `tun` is an open /dev/net/tun descriptor and `request` is a fully initialised
    // `struct ifreq` that outlives the call.
    unsafe { tun_set_iff(tun.as_raw_fd(), &request) }.map_err(|e| tap_error(e.into()))?;
    // SAFETY: TUNSETPERSIST takes an int flag on the descriptor that TUNSETIFF just bound.
    unsafe { tun_set_persist(tun.as_raw_fd(), 1) }.map_err(|e| tap_error(e.into()))?;
    Ok(())
}

#[async_trait::async_trait]
impl Netlink for RtNetlink {
    async fn ensure_bridge(
        &self,
        name: &str,
        mac: [u8; 6],
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetError> {
        if self.find(name).await?.is_none() {
            self.handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
                .map_err(netlink)?;
        }
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .address(mac.to_vec())
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink)?;
        match self
            .handle
            .address()
            .add(index, IpAddr::V4(address), prefix)
            .execute()
            .await
        {
            Err(e) if errno_of(&e) == Some(nix::libc::EEXIST) => Ok(()),
            other => other.map_err(netlink),
        }
    }

    async fn create_tap(&self, name: &str, bridge: &str) -> Result<(), NetError> {
        // Two ioctls on a character device that never blocks; run inline so the tap is made in
        // this thread's network namespace, like the netlink socket.
        create_persistent_tap(name)?;
        let bridge_index = self.index(bridge).await?;
        let index = self.index(name).await?;
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink)?;
        let isolated = LinkUnspec::new_with_index(index)
            .set_port_kind(InfoPortKind::Bridge)
            .set_port_data(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                true,
            )]))
            .build();
        self.handle
            .link()
            .set_port(isolated)
            .execute()
            .await
            .map_err(netlink)
    }

    async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        let Some(link) = self.find(name).await? else {
            return Ok(());
        };
        match self.handle.link().del(link.header.index).execute().await {
            Err(e) if errno_of(&e) == Some(nix::libc::ENODEV) => Ok(()),
            other => other.map_err(netlink),
        }
    }

    async fn bridge_ports(&self, bridge: &str) -> Result<Vec<String>, NetError> {
        let bridge_index = self.index(bridge).await?;
        let mut links = self.handle.link().get().execute();
        let mut ports = Vec::new();
        while let Some(link) = links.try_next().await.map_err(netlink)? {
            let attached = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge_index));
            if attached
                && let Some(name) = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
            {
                ports.push(name);
            }
        }
        Ok(ports)
    }

    // The bindings are nftables rules, which the `nft` binary writes; it runs in this process's
    // network namespace, the one the taps are in.
    async fn bind_tap(&self, name: &str, binding: &TapBinding) -> Result<(), NetError> {
        Nft.bind(name, binding).await
    }

    async fn unbind_tap(&self, name: &str) -> Result<(), NetError> {
        Nft.unbind(name).await
    }

    async fn bound_taps(&self) -> Result<Vec<String>, NetError> {
        Nft.bound().await
    }
}
