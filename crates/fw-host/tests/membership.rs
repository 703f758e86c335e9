//! End-to-end membership changes on a QEMU firmware cluster, under a
//! steady stream of writes from another thread:
//!
//! 1. three bootstrap voters (1, 2, 3) elect a leader; nodes 4 and 5 run
//!    but are not members (their config block lists only 1..3): no log, no
//!    leader, an empty configuration;
//! 2. once the leader has compacted its log, 4 and 5 are added as learners
//!    and catch up through the leader's snapshot;
//! 3. both are promoted in one change: two voters at once, so joint
//!    consensus, left by the leader on its own: five voters;
//! 4. the leader is removed: it hands leadership to another voter, which
//!    carries out the removal, and the old leader stops (its QEMU exits
//!    with status 0);
//! 5. one more original voter is removed: back to three voters (one
//!    original, 4 and 5), and it stops as well;
//! 6. node 4, restarted, recovers that configuration from its disk (not
//!    from its config block's 1..3), and every acknowledged write is
//!    readable on every remaining voter.
//!
//! Prints `MEASURE` lines (run with `-- --nocapture`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::{
    agreed_leader, leader_commit, pick_ports, statuses, test_dir, wait_applied, wait_for,
    STATUS_TIMEOUT,
};
use metalraft_fw::client::Client;
use metalraft_fw::cluster::{ClusterSpec, LocalCluster};
use metalraft_fw::firmware;
use metalraft_fw_proto::client::{MemberOp, Membership, Role};

/// Bootstrap voters: ids 1..=VOTERS.
const VOTERS: u8 = 3;
/// Nodes that join later: ids VOTERS+1..=VOTERS+EXTRA.
const EXTRA: u8 = 2;
const NODES: u8 = VOTERS + EXTRA;
/// Small, so that the leader compacts its log early and the learners can
/// only catch up by snapshot.
const SNAPSHOT_THRESHOLD: u16 = 64;
/// Pause between two writes of the background writer (keeps the stream
/// steady without saturating five emulators on a shared machine).
const WRITE_PAUSE: Duration = Duration::from_millis(10);

/// Writes `w{i}` = `v{i}` one at a time until told to stop; returns the
/// indexes of the writes the cluster acknowledged (the others timed out or
/// failed with an unknown outcome, and are not checked).
fn writer(mut c: Client, stop: Arc<AtomicBool>, acked: Arc<std::sync::Mutex<Vec<usize>>>) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (k, v) = (format!("w{i}"), format!("v{i}"));
        if c.put(k.as_bytes(), v.as_bytes()).is_ok() {
            acked.lock().unwrap().push(i);
        }
        i += 1;
        thread::sleep(WRITE_PAUSE);
    }
}

fn members_of(c: &mut Client, node: u8) -> Option<Membership> {
    c.members(node, STATUS_TIMEOUT).ok().flatten()
}

/// Waits until node `id`'s QEMU exits on its own; returns how long it took.
fn wait_stopped(cluster: &mut LocalCluster, id: u8) -> Duration {
    let t = Instant::now();
    let status = wait_for(&format!("node {id} to stop"), || {
        cluster.exited(id).expect("try_wait")
    });
    assert!(status.success(), "node {id} stopped with {status}");
    let log = std::fs::read_to_string(cluster.spec.log(id)).unwrap();
    assert!(
        log.contains("removed from the cluster at index"),
        "node {id}'s log says why it stopped"
    );
    t.elapsed()
}

#[test]
fn grow_to_five_under_writes_remove_the_leader_shrink_to_three() {
    let t0 = Instant::now();
    let elf =
        firmware::build().expect("firmware builds (needs the riscv32imac-unknown-none-elf target)");
    let dir = test_dir("fw-membership");
    let spec = pick_ports(|p| {
        let mut s = ClusterSpec::new(&dir, VOTERS, p, &elf)
            .unwrap()
            .with_joiners(EXTRA)
            .unwrap();
        s.snapshot_threshold_entries = SNAPSHOT_THRESHOLD;
        s
    });
    let ports = spec.ports;
    let t_boot = Instant::now();
    let mut cluster =
        LocalCluster::start(spec).expect("cluster starts (is qemu-system-riscv32 installed?)");
    let mut c = Client::new(ports.gateway(), NODES).unwrap();
    let voters: Vec<u8> = (1..=VOTERS).collect();
    let joiners: Vec<u8> = (VOTERS + 1..=NODES).collect();

    // 1. The bootstrap voters elect a leader; the joiners know nothing.
    let leader = wait_for("a leader", || agreed_leader(&mut c, &voters, VOTERS.into()));
    assert!(voters.contains(&leader));
    for &j in &joiners {
        let s = wait_for(&format!("node {j} to answer"), || {
            c.status(j, STATUS_TIMEOUT).ok().flatten()
        });
        assert_eq!((s.role, s.leader, s.last_index), (Role::Follower, None, 0));
        assert_eq!(members_of(&mut c, j), Some(Membership::default()));
    }
    eprintln!(
        "MEASURE membership: 3 voters + 2 joiners up, leader {leader} after {:.2}s",
        t_boot.elapsed().as_secs_f64()
    );

    // Writes from now on, through every change.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writes = {
        let wc = Client::new(ports.gateway(), NODES).unwrap();
        let (stop, acked) = (stop.clone(), acked.clone());
        thread::spawn(move || writer(wc, stop, acked))
    };

    // 2. After a compaction past the bootstrap entry, add both as learners:
    //    only the leader's snapshot can bring them up.
    let snap = wait_for("the leader to compact its log", || {
        let s = c.status(leader, STATUS_TIMEOUT).ok().flatten()?;
        (s.snapshot_index > 1).then_some(s.snapshot_index)
    });
    let acked_before_changes = acked.lock().unwrap().len();
    let t = Instant::now();
    let m = c
        .change_members(&[MemberOp::AddLearner(4), MemberOp::AddLearner(5)])
        .expect("learners added");
    assert_eq!((m.voters, m.learners), (voters.clone(), joiners.clone()));
    let commit = leader_commit(&mut c, leader);
    wait_applied(&mut c, &joiners, commit);
    for s in statuses(&mut c, &joiners) {
        assert!(s.snapshots_installed >= 1, "caught up by snapshot: {s:?}");
        assert!(s.snapshot_index >= snap, "{s:?}");
    }
    eprintln!(
        "MEASURE membership: 2 learners added and caught up by snapshot in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    // 3. Promote both at once: joint consensus, left automatically.
    let t = Instant::now();
    c.change_members(&[MemberOp::Promote(4), MemberOp::Promote(5)])
        .expect("learners promoted");
    let five: Vec<u8> = (1..=NODES).collect();
    let leader = wait_for("five voters, the joint configuration left", || {
        let l = c.find_leader(STATUS_TIMEOUT).ok().flatten()?;
        let m = members_of(&mut c, l)?;
        (m.voters == five && !m.is_joint() && m.learners.is_empty()).then_some(l)
    });
    eprintln!(
        "MEASURE membership: joint promotion to 5 voters in {:.2}s",
        t.elapsed().as_secs_f64()
    );

    // 4. Remove the leader: it hands off, the new leader removes it, it stops.
    let t = Instant::now();
    let m = c
        .change_members(&[MemberOp::Remove(leader)])
        .expect("leader removed");
    assert!(!m.contains(leader), "{m}");
    let new_leader = c.leader_hint.expect("answered by a leader");
    assert_ne!(
        new_leader, leader,
        "the removal was carried out by another node"
    );
    let stopped = wait_stopped(&mut cluster, leader);
    eprintln!(
        "MEASURE membership: leader {leader} handed off to {new_leader}, removed, stopped \
         (removal {:.2}s, stop {:.2}s after it)",
        t.elapsed().as_secs_f64() - stopped.as_secs_f64(),
        stopped.as_secs_f64()
    );

    // 5. Shrink to three: remove an original voter that is still there.
    let gone = voters
        .iter()
        .copied()
        .find(|&v| v != leader && v != new_leader)
        .unwrap();
    let m = c
        .change_members(&[MemberOp::Remove(gone)])
        .expect("second removal");
    let mut three: Vec<u8> = five
        .iter()
        .copied()
        .filter(|&v| v != leader && v != gone)
        .collect();
    three.sort_unstable();
    assert_eq!(
        (m.voters.clone(), m.learners.len()),
        (three.clone(), 0),
        "{m}"
    );
    wait_stopped(&mut cluster, gone);

    // Stop writing; everything acknowledged must be there.
    stop.store(true, Ordering::Relaxed);
    writes.join().expect("writer");
    let acked = acked.lock().unwrap().clone();
    // The compaction waited for a threshold's worth of applied entries,
    // nearly all of them writes; and writes went on through the changes.
    assert!(
        acked.len() as u64 >= u64::from(SNAPSHOT_THRESHOLD) / 2,
        "{} writes acknowledged",
        acked.len()
    );
    assert!(
        acked.len() > acked_before_changes,
        "no write acknowledged during the changes ({acked_before_changes} before)"
    );

    // 6. Node 4 restarted: its configuration comes from its disk (its
    //    config block still lists 1..3 as the bootstrap voters).
    cluster.kill_node(4).unwrap();
    cluster.start_node(4).unwrap();
    let leader = wait_for("a leader of the three", || {
        agreed_leader(&mut c, &three, three.len())
    });
    let m = wait_for("node 4 to answer after its restart", || {
        members_of(&mut c, 4)
    });
    assert_eq!(m.voters, three, "node 4 recovered {m} from its disk");
    let commit = leader_commit(&mut c, leader);
    wait_applied(&mut c, &three, commit);
    // The same store everywhere: every acknowledged write, and perhaps
    // some whose outcome the writer never learned.
    let st = statuses(&mut c, &three);
    assert_eq!(st.len(), three.len());
    assert!(
        st.iter()
            .all(|s| s.keys == st[0].keys && s.keys >= acked.len() as u64),
        "{st:?}"
    );
    let t = Instant::now();
    c.leader_hint = Some(leader);
    for &i in &acked {
        let v = c.get(format!("w{i}").as_bytes()).expect("read");
        assert_eq!(v, Some(format!("v{i}").into_bytes()), "acknowledged w{i}");
    }
    for &id in &three {
        for &i in acked.iter().step_by(17).chain(acked.last()) {
            let v = c.get_from(id, format!("w{i}").as_bytes()).expect("read");
            assert_eq!(v, Some(format!("v{i}").into_bytes()), "node {id} w{i}");
        }
    }
    eprintln!(
        "MEASURE membership: {} acknowledged writes read back in {:.2}s",
        acked.len(),
        t.elapsed().as_secs_f64()
    );
    eprintln!(
        "MEASURE membership test total: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
