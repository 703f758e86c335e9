//! The replica's small parts on their own: snapshot reassembly, the entry
//! envelope, configuration, and the timed-action hook with a custom state
//! machine.

mod common;

use common::*;
use metalraft_core::{ConfState, Index, NodeId, SnapshotChunk, SnapshotMeta, Term};
use metalraft_replica::{
    ChunkError, Config, ConfigError, Frame, Instant, Origin, Outcome, SnapshotAssembler,
    StateMachine, StateMachineError, FRAME_HEADER_BYTES,
};

fn meta(index: Index) -> SnapshotMeta {
    SnapshotMeta {
        index,
        term: 2,
        conf_state: ConfState::with_voters(&[1, 2, 3]),
    }
}

fn chunk(index: Index, offset: u64, data: &[u8]) -> SnapshotChunk {
    SnapshotChunk {
        meta: meta(index),
        offset,
        data: data.to_vec(),
    }
}

#[test]
fn assembler_reassembles_in_order_and_restarts_at_offset_zero() {
    let mut a = SnapshotAssembler::new(16);
    a.push(chunk(9, 0, b"abc")).unwrap();
    a.push(chunk(9, 3, b"def")).unwrap();
    assert_eq!(a.received(), 6);
    // A new transfer of a newer snapshot starts over.
    a.push(chunk(12, 0, b"xy")).unwrap();
    a.push(chunk(12, 2, b"z")).unwrap();
    assert_eq!(a.finish(&meta(9)), Err(ChunkError::Missing));
    let mut a = SnapshotAssembler::new(16);
    a.push(chunk(12, 0, b"xy")).unwrap();
    a.push(chunk(12, 2, b"z")).unwrap();
    assert_eq!(a.finish(&meta(12)).unwrap(), b"xyz");
    assert_eq!(a.finish(&meta(12)), Err(ChunkError::Missing), "taken once");
}

#[test]
fn assembler_refuses_gaps_overlaps_strangers_and_oversize_and_keeps_nothing_partial() {
    let mut a = SnapshotAssembler::new(8);
    assert_eq!(a.push(chunk(9, 4, b"late")), Err(ChunkError::NoStart));
    a.push(chunk(9, 0, b"abc")).unwrap();
    assert_eq!(
        a.push(chunk(9, 5, b"gap")),
        Err(ChunkError::Gap {
            expected: 3,
            got: 5
        })
    );
    assert_eq!(a.received(), 0, "partial data dropped");
    assert_eq!(a.push(chunk(9, 3, b"d")), Err(ChunkError::NoStart));
    a.push(chunk(9, 0, b"abc")).unwrap();
    assert_eq!(
        a.push(chunk(9, 1, b"bc")),
        Err(ChunkError::Gap {
            expected: 3,
            got: 1
        })
    );
    a.push(chunk(9, 0, b"abc")).unwrap();
    assert_eq!(a.push(chunk(10, 3, b"d")), Err(ChunkError::OtherSnapshot));
    a.push(chunk(9, 0, b"abcdef")).unwrap();
    assert_eq!(
        a.push(chunk(9, 6, b"ghi")),
        Err(ChunkError::TooLarge { max: 8 })
    );
    assert_eq!(a.finish(&meta(9)), Err(ChunkError::Missing));
    // Exactly at the cap is fine.
    a.push(chunk(9, 0, b"abcdefgh")).unwrap();
    assert_eq!(a.finish(&meta(9)).unwrap().len(), 8);
}

#[test]
fn frames_round_trip_and_garbage_is_not_a_frame() {
    let o = Origin::Client {
        node: 3,
        req_id: u64::MAX,
    };
    let bytes = Frame::encode(o, b"cmd");
    assert_eq!(bytes.len(), FRAME_HEADER_BYTES + 3);
    let f = Frame::decode(&bytes).unwrap();
    assert_eq!((f.origin, f.command), (o, &b"cmd"[..]));
    let i = Origin::Internal { node: 1, seq: 9 };
    assert_eq!(Frame::decode(&Frame::encode(i, b"")).unwrap().origin, i);
    assert!(Frame::decode(b"").is_none());
    assert!(Frame::decode(&bytes[..FRAME_HEADER_BYTES - 1]).is_none());
    let mut bad = bytes.clone();
    bad[0] = 0;
    assert!(Frame::decode(&bad).is_none());
    // Every prefix of arbitrary bytes decodes or not without panicking.
    let noise: Vec<u8> = (0..64u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
        .collect();
    for n in 0..noise.len() {
        let _ = Frame::decode(&noise[..n]);
    }
}

#[test]
fn config_limits_are_checked() {
    let mut c = Config::new(1);
    assert_eq!(c.validate(), Ok(()));
    c.snapshot_threshold_entries = 0;
    assert_eq!(
        c.validate(),
        Err(ConfigError::ZeroLimit("snapshot_threshold_entries"))
    );
    let mut c = Config::new(0);
    c.max_pending_reads = 0;
    assert!(matches!(c.validate(), Err(ConfigError::Core(_))));
}

/// A state machine with one timer: a counter that the leader bumps through
/// the log whenever its deadline passes (a lease-expiry stand-in).
#[derive(Default)]
struct Ticker {
    applied: Index,
    bumps: u64,
    deadline: Option<Instant>,
    leader_changes: Vec<bool>,
    /// Leave snapshots to the caller (`StateMachine::defers_snapshots`).
    defer: bool,
}

impl StateMachine for Ticker {
    type Output = u64;
    type Query = ();
    type ReadOutput = u64;
    type Event = u64;

    fn applied_index(&self) -> Index {
        self.applied
    }
    fn apply(
        &mut self,
        index: Index,
        _: Term,
        command: &[u8],
        events: Option<&mut Vec<u64>>,
    ) -> Result<u64, StateMachineError> {
        self.applied = index;
        if command == b"bump" {
            self.bumps += 1;
            // The next expiry, 1 s after this one (replicated state).
            self.deadline = Some(Instant::from_micros(self.bumps * 1_000_000));
            if let Some(e) = events {
                e.push(self.bumps);
            }
        }
        Ok(self.bumps)
    }
    fn apply_empty(&mut self, index: Index, _: Term) -> Result<(), StateMachineError> {
        self.applied = index;
        Ok(())
    }
    fn query(&self, _: &()) -> u64 {
        self.bumps
    }
    fn snapshot(&self) -> Result<Vec<u8>, StateMachineError> {
        let mut v = self.applied.to_le_bytes().to_vec();
        v.extend_from_slice(&self.bumps.to_le_bytes());
        Ok(v)
    }
    fn restore(&mut self, index: Index, data: &[u8]) -> Result<(), StateMachineError> {
        let (a, b) = data
            .split_at_checked(8)
            .ok_or(StateMachineError::BadSnapshot)?;
        let applied = u64::from_le_bytes(a.try_into().map_err(|_| StateMachineError::BadSnapshot)?);
        let bumps = u64::from_le_bytes(b.try_into().map_err(|_| StateMachineError::BadSnapshot)?);
        if applied != index {
            return Err(StateMachineError::Inconsistent);
        }
        *self = Ticker {
            applied,
            bumps,
            deadline: Some(Instant::from_micros(bumps * 1_000_000)),
            leader_changes: vec![],
            defer: self.defer,
        };
        Ok(())
    }
    fn next_deadline(&self) -> Option<Instant> {
        self.deadline.or(Some(Instant::from_micros(0)))
    }
    fn on_timeout(&mut self, _now: Instant, proposals: &mut Vec<Vec<u8>>) {
        proposals.push(b"bump".to_vec());
        // Not again until the bump is applied and sets the next deadline.
        self.deadline = Some(Instant::from_micros(u64::MAX));
    }
    fn on_leader_change(&mut self, leader: bool, _now: Instant) {
        self.leader_changes.push(leader);
    }
    fn defers_snapshots(&self) -> bool {
        self.defer
    }
}

fn ticker_cluster() -> Cluster<Ticker> {
    Cluster::new(
        3,
        Persistence::Immediate,
        default_config,
        Ticker::default,
        |_| Ticker::default(),
    )
}

#[test]
fn leader_driven_timed_actions_with_time_passed_in() {
    let mut c = ticker_cluster();
    let l = c.elect();
    let followers: Vec<NodeId> = (1..=3).filter(|&i| i != l).collect();
    assert!(c.r(l).state_machine().leader_changes.contains(&true));
    assert_eq!(
        c.r(followers[0]).poll_timeout(),
        None,
        "followers have no timers"
    );
    // Time passes in steps of 0.5 s; the leader acts at each deadline.
    for step in 0..=6u64 {
        let now = Instant::from_micros(step * 500_000);
        for id in 1..=3 {
            c.r(id).handle_timeout(now);
        }
        c.round();
    }
    c.rounds(3);
    // Deadlines at 0, 1, 2, 3 s were reached: four bumps, on every replica.
    for id in 1..=3 {
        assert_eq!(c.r(id).state_machine().bumps, 4, "n{id}");
    }
    assert_eq!(c.r(l).stats().timed_proposals, 4);
    assert_eq!(c.r(l).poll_timeout(), Some(Instant::from_micros(4_000_000)));
    // Applied events carry the state machine's per-command events.
    let evs = c
        .slot(followers[0])
        .events
        .iter()
        .filter(|e| matches!(e, metalraft_replica::Event::Applied { .. }))
        .count();
    assert_eq!(evs, 4);
    // Linearizable read through a custom query type.
    c.r(followers[1]).read(1, ()).unwrap();
    assert!(c.run_until(50, |c| !c.slot(followers[1]).completions.is_empty()));
    assert!(matches!(
        c.slot(followers[1]).completions[0].outcome,
        Outcome::Read { output: 4, .. }
    ));
}

#[test]
fn a_state_machine_that_defers_snapshots_is_asked_for_none_and_its_caller_takes_them() {
    fn deferring() -> Ticker {
        Ticker {
            defer: true,
            ..Ticker::default()
        }
    }
    let mut c = Cluster::new(
        3,
        Persistence::Immediate,
        |id| {
            let mut cfg = default_config(id);
            cfg.snapshot_threshold_entries = 3;
            cfg
        },
        deferring,
        |_| deferring(),
    );
    let l = c.elect();
    for step in 0..=8u64 {
        c.r(l)
            .handle_timeout(Instant::from_micros(step * 1_000_000));
        c.rounds(2);
    }
    for id in 1..=3 {
        let slot = c.slot(id);
        assert!(!slot.snapshots_saved.is_empty(), "n{id} took snapshots");
        assert_eq!(
            slot.snapshots_deferred,
            slot.snapshots_saved.len(),
            "n{id}: every one through SnapshotDue (the harness checks the state machine was at its index)"
        );
        assert_eq!(
            c.r(id).stats().snapshots_taken as usize,
            c.slot(id).snapshots_saved.len()
        );
    }
}
