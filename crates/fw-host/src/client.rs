//! A client of the firmware cluster through the hub's gateway: sends
//! requests to a chosen node, matches responses by id, follows leader
//! redirects and retries until a deadline. Membership: [`Client::members`]
//! and [`Client::change_members`] (which retries while another change is in
//! progress and follows a leader that hands off before its own removal).

use std::fmt;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use metalraft_fw_proto::client::{
    ErrorCode, MemberOp, Membership, Op, Reply, Request, Response, Status,
};

/// How long to wait for one response before trying another node.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(800);
/// Default deadline of a whole operation (retries included).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(15);
/// Pause before retrying when no leader is known.
const NO_LEADER_BACKOFF: Duration = Duration::from_millis(50);
/// Receive buffer.
const RECV_BUF_BYTES: usize = 2048;

/// Why an operation failed.
#[derive(Debug)]
pub enum ClientError {
    /// Loopback I/O failed.
    Io(io::Error),
    /// No answer before the deadline.
    Timeout,
    /// The cluster answered with an error.
    Server(ErrorCode),
    /// A node answered with something that does not fit the request.
    UnexpectedReply(Box<Reply>),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "gateway I/O: {e}"),
            ClientError::Timeout => f.write_str("no answer before the deadline"),
            ClientError::Server(e) => write!(f, "cluster error: {e}"),
            ClientError::UnexpectedReply(r) => write!(f, "unexpected reply {r:?}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// A gateway client.
pub struct Client {
    sock: UdpSocket,
    gateway: SocketAddr,
    nodes: u8,
    next_id: u64,
    /// The node to try first for writes.
    pub leader_hint: Option<u8>,
    /// Deadline of each operation.
    pub deadline: Duration,
}

impl Client {
    /// A client for a cluster of `nodes` nodes behind `gateway`.
    pub fn new(gateway: SocketAddr, nodes: u8) -> io::Result<Client> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        // Distinct ids across client processes help when reading node logs.
        let next_id = u64::from(std::process::id()) << 32;
        Ok(Client {
            sock,
            gateway,
            nodes,
            next_id,
            leader_hint: None,
            deadline: DEFAULT_DEADLINE,
        })
    }

    /// One request to one node, one attempt: `Ok(None)` on timeout.
    pub fn call(
        &mut self,
        node: u8,
        op: Op,
        timeout: Duration,
    ) -> Result<Option<Response>, ClientError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut dgram = vec![node];
        dgram.extend_from_slice(&Request { id, op }.encode());
        self.sock.send_to(&dgram, self.gateway)?;
        let until = Instant::now() + timeout;
        let mut buf = [0u8; RECV_BUF_BYTES];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.sock.set_read_timeout(Some(left))?;
            let n = match self.sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
            // Late answers to earlier attempts and garbage are skipped.
            let Some((_, body)) = buf[..n].split_first() else {
                continue;
            };
            if let Ok(resp) = Response::decode(body) {
                if resp.id == id {
                    return Ok(Some(resp));
                }
            }
        }
    }

    /// Node `node`'s status (one attempt).
    pub fn status(&mut self, node: u8, timeout: Duration) -> Result<Option<Status>, ClientError> {
        match self.call(node, Op::Status, timeout)? {
            Some(Response {
                reply: Reply::Status(s),
                ..
            }) => Ok(Some(s)),
            Some(r) => Err(ClientError::UnexpectedReply(Box::new(r.reply))),
            None => Ok(None),
        }
    }

    /// Sends `op` to the leader, following redirects and retrying other
    /// nodes, until a final answer or the deadline.
    pub fn to_leader(&mut self, op: Op) -> Result<Reply, ClientError> {
        let until = Instant::now() + self.deadline;
        let mut next = self.leader_hint.unwrap_or(1);
        let mut previous = None;
        while Instant::now() < until {
            let target = next;
            let reply = self
                .call(target, op.clone(), ATTEMPT_TIMEOUT)?
                .map(|r| r.reply);
            match reply {
                Some(Reply::NotLeader { leader: Some(l) })
                    if l != target && (1..=self.nodes).contains(&l) =>
                {
                    // Sent back where we came from: a leadership transfer
                    // is under way; give it time.
                    if previous == Some(l) {
                        std::thread::sleep(NO_LEADER_BACKOFF);
                    }
                    next = l;
                }
                // No leader known, no answer, or a node that left.
                Some(Reply::NotLeader { .. } | Reply::Error(ErrorCode::Removed)) | None => {
                    next = target % self.nodes + 1;
                    std::thread::sleep(NO_LEADER_BACKOFF);
                }
                // Nothing was applied (Superseded: another entry took the
                // write's place; ChangePending: no change was proposed):
                // safe to send again.
                Some(Reply::Error(
                    ErrorCode::Busy
                    | ErrorCode::ReadFailed
                    | ErrorCode::Superseded
                    | ErrorCode::ChangePending,
                )) => std::thread::sleep(NO_LEADER_BACKOFF),
                Some(other) => {
                    self.leader_hint = Some(target);
                    return Ok(other);
                }
            }
            previous = Some(target);
        }
        Err(ClientError::Timeout)
    }

    /// Node `node`'s view of the membership (one attempt; `Ok(None)` on
    /// timeout).
    pub fn members(
        &mut self,
        node: u8,
        timeout: Duration,
    ) -> Result<Option<Membership>, ClientError> {
        match self.call(node, Op::Members, timeout)? {
            Some(Response {
                reply: Reply::Members(m),
                ..
            }) => Ok(Some(m)),
            Some(Response {
                reply: Reply::Error(e),
                ..
            }) => Err(ClientError::Server(e)),
            Some(r) => Err(ClientError::UnexpectedReply(Box::new(r.reply))),
            None => Ok(None),
        }
    }

    /// Carries out a membership change through the leader: retries while
    /// another change is in progress, follows a leader that hands off
    /// before its own removal. Returns the configuration once the change
    /// is applied on the leader (a joint change is then still being left:
    /// see [`Membership::is_joint`]).
    pub fn change_members(&mut self, ops: &[MemberOp]) -> Result<Membership, ClientError> {
        match self.to_leader(Op::ChangeMembers { ops: ops.to_vec() })? {
            Reply::Members(m) => Ok(m),
            Reply::Error(e) => Err(ClientError::Server(e)),
            r => Err(ClientError::UnexpectedReply(Box::new(r))),
        }
    }

    /// The leader among nodes `1..=nodes` that answers status as leader
    /// (one round of status requests).
    pub fn find_leader(&mut self, timeout: Duration) -> Result<Option<u8>, ClientError> {
        for id in 1..=self.nodes {
            if let Some(s) = self.status(id, timeout)? {
                if s.role == metalraft_fw_proto::client::Role::Leader {
                    self.leader_hint = Some(id);
                    return Ok(Some(id));
                }
            }
        }
        Ok(None)
    }

    /// Puts `key` = `value`; returns the revision.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<i64, ClientError> {
        match self.to_leader(Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        })? {
            Reply::Put { revision } => Ok(revision),
            Reply::Error(e) => Err(ClientError::Server(e)),
            r => Err(ClientError::UnexpectedReply(Box::new(r))),
        }
    }

    /// Puts every pair with up to `window` requests in flight to the leader
    /// (found with a first sequential put); pairs whose answer does not come
    /// are retried one by one. Returns how many committed.
    pub fn put_pipelined(
        &mut self,
        pairs: &[(Vec<u8>, Vec<u8>)],
        window: usize,
    ) -> Result<usize, ClientError> {
        let Some(((k0, v0), rest)) = pairs.split_first() else {
            return Ok(0);
        };
        self.put(k0, v0)?;
        let leader = self.leader_hint.unwrap_or(1);
        let mut done = 1;
        for chunk in rest.chunks(window.max(1)) {
            let mut waiting: std::collections::BTreeMap<u64, usize> =
                std::collections::BTreeMap::new();
            for (i, (k, v)) in chunk.iter().enumerate() {
                self.next_id += 1;
                let mut dgram = vec![leader];
                dgram.extend_from_slice(
                    &Request {
                        id: self.next_id,
                        op: Op::Put {
                            key: k.clone(),
                            value: v.clone(),
                        },
                    }
                    .encode(),
                );
                self.sock.send_to(&dgram, self.gateway)?;
                waiting.insert(self.next_id, i);
            }
            let until = Instant::now() + ATTEMPT_TIMEOUT;
            let mut buf = [0u8; RECV_BUF_BYTES];
            while !waiting.is_empty() && Instant::now() < until {
                self.sock.set_read_timeout(Some(
                    until
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_millis(1)),
                ))?;
                let Ok(n) = self.sock.recv(&mut buf) else {
                    break;
                };
                let Some((_, body)) = buf[..n].split_first() else {
                    continue;
                };
                if let Ok(Response {
                    id,
                    reply: Reply::Put { .. },
                    ..
                }) = Response::decode(body)
                {
                    if waiting.remove(&id).is_some() {
                        done += 1;
                    }
                }
            }
            for (_, i) in waiting {
                let (k, v) = &chunk[i];
                self.put(k, v)?;
                done += 1;
            }
        }
        Ok(done)
    }

    /// Deletes `key`; returns how many keys were deleted.
    pub fn delete(&mut self, key: &[u8]) -> Result<i64, ClientError> {
        match self.to_leader(Op::Delete { key: key.to_vec() })? {
            Reply::Delete { deleted, .. } => Ok(deleted),
            Reply::Error(e) => Err(ClientError::Server(e)),
            r => Err(ClientError::UnexpectedReply(Box::new(r))),
        }
    }

    /// Linearizable read of `key` through the leader.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        match self.to_leader(Op::Get { key: key.to_vec() })? {
            Reply::Get { value, .. } => Ok(value),
            Reply::Error(e) => Err(ClientError::Server(e)),
            r => Err(ClientError::UnexpectedReply(Box::new(r))),
        }
    }

    /// Linearizable read of `key` served by node `node` itself (a follower
    /// confirms the read index with its leader, waits until it has applied
    /// that far, then answers from its own store). Retries until the deadline.
    pub fn get_from(&mut self, node: u8, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let until = Instant::now() + self.deadline;
        while Instant::now() < until {
            match self
                .call(node, Op::Get { key: key.to_vec() }, ATTEMPT_TIMEOUT)?
                .map(|r| r.reply)
            {
                Some(Reply::Get { value, .. }) => return Ok(value),
                Some(Reply::Error(e)) if e != ErrorCode::ReadFailed && e != ErrorCode::Busy => {
                    return Err(ClientError::Server(e))
                }
                Some(Reply::NotLeader { .. } | Reply::Error(_)) | None => {
                    std::thread::sleep(NO_LEADER_BACKOFF)
                }
                Some(r) => return Err(ClientError::UnexpectedReply(Box::new(r))),
            }
        }
        Err(ClientError::Timeout)
    }
}
