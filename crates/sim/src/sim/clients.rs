//! Clients: operations invoked, sent to a node as replica requests (one
//! request id per attempt), and the replica's completions turned into the
//! history's outcomes.

use super::*;

/// Bits of a client request id below the op id: the attempt.
const REQ_ATTEMPT_BITS: u32 = 4;
const _: () = assert!(CLIENT_ATTEMPTS_MAX < 1 << REQ_ATTEMPT_BITS);

/// The replica request id of attempt `attempt` of operation `op` (unique per
/// attempt). Op ids are at least `1 << OP_SEQ_BITS`, so request ids below
/// [`CONF_REQ_IDS_MAX`] are free for membership changes.
pub(super) fn req_id(op: OpId, attempt: u32) -> ReqId {
    (op << REQ_ATTEMPT_BITS) | u64::from(attempt)
}

/// Request ids of membership changes stay below this.
pub(super) const CONF_REQ_IDS_MAX: ReqId = 1 << (workload::OP_SEQ_BITS + REQ_ATTEMPT_BITS);

/// The (client, op, attempt) of a client request id; `None` for a
/// membership change's.
pub(super) fn client_request(req: ReqId) -> Option<(ClientId, OpId, u32)> {
    if req < CONF_REQ_IDS_MAX {
        return None;
    }
    let op = req >> REQ_ATTEMPT_BITS;
    let client = ((op >> workload::OP_SEQ_BITS) - 1) as ClientId;
    Some((client, op, (req & ((1 << REQ_ATTEMPT_BITS) - 1)) as u32))
}

impl Simulation {
    pub(super) fn target(&mut self, client: ClientId) -> usize {
        match self.clients[client].hint {
            Some(n) => n,
            None => self.rng_client.index(self.replicas.len()),
        }
    }

    pub(super) fn invoke(&mut self, client: ClientId) {
        let c = &self.clients[client];
        if c.current.is_some() || (matches!(self.phase, Phase::Liveness { .. }) && c.ok_since_calm)
        {
            return;
        }
        let (id, key, kind) = self.clients[client]
            .gen
            .next_op(&self.cfg.workload, &mut self.rng_client);
        let pad = self.cfg.workload.value_pad_bytes;
        let command = sim_command(id, &workload::command(id, key, kind, pad).encode());
        let pos = self.history.invoke(id, client, key, kind, self.now);
        self.trace.record(
            self.now,
            Actor::Client(client),
            TraceKind::Invoke,
            id,
            u64::from(key),
            || format!("{}", self.history.ops[pos]),
        );
        self.clients[client].current = Some(Current {
            pos,
            id,
            key,
            kind,
            attempt: 0,
            command,
        });
        self.send_attempt(client, 0);
    }

    pub(super) fn send_attempt(&mut self, client: ClientId, delay: Time) {
        let node = self.target(client);
        let Some(cur) = self.clients[client].current.as_ref() else {
            return;
        };
        let (op, attempt) = (cur.id, cur.attempt);
        let w = &self.cfg.workload;
        let (lat, timeout) = (w.client_latency_us, w.client_timeout_us);
        self.at(
            self.now + delay + lat,
            Event::Request {
                node,
                client,
                op,
                attempt,
            },
        );
        self.at(
            self.now + delay + timeout,
            Event::Timeout {
                client,
                op,
                attempt,
            },
        );
    }

    /// The node's answer reaches the client one client latency from now.
    fn reply_after_latency(&mut self, client: ClientId, op: OpId, attempt: u32, reply: Reply) {
        let t = self.now + self.cfg.workload.client_latency_us;
        self.at(
            t,
            Event::Reply {
                client,
                op,
                attempt,
                reply,
            },
        );
    }

    pub(super) fn on_request(
        &mut self,
        node: usize,
        client: ClientId,
        op: OpId,
        attempt: u32,
    ) -> Step {
        let current = self.clients[client]
            .current
            .as_ref()
            .is_some_and(|c| c.id == op && c.attempt == attempt);
        if !current || self.replicas[node].live.is_none() {
            return Ok(()); // stale, or the node is down: the client times out
        }
        if self.defer_if_paused(node, || Event::Request {
            node,
            client,
            op,
            attempt,
        }) {
            return Ok(());
        }
        let Some(cur) = self.clients[client].current.as_ref() else {
            return Ok(());
        };
        let (kind, key) = (cur.kind, cur.key);
        let req = req_id(op, attempt);
        let r = &mut self.replicas[node];
        let id = r.id;
        let Some(live) = r.live.as_mut() else {
            return Ok(());
        };
        let range = RangeRequest::single(&workload::key_bytes(key));
        let mut proposed = None;
        let reply = if self.opts.sabotage == Sabotage::LocalReads && kind == OpKind::Get {
            // The defect: a read served from whatever this node has applied.
            let got = live
                .replica
                .state_machine()
                .kv()
                .range(&range)
                .map_err(|e| core_err(id, e))?;
            let v = got.kvs.first().and_then(|kv| workload::value_op(&kv.value));
            Some(Reply::Done(OpOutput::Get(v)))
        } else if kind == OpKind::Get && self.cfg.workload.read_path != ReadPath::Log {
            match live.replica.read(req, range) {
                Ok(()) => None,
                Err(_) => Some(Reply::Busy),
            }
        } else {
            let command = &self.clients[client]
                .current
                .as_ref()
                .expect("checked")
                .command;
            match live.replica.propose(req, command) {
                Ok(index) => {
                    proposed = Some(index);
                    None
                }
                Err(ProposeError::NotLeader { leader }) => Some(Reply::Redirect(leader)),
                Err(_) => Some(Reply::Busy),
            }
        };
        if let Some(index) = proposed {
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::Propose,
                op,
                index,
                || format!("op {op} at index {index}"),
            );
            self.targeted_on_propose(node);
        }
        if let Some(reply) = reply {
            self.reply_after_latency(client, op, attempt, reply);
        }
        self.drive(node)
    }

    pub(super) fn on_reply(
        &mut self,
        client: ClientId,
        op: OpId,
        attempt: u32,
        reply: Reply,
    ) -> Step {
        let c = &mut self.clients[client];
        let Some(cur) = c.current.as_mut() else {
            return Ok(());
        };
        if cur.id != op || cur.attempt != attempt {
            return Ok(());
        }
        match reply {
            Reply::Done(out) => self.complete(client, Outcome::Ok(out)),
            Reply::Failed => self.complete(client, Outcome::Failed),
            Reply::Unknown => {
                c.hint = None;
                self.complete(client, Outcome::Unknown)
            }
            Reply::Redirect(_) | Reply::Busy if cur.attempt + 1 >= CLIENT_ATTEMPTS_MAX => {
                // Every attempt was refused before being appended.
                self.complete(client, Outcome::Failed)
            }
            Reply::Redirect(hint) => {
                cur.attempt += 1;
                c.hint = hint.map(|l| (l - 1) as usize);
                let delay = if hint.is_some() {
                    0
                } else {
                    NO_LEADER_BACKOFF_US
                };
                self.send_attempt(client, delay);
            }
            Reply::Busy => {
                cur.attempt += 1;
                self.send_attempt(client, NO_LEADER_BACKOFF_US);
            }
        }
        Ok(())
    }

    pub(super) fn complete(&mut self, client: ClientId, outcome: Outcome) {
        let c = &mut self.clients[client];
        let Some(cur) = c.current.take() else { return };
        self.history.complete(cur.pos, self.now, outcome);
        if let Outcome::Ok(out) = outcome {
            c.gen.learn(cur.id, cur.key, cur.kind, out);
            if matches!(self.phase, Phase::Liveness { .. }) {
                c.ok_since_calm = true;
            }
        }
        let pos = cur.pos;
        self.trace.record(
            self.now,
            Actor::Client(client),
            TraceKind::Complete,
            cur.id,
            0,
            || format!("{}", self.history.ops[pos]),
        );
        let t = self.now + workload::think(&self.cfg.workload, &mut self.rng_client);
        self.at(t, Event::ClientWake { client });
    }

    /// A request finished on `node`: the client hears the outcome after its
    /// latency. Superseded is a definite failure, unknown stays unknown, a
    /// read that was not served is retried.
    pub(super) fn on_completion(
        &mut self,
        node: usize,
        c: Completion<
            <SimMachine as metalraft_replica::StateMachine>::Output,
            <SimMachine as metalraft_replica::StateMachine>::ReadOutput,
        >,
    ) -> Step {
        let id = self.replicas[node].id;
        let Some((client, op, attempt)) = client_request(c.req_id) else {
            let (req, outcome) = (c.req_id, &c.outcome);
            let what = if req >= super::watch::BACKGROUND_REQ_BASE {
                "background write"
            } else {
                "conf change"
            };
            self.trace.record(
                self.now,
                Actor::Node(id),
                TraceKind::ConfChange,
                req,
                0,
                || format!("{what} {req} done: {outcome:?}"),
            );
            return Ok(());
        };
        let kind = self.clients[client]
            .current
            .as_ref()
            .filter(|cur| cur.id == op)
            .map(|cur| cur.kind);
        let Some(kind) = kind else {
            return Ok(()); // the client gave up on it already
        };
        let reply = match c.outcome {
            ReplicaOutcome::Applied { output, .. } => {
                let result = output.map_err(|e| core_err(id, format!("{e:?}")))?;
                match workload::output(kind, &result) {
                    Some(out) => Reply::Done(out),
                    None => {
                        return Err(Violation::MismatchedCompletion {
                            node: id,
                            op,
                            what: format!("{kind:?} got {result:?}"),
                        })
                    }
                }
            }
            ReplicaOutcome::Read { index, output } => {
                let got = output.map_err(|e| core_err(id, e))?;
                let v = got.kvs.first().and_then(|kv| workload::value_op(&kv.value));
                self.trace.record(
                    self.now,
                    Actor::Node(id),
                    TraceKind::Apply,
                    op,
                    index,
                    || format!("read op {op} served at read index {index}"),
                );
                Reply::Done(OpOutput::Get(v))
            }
            ReplicaOutcome::ConfChanged { index, .. } => {
                return Err(Violation::MismatchedCompletion {
                    node: id,
                    op,
                    what: format!("{kind:?} got a membership change at index {index}"),
                })
            }
            // Another entry was committed where ours was: ours is gone for
            // good (each attempt is appended at most once, at one index).
            ReplicaOutcome::Failed(RequestFailure::Superseded { .. }) => Reply::Failed,
            ReplicaOutcome::Failed(RequestFailure::Unknown(_)) => Reply::Unknown,
            // A read that was not served: safe to retry.
            ReplicaOutcome::Failed(_) => Reply::Busy,
        };
        self.reply_after_latency(client, op, attempt, reply);
        Ok(())
    }
}
