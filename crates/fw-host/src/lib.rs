//! Host side of the MetalRaft firmware: build it, make disk images, run a
//! QEMU cluster behind a user-space L2 hub with fault control, and talk to
//! it through a UDP gateway on loopback. The `metalraft-fw` binary is a thin
//! CLI over this library; the integration tests use it directly.

#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

pub mod bench;
pub mod client;
pub mod cluster;
pub mod fault;
pub mod firmware;
pub mod frame;
pub mod hub;
pub mod image;
pub mod ports;
