//! An `embassy-net-driver` for the SMSC LAN9118 Ethernet controller of
//! the MPS2 board (QEMU's `lan9118` model; the real AN386 board has a
//! register-compatible LAN9220). The stack runs with `Medium::Ip`: like
//! the RISC-V board's driver, this one adds and strips the Ethernet header
//! with the static address plan of [`metalraft_fw_proto::addr`], so there
//! is no ARP.
//!
//! The controller is programmed through 32-bit registers at
//! [`BASE`] (LAN9118 datasheet, "System Control and Status Registers"):
//!
//! - **Receive.** A received frame is a status word in the RX status FIFO
//!   (`RX_STATUS`: length with the 4-byte CRC in bits 29:16, error summary
//!   in bit 15) and its bytes, little-endian, padded to whole words, in the
//!   RX data FIFO (`RX_DATA`); `RX_FIFO_INF` bits 23:16 count the status
//!   words waiting. The driver pops one status and exactly that many data
//!   words per frame, keeping the FIFO aligned to the frame boundaries.
//! - **Transmit.** A frame is two command words then its data words
//!   written to `TX_DATA`: command A (buffer size, first and last
//!   segment), command B (frame length, tag). The controller sends it once
//!   the last word is in; `TX_FIFO_INF` bits 15:0 give the free bytes.
//!   Transmit statuses are allowed to overrun (`TX_CFG.TXSAO`): the driver
//!   does not read them (a lost frame is Raft's to retransmit).
//! - **Interrupt.** `RSFL` (a status word is waiting) is the one source
//!   enabled; the line is active-high push-pull (`IRQ_CFG`), NVIC line 13.
//!   The handler clears it and wakes the stack, which then drains the FIFO.
//! - **MAC.** Registers behind `MAC_CSR_CMD`/`MAC_CSR_DATA`: the address
//!   (`ADDRH`/`ADDRL`, set by QEMU from `-nic …,mac=`) and `MAC_CR`
//!   (transmitter and receiver on, full duplex, exact unicast filter plus
//!   broadcast).
#![allow(unsafe_code)]

use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;
use metalraft_fw_proto::addr::{self, IPV4_MIN_HEADER_BYTES, MTU_BYTES};

use super::irq::{self, Irq};

/// MMIO base of the LAN9118 on AN385/AN386 (QEMU `hw/arm/mps2.c`).
pub const BASE: usize = 0x4020_0000;

// Register offsets.
const RX_DATA: usize = 0x00;
const TX_DATA: usize = 0x20;
const RX_STATUS: usize = 0x40;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5c;
const BYTE_TEST: usize = 0x64;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7c;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xa4;
const MAC_CSR_DATA: usize = 0xa8;

/// What `BYTE_TEST` reads on a correctly attached controller.
const BYTE_TEST_VALUE: u32 = 0x8765_4321;
/// IRQ_CFG: output enabled, active high, push-pull.
const IRQ_CFG_EN_HIGH_PUSH_PULL: u32 = (1 << 8) | (1 << 4) | 1;
/// INT_STS / INT_EN: RX status FIFO level (a frame is waiting).
const INT_RSFL: u32 = 1 << 3;
/// TX_CFG: transmitter on; TX status FIFO may overrun.
const TX_CFG_ON_STATUS_OVERRUN: u32 = (1 << 1) | (1 << 2);
/// HW_CFG: soft reset (self-clearing).
const HW_CFG_SRST: u32 = 1;
/// PMT_CTRL: the controller is ready.
const PMT_CTRL_READY: u32 = 1;
/// MAC_CSR_CMD: busy (start), read.
const MAC_CSR_BUSY: u32 = 1 << 31;
const MAC_CSR_READ: u32 = 1 << 30;
/// MAC registers.
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
/// MAC_CR: full duplex, transmitter and receiver enabled (exact unicast
/// filter; broadcast accepted).
const MAC_CR_FDPX_TX_RX: u32 = (1 << 20) | (1 << 3) | (1 << 2);
/// RX status: error summary; frame length (with CRC) in bits 29:16.
const RX_STATUS_ERROR: u32 = 1 << 15;
const RX_STATUS_LEN_SHIFT: u32 = 16;
const RX_STATUS_LEN_MASK: u32 = 0x3fff;
/// TX command A: first and last segment (one-buffer frame).
const TX_CMD_A_FIRST_LAST: u32 = (1 << 13) | (1 << 12);

/// Polls of a self-clearing bit before giving up.
const MAX_POLLS: u32 = 100_000;
/// Ethernet header bytes.
const ETH_HEADER_BYTES: usize = 14;
/// Ethertype of IPv4.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// Ethernet CRC (in the RX FIFO after each frame).
const CRC_BYTES: usize = 4;
/// Largest frame handled: header, MTU, CRC, rounded up to whole words.
const FRAME_BUF_BYTES: usize = (ETH_HEADER_BYTES + MTU_BYTES + CRC_BYTES).next_multiple_of(4);
/// TX data FIFO bytes a frame needs: two command words and its data.
const TX_NEED_BYTES: u32 = (8 + FRAME_BUF_BYTES) as u32;

fn read(offset: usize) -> u32 {
    // SAFETY: the LAN9118's registers at a fixed address on this board;
    // 32-bit accesses are its bus interface.
    unsafe { core::ptr::read_volatile((BASE + offset) as *const u32) }
}

fn write(offset: usize, value: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((BASE + offset) as *mut u32, value) }
}

/// Waits until `done` holds, at most [`MAX_POLLS`] reads.
fn poll(mut done: impl FnMut() -> bool) -> Result<(), NetError> {
    for _ in 0..MAX_POLLS {
        if done() {
            return Ok(());
        }
    }
    Err(NetError::Timeout)
}

/// Why the controller did not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// `BYTE_TEST` read something else: no controller at [`BASE`].
    NotFound(u32),
    /// A reset or register access did not complete.
    Timeout,
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::NotFound(v) => write!(f, "no controller (BYTE_TEST reads {v:#010x})"),
            NetError::Timeout => f.write_str("the controller did not answer in time"),
        }
    }
}

fn mac_csr_wait() -> Result<(), NetError> {
    poll(|| read(MAC_CSR_CMD) & MAC_CSR_BUSY == 0)
}

fn mac_read(reg: u32) -> Result<u32, NetError> {
    mac_csr_wait()?;
    write(MAC_CSR_CMD, MAC_CSR_BUSY | MAC_CSR_READ | reg);
    mac_csr_wait()?;
    Ok(read(MAC_CSR_DATA))
}

fn mac_write(reg: u32, value: u32) -> Result<(), NetError> {
    mac_csr_wait()?;
    write(MAC_CSR_DATA, value);
    write(MAC_CSR_CMD, MAC_CSR_BUSY | reg);
    mac_csr_wait()
}

/// Woken by the controller's interrupt (a frame is waiting).
static WAKER: AtomicWaker = AtomicWaker::new();

/// The LAN9118's interrupt: clear the source, wake the stack.
pub fn on_interrupt() {
    write(INT_STS, INT_RSFL);
    WAKER.wake();
}

/// The driver: one frame buffer each way; frames that are not IPv4 (or
/// are damaged) are dropped.
pub struct Lan9118 {
    mac: [u8; 6],
    rx: [u8; FRAME_BUF_BYTES],
    tx: [u8; FRAME_BUF_BYTES],
}

impl Lan9118 {
    /// Resets and starts the controller, and unmasks its interrupt.
    pub fn new() -> Result<Lan9118, NetError> {
        let test = read(BYTE_TEST);
        if test != BYTE_TEST_VALUE {
            return Err(NetError::NotFound(test));
        }
        write(HW_CFG, HW_CFG_SRST);
        poll(|| read(HW_CFG) & HW_CFG_SRST == 0)?;
        poll(|| read(PMT_CTRL) & PMT_CTRL_READY != 0)?;
        let lo = mac_read(MAC_ADDRL)?.to_le_bytes();
        let hi = mac_read(MAC_ADDRH)?.to_le_bytes();
        let mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        write(INT_EN, 0);
        write(INT_STS, u32::MAX);
        write(IRQ_CFG, IRQ_CFG_EN_HIGH_PUSH_PULL);
        write(TX_CFG, TX_CFG_ON_STATUS_OVERRUN);
        mac_write(MAC_CR, MAC_CR_FDPX_TX_RX)?;
        write(INT_EN, INT_RSFL);
        info!(
            "LAN9118 at {:#x}: ID_REV {:#010x}, MAC {:02x?}",
            BASE,
            read(ID_REV),
            mac
        );
        irq::enable(Irq::Ethernet);
        Ok(Lan9118 {
            mac,
            rx: [0; FRAME_BUF_BYTES],
            tx: [0; FRAME_BUF_BYTES],
        })
    }

    /// The MAC address QEMU gave the NIC (the host tool sets it from the node id).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Pops received frames until an intact IPv4 one (its IPv4 packet's
    /// length returned, the frame in `self.rx`); drops the rest.
    fn next_ipv4(&mut self) -> Option<usize> {
        while (read(RX_FIFO_INF) >> 16) & 0xff != 0 {
            let status = read(RX_STATUS);
            let len = ((status >> RX_STATUS_LEN_SHIFT) & RX_STATUS_LEN_MASK) as usize;
            let words = len.div_ceil(4);
            let fits = len <= FRAME_BUF_BYTES;
            for i in 0..words {
                let w = read(RX_DATA).to_le_bytes();
                if fits {
                    self.rx[4 * i..4 * i + 4].copy_from_slice(&w);
                }
            }
            let ok = fits
                && status & RX_STATUS_ERROR == 0
                && len >= ETH_HEADER_BYTES + IPV4_MIN_HEADER_BYTES + CRC_BYTES
                && self.rx[12..14] == ETHERTYPE_IPV4;
            if ok {
                return Some(len - CRC_BYTES - ETH_HEADER_BYTES);
            }
        }
        None
    }
}

/// A received IPv4 packet (in the driver's receive buffer).
pub struct Rx<'a> {
    packet: &'a mut [u8],
}

impl embassy_net_driver::RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.packet)
    }
}

/// Permission to send one frame (the controller has room for it).
pub struct Tx<'a> {
    buf: &'a mut [u8; FRAME_BUF_BYTES],
    mac: [u8; 6],
}

impl embassy_net_driver::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let frame_len = (len + ETH_HEADER_BYTES).min(FRAME_BUF_BYTES - CRC_BYTES);
        let frame = &mut self.buf[..frame_len];
        let r = f(&mut frame[ETH_HEADER_BYTES..]);
        let dst = addr::dst_mac(&frame[ETH_HEADER_BYTES..]);
        frame[0..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&self.mac);
        frame[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        let n = frame_len as u32;
        write(TX_DATA, TX_CMD_A_FIRST_LAST | n);
        write(TX_DATA, (n << 16) | n);
        for word in self.buf[..frame_len.next_multiple_of(4)].chunks_exact(4) {
            write(
                TX_DATA,
                u32::from_le_bytes([word[0], word[1], word[2], word[3]]),
            );
        }
        r
    }
}

impl embassy_net_driver::Driver for Lan9118 {
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
        if read(TX_FIFO_INF) & 0xffff < TX_NEED_BYTES {
            // No room to answer: leave the frame queued, look again soon.
            cx.waker().wake_by_ref();
            return None;
        }
        let len = self.next_ipv4()?;
        let Lan9118 { mac, rx, tx } = self;
        Some((
            Rx {
                packet: &mut rx[ETH_HEADER_BYTES..ETH_HEADER_BYTES + len],
            },
            Tx { buf: tx, mac: *mac },
        ))
    }

    fn transmit(&mut self, cx: &mut Context<'_>) -> Option<Tx<'_>> {
        if read(TX_FIFO_INF) & 0xffff < TX_NEED_BYTES {
            // The TX FIFO drains on its own (no interrupt for it is
            // enabled): look again on the next poll.
            cx.waker().wake_by_ref();
            return None;
        }
        Some(Tx {
            buf: &mut self.tx,
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
