//! QEMU `virt`'s bring-up is in `main` itself (the virtio devices, the
//! disk's config block, the NIC: the code from before there was a second
//! board, which keeps the RISC-V image unchanged); this module names the
//! board's network driver for the rest of the crate.

/// The network driver of this board.
pub type NetDriver = super::net::VirtioNet;
