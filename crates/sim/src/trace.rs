//! The event trace of a run and its fingerprint.
//!
//! Every event folds into a 64-bit FNV fingerprint, always; with tracing on
//! it is also rendered as one text line:
//!
//! ```text
//!     123456us n2 deliver    n1->n2 Append t3
//! ```
//!
//! (virtual time, the node concerned or `c<N>` for a client, the event kind,
//! details). Two runs of one seed have equal fingerprints and, traced,
//! byte-identical text.

use std::fmt::Write as _;

use crate::config::Time;
use crate::digest::{fnv_u64, FNV_OFFSET};

/// Kinds of trace event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum TraceKind {
    Deliver,
    Lost,
    Role,
    Persist,
    Synced,
    Apply,
    Crash,
    Restart,
    Pause,
    Partition,
    Heal,
    Transfer,
    ConfChange,
    Invoke,
    Propose,
    Complete,
    Phase,
    Watch,
    Lease,
    Repair,
}

impl TraceKind {
    fn name(self) -> &'static str {
        match self {
            TraceKind::Deliver => "deliver",
            TraceKind::Lost => "lost",
            TraceKind::Role => "role",
            TraceKind::Persist => "persist",
            TraceKind::Synced => "synced",
            TraceKind::Apply => "apply",
            TraceKind::Crash => "CRASH",
            TraceKind::Restart => "RESTART",
            TraceKind::Pause => "PAUSE",
            TraceKind::Partition => "PARTITION",
            TraceKind::Heal => "HEAL",
            TraceKind::Transfer => "transfer",
            TraceKind::ConfChange => "confchange",
            TraceKind::Invoke => "invoke",
            TraceKind::Propose => "propose",
            TraceKind::Complete => "complete",
            TraceKind::Phase => "PHASE",
            TraceKind::Lease => "lease",
            TraceKind::Repair => "REPAIR",
            TraceKind::Watch => "watch",
        }
    }
}

/// Who an event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// A node.
    Node(u64),
    /// A client.
    Client(usize),
    /// The simulator itself (phases, network-wide faults).
    Sim,
}

/// The trace of one run.
#[derive(Debug)]
pub struct Trace {
    text: Option<String>,
    fingerprint: u64,
    events: u64,
}

impl Trace {
    /// A trace that renders text iff `text`.
    pub fn new(text: bool) -> Self {
        Trace {
            text: text.then(String::new),
            fingerprint: FNV_OFFSET,
            events: 0,
        }
    }

    /// Records an event; `a` and `b` are its identifying numbers (folded
    /// into the fingerprint), `detail` renders it (called only when tracing).
    pub fn record(
        &mut self,
        now: Time,
        who: Actor,
        kind: TraceKind,
        a: u64,
        b: u64,
        detail: impl FnOnce() -> String,
    ) {
        let who_n = match who {
            Actor::Node(n) => n,
            Actor::Client(c) => 1_000 + c as u64,
            Actor::Sim => 0,
        };
        let mut h = fnv_u64(self.fingerprint, now);
        h = fnv_u64(h, (who_n << 8) | kind as u64);
        h = fnv_u64(fnv_u64(h, a), b);
        self.fingerprint = h;
        self.events += 1;
        if let Some(t) = &mut self.text {
            let who = match who {
                Actor::Node(n) => format!("n{n}"),
                Actor::Client(c) => format!("c{c}"),
                Actor::Sim => "--".to_string(),
            };
            let _ = writeln!(t, "{now:>10}us {who:<3} {:<9} {}", kind.name(), detail());
        }
    }

    /// The fingerprint of everything recorded so far.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Events recorded.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The rendered text, if tracing.
    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_every_field_and_text_is_optional() {
        let run = |a: u64, text: bool| {
            let mut t = Trace::new(text);
            t.record(5, Actor::Node(1), TraceKind::Deliver, a, 2, || "x".into());
            t
        };
        assert_eq!(run(1, false).fingerprint(), run(1, true).fingerprint());
        assert_ne!(run(1, false).fingerprint(), run(3, false).fingerprint());
        assert_eq!(run(1, true).text(), Some("         5us n1  deliver   x\n"));
        assert_eq!(run(1, false).text(), None);
    }
}
