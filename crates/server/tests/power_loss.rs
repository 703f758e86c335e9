//! Issue 20 with real processes: every member is cut while the image issue
//! 20 reported sits at the end of its WAL (the sector holding the first
//! unsynced frame's header was lost, a later sector holding a whole,
//! checksummed, correctly numbered unsynced frame landed). Every member must
//! restart by itself and keep every acknowledged write.
//!
//! The process is killed with SIGKILL and the tail is written while it is
//! down: no FUSE layer yet, so the cut is simulated on the files (see
//! `storage::power_loss_tests` for the exhaustive sector-level cases).

mod common;

use std::path::Path;

use common::*;
use metalraft::storage::codec::{self, FrameRead, FrameSeq, Record};
use metalraft_core::{Entry, EntryData};

const SECTOR_BYTES: u64 = 512;

/// Writes the issue-20 image after the last frame of `seg`: one lost
/// unsynced frame (zeros where it was) and, in the next sector, the frame
/// that followed it in the same group commit.
fn leave_issue_20_tail(seg: &Path) -> u64 {
    let mut img = std::fs::read(seg).expect("read segment");
    let (offsets, end) = frames(seg);
    let last = *offsets.last().expect("a frame");
    let FrameRead::Frame(payload, _) = codec::read_frame(&img[last as usize..]) else {
        unreachable!("frames() returned it")
    };
    let (rec, at) = codec::decode_sequenced(payload).expect("decodes");
    let at = at.expect("the server writes sequenced frames");
    let next_index = match rec {
        Record::Batch { entries, .. } if !entries.is_empty() => {
            entries[entries.len() - 1].index + 1
        }
        _ => 1_000_000,
    };
    // Frame seq+1 was lost; seq+2 was written in the same unsynced group, so
    // its durable mark is still `at.seq`.
    let unsynced = Record::Batch {
        entries: vec![Entry {
            term: 1,
            index: next_index + 1,
            data: EntryData::Normal(b"never acknowledged".to_vec()),
        }],
        hard_state: None,
    };
    let mut p = Vec::new();
    codec::encode_sequenced(
        &unsynced,
        FrameSeq {
            seq: at.seq + 2,
            synced: at.seq,
        },
        &mut p,
    )
    .expect("encodes");
    let mut frame = Vec::new();
    codec::encode_frame(&p, &mut frame);
    let at_sector = (end / SECTOR_BYTES + 1) * SECTOR_BYTES;
    let range = at_sector as usize..at_sector as usize + frame.len();
    assert!(range.end <= img.len(), "room in the preallocated segment");
    img[range].copy_from_slice(&frame);
    std::fs::write(seg, &img).expect("write segment");
    end
}

#[test]
fn power_cut_of_every_member_with_the_issue_20_tail_restarts_all_and_keeps_acked_writes() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    for i in 0..20 {
        put_ok(&eps, &format!("acked/{i:02}"), "v");
    }
    for i in 0..3 {
        c.kill9(i);
    }
    let mut cut = Vec::new();
    for i in 0..3 {
        let seg = wal_segments(&c.wal_dir(i)).pop().expect("a segment");
        let offset = leave_issue_20_tail(&seg);
        cut.push((seg, offset));
    }
    for i in 0..3 {
        c.spawn(i);
    }
    c.wait_for_leader();
    put_ok(&c.endpoints(), "after", "restart");
    for (i, (seg, offset)) in cut.iter().enumerate() {
        let ep = c.endpoint(i);
        let keys = eventually(
            &format!("member {i} serves every acknowledged write"),
            || {
                let out = etcdctl_try(&[
                    "--endpoints",
                    &ep,
                    "get",
                    "",
                    "--prefix",
                    "--keys-only",
                    "--consistency=s",
                ]);
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                (out.status.success() && text.lines().any(|l| l == "after")).then_some(text)
            },
        );
        for k in 0..20 {
            let key = format!("acked/{k:02}");
            assert!(keys.lines().any(|l| l == key), "member {i} lost {key}");
        }
        let log = std::fs::read_to_string(&c.members[i].log).expect("member log");
        assert!(
            log.contains("truncated a torn WAL tail"),
            "member {i} logs the truncation:\n{log}"
        );
        assert!(
            log.contains(&seg.display().to_string()),
            "names the file:\n{log}"
        );
        assert!(
            log.contains(&format!("offset={offset}")),
            "names the offset:\n{log}"
        );
        assert!(
            log.contains("bytes_dropped="),
            "names the bytes dropped:\n{log}"
        );
    }
}

/// The same tail, but the frame after the hole says the lost frame had been
/// durable (its durable mark covers it): that is mid-log damage. The member
/// starts in repair mode (ADR 0021), naming file and offset, and repairs
/// itself from the leader while the others serve (`tests/repair.rs` has the
/// full check under a writer).
#[test]
fn a_hole_before_a_frame_that_proves_it_durable_is_repaired_from_the_leader() {
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    for i in 0..10 {
        put_ok(&eps, &format!("k{i}"), "value");
    }
    let victim = (c.wait_for_leader() + 1) % 3;
    c.kill9(victim);
    let seg = wal_segments(&c.wal_dir(victim)).pop().expect("a segment");
    let (offsets, _) = frames(&seg);
    assert!(offsets.len() >= 4, "{offsets:?}");
    // Zero the header of an acknowledged frame in the middle.
    let target = offsets[offsets.len() / 2];
    let mut img = std::fs::read(&seg).unwrap();
    img[target as usize..target as usize + 8].fill(0);
    std::fs::write(&seg, &img).unwrap();
    put_ok(&c.live_endpoints(), "still", "works");
    c.spawn(victim);
    let port = c.members[victim].client_port;
    eventually("the member repairs itself", || {
        let log = std::fs::read_to_string(&c.members[victim].log).ok()?;
        log.contains("log repair complete").then_some(())
    });
    let log = std::fs::read_to_string(&c.members[victim].log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("mid-log WAL damage"))
        .unwrap_or_else(|| panic!("no repair line:\n{log}"));
    assert!(line.contains(&seg.display().to_string()), "{line}");
    assert!(line.contains(&format!("offset={target}")), "{line}");
    assert_eq!(metric_value(port, "metalraft_repair_pending"), Some(0.0));
    let ep = c.endpoint(victim);
    let keys = eventually("the repaired member serves every write", || {
        let out = etcdctl_try(&[
            "--endpoints",
            &ep,
            "get",
            "",
            "--prefix",
            "--keys-only",
            "--consistency=s",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && text.lines().any(|l| l == "still")).then_some(text)
    });
    for i in 0..10 {
        assert!(keys.lines().any(|l| l == format!("k{i}")), "lacks k{i}");
    }
}

/// Under a writer, the leader is cut (SIGKILL, then issue 20's tail left in
/// its WAL) as soon as one is elected, several times in a row. Every cut
/// member restarts by itself, no acknowledged write is lost and all members
/// converge.
#[test]
fn cutting_each_new_leader_under_a_writer_loses_no_acknowledged_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    const CUTS: usize = 4;
    let mut c = Cluster::start(3);
    let eps = c.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, eps) = (stop.clone(), acked.clone(), eps.clone());
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("w/{i:05}");
                let out = etcdctl_try(&["--endpoints", &eps, "put", &key, "v"]);
                if out.status.success() {
                    acked.lock().unwrap().push(key);
                }
                i += 1;
            }
        })
    };
    let mut cut_members = Vec::new();
    for _ in 0..CUTS {
        let leader = c.wait_for_leader();
        let before = acked.lock().unwrap().len();
        eventually("writes flow under this leader", || {
            (acked.lock().unwrap().len() >= before + 3).then_some(())
        });
        c.kill9(leader);
        let seg = wal_segments(&c.wal_dir(leader)).pop().expect("a segment");
        leave_issue_20_tail(&seg);
        c.spawn(leader);
        cut_members.push(leader);
    }
    c.wait_for_leader();
    let before = acked.lock().unwrap().len();
    eventually("writes flow after the last cut", || {
        (acked.lock().unwrap().len() >= before + 3).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 4 * CUTS,
        "only {} writes acknowledged",
        acked.len()
    );
    let last = acked.last().unwrap().clone();
    for i in 0..3 {
        let ep = c.endpoint(i);
        let keys = eventually(&format!("member {i} converges"), || {
            let out = etcdctl_try(&[
                "--endpoints",
                &ep,
                "get",
                "w/",
                "--prefix",
                "--keys-only",
                "--consistency=s",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.success() && text.lines().any(|l| l == last)).then_some(text)
        });
        for k in &acked {
            assert!(
                keys.lines().any(|l| l == k),
                "member {i} lost acknowledged {k}"
            );
        }
    }
    for i in cut_members {
        let log = std::fs::read_to_string(&c.members[i].log).unwrap();
        assert!(
            log.contains("truncated a torn WAL tail"),
            "member {i}:\n{log}"
        );
    }
}
