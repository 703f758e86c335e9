//! The Raft node task: one Embassy task owns the [`Shell`] (the
//! `metalraft-replica` replica and its I/O) and two UDP sockets (peers on
//! `RAFT_PORT`, clients on `CLIENT_PORT`). It waits for a datagram or the
//! next tick, feeds the shell, then for every output of the replica: sends
//! its messages and client answers, writes and flushes its persistence
//! batch — receiving datagrams, ticking and taking the replica's next
//! output while the disk finishes it (that output's batch is written once
//! this one is acknowledged) — and acknowledges it once the disk is done,
//! which only then releases the messages that promise that state (they go
//! out with a later output).
//! A node that applies its own removal from the cluster answers its
//! waiting clients and powers off at the next tick (so the network task
//! sends those answers first).

mod limits;
mod shell;
pub mod wire;

use core::task::Poll;

use embassy_futures::poll_once;
use embassy_futures::select::{select4, Either4};
use embassy_net::udp::{PacketMetadata, RecvError, UdpMetadata, UdpSocket};
use embassy_net::{IpAddress, IpEndpoint, Ipv4Address, Stack};
use embassy_time::{Duration, Instant, Timer};
use metalraft_fw_proto::addr::{self, MAX_DATAGRAM_BYTES};

pub use shell::{Outbox, PeerDrop, PeerOut, Shell};

use crate::platform::disk::DiskWaiter;

/// Datagrams the Raft socket queues per direction.
const SOCKET_QUEUE_DATAGRAMS: usize = 16;
/// Datagrams the client socket queues per direction: every write the node
/// admits at once (`MAX_PENDING_WRITES`) can arrive in one burst without
/// the socket dropping one.
const CLIENT_QUEUE_DATAGRAMS: usize = limits::MAX_PENDING_WRITES;
/// Raft socket buffer bytes per direction.
const RAFT_SOCKET_BYTES: usize = 8 * 1024;
/// Datagrams (per socket) taken in one wake-up before driving the node.
const MAX_DATAGRAMS_PER_WAKE: usize = CLIENT_QUEUE_DATAGRAMS;
/// Client socket buffer bytes per direction (a burst of small requests,
/// or of answers, fits).
const CLIENT_SOCKET_BYTES: usize = 8 * 1024;

fn lan_id(ep: &IpEndpoint) -> Option<u8> {
    match ep.addr {
        IpAddress::Ipv4(a) => addr::id_of_ip(a.octets()),
    }
}

fn peer_endpoint(id: u8, port: u16) -> IpEndpoint {
    let ip = addr::ip(id);
    IpEndpoint::new(
        IpAddress::Ipv4(Ipv4Address::new(ip[0], ip[1], ip[2], ip[3])),
        port,
    )
}

/// Sends everything in `out`; returns how many datagrams went to peers and
/// to clients.
async fn flush_outbox(
    out: &mut Outbox,
    raft: &mut UdpSocket<'_>,
    clients: &mut UdpSocket<'_>,
    buf: &mut [u8; MAX_DATAGRAM_BYTES],
) -> (u64, u64) {
    let counts = (out.peers.len() as u64, out.clients.len() as u64);
    for (to, item) in out.peers.drain(..) {
        let bytes = match &item {
            PeerOut::Raft(msg) => match wire::encode(msg, buf) {
                Ok(bytes) => bytes,
                Err(e) => {
                    warn!("message to {} not sent: {}", to, e);
                    continue;
                }
            },
            PeerOut::Removed(notice) => &notice[..],
        };
        // A send error (no route, buffer trouble) is a lost datagram: Raft
        // retransmits.
        let _ = raft
            .send_to(bytes, peer_endpoint(to, addr::RAFT_PORT))
            .await;
    }
    for (ep, resp) in out.clients.drain(..) {
        // Encoded into the send buffer, not a fresh `Vec` per answer. An
        // answer that does not fit one datagram is lost like any other.
        if let Some(bytes) = resp.encode_into(buf) {
            let _ = clients.send_to(bytes, ep).await;
        }
    }
    counts
}

/// Sends `out` and counts it in the shell's [`Perf`](metalraft_fw_proto::client::Perf).
async fn send(
    shell: &mut Shell,
    out: &mut Outbox,
    raft: &mut UdpSocket<'_>,
    clients: &mut UdpSocket<'_>,
    buf: &mut [u8; MAX_DATAGRAM_BYTES],
) {
    if out.peers.is_empty() && out.clients.is_empty() {
        return;
    }
    let start = Instant::now();
    let (peers, answers) = flush_outbox(out, raft, clients, buf).await;
    let p = &mut shell.perf;
    p.send_us += start.elapsed().as_micros();
    p.peer_out += peers;
    p.client_out += answers;
}

/// Hands a datagram received on the Raft port to the shell, or counts why
/// it was dropped.
fn on_raft_datagram(
    shell: &mut Shell,
    received: Result<(usize, UdpMetadata), RecvError>,
    buf: &[u8],
    out: &mut Outbox,
) {
    let start = Instant::now();
    match received {
        Ok((n, meta)) => match lan_id(&meta.endpoint) {
            Some(src) if meta.endpoint.port == addr::RAFT_PORT => {
                shell.on_peer_datagram(&buf[..n], src, out)
            }
            _ => shell.drop_peer_datagram(PeerDrop::ForeignSource, 0),
        },
        Err(RecvError::Truncated) => shell.drop_peer_datagram(PeerDrop::Truncated, 0),
    }
    shell.perf.raft_us += start.elapsed().as_micros();
}

/// Hands a datagram received on the client port to the shell.
fn on_client(
    shell: &mut Shell,
    received: Result<(usize, UdpMetadata), RecvError>,
    buf: &[u8],
    out: &mut Outbox,
) {
    let start = Instant::now();
    match received {
        Ok((n, meta)) => shell.on_client_datagram(&buf[..n], meta.endpoint, out),
        Err(RecvError::Truncated) => shell.drop_client_datagram(),
    }
    shell.perf.raft_us += start.elapsed().as_micros();
}

/// Runs the node forever.
#[embassy_executor::task]
pub async fn raft_task(
    stack: Stack<'static>,
    mut shell: Shell,
    disk: DiskWaiter,
    tick: Duration,
) -> ! {
    let mut raft_rx_meta = [PacketMetadata::EMPTY; SOCKET_QUEUE_DATAGRAMS];
    let mut raft_tx_meta = [PacketMetadata::EMPTY; SOCKET_QUEUE_DATAGRAMS];
    let mut raft_rx = [0u8; RAFT_SOCKET_BYTES];
    let mut raft_tx = [0u8; RAFT_SOCKET_BYTES];
    let mut raft = UdpSocket::new(
        stack,
        &mut raft_rx_meta,
        &mut raft_rx,
        &mut raft_tx_meta,
        &mut raft_tx,
    );
    let mut cl_rx_meta = [PacketMetadata::EMPTY; CLIENT_QUEUE_DATAGRAMS];
    let mut cl_tx_meta = [PacketMetadata::EMPTY; CLIENT_QUEUE_DATAGRAMS];
    let mut cl_rx = [0u8; CLIENT_SOCKET_BYTES];
    let mut cl_tx = [0u8; CLIENT_SOCKET_BYTES];
    let mut clients = UdpSocket::new(
        stack,
        &mut cl_rx_meta,
        &mut cl_rx,
        &mut cl_tx_meta,
        &mut cl_tx,
    );
    if raft.bind(addr::RAFT_PORT).is_err() || clients.bind(addr::CLIENT_PORT).is_err() {
        error!("cannot bind the Raft and client ports");
        crate::halt();
    }

    let mut rbuf = [0u8; MAX_DATAGRAM_BYTES];
    let mut cbuf = [0u8; MAX_DATAGRAM_BYTES];
    let mut sbuf = [0u8; MAX_DATAGRAM_BYTES];
    let mut out = Outbox::default();
    let mut next_tick = Instant::now() + tick;
    loop {
        // Wait for a datagram, the next tick, or the disk to finish the
        // batch on it (its acknowledgement then releases what it promised).
        let syncing = shell.syncing();
        let waiting = Instant::now();
        let woke = select4(
            disk.idle(syncing),
            raft.recv_from(&mut rbuf),
            clients.recv_from(&mut cbuf),
            Timer::at(next_tick),
        )
        .await;
        if syncing {
            shell.perf.disk_wait_us += waiting.elapsed().as_micros();
        }
        let awake = Instant::now();
        shell.perf.wakeups += 1;
        match woke {
            Either4::First(r) => shell.acknowledge(r, &mut out),
            Either4::Second(received) => {
                shell.perf.peer_in += 1;
                on_raft_datagram(&mut shell, received, &rbuf, &mut out)
            }
            Either4::Third(received) => {
                shell.perf.client_in += 1;
                on_client(&mut shell, received, &cbuf, &mut out)
            }
            Either4::Fourth(()) => on_tick(&mut shell, &mut next_tick, tick),
        }
        // Answers the shell gave at once (status, redirects, refusals,
        // removal notices).
        send(&mut shell, &mut out, &mut raft, &mut clients, &mut sbuf).await;
        // Take whatever else already arrived before polling the replica, so
        // a burst of datagrams becomes one output — one append per
        // follower, one acknowledgement to the leader, one log append and
        // flush (group commit) — rather than one per datagram.
        for _ in 0..MAX_DATAGRAMS_PER_WAKE {
            let mut progressed = false;
            if let Poll::Ready(received) = poll_once(clients.recv_from(&mut cbuf)) {
                shell.perf.client_in += 1;
                on_client(&mut shell, received, &cbuf, &mut out);
                progressed = true;
            }
            if let Poll::Ready(received) = poll_once(raft.recv_from(&mut rbuf)) {
                shell.perf.peer_in += 1;
                on_raft_datagram(&mut shell, received, &rbuf, &mut out);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        // Drive the node: take each output of the replica and send its
        // messages before its disk write, so followers write in parallel
        // with the leader (the core keeps every message that promises
        // durable state until its batch is acknowledged). Batches are
        // pipelined: while one is on the disk (its flush running) the task
        // keeps receiving and takes the replica's next output, whose
        // messages leave at once; its batch is written the moment the one
        // on the disk is acknowledged (`Pump`).
        loop {
            let polled = Instant::now();
            let took = shell.poll(&mut out);
            shell.perf.raft_us += polled.elapsed().as_micros();
            send(&mut shell, &mut out, &mut raft, &mut clients, &mut sbuf).await;
            if !(shell.write(&mut out) || took) {
                break;
            }
        }
        shell.perf.busy_us += awake.elapsed().as_micros();
    }
}

/// One tick of the node (or its power-off, once removed), and the next
/// tick's time. (Out of line: .text.)
#[inline(never)]
fn on_tick(shell: &mut Shell, next_tick: &mut Instant, tick: Duration) {
    if let Some(index) = shell.removed() {
        info!("removed from the cluster at index {}: stopping", index);
        crate::platform::power::off();
    }
    shell.perf.ticks += 1;
    shell.tick();
    *next_tick += tick;
    // After a long stall (host overloaded), do not replay missed ticks in a
    // burst: that would fire election timeouts at once.
    let now = Instant::now();
    if *next_tick < now {
        *next_tick = now + tick;
    }
}
