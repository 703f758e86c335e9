//! The `metalraft` binary: parses etcd-style flags and runs one member, or
//! `metalraft dev` for a local 3-member cluster. See the crate README and
//! `lib.rs` for the contract.

use std::process::ExitCode;

use clap::Parser;
use metalraft::cli::{normalize_args, Cli, Command, SnapshotCommand, StatusFormat};
use metalraft::config::MemberConfig;

/// mimalloc on glibc targets (docs/adr/0011-allocator.md); musl builds (the
/// container image) keep the system allocator.
#[cfg(target_env = "gnu")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("metalraft: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Some(Command::Dev(args)) => runtime.block_on(metalraft::dev::run(args)),
        Some(Command::Snapshot(args)) => snapshot(args.command),
        None => {
            let cfg = match MemberConfig::from_args(&cli.member) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("metalraft: {e}");
                    return ExitCode::from(2);
                }
            };
            tracing_subscriber::fmt()
                .with_max_level(cfg.log_level.tracing_level())
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init();
            match runtime.block_on(metalraft::member::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "member stopped");
                    eprintln!("metalraft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `metalraft snapshot status|restore`.
fn snapshot(cmd: SnapshotCommand) -> ExitCode {
    use metalraft::backup;
    match cmd {
        SnapshotCommand::Status { file, write_out } => match backup::read(&file, true) {
            Ok((_, info)) => {
                match write_out {
                    StatusFormat::Table => print!("{}", backup::status_table(&info)),
                    StatusFormat::Json => print!("{}", backup::status_json(&info)),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("metalraft: {e}");
                ExitCode::FAILURE
            }
        },
        SnapshotCommand::Restore {
            file,
            skip_hash_check,
            member,
        } => {
            let cfg = match MemberConfig::from_args(&member) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("metalraft: {e}");
                    return ExitCode::from(2);
                }
            };
            match backup::restore(&file, &cfg, !skip_hash_check) {
                Ok(info) => {
                    println!(
                        "restored revision {} ({} keys) into {} for member {} ({:x}) of cluster {:x}",
                        info.store_revision,
                        info.live_keys,
                        cfg.data_dir.display(),
                        cfg.name,
                        cfg.id,
                        cfg.cluster_id
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("metalraft: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
