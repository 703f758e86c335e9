//! MetalRaft firmware: one Raft node per emulated microcontroller (QEMU
//! `virt` RISC-V, or QEMU `mps2-an386` Cortex-M4F), driving a
//! `metalraft-replica` replica (`metalraft-core` plus `metalraft-kv`) on
//! Embassy. See README.md for the architecture.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

extern crate alloc;

#[macro_use]
mod fmt;
mod platform;
mod raft;
mod storage;

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, StackResources, StaticConfigV4};
use metalraft_fw_proto::addr;
use metalraft_fw_proto::config::{NodeConfig, CONFIG_BLOCK_BYTES};
use static_cell::StaticCell;

use platform::board::NetDriver;
use platform::disk::Disk;

/// Sockets the network stack can hold (Raft + client).
const STACK_SOCKETS: usize = 2;

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    error!("PANIC: {}", info);
    halt()
}

/// Stops the node for good (the host sees the log line and the dead node).
pub(crate) fn halt() -> ! {
    loop {
        #[cfg(target_arch = "riscv32")]
        riscv::asm::wfi();
        #[cfg(target_arch = "arm")]
        cortex_m::asm::wfi();
    }
}

#[embassy_executor::task]
async fn net_task(mut runner: embassy_net::Runner<'static, NetDriver>) -> ! {
    runner.run().await
}

fn read_config(disk: &mut Disk) -> Result<NodeConfig, &'static str> {
    let mut block = [0u8; CONFIG_BLOCK_BYTES];
    disk.read(0, &mut block)
        .map_err(|_| "cannot read the config sector")?;
    NodeConfig::decode(&block).map_err(|e| {
        error!("config block: {}", e);
        "invalid config block"
    })
}

#[allow(unsafe_code)] // the entry point is exported by the executor macro
#[embassy_executor::main]
async fn main(spawner: Spawner) {
    platform::ram::paint_stack();
    platform::heap::init();
    platform::time::init();
    info!("boot: metalraft-firmware {}", env!("CARGO_PKG_VERSION"));

    // QEMU virt: the virtio devices and the disk, the config block, the NIC
    // (the code as it was before there was a second board, each statement
    // marked as this board's: the RISC-V image stays unchanged).
    #[cfg(target_arch = "riscv32")]
    let devices = platform::virtio::discover();
    #[cfg(target_arch = "riscv32")]
    let (Some(net_dev), Some(blk_dev)) = (devices.net, devices.blk) else {
        error!("need one virtio-net and one virtio-blk device");
        halt()
    };
    #[cfg(target_arch = "riscv32")]
    let mut disk = match Disk::new(blk_dev.transport) {
        Ok(d) => {
            platform::irq::enable_blk(blk_dev.irq, blk_dev.base);
            d
        }
        Err(e) => {
            error!("disk: {}", e);
            halt()
        }
    };
    // QEMU mps2-an386: the storage file (semihosting), then the LAN9118.
    #[cfg(target_arch = "arm")]
    let (mut disk, nic) = platform::board::start();
    let cfg = match read_config(&mut disk) {
        Ok(c) => c,
        Err(e) => {
            error!("{}; halting", e);
            halt()
        }
    };
    #[cfg(target_arch = "arm")]
    let net = platform::board::net(nic, &cfg);
    #[cfg(target_arch = "riscv32")]
    let Some(net) = NetDriver::new(net_dev.transport) else {
        error!("virtio-net init failed");
        halt()
    };
    #[cfg(target_arch = "riscv32")]
    if net.mac() != addr::mac(cfg.node_id) {
        warn!(
            "NIC MAC {:02x?} does not match node {}'s plan {:02x?}",
            net.mac(),
            cfg.node_id,
            addr::mac(cfg.node_id)
        );
    }
    #[cfg(target_arch = "riscv32")]
    platform::irq::enable_net(net_dev.irq, net_dev.base);
    #[cfg(target_arch = "riscv32")]
    platform::irq::enable_all();

    let ip = addr::ip(cfg.node_id);
    let net_config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(
            Ipv4Address::new(ip[0], ip[1], ip[2], ip[3]),
            addr::PREFIX_LEN,
        ),
        gateway: None,
        dns_servers: Default::default(),
    });
    static RESOURCES: StaticCell<StackResources<STACK_SOCKETS>> = StaticCell::new();
    let (stack, runner) = embassy_net::new(
        net,
        net_config,
        RESOURCES.init(StackResources::new()),
        cfg.rng_seed,
    );
    spawner.spawn(net_task(runner).expect("net task spawns once"));
    // As u64 ids, the type every other id list is printed with (one Debug
    // instantiation less).
    let voters: alloc::vec::Vec<u64> = cfg.members.iter().map(|&m| u64::from(m)).collect();
    info!(
        "node {} up: {}.{}.{}.{}/{} bootstrap voters {:?} disk {} sectors",
        cfg.node_id,
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        addr::PREFIX_LEN,
        voters,
        disk.sectors()
    );

    // The config block's voters matter only on a fresh disk (see
    // `DiskLog::open`); a joiner passes none and starts with an empty log.
    let bootstrap: &[u64] = match cfg.bootstraps() {
        true => &voters,
        false => &[],
    };
    let disk_waiter = disk.waiter();
    let (log, recovered, snapshot) = match storage::DiskLog::open(disk, bootstrap) {
        Ok(r) => r,
        Err(e) => {
            error!("storage recovery failed: {}; halting", e);
            halt()
        }
    };
    info!(
        "recovered snapshot at {} + {} entries (torn records discarded: {}, bootstrapped: {}), boot #{}",
        recovered.snapshot_index,
        recovered.entries,
        recovered.torn_records,
        recovered.bootstrapped,
        log.boots()
    );
    let shell = match raft::Shell::new(&cfg, log, recovered, snapshot) {
        Ok(s) => s,
        Err(e) => {
            error!("{}; halting", e);
            halt()
        }
    };
    let tick = embassy_time::Duration::from_millis(u64::from(cfg.tick_ms));
    spawner.spawn(raft::raft_task(stack, shell, disk_waiter, tick).expect("raft task spawns once"));
}
