//! Client operations and the history of their invocations and completions.

use std::fmt;

use crate::config::Time;

/// A client's index (0-based).
pub type ClientId = usize;
/// A globally unique operation id; for writes it is also the value written,
/// so every written value is unique and a read names the write it saw.
pub type OpId = u64;
/// A key's index in the workload's key set.
pub type KeyId = u32;

/// What an operation does to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Set the key to the value `OpId`.
    Put,
    /// Read the key (through the log).
    Get,
    /// Delete the key.
    Delete,
    /// If the key holds `expect` (`None`: does not exist), set it to the
    /// value `OpId` (a kv `Txn` with one compare).
    Cas {
        /// Expected current value.
        expect: Option<OpId>,
    },
}

/// What a completed operation returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpOutput {
    /// A put succeeded.
    Put,
    /// A read returned this value (`None`: key absent).
    Get(Option<OpId>),
    /// A delete removed the key (`true`) or found nothing (`false`).
    Delete(bool),
    /// A compare-and-set succeeded or not.
    Cas(bool),
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Committed and applied, with this result.
    Ok(OpOutput),
    /// Definitely not applied (refused before being appended, or replaced
    /// in the log by another entry).
    Failed,
    /// Timed out: it may or may not have taken effect.
    Unknown,
}

/// One operation of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// Unique id (and written value).
    pub id: OpId,
    /// The client that issued it.
    pub client: ClientId,
    /// Its key.
    pub key: KeyId,
    /// What it does.
    pub kind: OpKind,
    /// Virtual time of invocation.
    pub invoke: Time,
    /// Virtual time of completion and the outcome; `None` while pending.
    pub completion: Option<(Time, Outcome)>,
}

impl OpRecord {
    /// Whether the operation writes (can change its key).
    pub fn is_write(&self) -> bool {
        !matches!(self.kind, OpKind::Get)
    }
}

impl fmt::Display for OpRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            OpKind::Put => format!("put(k{}, {})", self.key, self.id),
            OpKind::Get => format!("get(k{})", self.key),
            OpKind::Delete => format!("delete(k{})", self.key),
            OpKind::Cas { expect } => format!(
                "cas(k{}, {} -> {})",
                self.key,
                expect.map_or("absent".to_string(), |v| v.to_string()),
                self.id
            ),
        };
        match self.completion {
            None => write!(f, "c{} {kind} @{}..pending", self.client, self.invoke),
            Some((t, o)) => {
                let o = match o {
                    Outcome::Ok(OpOutput::Put) => "ok".to_string(),
                    Outcome::Ok(OpOutput::Get(v)) => {
                        format!("ok {}", v.map_or("absent".to_string(), |v| v.to_string()))
                    }
                    Outcome::Ok(OpOutput::Delete(d)) => format!("ok deleted={d}"),
                    Outcome::Ok(OpOutput::Cas(s)) => format!("ok succeeded={s}"),
                    Outcome::Failed => "failed".to_string(),
                    Outcome::Unknown => "unknown".to_string(),
                };
                write!(f, "c{} {kind} @{}..{} -> {o}", self.client, self.invoke, t)
            }
        }
    }
}

/// Every operation of a run, in invocation order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// The records.
    pub ops: Vec<OpRecord>,
}

impl History {
    /// Records an invocation and returns its position.
    pub fn invoke(
        &mut self,
        id: OpId,
        client: ClientId,
        key: KeyId,
        kind: OpKind,
        t: Time,
    ) -> usize {
        self.ops.push(OpRecord {
            id,
            client,
            key,
            kind,
            invoke: t,
            completion: None,
        });
        self.ops.len() - 1
    }

    /// Records the completion of the operation at `pos`.
    ///
    /// # Panics
    /// If it already completed (a simulator bug).
    pub fn complete(&mut self, pos: usize, t: Time, outcome: Outcome) {
        let r = &mut self.ops[pos];
        assert!(r.completion.is_none(), "operation {} completed twice", r.id);
        assert!(t >= r.invoke);
        r.completion = Some((t, outcome));
    }

    /// Counts of (ok, failed, unknown, pending) operations.
    pub fn outcome_counts(&self) -> [u64; 4] {
        let mut c = [0u64; 4];
        for r in &self.ops {
            let i = match r.completion {
                Some((_, Outcome::Ok(_))) => 0,
                Some((_, Outcome::Failed)) => 1,
                Some((_, Outcome::Unknown)) => 2,
                None => 3,
            };
            c[i] += 1;
        }
        c
    }
}
