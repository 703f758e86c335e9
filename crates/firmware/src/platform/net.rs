//! embassy-net driver over virtio-net. The stack runs with `Medium::Ip`;
//! this driver does the Ethernet layer with the static address plan of
//! [`metalraft_fw_proto::addr`] (10.0.0.N <-> 52:54:00:00:00:N), so no ARP
//! is needed and no ARP stall can delay an election.
//!
//! Frames go through virtio-drivers' raw device (`VirtIONetRaw`), with
//! buffers this module owns in static memory: [`RX_BUFFERS`] receive
//! buffers, always posted to the device except while the stack reads one,
//! and a pool of transmit frames: [`TX_FRAMES`] of the full size and
//! [`TX_SMALL_FRAMES`] small ones, which carry most of the traffic (client
//! answers, append answers, heartbeats, appends of a few small entries)
//! and let more frames be on the device at once for little memory. A frame
//! is handed to the device and *not waited for*: it is reclaimed from the
//! used ring at the next `transmit` or `receive`, and the device's
//! interrupt (a frame received or sent) wakes the stack when the pool was
//! empty. (virtio-drivers' high-level `VirtIONet::send` allocated a frame
//! per send and spun on the used ring until QEMU's main loop had taken it:
//! at 16 writes in flight that spin was a quarter of the leader's time, see
//! the firmware README, "The transmit spin".)
#![allow(unsafe_code)]

use core::cell::RefCell;
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;
use metalraft_fw_proto::addr::{self, MTU_BYTES};
use static_cell::ConstStaticCell;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::mmio::MmioTransport;

use super::virtio::HalImpl;

/// Descriptors per queue (receive and transmit; a power of two).
pub const QUEUE_LEN: usize = 16;
/// Receive buffers, all posted to the device. When they are full QEMU
/// leaves the next frames in the host socket until one is posted again, so
/// fewer buffers cost wake-ups, not frames.
pub const RX_BUFFERS: usize = 4;
const _: () = assert!(RX_BUFFERS <= QUEUE_LEN);
/// Full-size transmit frames. A transmit token is only handed out while one
/// is free, so any frame the stack asks for fits.
pub const TX_FRAMES: usize = 4;
/// Small transmit frames, used first for frames that fit
/// [`SMALL_FRAME_BUF_BYTES`].
pub const TX_SMALL_FRAMES: usize = 8;
/// Every frame takes one descriptor; frame ids fit a `u16` mask.
const TX_ALL: usize = TX_FRAMES + TX_SMALL_FRAMES;
const _: () = assert!(TX_ALL <= QUEUE_LEN && TX_ALL <= 16);
/// Largest virtio-net header (the modern one, with `num_buffers`).
const VIRTIO_NET_HDR_MAX_BYTES: usize = 12;
/// Ethernet header length.
const ETH_HEADER_BYTES: usize = 14;
/// Bytes per buffer: virtio-net header + one Ethernet frame of the MTU.
pub const FRAME_BUF_BYTES: usize =
    (VIRTIO_NET_HDR_MAX_BYTES + ETH_HEADER_BYTES + MTU_BYTES).next_multiple_of(8);
/// Bytes per small transmit frame: header + Ethernet + IPv4 + UDP headers
/// (54 B) and up to 266 B of datagram.
pub const SMALL_FRAME_BUF_BYTES: usize = 320;
/// Ethertype of IPv4.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// Offset of the IPv4 destination address in an IPv4 header.
const IPV4_DST_OFFSET: usize = 16;
/// Smallest IPv4 header.
const IPV4_MIN_HEADER_BYTES: usize = 20;

type Raw = VirtIONetRaw<HalImpl, MmioTransport<'static>, QUEUE_LEN>;
type Frame = RefCell<[u8; FRAME_BUF_BYTES]>;
type SmallFrame = RefCell<[u8; SMALL_FRAME_BUF_BYTES]>;

/// Every frame buffer, for good. A buffer is either on the device (then
/// nothing here touches it: virtio-drivers' contract for `*_begin`) or
/// borrowed through its `RefCell` for the moment it is filled or read.
struct Frames {
    rx: [Frame; RX_BUFFERS],
    tx: [Frame; TX_FRAMES],
    tx_small: [SmallFrame; TX_SMALL_FRAMES],
}

impl Frames {
    /// Transmit frame `id`: the full-size ones first, then the small ones.
    fn tx(&self, id: u8) -> &RefCell<[u8]> {
        let id = usize::from(id);
        match id.checked_sub(TX_FRAMES) {
            None => &self.tx[id],
            Some(small) => &self.tx_small[small],
        }
    }
}

/// All zeros, so the buffers are `.bss`, not `.data`, and are never built
/// on the stack.
static FRAMES: ConstStaticCell<Frames> = ConstStaticCell::new(Frames {
    rx: [const { RefCell::new([0; FRAME_BUF_BYTES]) }; RX_BUFFERS],
    tx: [const { RefCell::new([0; FRAME_BUF_BYTES]) }; TX_FRAMES],
    tx_small: [const { RefCell::new([0; SMALL_FRAME_BUF_BYTES]) }; TX_SMALL_FRAMES],
});

/// Woken by the device interrupt (frame received or sent).
pub static WAKER: AtomicWaker = AtomicWaker::new();

/// The device and which buffer each of its descriptor chains holds.
struct Device {
    raw: Raw,
    /// The receive buffer posted under each token (a token is the head
    /// descriptor's index, below [`QUEUE_LEN`]).
    rx_slot: [u8; QUEUE_LEN],
    /// The transmit frame and its length in bytes under each token: the
    /// frames on the device.
    tx_slot: [Option<(u8, u16)>; QUEUE_LEN],
}

impl Device {
    /// Posts receive buffer `slot` to the device.
    fn post_rx(&mut self, frames: &Frames, slot: usize) {
        let mut buf = frames.rx[slot].borrow_mut();
        // SAFETY: the buffer is static, and it is not touched again until
        // the device has returned it (`receive_complete` with this token).
        // It cannot fail: there are more descriptors than receive buffers.
        if let Ok(token) = unsafe { self.raw.receive_begin(&mut buf[..]) } {
            self.rx_slot[usize::from(token)] = slot as u8;
        }
    }

    /// Takes back every transmit frame the device is done with.
    fn reclaim_tx(&mut self, frames: &Frames) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((slot, len)) = self.tx_slot[usize::from(token)] else {
                return;
            };
            let buf = frames.tx(slot).borrow();
            // SAFETY: the same buffer and length `transmit_begin` got for
            // this token.
            if unsafe { self.raw.transmit_complete(token, &buf[..usize::from(len)]) }.is_err() {
                return;
            }
            self.tx_slot[usize::from(token)] = None;
        }
    }

    /// The first transmit frame among `ids` that is not on the device.
    fn first_free_tx(&self, ids: core::ops::Range<u8>) -> Option<u8> {
        let busy = self
            .tx_slot
            .iter()
            .flatten()
            .fold(0u16, |m, &(slot, _)| m | 1 << slot);
        ids.into_iter().find(|&id| busy & (1 << id) == 0)
    }

    /// A full-size transmit frame not on the device, if any (after
    /// reclaiming).
    fn free_tx(&mut self, frames: &Frames) -> Option<u8> {
        self.reclaim_tx(frames);
        self.first_free_tx(0..TX_FRAMES as u8)
    }

    /// A free small transmit frame, if any.
    fn free_small_tx(&self) -> Option<u8> {
        self.first_free_tx(TX_FRAMES as u8..TX_ALL as u8)
    }
}

/// The driver; frames that are not IPv4 are dropped (and their buffers
/// posted again at once).
pub struct VirtioNet {
    dev: RefCell<Device>,
    frames: &'static Frames,
    mac: [u8; 6],
}

impl VirtioNet {
    /// Initializes the device and posts every receive buffer. `None` if
    /// the device refuses, or if called twice (the buffers are static).
    pub fn new(transport: MmioTransport<'static>) -> Option<VirtioNet> {
        let frames: &'static Frames = FRAMES.try_take()?;
        let raw = Raw::new(transport).ok()?;
        let mac = raw.mac_address();
        let mut dev = Device {
            raw,
            rx_slot: [0; QUEUE_LEN],
            tx_slot: [None; QUEUE_LEN],
        };
        for slot in 0..RX_BUFFERS {
            dev.post_rx(frames, slot);
        }
        Some(VirtioNet {
            dev: RefCell::new(dev),
            frames,
            mac,
        })
    }

    /// The MAC address QEMU gave the NIC (the host tool sets it from the node id).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The next received IPv4 frame (its buffer and the Ethernet frame's
    /// bounds in it); every other frame's buffer goes back to the device.
    fn next_ipv4(&self) -> Option<(usize, usize, usize)> {
        let mut dev = self.dev.borrow_mut();
        while let Some(token) = dev.raw.poll_receive() {
            let slot = usize::from(dev.rx_slot[usize::from(token)]);
            let done = {
                let mut buf = self.frames.rx[slot].borrow_mut();
                // SAFETY: the buffer posted under this token.
                unsafe { dev.raw.receive_complete(token, &mut buf[..]) }
            };
            match done {
                Ok((hdr, len)) => {
                    let frame_start = hdr;
                    let frame_end = hdr + len;
                    let buf = self.frames.rx[slot].borrow();
                    if frame_end <= FRAME_BUF_BYTES
                        && len >= ETH_HEADER_BYTES + IPV4_MIN_HEADER_BYTES
                        && buf[frame_start + 12..frame_start + 14] == ETHERTYPE_IPV4
                    {
                        return Some((slot, frame_start, frame_end));
                    }
                }
                // Shorter than a header: the buffer is back, drop the frame.
                Err(virtio_drivers::Error::IoError) => {}
                // Not popped (cannot happen after `poll_receive`): leave it.
                Err(_) => return None,
            }
            dev.post_rx(self.frames, slot);
        }
        None
    }
}

/// A received IPv4 frame; its buffer goes back to the device when the
/// token is consumed or dropped.
pub struct Rx<'a> {
    dev: &'a RefCell<Device>,
    frames: &'a Frames,
    /// (buffer, frame start, frame end); `None` once given back.
    frame: Option<(usize, usize, usize)>,
}

impl Rx<'_> {
    fn give_back(&mut self) {
        if let Some((slot, _, _)) = self.frame.take() {
            self.dev.borrow_mut().post_rx(self.frames, slot);
        }
    }
}

impl Drop for Rx<'_> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl embassy_net_driver::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(mut self, f: F) -> R {
        let (slot, start, end) = self.frame.expect("rx token consumed once");
        // The stack may use the paired TxToken inside `f`: only this
        // buffer is borrowed, not the device.
        let r = f(&mut self.frames.rx[slot].borrow_mut()[start + ETH_HEADER_BYTES..end]);
        self.give_back();
        r
    }
}

/// Permission to send one frame: a full-size transmit frame that is not on
/// the device (a small one is taken instead if the frame fits and one is
/// free).
pub struct Tx<'a> {
    dev: &'a RefCell<Device>,
    frames: &'a Frames,
    slot: u8,
    mac: [u8; 6],
}

impl embassy_net_driver::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut dev = self.dev.borrow_mut();
        let slot = match dev.free_small_tx() {
            Some(small)
                if VIRTIO_NET_HDR_MAX_BYTES + ETH_HEADER_BYTES + len <= SMALL_FRAME_BUF_BYTES =>
            {
                small
            }
            _ => self.slot,
        };
        let mut buf = self.frames.tx(slot).borrow_mut();
        // Zeroes the header (no checksum offload, no segmentation); the
        // buffer holds the largest header, so this cannot fail.
        let hdr = dev.raw.fill_buffer_header(&mut buf[..]).unwrap_or(0);
        // The stack never asks for more than the MTU (`capabilities`), so
        // the frame fits its buffer.
        let end = hdr + ETH_HEADER_BYTES + len;
        let frame = &mut buf[hdr..end];
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
        // SAFETY: the frame is static and not touched until the device has
        // used it (`reclaim_tx` passes the same bytes back). It cannot fail:
        // the frame was free, and there are more descriptors than frames.
        if let Ok(token) = unsafe { dev.raw.transmit_begin(&buf[..end]) } {
            dev.tx_slot[usize::from(token)] = Some((slot, end as u16));
        }
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
        // The paired transmit token needs a free frame; without one the
        // frame waits in its buffer until a send completes (interrupt).
        let slot = self.dev.borrow_mut().free_tx(self.frames)?;
        let frame = self.next_ipv4()?;
        Some((
            Rx {
                dev: &self.dev,
                frames: self.frames,
                frame: Some(frame),
            },
            Tx {
                dev: &self.dev,
                frames: self.frames,
                slot,
                mac: self.mac,
            },
        ))
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<Tx<'_>> {
        WAKER.register(cx.waker());
        let slot = self.dev.borrow_mut().free_tx(self.frames)?;
        Some(Tx {
            dev: &self.dev,
            frames: self.frames,
            slot,
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
