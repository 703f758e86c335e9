//! embassy-net driver over virtio-net. The stack runs with `Medium::Ip`;
//! this driver does the Ethernet layer with the static address plan of
//! [`metalraft_fw_proto::addr`] (10.0.0.N <-> 52:54:00:00:00:N), so no ARP
//! is needed and no ARP stall can delay an election.

use core::cell::RefCell;
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;
use metalraft_fw_proto::addr::{self, MTU_BYTES};
use virtio_drivers::device::net::{RxBuffer, VirtIONet};
use virtio_drivers::transport::mmio::MmioTransport;

use super::virtio::HalImpl;

/// Receive queue depth (descriptors).
pub const QUEUE_LEN: usize = 8;
/// Bytes per receive buffer (virtio-net header + one Ethernet frame).
pub const RX_BUF_BYTES: usize = 1536 + 64;
/// Ethernet header length.
const ETH_HEADER_BYTES: usize = 14;
/// Ethertype of IPv4.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// Offset of the IPv4 destination address in an IPv4 header.
const IPV4_DST_OFFSET: usize = 16;
/// Smallest IPv4 header.
const IPV4_MIN_HEADER_BYTES: usize = 20;

type Net = VirtIONet<HalImpl, MmioTransport<'static>, QUEUE_LEN>;

/// Woken by the device interrupt (frame received or sent).
pub static WAKER: AtomicWaker = AtomicWaker::new();

/// The driver; frames that are not IPv4 for us are counted and dropped.
pub struct VirtioNet {
    net: RefCell<Net>,
    mac: [u8; 6],
}

impl VirtioNet {
    /// Initializes the device.
    pub fn new(transport: MmioTransport<'static>) -> Option<VirtioNet> {
        let net = Net::new(transport, RX_BUF_BYTES).ok()?;
        let mac = net.mac_address();
        Some(VirtioNet {
            net: RefCell::new(net),
            mac,
        })
    }

    /// The MAC address QEMU gave the NIC (the host tool sets it from the node id).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Pops received frames until an IPv4 one; recycles the rest.
    fn next_ipv4(&self) -> Option<RxBuffer> {
        let mut net = self.net.borrow_mut();
        while net.can_recv() {
            let buf = net.receive().ok()?;
            let frame = buf.packet();
            if frame.len() >= ETH_HEADER_BYTES + IPV4_MIN_HEADER_BYTES
                && frame[12..14] == ETHERTYPE_IPV4
            {
                return Some(buf);
            }
            let _ = net.recycle_rx_buffer(buf);
        }
        None
    }
}

/// A received IPv4 frame.
pub struct Rx<'a> {
    net: &'a RefCell<Net>,
    buf: Option<RxBuffer>,
}

impl Drop for Rx<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let _ = self.net.borrow_mut().recycle_rx_buffer(buf);
        }
    }
}

impl embassy_net_driver::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        let mut buf = self.buf.take().expect("rx token consumed once");
        // The stack may use the paired TxToken inside `f`: no borrow held here.
        let r = f(&mut buf.packet_mut()[ETH_HEADER_BYTES..]);
        let _ = self.net.borrow_mut().recycle_rx_buffer(buf);
        r
    }
}

/// Permission to send one frame.
pub struct Tx<'a> {
    net: &'a RefCell<Net>,
    mac: [u8; 6],
}

impl embassy_net_driver::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut net = self.net.borrow_mut();
        let mut tx = net.new_tx_buffer(len + ETH_HEADER_BYTES);
        let frame = tx.packet_mut();
        let r = f(&mut frame[ETH_HEADER_BYTES..]);
        let ip = &frame[ETH_HEADER_BYTES..];
        let dst_mac = if ip.len() >= IPV4_MIN_HEADER_BYTES {
            let dst = [
                ip[IPV4_DST_OFFSET],
                ip[IPV4_DST_OFFSET + 1],
                ip[IPV4_DST_OFFSET + 2],
                ip[IPV4_DST_OFFSET + 3],
            ];
            match addr::id_of_ip(dst) {
                Some(id) if id != 255 => addr::mac(id),
                _ => [0xff; 6],
            }
        } else {
            [0xff; 6]
        };
        frame[0..6].copy_from_slice(&dst_mac);
        frame[6..12].copy_from_slice(&self.mac);
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        // QEMU consumes the TX queue on the notify write; a full queue was
        // ruled out by `transmit` checking `can_send`.
        let _ = net.send(tx);
        r
    }
}

impl embassy_net_driver::Driver for VirtioNet {
    type RxToken<'a>
        = Rx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn receive(&mut self, cx: &mut Context<'_>) -> Option<(Rx<'_>, Tx<'_>)> {
        WAKER.register(cx.waker());
        let buf = self.next_ipv4()?;
        Some((
            Rx {
                net: &self.net,
                buf: Some(buf),
            },
            Tx {
                net: &self.net,
                mac: self.mac,
            },
        ))
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<Tx<'_>> {
        WAKER.register(cx.waker());
        self.net.borrow().can_send().then_some(Tx {
            net: &self.net,
            mac: self.mac,
        })
    }

    fn link_state(&mut self, _cx: &mut Context<'_>) -> LinkState {
        LinkState::Up
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU_BYTES;
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ip
    }
}
