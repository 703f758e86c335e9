//! End-to-end: one Raft group of 3 RISC-V nodes (QEMU `virt`) and 2
//! Cortex-M4F nodes (QEMU `mps2-an386`: LAN9118, semihosting storage file)
//! through the same hub. Elections, writes read back from every node of
//! both architectures, kill -9 of a Cortex-M node (its storage file, read
//! as recovery reads it, holds everything it applied) and its restart from
//! that file, an isolated leader replaced by an election, and a
//! partition with both architectures on each side.
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

const NODES: u8 = 5;
/// The last two nodes (4 and 5) are Cortex-M.
const ARM_NODES: u8 = 2;
const PUTS: usize = 40;
const PUTS_WHILE_DOWN: usize = 20;

fn put(c: &mut Client, key: &str, value: &str) {
    c.put(key.as_bytes(), value.as_bytes())
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

fn get(c: &mut Client, node: u8, key: &str) -> Option<Vec<u8>> {
    c.get_from(node, key.as_bytes())
        .unwrap_or_else(|e| panic!("get {key} from node {node}: {e:?}"))
}

#[test]
fn riscv_and_cortex_m_nodes_form_one_group() {
    let elf = firmware::build().expect("RISC-V firmware builds");
    let arm_elf =
        firmware::build_arm().expect("Cortex-M firmware builds (needs thumbv7em-none-eabihf)");
    let dir = test_dir("fw-mixed");
    let spec = pick_ports(|p| {
        ClusterSpec::new(&dir, NODES, p, &elf)
            .unwrap()
            .with_arm(ARM_NODES, &arm_elf)
            .unwrap()
    });
    assert!(!spec.is_arm(3) && spec.is_arm(4) && spec.is_arm(5));
    let ports = spec.ports;
    let t0 = Instant::now();
    let mut cluster = LocalCluster::start(spec)
        .expect("cluster starts (are qemu-system-riscv32 and qemu-system-arm installed?)");
    let mut c = Client::new(ports.gateway(), NODES).unwrap();
    let ids: Vec<u8> = (1..=NODES).collect();

    // 1. One leader, and every node of both architectures follows it.
    let leader = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    wait_for("all five nodes to know the leader", || {
        let st = statuses(&mut c, &ids);
        (st.len() == ids.len() && st.iter().all(|s| s.leader == Some(leader))).then_some(())
    });
    eprintln!(
        "MEASURE mixed boot-to-all-following: {:.2}s (leader node {leader})",
        t0.elapsed().as_secs_f64()
    );

    // 2. Writes commit and read back from every node (linearizable reads
    //    served by each node itself, so the Cortex-M nodes applied them).
    for i in 0..PUTS {
        put(&mut c, &format!("k{i}"), &format!("v{i}"));
    }
    for &id in &ids {
        for i in [0, PUTS / 2, PUTS - 1] {
            assert_eq!(
                get(&mut c, id, &format!("k{i}")),
                Some(format!("v{i}").into_bytes()),
                "node {id} k{i}"
            );
        }
    }

    // 3. kill -9 of a Cortex-M node; writes go on; it restarts from its
    //    storage file (same boot count +1, its entries recovered) and
    //    catches up.
    let victim = 5;
    let applied = c.status(victim, STATUS_TIMEOUT).unwrap().unwrap().applied;
    assert!(applied >= PUTS as u64, "node {victim} applied the puts");
    cluster.kill_node(victim).unwrap();
    // Its storage file, as recovery will read it, holds every entry it had
    // applied: semihosting writes reached the host before the node went on.
    let scan = image::scan(&cluster.spec.image(victim)).unwrap();
    let last = scan
        .records
        .last()
        .map(|r| r.header.index)
        .or(scan.snapshot.as_ref().map(|h| h.index))
        .unwrap_or(0);
    assert!(
        last >= applied,
        "node {victim}'s file ends at index {last}, below the {applied} it applied"
    );
    let rest: Vec<u8> = ids.iter().copied().filter(|&i| i != victim).collect();
    if leader == victim {
        let l = wait_for("a new leader", || {
            agreed_leader(&mut c, &rest, NODES.into()).filter(|&l| l != victim)
        });
        c.leader_hint = Some(l);
    }
    for i in 0..PUTS_WHILE_DOWN {
        put(&mut c, &format!("down{i}"), "x");
    }
    cluster.start_node(victim).unwrap();
    let l = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    let commit = leader_commit(&mut c, l);
    wait_applied(&mut c, &[victim], commit);
    let s = c.status(victim, STATUS_TIMEOUT).unwrap().unwrap();
    assert_eq!(s.boots, 2, "restarted from the same storage file: {s:?}");
    assert_eq!(get(&mut c, victim, "k0"), Some(b"v0".to_vec()));
    assert_eq!(
        get(&mut c, victim, &format!("down{}", PUTS_WHILE_DOWN - 1)),
        Some(b"x".to_vec())
    );

    // 4. An election: the leader is isolated, the others elect another.
    let old = wait_for("a leader", || agreed_leader(&mut c, &ids, NODES.into()));
    eprintln!(
        "isolate: {}",
        cluster.hub.apply(&FaultCommand::Isolate(old))
    );
    let others: Vec<u8> = ids.iter().copied().filter(|&i| i != old).collect();
    let new = wait_for("a leader without the isolated one", || {
        agreed_leader(&mut c, &others, NODES.into()).filter(|&l| l != old)
    });
    c.leader_hint = Some(new);
    put(&mut c, "after-isolate", "ok");
    eprintln!("heal: {}", cluster.hub.apply(&FaultCommand::Heal));

    // 5. A partition with both architectures on each side: RISC-V 1 and
    //    Cortex-M 4 against RISC-V 2, 3 and Cortex-M 5. The minority
    //    cannot commit; the majority elects a leader and can.
    let minority = vec![1u8, 4];
    let majority = vec![2u8, 3, 5];
    partition_and_check(
        &cluster.hub,
        &mut c,
        &minority,
        &majority,
        NODES.into(),
        Duration::from_secs(2),
    );
    eprintln!("heal: {}", cluster.hub.apply(&FaultCommand::Heal));
    let leader = wait_for("a leader after heal", || {
        agreed_leader(&mut c, &ids, NODES.into())
    });
    let commit = leader_commit(&mut c, leader);
    wait_applied(&mut c, &ids, commit);
    for &id in &ids {
        assert_eq!(
            get(&mut c, id, "majority"),
            Some(b"won".to_vec()),
            "node {id}"
        );
        assert_eq!(get(&mut c, id, "minority"), None, "node {id}");
        assert_eq!(
            get(&mut c, id, "after-isolate"),
            Some(b"ok".to_vec()),
            "node {id}"
        );
    }
    for s in statuses(&mut c, &ids) {
        eprintln!(
            "MEASURE node {} ({}): heap high-water {} B",
            s.node,
            if s.node > NODES - ARM_NODES {
                "Cortex-M4F"
            } else {
                "RISC-V"
            },
            s.heap_high_water
        );
    }
    eprintln!(
        "MEASURE mixed-architecture test: {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
