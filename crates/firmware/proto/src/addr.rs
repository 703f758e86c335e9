//! The address plan of the emulated LAN: node `N` is `10.0.0.N` with MAC
//! `52:54:00:00:00:N`; the host gateway is [`GATEWAY_ID`]. Static on both
//! sides, so no ARP is needed.

/// Highest node id (ids are `1..=MAX_NODE_ID`).
pub const MAX_NODE_ID: u8 = 7;
/// Most members a cluster may have.
pub const MAX_MEMBERS: usize = MAX_NODE_ID as usize;
/// LAN id of the host gateway that relays client requests.
pub const GATEWAY_ID: u8 = 254;
/// First three octets of every LAN address.
pub const SUBNET: [u8; 3] = [10, 0, 0];
/// Prefix length of the LAN.
pub const PREFIX_LEN: u8 = 24;
/// UDP port of Raft peer traffic on every node.
pub const RAFT_PORT: u16 = 7000;
/// UDP port of the client protocol on every node.
pub const CLIENT_PORT: u16 = 7001;
/// Largest UDP payload that fits one 1500-byte Ethernet frame without IP
/// fragmentation (1500 - 20 IPv4 - 8 UDP).
pub const MAX_DATAGRAM_BYTES: usize = 1472;
/// Ethernet MTU of the LAN.
pub const MTU_BYTES: usize = 1500;

const _: () = assert!(MAX_DATAGRAM_BYTES + 28 == MTU_BYTES);
const _: () = assert!((MAX_NODE_ID as usize) < GATEWAY_ID as usize);

/// IPv4 address of LAN id `id`.
pub const fn ip(id: u8) -> [u8; 4] {
    [SUBNET[0], SUBNET[1], SUBNET[2], id]
}

/// MAC address of LAN id `id`.
pub const fn mac(id: u8) -> [u8; 6] {
    [0x52, 0x54, 0x00, 0x00, 0x00, id]
}

/// The LAN id of an IPv4 address, if it is on the LAN.
pub fn id_of_ip(ip: [u8; 4]) -> Option<u8> {
    (ip[..3] == SUBNET).then_some(ip[3])
}

/// Smallest IPv4 header.
pub const IPV4_MIN_HEADER_BYTES: usize = 20;
/// Offset of the destination address in an IPv4 header.
const IPV4_DST_OFFSET: usize = 16;
/// The broadcast MAC address.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// The destination MAC address of an outgoing IPv4 packet under the static
/// plan (the drivers that run the stack with `Medium::Ip` add the Ethernet
/// header themselves): the MAC of the LAN id of its destination address;
/// broadcast for `.255`, an address off the LAN or a packet too short to
/// hold an IPv4 header.
pub fn dst_mac(ipv4_packet: &[u8]) -> [u8; 6] {
    if ipv4_packet.len() < IPV4_MIN_HEADER_BYTES {
        return BROADCAST_MAC;
    }
    let d = &ipv4_packet[IPV4_DST_OFFSET..IPV4_DST_OFFSET + 4];
    match id_of_ip([d[0], d[1], d[2], d[3]]) {
        Some(id) if id != 255 => mac(id),
        _ => BROADCAST_MAC,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_to(dst: [u8; 4]) -> [u8; IPV4_MIN_HEADER_BYTES] {
        let mut p = [0u8; IPV4_MIN_HEADER_BYTES];
        p[0] = 0x45;
        p[IPV4_DST_OFFSET..IPV4_DST_OFFSET + 4].copy_from_slice(&dst);
        p
    }

    #[test]
    fn dst_mac_follows_the_plan() {
        assert_eq!(dst_mac(&packet_to(ip(3))), mac(3));
        assert_eq!(dst_mac(&packet_to(ip(GATEWAY_ID))), mac(GATEWAY_ID));
        assert_eq!(dst_mac(&packet_to([10, 0, 0, 255])), BROADCAST_MAC);
        assert_eq!(dst_mac(&packet_to([192, 168, 1, 3])), BROADCAST_MAC);
        assert_eq!(dst_mac(&packet_to(ip(3))[..19]), BROADCAST_MAC);
    }
}
