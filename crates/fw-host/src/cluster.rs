//! A cluster on this machine: its directory (images, logs, state), the
//! QEMU command line of each node, and [`LocalCluster`], which owns a hub
//! and the QEMU children in-process (used by the tests and by
//! `metalraft-fw cluster run`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use metalraft_fw_proto::addr::{self, MAX_NODE_ID};
use metalraft_fw_proto::config::NodeConfig;
use metalraft_fw_proto::disk::DEFAULT_DISK_BYTES;

use crate::hub::Hub;
use crate::image;
use crate::ports::Ports;

/// Fewest nodes a cluster may have.
pub const MIN_NODES: u8 = 3;
/// QEMU binary.
pub const QEMU: &str = "qemu-system-riscv32";
/// QEMU binary of the Cortex-M nodes.
pub const QEMU_ARM: &str = "qemu-system-arm";
/// Prefix of the per-node diagnostic variable that appends QEMU arguments
/// (`METALRAFT_FW_QEMU_EXTRA_2="-d exec,nochain -D /tmp/n2.log"`).
pub const QEMU_EXTRA_ENV: &str = "METALRAFT_FW_QEMU_EXTRA_";
/// QEMU machine of the Cortex-M nodes.
pub const ARM_MACHINE: &str = "mps2-an386";
/// Guest RAM given to each node (the firmware uses a fraction; see its README).
pub const GUEST_RAM: &str = "16M";
/// Default Raft tick period.
pub const DEFAULT_TICK_MS: u16 = 20;
/// Default heartbeat period in ticks.
pub const DEFAULT_HEARTBEAT_TICKS: u16 = 2;
/// Default election timeout range in ticks: 500..1000 ms at 20 ms per
/// tick. Generous: five emulators share two host cores, and a node's loop
/// stalls while the host fsyncs its disk image, which on a loaded machine
/// can take a good fraction of a second.
pub const DEFAULT_ELECTION_TICKS: (u16, u16) = (25, 50);

/// Default snapshot threshold: a snapshot of a few hundred small keys costs
/// a few KiB of disk writes, and keeps the log (and the RAM index) short.
pub const DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES: u16 = 256;

/// Everything that defines a cluster on disk and on loopback.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Directory for images, logs and state.
    pub dir: PathBuf,
    /// Number of nodes (ids `1..=nodes`).
    pub nodes: u8,
    /// The bootstrap voters are `1..=voters` (the config block's
    /// `members`); nodes above start as joiners, members only once added.
    pub voters: u8,
    /// Loopback ports.
    pub ports: Ports,
    /// Raft tick period.
    pub tick_ms: u16,
    /// Heartbeat period in ticks.
    pub heartbeat_ticks: u16,
    /// Election timeout range in ticks.
    pub election_ticks: (u16, u16),
    /// Disk image size.
    pub disk_bytes: u64,
    /// Snapshot (and compact the log) every this many applied entries.
    pub snapshot_threshold_entries: u16,
    /// The firmware ELF.
    pub elf: PathBuf,
    /// The last `arm` nodes run the Cortex-M4F build on QEMU `mps2-an386`
    /// (on-board LAN9118, the same disk image as a semihosting file).
    pub arm: u8,
    /// The Cortex-M4F firmware ELF (used when `arm > 0`).
    pub arm_elf: PathBuf,
}

impl ClusterSpec {
    /// A spec with default timing.
    pub fn new(dir: &Path, nodes: u8, ports: Ports, elf: &Path) -> io::Result<ClusterSpec> {
        if !(MIN_NODES..=MAX_NODE_ID).contains(&nodes) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--nodes must be in {MIN_NODES}..={MAX_NODE_ID}, got {nodes}"),
            ));
        }
        Ok(ClusterSpec {
            dir: dir.to_path_buf(),
            nodes,
            voters: nodes,
            ports,
            tick_ms: DEFAULT_TICK_MS,
            heartbeat_ticks: DEFAULT_HEARTBEAT_TICKS,
            election_ticks: DEFAULT_ELECTION_TICKS,
            disk_bytes: DEFAULT_DISK_BYTES,
            snapshot_threshold_entries: DEFAULT_SNAPSHOT_THRESHOLD_ENTRIES,
            elf: elf.to_path_buf(),
            arm: 0,
            arm_elf: PathBuf::new(),
        })
    }

    /// This spec with its last `arm` nodes running `arm_elf` on QEMU
    /// `mps2-an386` (all the others stay RISC-V).
    pub fn with_arm(mut self, arm: u8, arm_elf: &Path) -> io::Result<ClusterSpec> {
        if arm > self.nodes {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--arm {arm} is more than the {} nodes", self.nodes),
            ));
        }
        self.arm = arm;
        self.arm_elf = arm_elf.to_path_buf();
        Ok(self)
    }

    /// Whether node `id` is a Cortex-M node.
    pub fn is_arm(&self, id: u8) -> bool {
        id > self.nodes - self.arm
    }

    /// This spec with `extra` more nodes (ids after the bootstrap voters)
    /// that are not in the bootstrap membership: they start with an empty
    /// log and join once a `member add` adds them.
    pub fn with_joiners(mut self, extra: u8) -> io::Result<ClusterSpec> {
        let nodes = self.nodes.saturating_add(extra);
        if nodes > MAX_NODE_ID {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} nodes plus {extra} extra is above {MAX_NODE_ID} nodes",
                    self.nodes
                ),
            ));
        }
        self.nodes = nodes;
        Ok(self)
    }

    /// Node ids.
    pub fn ids(&self) -> impl Iterator<Item = u8> {
        1..=self.nodes
    }

    /// The config block of node `id`.
    pub fn node_config(&self, id: u8) -> NodeConfig {
        NodeConfig {
            node_id: id,
            members: (1..=self.voters).collect(),
            tick_ms: self.tick_ms,
            heartbeat_ticks: self.heartbeat_ticks,
            election_ticks_min: self.election_ticks.0,
            election_ticks_max: self.election_ticks.1,
            snapshot_threshold_entries: self.snapshot_threshold_entries,
            rng_seed: 0x6d72_6677_0000_0000 ^ (u64::from(id) << 8) ^ u64::from(self.ports.base),
        }
    }

    /// Node `id`'s disk image.
    pub fn image(&self, id: u8) -> PathBuf {
        self.dir.join(format!("node{id}.img"))
    }

    /// Node `id`'s console log (appended across restarts).
    pub fn log(&self, id: u8) -> PathBuf {
        self.dir.join(format!("node{id}.log"))
    }

    /// Creates the directory and every node's image (replacing old ones).
    pub fn create_images(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        for id in self.ids() {
            image::create(&self.image(id), &self.node_config(id), self.disk_bytes)?;
        }
        Ok(())
    }

    /// Fails with a clear message if a port of this cluster is taken.
    pub fn check_ports_free(&self) -> io::Result<()> {
        for a in self.ports.all(self.nodes) {
            UdpSocket::bind(a).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("port {a} is in use ({e}); pick another --base-port"),
                )
            })?;
        }
        Ok(())
    }

    /// The QEMU command for node `id` (stdout/stderr appended to its log).
    pub fn qemu_command(&self, id: u8) -> io::Result<Command> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(id))?;
        writeln!(log, "==== host: starting node {id} ====")?;
        let mac = addr::mac(id);
        let mac = mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let netdev = format!(
            "dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port={},remote.type=inet,remote.host=127.0.0.1,remote.port={}",
            self.ports.node(id).port(),
            self.ports.switch().port()
        );
        let mut cmd;
        if self.is_arm(id) {
            // The board's own NIC (`-net nic` names the on-board lan9118
            // model; `-nic` cannot take dgram's dotted options) on the same
            // hub; the disk image is the semihosting argument
            // (`disk=PATH`; QEMU's `,` in an option value is written `,,`).
            let storage = self.image(id).display().to_string().replace(',', ",,");
            cmd = Command::new(QEMU_ARM);
            cmd.args(["-M", ARM_MACHINE, "-display", "none", "-monitor", "none"])
                .args(["-serial", "stdio"])
                .arg("-semihosting-config")
                .arg(format!("enable=on,target=native,arg=disk={storage}"))
                .arg("-kernel")
                .arg(&self.arm_elf)
                .args(["-netdev", &netdev])
                .arg("-net")
                .arg(format!("nic,netdev=n0,model=lan9118,macaddr={mac}"));
        } else {
            let drive = format!("file={},format=raw,if=none,id=d0", self.image(id).display());
            cmd = Command::new(QEMU);
            cmd.args([
                "-M", "virt", "-m", GUEST_RAM, "-bios", "none", "-display", "none", "-monitor",
                "none",
            ])
            .args([
                "-serial",
                "stdio",
                "-global",
                "virtio-mmio.force-legacy=false",
            ])
            .arg("-kernel")
            .arg(&self.elf)
            .args(["-drive", &drive, "-device", "virtio-blk-device,drive=d0"])
            .args([
                "-netdev",
                &netdev,
                "-device",
                &format!("virtio-net-device,netdev=n0,mac={mac}"),
            ]);
        }
        // Diagnostic: `METALRAFT_FW_QEMU_EXTRA_<id>` (e.g. `_2`) appends
        // whitespace-separated QEMU arguments for that node only, such as
        // `-d exec,nochain -D /tmp/n2.log` to profile one node (see the
        // firmware README, "Where the emulated CPU goes").
        if let Ok(extra) = std::env::var(format!("{QEMU_EXTRA_ENV}{id}")) {
            cmd.args(extra.split_whitespace());
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a terminal's Ctrl-C aimed at the tool does
            // not take the nodes down with it.
            .process_group(0);
        Ok(cmd)
    }
}

/// A cluster owned by this process: the hub runs on threads, every node is
/// a child QEMU. Dropping it kills the nodes and stops the hub.
pub struct LocalCluster {
    /// The spec.
    pub spec: ClusterSpec,
    /// The hub (apply faults through it).
    pub hub: Hub,
    nodes: Vec<Option<Child>>,
}

impl LocalCluster {
    /// Makes fresh images, starts the hub and every node.
    pub fn start(spec: ClusterSpec) -> io::Result<LocalCluster> {
        spec.check_ports_free()?;
        spec.create_images()?;
        let hub = Hub::start(spec.ports, spec.nodes, u64::from(spec.ports.base))?;
        let mut c = LocalCluster {
            nodes: (0..spec.nodes).map(|_| None).collect(),
            spec,
            hub,
        };
        for id in c.spec.ids() {
            c.start_node(id)?;
        }
        Ok(c)
    }

    /// Starts node `id` (from its existing disk) if it is not running.
    pub fn start_node(&mut self, id: u8) -> io::Result<()> {
        let slot = &mut self.nodes[usize::from(id - 1)];
        if slot.is_none() {
            *slot = Some(self.spec.qemu_command(id)?.spawn()?);
        }
        Ok(())
    }

    /// Kills node `id`'s QEMU with SIGKILL (kill -9) and reaps it.
    pub fn kill_node(&mut self, id: u8) -> io::Result<()> {
        if let Some(mut child) = self.nodes[usize::from(id - 1)].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Whether node `id` is running.
    pub fn is_running(&self, id: u8) -> bool {
        self.nodes[usize::from(id - 1)].is_some()
    }

    /// Node `id`'s exit status if its QEMU exited on its own (reaped; the
    /// node can be started again), `None` while it runs.
    pub fn exited(&mut self, id: u8) -> io::Result<Option<ExitStatus>> {
        let slot = &mut self.nodes[usize::from(id - 1)];
        let Some(child) = slot.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            *slot = None;
        }
        Ok(status)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for id in self.spec.ids().collect::<Vec<_>>() {
            let _ = self.kill_node(id);
        }
    }
}
