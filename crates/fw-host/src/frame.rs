//! Ethernet + IPv4 + UDP frames between the host gateway and the nodes:
//! built with correct checksums, parsed with every length checked.

use metalraft_fw_proto::addr;

/// Ethernet header bytes.
pub const ETH_HEADER_BYTES: usize = 14;
const IPV4_HEADER_BYTES: usize = 20;
const UDP_HEADER_BYTES: usize = 8;
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
const IP_PROTO_UDP: u8 = 17;
const TTL: u8 = 64;

/// A UDP datagram on the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Source LAN id.
    pub src: u8,
    /// Source UDP port.
    pub src_port: u16,
    /// Destination LAN id.
    pub dst: u8,
    /// Destination UDP port.
    pub dst_port: u16,
    /// UDP payload.
    pub payload: &'a [u8],
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header_sum(src: [u8; 4], dst: [u8; 4], udp_len: u16) -> u32 {
    let words = [
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
        u16::from_be_bytes([dst[0], dst[1]]),
        u16::from_be_bytes([dst[2], dst[3]]),
        u16::from(IP_PROTO_UDP),
        udp_len,
    ];
    words.iter().map(|&w| u32::from(w)).sum()
}

/// Builds the Ethernet frame carrying `d`. `None` if the payload does not
/// fit one frame.
pub fn build(d: &Datagram<'_>) -> Option<Vec<u8>> {
    if d.payload.len() > addr::MAX_DATAGRAM_BYTES {
        return None;
    }
    let udp_len = (UDP_HEADER_BYTES + d.payload.len()) as u16;
    let ip_len = IPV4_HEADER_BYTES as u16 + udp_len;
    let (src_ip, dst_ip) = (addr::ip(d.src), addr::ip(d.dst));
    let mut f = Vec::with_capacity(ETH_HEADER_BYTES + usize::from(ip_len));
    f.extend_from_slice(&addr::mac(d.dst));
    f.extend_from_slice(&addr::mac(d.src));
    f.extend_from_slice(&ETHERTYPE_IPV4);
    let ip_start = f.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, TTL, IP_PROTO_UDP, 0, 0]);
    f.extend_from_slice(&src_ip);
    f.extend_from_slice(&dst_ip);
    let ip_sum = checksum(&f[ip_start..], 0);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&ip_sum.to_be_bytes());
    let udp_start = f.len();
    f.extend_from_slice(&d.src_port.to_be_bytes());
    f.extend_from_slice(&d.dst_port.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(d.payload);
    let mut udp_sum = checksum(&f[udp_start..], pseudo_header_sum(src_ip, dst_ip, udp_len));
    if udp_sum == 0 {
        udp_sum = 0xffff;
    }
    f[udp_start + 6..udp_start + 8].copy_from_slice(&udp_sum.to_be_bytes());
    Some(f)
}

/// Source and destination LAN ids of an Ethernet frame (from the MACs).
pub fn l2_ids(frame: &[u8]) -> Option<(u8, u8)> {
    (frame.len() >= ETH_HEADER_BYTES).then(|| (frame[11], frame[5]))
}

/// Parses an IPv4/UDP frame addressed on the LAN. `None` for anything else
/// or anything truncated.
pub fn parse(frame: &[u8]) -> Option<Datagram<'_>> {
    if frame.len() < ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES
        || frame[12..14] != ETHERTYPE_IPV4
    {
        return None;
    }
    let ip = &frame[ETH_HEADER_BYTES..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < IPV4_HEADER_BYTES || ip[9] != IP_PROTO_UDP {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if total > ip.len() || total < ihl + UDP_HEADER_BYTES {
        return None;
    }
    let src = addr::id_of_ip([ip[12], ip[13], ip[14], ip[15]])?;
    let dst = addr::id_of_ip([ip[16], ip[17], ip[18], ip[19]])?;
    let udp = &ip[ihl..total];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < UDP_HEADER_BYTES || udp_len > udp.len() {
        return None;
    }
    Some(Datagram {
        src,
        src_port: u16::from_be_bytes([udp[0], udp[1]]),
        dst,
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: &udp[UDP_HEADER_BYTES..udp_len],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_then_parse() {
        let d = Datagram {
            src: 254,
            src_port: 40001,
            dst: 3,
            dst_port: 7001,
            payload: b"hello",
        };
        let f = build(&d).unwrap();
        assert_eq!(parse(&f), Some(d));
        assert_eq!(l2_ids(&f), Some((254, 3)));
        // A valid IPv4 header checksums to zero.
        assert_eq!(checksum(&f[14..34], 0), 0);
    }

    #[test]
    fn truncated_frames_are_refused() {
        let d = Datagram {
            src: 1,
            src_port: 1,
            dst: 2,
            dst_port: 2,
            payload: &[7; 40],
        };
        let f = build(&d).unwrap();
        for len in 0..f.len() {
            assert!(parse(&f[..len]).is_none(), "len {len}");
        }
    }
}
