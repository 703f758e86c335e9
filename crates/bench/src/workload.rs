//! The workload both libraries run, and the checker that makes a
//! fast-but-wrong run impossible.
//!
//! Proposal `seq` is `PAYLOAD_BYTES` bytes: `seq` (little endian) in the
//! first and in the last 8 bytes, a fill byte derived from `seq` between.
//! Every node checks every entry it applies: indices are contiguous, normal
//! entries carry proposals `0, 1, 2, ...` in order, each of the right length
//! with both copies of its sequence number intact.

/// Bytes per proposal.
pub const PAYLOAD_BYTES: usize = 256;

/// The payload of proposal `seq`, as a fresh heap buffer (both libraries get
/// exactly this buffer and take ownership of it without copying).
pub fn make_payload(seq: u64) -> Vec<u8> {
    let mut v = vec![seq as u8; PAYLOAD_BYTES];
    v[..8].copy_from_slice(&seq.to_le_bytes());
    v[PAYLOAD_BYTES - 8..].copy_from_slice(&seq.to_le_bytes());
    v
}

/// Checks what one node applies.
#[derive(Debug, Default)]
pub struct Applier {
    /// Index of the last applied entry (of any kind).
    last_index: u64,
    /// Sequence number the next normal entry must carry (= proposals applied).
    next_seq: u64,
}

impl Applier {
    /// A checker for a node that has applied nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Proposals applied so far.
    pub fn applied(&self) -> u64 {
        self.next_seq
    }

    /// An entry the library told us to apply: `data` is `None` for the
    /// library's own empty entries (a new leader's no-op).
    ///
    /// # Panics
    ///
    /// On any gap, reordering, duplicate or corrupted payload: the benchmark
    /// must not report a figure for a wrong run.
    #[inline]
    pub fn apply(&mut self, node: u64, index: u64, data: Option<&[u8]>) {
        assert_eq!(
            index,
            self.last_index + 1,
            "node {node}: applied index {index} after {}",
            self.last_index
        );
        self.last_index = index;
        let Some(data) = data else { return };
        assert_eq!(
            data.len(),
            PAYLOAD_BYTES,
            "node {node}: entry {index} length"
        );
        let head = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let tail = u64::from_le_bytes(data[PAYLOAD_BYTES - 8..].try_into().expect("8 bytes"));
        assert_eq!(
            head, self.next_seq,
            "node {node}: entry {index} carries proposal {head}, expected {}",
            self.next_seq
        );
        assert_eq!(tail, head, "node {node}: entry {index} payload corrupted");
        self.next_seq += 1;
    }
}

/// An in-process 3-node cluster of one library, driven in one thread.
pub trait Cluster {
    /// Name in the output.
    const NAME: &'static str;

    /// Builds the cluster with node 1 as elected leader and everything
    /// (the leader's no-op entry) applied on every node.
    fn new() -> Self;

    /// Proposes one command on the leader.
    fn propose(&mut self, data: Vec<u8>);

    /// Runs the sans-IO loop on every node and delivers messages until no
    /// node has work and no message is in flight.
    fn pump(&mut self);

    /// Proposals applied (and checked) on each node.
    fn applied(&self) -> [u64; 3];

    /// Messages delivered since the cluster was built.
    fn messages(&self) -> u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applier_accepts_the_workload_in_order() {
        let mut a = Applier::new();
        a.apply(1, 1, None);
        for seq in 0..10 {
            a.apply(1, seq + 2, Some(&make_payload(seq)));
        }
        assert_eq!(a.applied(), 10);
    }

    #[test]
    #[should_panic(expected = "carries proposal 1, expected 0")]
    fn applier_rejects_reordering() {
        Applier::new().apply(1, 1, Some(&make_payload(1)));
    }

    #[test]
    #[should_panic(expected = "applied index 3 after 1")]
    fn applier_rejects_gaps() {
        let mut a = Applier::new();
        a.apply(1, 1, Some(&make_payload(0)));
        a.apply(1, 3, Some(&make_payload(1)));
    }

    #[test]
    #[should_panic(expected = "payload corrupted")]
    fn applier_rejects_corruption() {
        let mut p = make_payload(0);
        p[PAYLOAD_BYTES - 1] ^= 1;
        Applier::new().apply(1, 1, Some(&p));
    }

    #[test]
    #[should_panic(expected = "length")]
    fn applier_rejects_truncation() {
        Applier::new().apply(1, 1, Some(&make_payload(0)[..100]));
    }
}
