//! The user-space L2 hub: QEMU nodes send Ethernet frames over `-netdev
//! dgram` to the switch port; the hub forwards them by destination MAC,
//! applying the fault state, and relays client datagrams between loopback
//! clients and the nodes (the gateway, LAN id [`addr::GATEWAY_ID`]).
//!
//! Gateway datagrams on loopback are `[node id][client protocol bytes]` in
//! both directions. Each loopback client gets its own virtual UDP port on
//! the LAN, so replies find their way back.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use metalraft_fw_proto::addr;

use crate::fault::FaultCommand;
use crate::frame::{self, Datagram};
use crate::ports::Ports;

/// How often hub threads check for shutdown.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Receive buffer size (jumbo frames are not used; this is generous).
const RECV_BUF_BYTES: usize = 65536;
/// First virtual port handed to loopback clients.
const FIRST_CLIENT_PORT: u16 = 40000;
/// Most loopback clients remembered at once (oldest forgotten first).
const MAX_CLIENTS: usize = 4096;
/// The firmware's peer protocol version byte (garbage behind it reaches
/// the decoder's deeper checks).
const PEER_WIRE_VERSION: u8 = 1;

/// Counters and faults of the fabric.
#[derive(Debug, Default)]
pub struct Fabric {
    nodes: u8,
    cuts: BTreeSet<(u8, u8)>,
    drop_percent: u8,
    rng: u64,
    /// Frames forwarded between nodes.
    pub forwarded: u64,
    /// Frames dropped by a cut link.
    pub dropped_cut: u64,
    /// Frames dropped by the drop percentage.
    pub dropped_random: u64,
    /// Frames dropped as malformed or from/to unknown ids.
    pub dropped_invalid: u64,
    clients: HashMap<SocketAddr, u16>,
    client_ports: HashMap<u16, SocketAddr>,
    next_client_port: u16,
}

impl Fabric {
    fn new(nodes: u8, seed: u64) -> Fabric {
        Fabric {
            nodes,
            rng: seed | 1,
            next_client_port: FIRST_CLIENT_PORT,
            ..Fabric::default()
        }
    }

    fn key(a: u8, b: u8) -> (u8, u8) {
        (a.min(b), a.max(b))
    }

    fn is_node(&self, id: u8) -> bool {
        (1..=self.nodes).contains(&id)
    }

    /// Applies a fault command; returns the reply line.
    pub fn apply(&mut self, cmd: &FaultCommand) -> String {
        match cmd {
            FaultCommand::Isolate(n) => {
                for other in (1..=self.nodes).filter(|o| o != n) {
                    self.cuts.insert(Self::key(*n, other));
                }
            }
            FaultCommand::Cut(a, b) => {
                self.cuts.insert(Self::key(*a, *b));
            }
            FaultCommand::Partition(groups) => {
                for (i, g) in groups.iter().enumerate() {
                    for h in &groups[i + 1..] {
                        for &a in g {
                            for &b in h {
                                self.cuts.insert(Self::key(a, b));
                            }
                        }
                    }
                }
            }
            FaultCommand::Drop(p) => self.drop_percent = *p,
            FaultCommand::Heal => {
                self.cuts.clear();
                self.drop_percent = 0;
            }
            FaultCommand::Show | FaultCommand::Garbage { .. } => {}
        }
        format!(
            "ok cuts={:?} drop={}% forwarded={} dropped_cut={} dropped_random={} dropped_invalid={}",
            self.cuts, self.drop_percent, self.forwarded, self.dropped_cut, self.dropped_random, self.dropped_invalid
        )
    }

    fn next_random_percent(&mut self) -> u8 {
        // xorshift64: deterministic from the seed, good enough for loss.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng % 100) as u8
    }

    /// Frames of garbage datagrams from node `from`'s Raft port to node
    /// `to`'s: random bytes, and random bytes behind a valid version byte.
    fn garbage(&mut self, from: u8, to: u8, count: u16) -> Vec<Vec<u8>> {
        (0..count)
            .filter_map(|i| {
                let len = 1 + usize::from(self.next_random_percent()) * 4;
                let mut payload: Vec<u8> = (0..len)
                    .map(|_| self.next_random_percent().wrapping_mul(37))
                    .collect();
                if i % 2 == 1 {
                    payload[0] = PEER_WIRE_VERSION;
                }
                frame::build(&Datagram {
                    src: from,
                    src_port: addr::RAFT_PORT,
                    dst: to,
                    dst_port: addr::RAFT_PORT,
                    payload: &payload,
                })
            })
            .collect()
    }

    /// Whether a frame from node `src` to node `dst` gets through.
    fn admit(&mut self, src: u8, dst: u8) -> bool {
        if self.cuts.contains(&Self::key(src, dst)) {
            self.dropped_cut += 1;
            return false;
        }
        if self.drop_percent > 0 && self.next_random_percent() < self.drop_percent {
            self.dropped_random += 1;
            return false;
        }
        self.forwarded += 1;
        true
    }

    fn client_port(&mut self, client: SocketAddr) -> u16 {
        if let Some(&p) = self.clients.get(&client) {
            return p;
        }
        let port = self.next_client_port;
        self.next_client_port = if usize::from(port - FIRST_CLIENT_PORT) + 1 >= MAX_CLIENTS {
            FIRST_CLIENT_PORT
        } else {
            port + 1
        };
        if let Some(old) = self.client_ports.insert(port, client) {
            self.clients.remove(&old);
        }
        self.clients.insert(client, port);
        port
    }
}

/// A running hub; stops and joins its threads when dropped.
pub struct Hub {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    fabric: Arc<Mutex<Fabric>>,
    switch: Arc<UdpSocket>,
    ports: Ports,
}

/// Applies `cmd` and carries out what it asks of the network.
fn execute(cmd: &FaultCommand, fabric: &Mutex<Fabric>, switch: &UdpSocket, ports: Ports) -> String {
    let mut fab = lock(fabric);
    let reply = fab.apply(cmd);
    if let FaultCommand::Garbage { from, to, count } = *cmd {
        let frames = fab.garbage(from, to, count);
        drop(fab);
        for f in &frames {
            let _ = switch.send_to(f, ports.node(to));
        }
        return format!(
            "sent {} garbage datagrams {from} -> {to}; {reply}",
            frames.len()
        );
    }
    reply
}

fn lock(f: &Mutex<Fabric>) -> MutexGuard<'_, Fabric> {
    // A panicking hub thread cannot leave the fabric half-updated in a way
    // that matters (counters and sets), so keep going.
    f.lock().unwrap_or_else(|e| e.into_inner())
}

fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let s =
        UdpSocket::bind(addr).map_err(|e| io::Error::new(e.kind(), format!("bind {addr}: {e}")))?;
    s.set_read_timeout(Some(POLL_INTERVAL))?;
    Ok(s)
}

impl Hub {
    /// Binds the switch, control and gateway ports and starts forwarding.
    pub fn start(ports: Ports, nodes: u8, seed: u64) -> io::Result<Hub> {
        let switch = Arc::new(bind(ports.switch())?);
        let control = bind(ports.control())?;
        let gateway = Arc::new(bind(ports.gateway())?);
        let fabric = Arc::new(Mutex::new(Fabric::new(nodes, seed)));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        {
            let (switch, gateway, fabric, stop) = (
                switch.clone(),
                gateway.clone(),
                fabric.clone(),
                stop.clone(),
            );
            threads.push(thread::spawn(move || {
                switch_loop(ports, &switch, &gateway, &fabric, &stop)
            }));
        }
        {
            let (switch, fabric, stop) = (switch.clone(), fabric.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                control_loop(ports, nodes, &control, &switch, &fabric, &stop)
            }));
        }
        {
            let (switch, fabric, stop) = (switch.clone(), fabric.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                gateway_loop(ports, nodes, &switch, &gateway, &fabric, &stop)
            }));
        }
        Ok(Hub {
            stop,
            threads,
            fabric,
            switch,
            ports,
        })
    }

    /// Applies a fault command directly (tests use this or the control port).
    pub fn apply(&self, cmd: &FaultCommand) -> String {
        execute(cmd, &self.fabric, &self.switch, self.ports)
    }

    /// Blocks until the hub's threads end (never, unless they fail).
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn recv<'a>(sock: &UdpSocket, buf: &'a mut [u8]) -> Option<(&'a [u8], SocketAddr)> {
    match sock.recv_from(buf) {
        Ok((n, from)) => Some((&buf[..n], from)),
        Err(_) => None, // timeout (or transient error): check the stop flag
    }
}

fn switch_loop(
    ports: Ports,
    switch: &UdpSocket,
    gateway: &UdpSocket,
    fabric: &Mutex<Fabric>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; RECV_BUF_BYTES];
    while !stop.load(Ordering::Relaxed) {
        let Some((f, from)) = recv(switch, &mut buf) else {
            continue;
        };
        let mut fab = lock(fabric);
        let Some((src, dst)) = frame::l2_ids(f) else {
            fab.dropped_invalid += 1;
            continue;
        };
        // Only node N's own QEMU endpoint may speak for node N.
        if !fab.is_node(src) || from != ports.node(src) {
            fab.dropped_invalid += 1;
            continue;
        }
        if dst == addr::GATEWAY_ID {
            let reply = frame::parse(f).and_then(|d| {
                let client = fab.client_ports.get(&d.dst_port).copied()?;
                let mut out = Vec::with_capacity(1 + d.payload.len());
                out.push(src);
                out.extend_from_slice(d.payload);
                Some((out, client))
            });
            drop(fab);
            match reply {
                Some((out, client)) => {
                    let _ = gateway.send_to(&out, client);
                }
                None => lock(fabric).dropped_invalid += 1,
            }
            continue;
        }
        let targets: Vec<u8> = if f[0] & 1 == 1 {
            (1..=fab.nodes).filter(|&n| n != src).collect() // broadcast/multicast
        } else if fab.is_node(dst) {
            vec![dst]
        } else {
            fab.dropped_invalid += 1;
            continue;
        };
        let admitted: Vec<u8> = targets.into_iter().filter(|&t| fab.admit(src, t)).collect();
        drop(fab);
        for t in admitted {
            let _ = switch.send_to(f, ports.node(t));
        }
    }
}

fn control_loop(
    ports: Ports,
    nodes: u8,
    control: &UdpSocket,
    switch: &UdpSocket,
    fabric: &Mutex<Fabric>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; RECV_BUF_BYTES];
    while !stop.load(Ordering::Relaxed) {
        let Some((cmd, from)) = recv(control, &mut buf) else {
            continue;
        };
        let line = String::from_utf8_lossy(cmd).to_string();
        let reply = match FaultCommand::parse(&line, nodes) {
            Ok(c) => execute(&c, fabric, switch, ports),
            Err(e) => format!("error: {e}"),
        };
        eprintln!("hub: control {:?} -> {}", line.trim(), reply);
        let _ = control.send_to(reply.as_bytes(), from);
    }
}

fn gateway_loop(
    ports: Ports,
    nodes: u8,
    switch: &UdpSocket,
    gateway: &UdpSocket,
    fabric: &Mutex<Fabric>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; RECV_BUF_BYTES];
    while !stop.load(Ordering::Relaxed) {
        let Some((d, from)) = recv(gateway, &mut buf) else {
            continue;
        };
        let Some((&node, payload)) = d.split_first() else {
            continue;
        };
        if !(1..=nodes).contains(&node) {
            lock(fabric).dropped_invalid += 1;
            continue;
        }
        let port = lock(fabric).client_port(from);
        let dgram = Datagram {
            src: addr::GATEWAY_ID,
            src_port: port,
            dst: node,
            dst_port: addr::CLIENT_PORT,
            payload,
        };
        match frame::build(&dgram) {
            Some(f) => {
                let _ = switch.send_to(&f, ports.node(node));
            }
            None => lock(fabric).dropped_invalid += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_cut_and_heal() {
        let mut f = Fabric::new(5, 1);
        assert!(f.admit(1, 2));
        f.apply(&FaultCommand::Isolate(1));
        assert!(!f.admit(1, 2) && !f.admit(5, 1));
        assert!(f.admit(2, 3));
        f.apply(&FaultCommand::Heal);
        assert!(f.admit(1, 2));
        f.apply(&FaultCommand::Partition(vec![vec![1, 2], vec![3, 4, 5]]));
        assert!(f.admit(1, 2) && f.admit(3, 5) && !f.admit(2, 3));
        f.apply(&FaultCommand::Heal);
        f.apply(&FaultCommand::Drop(100));
        assert!(!f.admit(1, 2));
        f.apply(&FaultCommand::Drop(50));
        let passed = (0..1000).filter(|_| f.admit(3, 4)).count();
        assert!((300..700).contains(&passed), "{passed}");
    }

    #[test]
    fn client_ports_are_bounded_and_reused() {
        let mut f = Fabric::new(3, 1);
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let p = f.client_port(a);
        assert_eq!(f.client_port(a), p);
        for i in 0..MAX_CLIENTS as u16 + 10 {
            f.client_port(SocketAddr::from(([127, 0, 0, 1], 2000 + i)));
        }
        assert!(f.clients.len() <= MAX_CLIENTS && f.client_ports.len() <= MAX_CLIENTS);
    }
}
