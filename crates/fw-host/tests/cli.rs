//! The `metalraft-fw` command line as a user meets it: `--help` and `-h`
//! print the usage and succeed; an unknown option, a missing value or a
//! bad node id is a usage error (exit status 2) that says what is wrong,
//! before anything else happens (no cluster is needed to find out).

use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_metalraft-fw"))
        .args(args)
        .args(["--dir", "/nonexistent/metalraft-fw-cli-test"])
        .output()
        .expect("the binary runs")
}

#[test]
fn help_prints_the_usage_and_succeeds() {
    for flag in ["--help", "-h"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("USAGE:"), "{flag}: {text}");
        assert!(
            text.contains("member add N.. [--learner]"),
            "{flag}: {text}"
        );
    }
    // After a command too.
    let out = run(&["cluster", "up", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn usage_errors_exit_with_status_2_and_say_why() {
    let cases: [(&[&str], &str); 6] = [
        (&["status", "--bogus"], "unknown option --bogus"),
        (&["status", "-x"], "unknown option -x"),
        (&["member", "add", "0"], "bad node id"),
        (&["member", "promote"], "at least one node id"),
        (&["frobnicate"], "unknown command"),
        (
            &["cluster", "up", "--arm", "9"],
            "--arm 9 is more than the 5 nodes",
        ),
    ];
    for (args, says) in cases {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
    // A missing value, at the end of the line.
    let out = Command::new(env!("CARGO_BIN_EXE_metalraft-fw"))
        .args(["status", "--dir"])
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dir needs a value"));
}

#[test]
fn a_runtime_failure_is_not_a_usage_error() {
    // Valid command line, no cluster in that directory: exit status 1.
    let out = run(&["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster in"));
}
