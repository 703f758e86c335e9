//! `metalraft dev`: a local 3-member cluster, each member a child process
//! running this same binary with etcd's flags, like etcd's Procfile.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::cli::{DevArgs, LogLevel};

/// Member names, client ports and peer ports of the dev cluster.
pub const DEV_MEMBERS: [(&str, u16, u16); 3] = [
    ("infra1", 2379, 2380),
    ("infra2", 22379, 22380),
    ("infra3", 32379, 32380),
];
/// Cluster token of the dev cluster.
pub const DEV_CLUSTER_TOKEN: &str = "metalraft-dev-cluster";
/// How long members get to exit after SIGTERM before they are killed.
pub const DEV_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The flags that start dev member `index` (0-based) with data under `root`.
pub fn member_flags(index: usize, root: &Path, log_level: LogLevel, offset: u16) -> Vec<String> {
    let (name, client, peer) = DEV_MEMBERS[index];
    let (client, peer) = (client + offset, peer + offset);
    let cluster = DEV_MEMBERS
        .iter()
        .map(|(n, _, p)| format!("{n}=http://127.0.0.1:{}", p + offset))
        .collect::<Vec<_>>()
        .join(",");
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", root.join(name).display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster={cluster}"),
        format!("--initial-cluster-token={DEV_CLUSTER_TOKEN}"),
        "--initial-cluster-state=new".to_string(),
        format!("--log-level={}", log_level.as_flag()),
    ]
}

/// Runs the dev cluster until Ctrl-C/SIGTERM or until a member exits.
pub async fn run(args: DevArgs) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("metalraft dev: cannot find own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
        eprintln!(
            "metalraft dev: cannot create {}: {e}",
            args.data_dir.display()
        );
        return ExitCode::FAILURE;
    }
    let mut children: Vec<(&str, Child)> = Vec::new();
    for (i, (name, _, _)) in DEV_MEMBERS.iter().enumerate() {
        match Command::new(&exe)
            .args(member_flags(
                i,
                &args.data_dir,
                args.log_level,
                args.port_offset,
            ))
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => children.push((name, c)),
            Err(e) => {
                eprintln!("metalraft dev: cannot start {name}: {e}");
                stop_all(&mut children).await;
                return ExitCode::FAILURE;
            }
        }
    }
    print_banner(&args.data_dir, args.port_offset);
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("metalraft dev: cannot install SIGTERM handler: {e}");
            stop_all(&mut children).await;
            return ExitCode::FAILURE;
        }
    };
    let exited = {
        let waits = children.iter_mut().map(|(name, c)| {
            let name: &str = name;
            Box::pin(async move { (name, c.wait().await) })
        });
        tokio::select! {
            _ = tokio::signal::ctrl_c() => None,
            _ = sigterm.recv() => None,
            ((name, status), _, _) = futures_select_all(waits) => Some((name.to_string(), status)),
        }
    };
    let code = match exited {
        None => {
            eprintln!("metalraft dev: stopping the members");
            ExitCode::SUCCESS
        }
        Some((name, status)) => {
            eprintln!("metalraft dev: member {name} exited ({status:?}); stopping the others");
            ExitCode::FAILURE
        }
    };
    stop_all(&mut children).await;
    code
}

async fn futures_select_all<F: std::future::Future + Unpin>(
    futs: impl Iterator<Item = F>,
) -> (F::Output, usize, ()) {
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((out, i, ()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn stop_all(children: &mut [(&str, Child)]) {
    for (_, c) in children.iter() {
        if let Some(pid) = c
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            // The member may already be gone; nothing else to do then.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for (name, c) in children.iter_mut() {
        match tokio::time::timeout(DEV_SHUTDOWN_GRACE, c.wait()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("metalraft dev: waiting for {name}: {e}"),
            Err(_) => {
                eprintln!(
                    "metalraft dev: {name} did not stop within {DEV_SHUTDOWN_GRACE:?}; killing it"
                );
                if let Err(e) = c.kill().await {
                    eprintln!("metalraft dev: killing {name}: {e}");
                }
            }
        }
    }
}

fn print_banner(root: &Path, offset: u16) {
    let first = format!("127.0.0.1:{}", DEV_MEMBERS[0].1 + offset);
    let endpoints = DEV_MEMBERS
        .iter()
        .map(|(_, c, _)| format!("127.0.0.1:{}", c + offset))
        .collect::<Vec<_>>()
        .join(",");
    let root: PathBuf = root.to_path_buf();
    println!(
        "metalraft dev: 3 members running, data in {}\n\
         Try (etcdctl from Debian's etcd-client package):\n\
         \x20 export ETCDCTL_API=3\n\
         \x20 etcdctl --endpoints={endpoints} put greeting hello\n\
         \x20 etcdctl --endpoints={endpoints} get greeting\n\
         \x20 etcdctl --endpoints={endpoints} member list -w table\n\
         \x20 etcdctl --endpoints={endpoints} endpoint status -w table\n\
         \x20 etcdctl --endpoints={first} snapshot save /tmp/metalraft.snap\n\
         Ctrl-C stops the cluster; run `metalraft dev` again to resume with the same data.",
        root.display()
    );
}
