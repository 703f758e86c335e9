//! Bring-up of QEMU `mps2-an386`: the storage file first (for the config
//! block), the LAN9118 once the node's id is known.

use metalraft_fw_proto::addr;
use metalraft_fw_proto::config::NodeConfig;

use super::disk::Disk;

/// The network driver of this board.
pub type NetDriver = super::net::Lan9118;

/// The on-board NIC (at a fixed address), not yet initialized.
pub struct Nic;

/// Opens the storage file; halts with a log line if it cannot.
pub fn start() -> (Disk, Nic) {
    match Disk::open() {
        Ok(d) => (d, Nic),
        Err(e) => {
            error!("storage: {}", e);
            crate::halt()
        }
    }
}

/// Initializes the NIC for node `cfg.node_id` (its interrupt unmasked);
/// halts if it does not start.
pub fn net(_nic: Nic, cfg: &NodeConfig) -> NetDriver {
    let net = match NetDriver::new() {
        Ok(n) => n,
        Err(e) => {
            error!("LAN9118: {}", e);
            crate::halt()
        }
    };
    if net.mac() != addr::mac(cfg.node_id) {
        warn!(
            "NIC MAC {:02x?} does not match node {}'s plan {:02x?}",
            net.mac(),
            cfg.node_id,
            addr::mac(cfg.node_id)
        );
    }
    net
}
