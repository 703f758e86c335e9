//! Fixtures shared by the QEMU cluster tests: a test directory, a free port
//! range, polling with a deadline, status helpers. Every wait polls for a
//! condition with a generous deadline; nothing asserts on a fixed sleep.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;
use std::time::{Duration, Instant};

use metalraft_fw::client::Client;
use metalraft_fw::cluster::ClusterSpec;
use metalraft_fw::ports::Ports;
use metalraft_fw_proto::client::{Role, Status};

/// Deadline of any single wait (elections, catch-up) on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);
/// Poll interval of every wait.
pub const POLL: Duration = Duration::from_millis(100);
/// Timeout of one status request.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(400);

/// A fresh directory for this test process's cluster named `name`.
pub fn test_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A spec on a free port range (or METALRAFT_FW_TEST_BASE_PORT).
pub fn pick_ports(spec_for: impl Fn(Ports) -> ClusterSpec) -> ClusterSpec {
    if let Some(p) = std::env::var("METALRAFT_FW_TEST_BASE_PORT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return spec_for(Ports { base: p });
    }
    let start = 20000 + (std::process::id() % 500) as u16 * 20;
    for i in 0..50u16 {
        let spec = spec_for(Ports {
            base: start.wrapping_add(i * 20).max(20000),
        });
        if spec.check_ports_free().is_ok() {
            return spec;
        }
    }
    panic!("no free port range found; set METALRAFT_FW_TEST_BASE_PORT");
}

/// Polls `f` until it returns a value; panics after [`WAIT`].
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let until = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < until,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The statuses of the nodes in `ids` that answer.
pub fn statuses(c: &mut Client, ids: &[u8]) -> Vec<Status> {
    ids.iter()
        .filter_map(|&id| c.status(id, STATUS_TIMEOUT).ok().flatten())
        .collect()
}

/// A leader among `ids` that a majority of `voters` voters reports.
pub fn agreed_leader(c: &mut Client, ids: &[u8], voters: usize) -> Option<u8> {
    let st = statuses(c, ids);
    let leader = st.iter().find(|s| s.role == Role::Leader)?.node;
    let agree = st.iter().filter(|s| s.leader == Some(leader)).count();
    (agree > voters / 2).then_some(leader)
}

/// Waits until every node in `ids` has applied at least `index`.
pub fn wait_applied(c: &mut Client, ids: &[u8], index: u64) {
    wait_for(&format!("nodes {ids:?} to apply index {index}"), || {
        let st = statuses(c, ids);
        (st.len() == ids.len() && st.iter().all(|s| s.applied >= index)).then_some(())
    });
}

/// The commit index node `leader` reports (0 if it does not answer).
pub fn leader_commit(c: &mut Client, leader: u8) -> u64 {
    c.status(leader, STATUS_TIMEOUT)
        .ok()
        .flatten()
        .map_or(0, |s| s.commit)
}

/// Partitions the hub into `minority` and `majority` (of `voters` voters):
/// a put sent to each minority node is not committed within
/// `minority_wait`, and the majority elects a leader that commits
/// `majority` = `won`. Returns that leader (set as the client's hint); the
/// partition stays until the caller heals it.
pub fn partition_and_check(
    hub: &metalraft_fw::hub::Hub,
    c: &mut Client,
    minority: &[u8],
    majority: &[u8],
    voters: usize,
    minority_wait: Duration,
) -> u8 {
    use metalraft_fw::fault::FaultCommand;
    use metalraft_fw_proto::client::{Op, Reply};
    let groups = FaultCommand::Partition(vec![minority.to_vec(), majority.to_vec()]);
    eprintln!("partition: {}", hub.apply(&groups));
    for &m in minority {
        let put = Op::Put {
            key: b"minority".to_vec(),
            value: b"lost".to_vec(),
        };
        let r = c.call(m, put, minority_wait).unwrap();
        assert!(
            !matches!(r.as_ref().map(|r| &r.reply), Some(Reply::Put { .. })),
            "minority node {m} committed: {r:?}"
        );
    }
    let leader = wait_for("a majority leader", || {
        agreed_leader(c, majority, voters).filter(|l| majority.contains(l))
    });
    c.leader_hint = Some(leader);
    wait_for("a majority write", || {
        let put = Op::Put {
            key: b"majority".to_vec(),
            value: b"won".to_vec(),
        };
        match c.call(leader, put, Duration::from_secs(2)) {
            Ok(Some(r)) => matches!(r.reply, Reply::Put { .. }).then_some(()),
            _ => None,
        }
    });
    leader
}
