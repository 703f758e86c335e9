//! End-to-end: a 5-node firmware cluster in QEMU behind the hub. One test
//! walks through every scenario on one cluster (booting QEMU is the
//! expensive part): election, 200 puts read back from every node, kill -9
//! of the leader, restart and catch-up from its own disk, minority
//! partition, torn log tail. It prints the measurements quoted in
//! crates/firmware/README.md.
//!
//! Every wait polls for a condition with a generous deadline; nothing
//! asserts on a fixed sleep. Set METALRAFT_FW_TEST_BASE_PORT to pin ports.

mod common;

use std::time::{Duration, Instant};

use common::{
    agreed_leader, leader_commit, partition_and_check, pick_ports, statuses, test_dir,
    wait_applied, wait_for, STATUS_TIMEOUT,
};

use metalraft_fw::client::Client;
use metalraft_fw::cluster::{ClusterSpec, LocalCluster};
use metalraft_fw::fault::FaultCommand;
use metalraft_fw::{firmware, image};
use metalraft_fw_proto::client::Reply;

const NODES: u8 = 5;
const PUTS: usize = 200;
/// Small, so that snapshots, compaction and InstallSnapshot all happen.
const SNAPSHOT_THRESHOLD: u16 = 64;
/// A small disk: its log ring (disk minus 264 fixed sectors) is shorter
/// than the test's whole log, so the ring wraps and only compaction makes
/// room.
const DISK_BYTES: u64 = 384 * 1024;
/// Writes while the old leader is down: more than two snapshot intervals,
/// so the new leader compacts past everything the old one has and must
/// send it a snapshot.
const PUTS_WHILE_DOWN: usize = 150;
/// Requests in flight in the throughput measurement.
const PIPELINE_WINDOW: usize = 16;

fn all(nodes: u8) -> Vec<u8> {
    (1..=nodes).collect()
}

#[test]
fn five_node_qemu_cluster() {
    let elf =
        firmware::build().expect("firmware builds (needs the riscv32imac-unknown-none-elf target)");
    let dir = test_dir("fw-cluster");
    let spec = pick_ports(|p| {
        let mut s = ClusterSpec::new(&dir, NODES, p, &elf).unwrap();
        s.snapshot_threshold_entries = SNAPSHOT_THRESHOLD;
        s.disk_bytes = DISK_BYTES;
        s
    });
    let ports = spec.ports;
    let t0 = Instant::now();
    let mut cluster =
        LocalCluster::start(spec).expect("cluster starts (is qemu-system-riscv32 installed?)");
    let mut c = Client::new(ports.gateway(), NODES).unwrap();
    let ids = all(NODES);

    // 1. A leader is elected.
    let leader = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    let boot_to_leader = t0.elapsed();
    eprintln!(
        "MEASURE boot-to-first-leader (host wall, 5 nodes): {:.2}s (node {leader})",
        boot_to_leader.as_secs_f64()
    );

    // Bad client input gets a typed error, not silence or a crash.
    let garbage = [0x01u8, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x07];
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut dgram = vec![leader];
    dgram.extend_from_slice(&garbage);
    sock.send_to(&dgram, ports.gateway()).unwrap();
    let mut buf = [0u8; 2048];
    let n = sock.recv(&mut buf).expect("a reply to garbage");
    let resp = metalraft_fw_proto::client::Response::decode(&buf[1..n]).unwrap();
    assert_eq!(
        resp.reply,
        Reply::Error(metalraft_fw_proto::client::ErrorCode::BadRequest)
    );

    // A peer speaking garbage: every datagram is refused and counted by
    // cause (random bytes: an unknown version; random bytes behind the
    // version byte: malformed); the node keeps leading and committing.
    let other = ids.iter().copied().find(|&i| i != leader).unwrap();
    let before = c.status(leader, STATUS_TIMEOUT).unwrap().unwrap().dropped;
    eprintln!(
        "garbage: {}",
        cluster.hub.apply(&FaultCommand::Garbage {
            from: other,
            to: leader,
            count: 200
        })
    );
    wait_for("garbage to be counted by cause", || {
        let s = c.status(leader, STATUS_TIMEOUT).ok().flatten()?;
        assert_eq!(s.bad_datagrams, s.dropped.total(), "{s:?}");
        (s.dropped.unknown_version > before.unknown_version
            && s.dropped.malformed > before.malformed)
            .then_some(())
    });
    c.put(b"after-garbage", b"ok")
        .expect("the cluster still commits");

    // 2. 200 puts commit and read back from every node.
    let t = Instant::now();
    for i in 0..PUTS {
        c.put(format!("key{i}").as_bytes(), format!("value{i}").as_bytes())
            .expect("put commits");
    }
    let put_secs = t.elapsed().as_secs_f64();
    eprintln!(
        "MEASURE sequential puts through the gateway: {PUTS} in {put_secs:.2}s = {:.0} commits/s",
        PUTS as f64 / put_secs
    );
    for &id in &ids {
        for i in (0..PUTS).step_by(7).chain([PUTS - 1]) {
            let v = c
                .get_from(id, format!("key{i}").as_bytes())
                .expect("linearizable read");
            assert_eq!(
                v,
                Some(format!("value{i}").into_bytes()),
                "node {id} key{i}"
            );
        }
    }
    let st = statuses(&mut c, &ids);
    assert_eq!(st.len(), ids.len());
    assert!(st.iter().all(|s| s.keys == PUTS as u64 + 1), "{st:?}");
    // Throughput with requests in flight (they overwrite the same keys, so
    // the key count stays PUTS).
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = (0..PUTS)
        .map(|i| {
            (
                format!("key{i}").into_bytes(),
                format!("value{i}").into_bytes(),
            )
        })
        .collect();
    let t = Instant::now();
    assert_eq!(c.put_pipelined(&pairs, PIPELINE_WINDOW).unwrap(), PUTS);
    let secs = t.elapsed().as_secs_f64();
    eprintln!("MEASURE pipelined puts ({PIPELINE_WINDOW} in flight): {PUTS} in {secs:.2}s = {:.0} commits/s", PUTS as f64 / secs);

    // 3. kill -9 the leader: a new leader emerges, writes continue.
    let leader = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    let last_before_kill = c
        .status(leader, STATUS_TIMEOUT)
        .unwrap()
        .unwrap()
        .last_index;
    cluster.kill_node(leader).unwrap();
    let rest: Vec<u8> = ids.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = wait_for("a new leader after kill -9", || {
        agreed_leader(&mut c, &rest, NODES.into()).filter(|&l| l != leader)
    });
    c.leader_hint = Some(new_leader);
    let while_down: Vec<(Vec<u8>, Vec<u8>)> = (0..PUTS_WHILE_DOWN)
        .map(|i| (format!("after-kill{i}").into_bytes(), b"x".to_vec()))
        .collect();
    assert_eq!(
        c.put_pipelined(&while_down, PIPELINE_WINDOW)
            .expect("writes continue without the old leader"),
        PUTS_WHILE_DOWN
    );
    let snap = c
        .status(new_leader, STATUS_TIMEOUT)
        .unwrap()
        .unwrap()
        .snapshot_index;
    assert!(
        snap > last_before_kill,
        "the new leader compacted past the old one's log ({snap} <= {last_before_kill})"
    );

    // 4. Restart it: it recovers from its own disk and catches up.
    cluster.start_node(leader).unwrap();
    let commit = leader_commit(&mut c, new_leader);
    wait_applied(&mut c, &[leader], commit);
    let s = c.status(leader, STATUS_TIMEOUT).unwrap().unwrap();
    assert_eq!(s.boots, 2, "restarted from the same disk");
    assert!(
        s.snapshots_installed >= 1,
        "caught up through InstallSnapshot: {s:?}"
    );
    assert_eq!(
        c.get_from(
            leader,
            format!("after-kill{}", PUTS_WHILE_DOWN - 1).as_bytes()
        )
        .unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(
        c.get_from(leader, b"key0").unwrap(),
        Some(b"value0".to_vec())
    );

    // 5. Minority partition: the side with the leader cannot commit; the
    //    majority elects a leader and can; after healing all converge.
    let old = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    let buddy = ids.iter().copied().find(|&i| i != old).unwrap();
    let minority = vec![old, buddy];
    let majority: Vec<u8> = ids
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    partition_and_check(
        &cluster.hub,
        &mut c,
        &minority,
        &majority,
        NODES.into(),
        Duration::from_secs(3),
    );
    let st = statuses(&mut c, &minority);
    assert!(
        st.iter()
            .all(|s| s.keys == (PUTS + 1 + PUTS_WHILE_DOWN) as u64),
        "the minority applied nothing new: {st:?}"
    );
    eprintln!("heal: {}", cluster.hub.apply(&FaultCommand::Heal));
    let leader = wait_for("a leader after heal", || {
        agreed_leader(&mut c, &ids, NODES.into())
    });
    let commit = leader_commit(&mut c, leader);
    wait_applied(&mut c, &ids, commit);
    for &id in &ids {
        assert_eq!(
            c.get_from(id, b"majority").unwrap(),
            Some(b"won".to_vec()),
            "node {id}"
        );
        assert_eq!(
            c.get_from(id, b"minority").unwrap(),
            None,
            "node {id}: uncommitted minority write survived"
        );
    }

    // 6. A node restarted with a torn log tail (a crash in the middle of
    //    writing a record) discards it and catches up.
    let leader = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    let victim = ids.iter().copied().find(|&i| i != leader).unwrap();
    cluster.kill_node(victim).unwrap();
    let img = cluster.spec.image(victim);
    let before = image::scan(&img).unwrap().records.len();
    let torn_index = image::append_torn_record(&img).unwrap();
    assert_eq!(
        image::scan(&img).unwrap().records.len(),
        before,
        "the torn record is not part of the log"
    );
    c.leader_hint = Some(leader);
    c.put(b"while-torn", b"y").unwrap();
    cluster.start_node(victim).unwrap();
    let commit = leader_commit(&mut c, leader);
    wait_applied(&mut c, &[victim], commit);
    let s = c.status(victim, STATUS_TIMEOUT).unwrap().unwrap();
    assert_eq!(
        s.recovered_torn_records, 1,
        "the torn record claiming index {torn_index} was detected"
    );
    assert_eq!(
        c.get_from(victim, b"while-torn").unwrap(),
        Some(b"y".to_vec())
    );
    assert_eq!(
        c.get_from(victim, format!("key{}", PUTS - 1).as_bytes())
            .unwrap(),
        Some(format!("value{}", PUTS - 1).into_bytes())
    );

    // 7. Damage below the commit index (flushed, acknowledged data) is not a
    //    torn write: the node refuses to serve rather than vote without
    //    data it promised to keep; the others carry on.
    cluster.kill_node(victim).unwrap();
    let damaged = image::damage_committed_record(&img).unwrap();
    cluster.start_node(victim).unwrap();
    let log = cluster.spec.log(victim);
    wait_for("the damaged node to refuse to start", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains(&format!("log damaged at index {damaged}"))
            .then_some(())
    });
    assert!(
        c.status(victim, STATUS_TIMEOUT).unwrap().is_none(),
        "a damaged node must not serve"
    );
    c.put(b"after-damage", b"z")
        .expect("the other four nodes carry on");

    // Memory, measured by the nodes after the whole workload: the static
    // image, the heap's and the stack's high-water marks.
    let live: Vec<u8> = ids.iter().copied().filter(|&i| i != victim).collect();
    let st = statuses(&mut c, &live);
    let _ = cluster.kill_node(victim);
    let hwm = st.iter().map(|s| s.heap_high_water).max().unwrap();
    eprintln!(
        "MEASURE heap high-water mark (max over nodes): {hwm} bytes of {}",
        st[0].heap_size
    );
    assert!(st.iter().all(|s| s.heap_high_water < s.heap_size));
    let stack = st.iter().map(|s| s.stack_high_water).max().unwrap();
    let ram = st.iter().map(metalraft_fw::bench::ram_peak).max().unwrap();
    eprintln!(
        "MEASURE stack high-water mark (max over nodes): {stack} bytes of {} watched; static {} bytes; \
         RAM peak (static + stack + heap high-water, largest node) {ram} bytes of {}",
        st[0].stack_watch,
        st[0].static_bytes,
        metalraft_fw::bench::RAM_BUDGET_BYTES
    );
    // The paint was found and overwritten (a node has a stack), and no
    // node's stack went past the watched window (the mps2 board's whole
    // reservation).
    assert!(st
        .iter()
        .all(|s| s.stack_high_water > 0 && s.stack_high_water < s.stack_watch));
    assert!(st.iter().all(|s| s.static_bytes > 0));
    // Every record takes at least one sector: past this index the ring has
    // wrapped, so wrap-around and space freed by compaction were exercised.
    let ring_sectors = DISK_BYTES / 512 - metalraft_fw_proto::disk::LOG_START_SECTOR;
    assert!(
        st.iter().all(|s| s.last_index > ring_sectors),
        "ring never wrapped: {st:?}"
    );
    // Snapshots keep the log short on every node.
    for s in &st {
        assert!(s.snapshot_index > 0, "{s:?}");
        assert!(
            s.last_index - s.snapshot_index <= 2 * u64::from(SNAPSHOT_THRESHOLD) + 64,
            "{s:?}"
        );
    }
    eprintln!("total test time {:.1}s", t0.elapsed().as_secs_f64());
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
