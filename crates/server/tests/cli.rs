//! The command line: etcd's flags, errors for bad ones, and `metalraft dev`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_clear()
        .output()
        .expect("run metalraft")
}

#[test]
fn version_and_help() {
    let v = run(&["--version"]);
    assert!(v.status.success());
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("metalraft "));
    let h = run(&["--help"]);
    assert!(h.status.success());
    let help = String::from_utf8_lossy(&h.stdout);
    for flag in [
        "--initial-cluster",
        "--heartbeat-interval",
        "ETCD_NAME",
        "dev",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn bad_flags_fail_with_a_clear_message_and_nonzero_exit() {
    let cases: &[(&[&str], &str)] = &[
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (
            &["--heartbeat-interval=500", "--election-timeout=1000"],
            "should be at least as 5 times as --heartbeat-interval",
        ),
        (
            &["--name=x", "--initial-cluster=a=http://127.0.0.1:1"],
            "couldn't find local name \"x\"",
        ),
        (
            &["--listen-client-urls=localhost:2379"],
            "--listen-client-urls",
        ),
        (&["--initial-cluster-state=sideways"], "sideways"),
        (&["-election-timeout", "abc"], "abc"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
}

#[test]
fn etcd_environment_variables_are_read() {
    let out = Command::new(bin())
        .env_clear()
        .env("ETCD_NAME", "from-env")
        .env("ETCD_INITIAL_CLUSTER", "other=http://127.0.0.1:1")
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("couldn't find local name \"from-env\""));
}

/// A running `metalraft dev`; stopped with SIGTERM (so it stops its
/// members) if a test fails before stopping it.
struct Dev(Option<std::process::Child>);

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            if wait_exit(&mut c, WAIT).is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn dev(dir: &std::path::Path, offset: u16) -> Dev {
    let child = Command::new(bin())
        .args([
            "dev",
            "--data-dir",
            dir.to_str().unwrap(),
            "--port-offset",
            &offset.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn metalraft dev");
    Dev(Some(child))
}

fn sigint_and_wait(mut dev: Dev) {
    let mut child = dev.0.take().expect("dev running");
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    match wait_exit(&mut child, WAIT) {
        Some(status) => assert!(status.success(), "dev exited with {status}"),
        None => {
            dev.0 = Some(child);
            panic!("dev did not stop after SIGINT");
        }
    }
}

#[test]
fn dev_runs_three_members_prints_commands_stops_on_ctrl_c_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("metalraft-data");
    // Ports 2379.. plus an offset chosen from this process id, so parallel
    // runs of the suite do not collide, and small enough that every dev port
    // (up to 32380 + offset) stays below the kernel's ephemeral range
    // (32768..), where other tests' connections could take it.
    let offset = 1 + (std::process::id() % 380) as u16;
    let ep = format!("127.0.0.1:{}", 2379 + offset);
    let mut child = dev(&data, offset);
    let mut banner = String::new();
    let mut out = BufReader::new(child.0.as_mut().unwrap().stdout.take().unwrap());
    while !banner.contains("Ctrl-C") {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "dev exited early: {banner}"
        );
        banner.push_str(&line);
    }
    assert!(
        banner.contains(&format!("etcdctl --endpoints={ep}")),
        "{banner}"
    );
    eventually("dev cluster accepts writes", || {
        etcdctl_try(&["--endpoints", &ep, "put", "dev-key", "dev-value"])
            .status
            .success()
            .then_some(())
    });
    for m in ["infra1", "infra2", "infra3"] {
        assert!(
            data.join(m).join("member").join("wal").is_dir(),
            "{m} has its own data dir"
        );
    }
    sigint_and_wait(child);

    let child = dev(&data, offset);
    let value = eventually("resumed dev cluster serves the old data", || {
        let o = etcdctl_try(&["--endpoints", &ep, "get", "dev-key", "--print-value-only"]);
        let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (o.status.success() && !v.is_empty()).then_some(v)
    });
    assert_eq!(value, "dev-value");
    std::thread::sleep(Duration::from_millis(100));
    sigint_and_wait(child);
}
