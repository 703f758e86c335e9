//! Replays every committed fuzz input through the targets' own functions,
//! on stable Rust and without libFuzzer, so that CI (which has no nightly
//! toolchain) runs each seed, and each crash input kept as a regression,
//! on every change:
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml --no-default-features
//! ```
//!
//! Inputs: `corpus/<target>/*` (the seed corpora) and
//! `regressions/<target>/*` (minimized crash inputs of fixed bugs, if
//! any). Built without the `server` feature, the server's `wal_decode`
//! corpus is skipped (it needs the whole server crate; run it with
//! `--features server`).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use metalraft_fuzz::fw_wire::CountingAlloc;
use metalraft_fuzz::targets;

/// `fw_wire` measures the peer decoder's allocations with it.
#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The inputs kept for `target`, in a stable order.
fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.expect("a readable corpus entry").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs every input of `target`; names the input that fails.
fn replay(target: &str) {
    let (_, run) = targets()
        .into_iter()
        .find(|(name, _)| *name == target)
        .expect("a target of this build");
    let files = inputs(target);
    assert!(!files.is_empty(), "no committed inputs for {target}");
    for path in &files {
        let bytes = fs::read(path).expect("a readable input");
        if catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err() {
            panic!(
                "{target} fails on {} (replay: scripts/fuzz.sh builds the target; \
                 `cargo fuzz run --fuzz-dir fuzz -a {target} {}`)",
                path.display(),
                path.display()
            );
        }
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn core_cluster_corpus() {
    replay("core_cluster");
    assert_structured::<metalraft_fuzz::core_cluster::Input>("core_cluster");
}

#[test]
fn kv_decode_corpus() {
    replay("kv_decode");
}

#[test]
fn fw_wire_corpus() {
    replay("fw_wire");
}

#[test]
fn fw_disk_corpus() {
    replay("fw_disk");
    assert_structured::<metalraft_fuzz::fw_disk::Input>("fw_disk");
}

/// Every committed input of a structured target still decodes to an
/// input (a changed `Input` type can make old seeds decode to nothing,
/// and their replay would then check nothing).
fn assert_structured<T: for<'a> arbitrary::Arbitrary<'a>>(target: &str) {
    for path in inputs(target) {
        let bytes = fs::read(&path).expect("a readable input");
        assert!(
            metalraft_fuzz::structured::<T>(&bytes).is_some(),
            "{} no longer decodes to a {target} input",
            path.display()
        );
    }
}

#[cfg(feature = "server")]
#[test]
fn wal_decode_corpus() {
    replay("wal_decode");
}

/// Every corpus directory belongs to a target, and every target of this
/// build has a corpus: a renamed target cannot silently drop its seeds.
#[test]
fn every_corpus_has_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let names: Vec<&str> = targets().iter().map(|(n, _)| *n).collect();
    for e in fs::read_dir(&root).expect("fuzz/corpus") {
        let dir = e.expect("an entry").file_name();
        let dir = dir.to_str().expect("a UTF-8 name");
        let server_only = dir == "wal_decode" && !cfg!(feature = "server");
        assert!(
            names.contains(&dir) || server_only,
            "fuzz/corpus/{dir} has no target"
        );
    }
    for n in names {
        assert!(root.join(n).is_dir(), "target {n} has no corpus directory");
    }
}
