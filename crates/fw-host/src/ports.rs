//! The loopback ports of one cluster, all derived from one base port so two
//! clusters can run side by side with different bases.

use std::net::{Ipv4Addr, SocketAddr};

/// Ports used past the base: hub switch, control, gateway, then one per node.
pub const NODE_PORT_OFFSET: u16 = 10;
/// Default base port.
pub const DEFAULT_BASE_PORT: u16 = 17400;

/// The port plan of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    /// The base port.
    pub base: u16,
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

impl Ports {
    /// Where QEMU instances send their Ethernet frames.
    pub fn switch(&self) -> SocketAddr {
        local(self.base)
    }
    /// Fault control (text commands).
    pub fn control(&self) -> SocketAddr {
        local(self.base + 1)
    }
    /// The client gateway.
    pub fn gateway(&self) -> SocketAddr {
        local(self.base + 2)
    }
    /// The `-netdev dgram` endpoint of node `id`.
    pub fn node(&self, id: u8) -> SocketAddr {
        local(self.base + NODE_PORT_OFFSET + u16::from(id))
    }
    /// Every port the cluster of `nodes` nodes uses.
    pub fn all(&self, nodes: u8) -> Vec<SocketAddr> {
        let mut v = vec![self.switch(), self.control(), self.gateway()];
        v.extend((1..=nodes).map(|id| self.node(id)));
        v
    }
}
