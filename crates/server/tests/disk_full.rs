//! A full disk: writes are refused with etcd's "no space" error, reads keep
//! working, nothing acknowledged is lost, and writes resume once space is
//! freed. Needs root (it mounts a small tmpfs), so it is ignored by default:
//! run it with `cargo test -p metalraft --test disk_full -- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// Size of the tmpfs: room for two preallocated 64 MiB WAL segments, so
/// the second fits once the filler file is removed.
const TMPFS_MIB: u64 = 160;

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={TMPFS_MIB}m"),
                "tmpfs",
                dir.to_str().unwrap(),
            ])
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "mounting a tmpfs failed: this test needs root (CAP_SYS_ADMIN)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.0.to_str().unwrap()])
            .status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let st = rustix::fs::statvfs(dir).expect("statvfs");
    st.f_bavail * st.f_frsize
}

#[test]
#[ignore = "needs root to mount a tmpfs"]
fn full_disk_refuses_writes_keeps_reads_and_loses_nothing() {
    let outer = tempfile::tempdir().unwrap();
    let mnt = outer.path().join("fs");
    let _fs = Tmpfs::mount(&mnt);
    let mut c = Cluster::start_with(1, &[]);
    // Move the single member's data onto the tmpfs: restart it there.
    c.kill9(0);
    c.members[0].data_dir = mnt.join("m0");
    c.spawn(0);
    c.wait_for_leader();
    let ep = c.endpoint(0);
    put_ok(&ep, "before", "full");
    // Fill the disk, leaving less than a second segment needs.
    let filler = mnt.join("filler");
    let leave = 4 * 1024 * 1024;
    let fill = free_bytes(&mnt).saturating_sub(leave);
    std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
    // A backup now (too little room to spool it in the data directory:
    // it is built in memory) succeeds and raises no alarm.
    let saved = outer.path().join("backup.db");
    etcdctl(&[
        "--endpoints",
        &ep,
        "snapshot",
        "save",
        saved.to_str().unwrap(),
    ]);
    let status = etcdctl(&["snapshot", "status", saved.to_str().unwrap(), "-w", "json"]);
    assert!(status.contains("\"totalKey\""), "{status}");
    assert_eq!(etcdctl(&["--endpoints", &ep, "alarm", "list"]).trim(), "");
    assert!(
        free_bytes(&mnt) >= leave / 2,
        "the backup used the data disk"
    );
    // Write until the first segment is full and the next cannot be created.
    let value = vec![b'v'; 1024 * 1024];
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..200 {
        let key = format!("k{i:03}");
        let out = etcdctl_stdin(&["--endpoints", &ep, "put", &key], &value);
        if out.status.success() {
            acked.push(key);
        } else {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            if err.contains("database space exceeded") {
                refused = Some(err);
                break;
            }
        }
    }
    let refused = refused.expect("writes were never refused with etcd's no-space error");
    assert!(
        refused.contains("etcdserver: mvcc: database space exceeded"),
        "{refused}"
    );
    assert!(!acked.is_empty());
    // Reads keep working, linearizable and serializable; the alarm is listed.
    assert_eq!(
        etcdctl(&["--endpoints", &ep, "get", "before", "--print-value-only"]).trim(),
        "full"
    );
    assert_eq!(
        etcdctl(&[
            "--endpoints",
            &ep,
            "get",
            "before",
            "--consistency=s",
            "--print-value-only"
        ])
        .trim(),
        "full"
    );
    let alarms = etcdctl(&["--endpoints", &ep, "alarm", "list"]);
    assert!(alarms.contains("NOSPACE"), "{alarms}");
    // Free the space: writes resume and the alarm clears.
    std::fs::remove_file(&filler).unwrap();
    eventually("writes resume after space is freed", || {
        etcdctl_try(&["--endpoints", &ep, "put", "after", "space"])
            .status
            .success()
            .then_some(())
    });
    assert_eq!(etcdctl(&["--endpoints", &ep, "alarm", "list"]).trim(), "");
    // Nothing acknowledged was lost, also across a crash.
    c.kill9(0);
    c.spawn(0);
    c.wait_for_leader();
    let keys = etcdctl(&["--endpoints", &ep, "get", "k", "--prefix", "--keys-only"]);
    for k in &acked {
        assert!(keys.lines().any(|l| l == k), "acknowledged {k} lost");
    }
    c.kill9(0);
}
