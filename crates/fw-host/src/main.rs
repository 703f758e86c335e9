//! `metalraft-fw`: build, run and poke a MetalRaft firmware cluster in QEMU.
//! Run `metalraft-fw help` for usage.

use std::collections::BTreeMap;
use std::fs;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use metalraft_fw::bench;
use metalraft_fw::client::{Client, ClientError};
use metalraft_fw::cluster::ClusterSpec;
use metalraft_fw::fault::FaultCommand;
use metalraft_fw::firmware;
use metalraft_fw::hub::Hub;
use metalraft_fw::ports::{Ports, DEFAULT_BASE_PORT};
use metalraft_fw_proto::addr::MAX_NODE_ID;
use metalraft_fw_proto::client::{
    DroppedDatagrams, ErrorCode, MemberOp, Membership, Role, Status, MAX_VALUE_BYTES,
};

const USAGE: &str = "\
metalraft-fw — MetalRaft firmware cluster in QEMU

USAGE:
  metalraft-fw build                              build the firmware, print the ELF path
  metalraft-fw size                               build the firmware, print its .text against the budget
                                                  (and the Cortex-M4F build's sections)
  metalraft-fw cluster up [--nodes N] [--extra K] [--arm M] [--base-port P] [--keep-disks] [--no-build]
                                                  start N (3..7, default 5) bootstrap voters + hub in the
                                                  background, and K extra nodes (ids N+1..N+K, N+K <= 7)
                                                  that are not members until `member add`; the last M
                                                  nodes run the Cortex-M4F build (qemu-system-arm,
                                                  mps2-an386)
  metalraft-fw cluster down                       stop the cluster's nodes and hub
  metalraft-fw member list [--node N]             the membership as the leader (or node N) sees it
  metalraft-fw member add N.. [--learner]         add nodes as voters (or learners)
  metalraft-fw member promote N..                 make caught-up learners voters
  metalraft-fw member remove N..                  remove members (a removed node stops; removing the
                                                  leader hands leadership to another voter first)
  metalraft-fw status                             every node's role, term, leader, indexes, memory
                                                  and per-stage counters (messages, flushes, time)
  metalraft-fw bench [--seconds S] [--windows 1,16,64] [--value-bytes B]
                                                  puts with 1, 16 and 64 in flight at the leader for S
                                                  (default 5) s each: commits/s, p50/p99 latency, the QEMU
                                                  processes' CPU use and the leader's counters per commit
  metalraft-fw put KEY VALUE                      write through the leader
  metalraft-fw get KEY [--node N]                 linearizable read (through the leader, or served by node N)
  metalraft-fw delete KEY                         delete through the leader
  metalraft-fw fault isolate N | cut A B | partition 1,2/3,4,5 | drop PERCENT | heal | show
  metalraft-fw fault garbage FROM TO COUNT        spray COUNT garbage datagrams at node TO's Raft port
  metalraft-fw node kill N | start N              kill -9 / restart one node (it keeps its disk)
  metalraft-fw disk scan N                        the log on node N's disk as recovery sees it
  metalraft-fw disk tear N [body|header|gap]      simulate a crash mid-write on a stopped node's disk
                                                  (body: header sector kept, the rest lost (default);
                                                  header: the reverse; gap: a zeroed record, then a valid one)
  metalraft-fw hub --base-port P --nodes N        run the L2 hub in the foreground (used by `cluster up`)
  metalraft-fw help | --help | -h                 this text

One node id changes the membership with a single-server change; several voters at once go
through joint consensus. Every command takes --dir DIR (default metalraft-data/fw-cluster): images, per-node logs
(nodeN.log), hub.log and the cluster state live there. Ports: base (hub switch), base+1
(fault control), base+2 (client gateway), base+10+N (node N); all on 127.0.0.1.";

/// Prints a line to stdout, ignoring a closed pipe (`metalraft-fw status | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Default cluster directory.
const DEFAULT_DIR: &str = "metalraft-data/fw-cluster";
/// Default cluster size.
const DEFAULT_NODES: u8 = 5;
/// How long `cluster up` waits for a leader.
const UP_TIMEOUT: Duration = Duration::from_secs(60);
/// Per-node status timeout of `status`.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long `cluster down` waits for processes to exit.
const DOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Poll interval while waiting.
const POLL: Duration = Duration::from_millis(50);
/// `member promote` refuses a learner that has applied less than this
/// percentage of the leader's commit index (etcd: 90 %).
const LEARNER_READY_PERCENT: u64 = 90;
/// How long a membership command waits for a joint configuration to be left.
const JOINT_LEAVE_TIMEOUT: Duration = Duration::from_secs(15);
const STATE_FILE: &str = "cluster.state";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Exit status of a command line that does not parse (as getopt tools do).
const EXIT_USAGE: u8 = 2;

/// A command line that does not parse: exit status [`EXIT_USAGE`].
#[derive(Debug, PartialEq, Eq)]
struct UsageError(String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn usage_error(msg: impl Into<String>) -> Box<dyn std::error::Error> {
    Box::new(UsageError(msg.into()))
}

/// Parsed command line: positional words and `--flag value` options.
#[derive(Debug)]
struct Args {
    words: Vec<String>,
    opts: BTreeMap<String, String>,
    flags: Vec<String>,
}

/// Options without a value.
const BOOL_FLAGS: &[&str] = &["--keep-disks", "--no-build", "--learner"];
/// Options with a value (`--name VALUE` or `--name=VALUE`).
const VALUE_OPTS: &[&str] = &[
    "dir",
    "nodes",
    "extra",
    "arm",
    "base-port",
    "node",
    "seconds",
    "windows",
    "value-bytes",
];

/// Parses the arguments after the program name; `Ok(None)` asks for the
/// usage (`--help`, `-h`). After `--` every argument is a word (a value
/// that starts with `-`).
fn parse_args(
    args: impl IntoIterator<Item = String>,
) -> std::result::Result<Option<Args>, UsageError> {
    let mut a = Args {
        words: Vec::new(),
        opts: BTreeMap::new(),
        flags: Vec::new(),
    };
    let mut it = args.into_iter();
    while let Some(w) = it.next() {
        if w == "--help" || w == "-h" {
            return Ok(None);
        }
        if w == "--" {
            a.words.extend(it.by_ref());
            break;
        }
        if BOOL_FLAGS.contains(&w.as_str()) {
            a.flags.push(w);
        } else if let Some(opt) = w.strip_prefix("--") {
            let (name, inline) = match opt.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (opt, None),
            };
            if !VALUE_OPTS.contains(&name) {
                return Err(UsageError(format!("unknown option --{name}")));
            }
            let v = match inline {
                Some(v) => v,
                None => it
                    .next()
                    .ok_or_else(|| UsageError(format!("--{name} needs a value")))?,
            };
            a.opts.insert(name.to_string(), v);
        } else if w.len() > 1 && w.starts_with('-') {
            return Err(UsageError(format!(
                "unknown option {w} (use `--` before a value that starts with '-')"
            )));
        } else {
            a.words.push(w);
        }
    }
    Ok(Some(a))
}

impl Args {
    fn opt<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.opts.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| usage_error(format!("--{name}: bad value {v:?}"))),
        }
    }
    fn dir(&self) -> PathBuf {
        PathBuf::from(
            self.opts
                .get("dir")
                .map(String::as_str)
                .unwrap_or(DEFAULT_DIR),
        )
    }
    fn flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

/// What `cluster up` records for the other commands.
struct State {
    nodes: u8,
    /// Bootstrap voters `1..=voters`; the nodes above joined (or will).
    voters: u8,
    base_port: u16,
    hub_pid: u32,
    node_pids: BTreeMap<u8, u32>,
    elf: PathBuf,
    /// The last `arm` nodes are Cortex-M nodes running `arm_elf`.
    arm: u8,
    arm_elf: PathBuf,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let mut s = format!(
            "nodes={}\nvoters={}\nbase_port={}\nhub_pid={}\nelf={}\narm={}\narm_elf={}\n",
            self.nodes,
            self.voters,
            self.base_port,
            self.hub_pid,
            self.elf.display(),
            self.arm,
            self.arm_elf.display()
        );
        for (id, pid) in &self.node_pids {
            s += &format!("node{id}_pid={pid}\n");
        }
        fs::write(Self::path(dir), s)?;
        Ok(())
    }

    fn load(dir: &Path) -> Result<State> {
        let path = Self::path(dir);
        let text = fs::read_to_string(&path).map_err(|e| {
            format!(
                "no cluster in {} ({e}); run `metalraft-fw cluster up` first",
                dir.display()
            )
        })?;
        let kv: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| format!("{}: missing {k}", path.display()))
        };
        let bad = |k: &str| format!("{}: bad {k}", path.display());
        let nodes: u8 = get("nodes")?.parse().map_err(|_| bad("nodes"))?;
        let mut node_pids = BTreeMap::new();
        for id in 1..=nodes {
            if let Some(p) = kv.get(format!("node{id}_pid").as_str()) {
                node_pids.insert(id, p.parse().map_err(|_| bad("node pid"))?);
            }
        }
        // Files written before extra nodes existed have no `voters`.
        let voters = match kv.get("voters") {
            Some(v) => v.parse().map_err(|_| bad("voters"))?,
            None => nodes,
        };
        Ok(State {
            nodes,
            voters,
            base_port: get("base_port")?.parse().map_err(|_| bad("base_port"))?,
            hub_pid: get("hub_pid")?.parse().map_err(|_| bad("hub_pid"))?,
            node_pids,
            elf: PathBuf::from(get("elf")?),
            // Files written before Cortex-M nodes existed have neither.
            arm: match kv.get("arm") {
                Some(v) => v.parse().map_err(|_| bad("arm"))?,
                None => 0,
            },
            arm_elf: PathBuf::from(kv.get("arm_elf").copied().unwrap_or_default()),
        })
    }

    fn spec(&self, dir: &Path) -> Result<ClusterSpec> {
        let extra = self
            .nodes
            .checked_sub(self.voters)
            .ok_or("cluster.state: voters > nodes")?;
        Ok(ClusterSpec::new(
            dir,
            self.voters,
            Ports {
                base: self.base_port,
            },
            &self.elf,
        )?
        .with_joiners(extra)?
        .with_arm(self.arm, &self.arm_elf)?)
    }
}

/// Whether `pid` is alive and its command line contains `marker` (guards
/// against killing an unrelated process that reused a recorded pid).
fn is_ours(pid: u32, marker: &str) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .contains(marker)
        })
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        return Err(format!("kill {sig} {pid} failed").into());
    }
    Ok(())
}

fn wait_gone(pid: u32, marker: &str) -> bool {
    let until = Instant::now() + DOWN_TIMEOUT;
    while Instant::now() < until {
        if !is_ours(pid, marker) {
            return true;
        }
        std::thread::sleep(POLL);
    }
    false
}

fn spawn_node(spec: &ClusterSpec, id: u8) -> Result<u32> {
    Ok(spec.qemu_command(id)?.spawn()?.id())
}

fn cluster_up(a: &Args) -> Result<()> {
    let dir = a.dir();
    if let Ok(old) = State::load(&dir) {
        if is_ours(old.hub_pid, "hub") {
            return Err(format!(
                "a cluster is already running in {} (run `cluster down` first)",
                dir.display()
            )
            .into());
        }
    }
    let voters = a.opt("nodes", DEFAULT_NODES)?;
    let extra: u8 = a.opt("extra", 0)?;
    let arm: u8 = a.opt("arm", 0)?;
    let ports = Ports {
        base: a.opt("base-port", DEFAULT_BASE_PORT)?,
    };
    // Check the sizes before the (long) build.
    ClusterSpec::new(&dir, voters, ports, Path::new(""))
        .and_then(|s| s.with_joiners(extra))
        .and_then(|s| s.with_arm(arm, Path::new("")))
        .map_err(|e| usage_error(e.to_string()))?;
    let elf = if a.flag("--no-build") {
        firmware::elf_path()
    } else {
        firmware::build()?
    };
    let arm_elf = match (arm, a.flag("--no-build")) {
        (0, _) => PathBuf::new(),
        (_, true) => firmware::arm_elf_path(),
        (_, false) => firmware::build_arm()?,
    };
    let spec = ClusterSpec::new(&dir, voters, ports, &elf)?
        .with_joiners(extra)?
        .with_arm(arm, &arm_elf)?;
    let nodes = spec.nodes;
    spec.check_ports_free()?;
    if a.flag("--keep-disks") && spec.ids().all(|id| spec.image(id).is_file()) {
        outln!("keeping existing disks in {}", dir.display());
    } else {
        spec.create_images()?;
    }
    let hub_log = fs::File::create(dir.join("hub.log"))?;
    let hub = Command::new(std::env::current_exe()?)
        .args([
            "hub",
            "--base-port",
            &ports.base.to_string(),
            "--nodes",
            &nodes.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(hub_log.try_clone()?)
        .stderr(hub_log)
        .process_group(0)
        .spawn()?;
    let mut state = State {
        nodes,
        voters,
        base_port: ports.base,
        hub_pid: hub.id(),
        node_pids: BTreeMap::new(),
        elf,
        arm,
        arm_elf,
    };
    // The hub must be listening before QEMU sends to it.
    let until = Instant::now() + DOWN_TIMEOUT;
    while UdpSocket::bind(ports.gateway()).is_ok() && Instant::now() < until {
        std::thread::sleep(POLL);
    }
    let t0 = Instant::now();
    for id in spec.ids() {
        state.node_pids.insert(id, spawn_node(&spec, id)?);
    }
    state.save(&dir)?;
    outln!(
        "started {nodes} nodes ({voters} bootstrap voters{}; logs in {}), waiting for a leader...",
        if extra > 0 {
            format!(", nodes {}..={nodes} join with `member add`", voters + 1)
        } else {
            String::new()
        },
        dir.display()
    );
    let mut client = Client::new(ports.gateway(), nodes)?;
    while t0.elapsed() < UP_TIMEOUT {
        for id in spec.ids() {
            if let Ok(Some(s)) = client.status(id, STATUS_TIMEOUT) {
                if s.role == Role::Leader {
                    outln!("leader: node {id} after {:.2}s", t0.elapsed().as_secs_f64());
                    print_status(&mut client, nodes);
                    return Ok(());
                }
            }
        }
    }
    Err(format!(
        "no leader within {UP_TIMEOUT:?}; see {}/node*.log",
        dir.display()
    )
    .into())
}

fn cluster_down(a: &Args) -> Result<()> {
    let dir = a.dir();
    let state = State::load(&dir)?;
    let spec = state.spec(&dir)?;
    for (&id, &pid) in &state.node_pids {
        let marker = spec.image(id).display().to_string();
        if is_ours(pid, &marker) {
            signal(pid, "-TERM")?;
            if !wait_gone(pid, &marker) {
                signal(pid, "-KILL")?;
            }
        }
    }
    if is_ours(state.hub_pid, "hub") {
        signal(state.hub_pid, "-TERM")?;
    }
    fs::remove_file(State::path(&dir))?;
    outln!("cluster in {} stopped (disks and logs kept)", dir.display());
    Ok(())
}

fn node_cmd(a: &Args) -> Result<()> {
    let dir = a.dir();
    let mut state = State::load(&dir)?;
    let spec = state.spec(&dir)?;
    let id: u8 = a
        .words
        .get(2)
        .ok_or("usage: node kill N | start N")?
        .parse()
        .map_err(|_| "bad node id")?;
    if !spec.ids().any(|x| x == id) {
        return Err(format!("no node {id} in this {}-node cluster", state.nodes).into());
    }
    let marker = spec.image(id).display().to_string();
    let running = state
        .node_pids
        .get(&id)
        .filter(|&&p| is_ours(p, &marker))
        .copied();
    match a.words.get(1).map(String::as_str) {
        Some("kill") => {
            let pid = running.ok_or(format!("node {id} is not running"))?;
            signal(pid, "-KILL")?;
            wait_gone(pid, &marker);
            state.node_pids.remove(&id);
            outln!("node {id} (pid {pid}) killed with SIGKILL");
        }
        Some("start") => {
            if let Some(pid) = running {
                return Err(format!("node {id} is already running (pid {pid})").into());
            }
            let pid = spawn_node(&spec, id)?;
            state.node_pids.insert(id, pid);
            outln!("node {id} started (pid {pid}) from its disk");
        }
        _ => return Err("usage: node kill N | start N".into()),
    }
    state.save(&dir)
}

/// The peer datagrams a node dropped, by cause (only the non-zero ones).
fn fmt_dropped(d: &DroppedDatagrams) -> String {
    let causes = [
        ("truncated", d.truncated),
        ("foreign", d.foreign_source),
        ("empty", d.empty),
        ("version", d.unknown_version),
        ("malformed", d.malformed),
        ("recipient", d.wrong_recipient),
        ("sender", d.wrong_sender),
    ];
    let parts: Vec<String> = causes
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(what, n)| format!("{what}={n}"))
        .collect();
    if parts.is_empty() {
        "0".to_string()
    } else {
        format!("{} ({})", d.total(), parts.join(" "))
    }
}

fn fmt_status(s: &Status) -> String {
    format!(
        "node {} {:<12} term {:<4} leader {:<4} commit {:<6} applied {:<6} last {:<6} snap {:<6} keys {:<5} heap {}/{} (hwm {}) stack hwm {}/{} static {} boots {} torn {} bad_requests {} dropped {}",
        s.node,
        format!("{:?}", s.role),
        s.term,
        s.leader.map_or("-".to_string(), |l| l.to_string()),
        s.commit,
        s.applied,
        s.last_index,
        s.snapshot_index,
        s.keys,
        s.heap_used,
        s.heap_size,
        s.heap_high_water,
        s.stack_high_water,
        s.stack_watch,
        s.static_bytes,
        s.boots,
        s.recovered_torn_records,
        s.bad_requests,
        fmt_dropped(&s.dropped)
    )
}

fn print_status(client: &mut Client, nodes: u8) {
    for id in 1..=nodes {
        match client.status(id, STATUS_TIMEOUT) {
            Ok(Some(s)) => {
                outln!("{}", fmt_status(&s));
                let p = &s.perf;
                outln!(
                    "       wakeups {} ticks {} peer in/out {}/{} client in/out {}/{} outputs {} batches {} entries {} \
                     disk writes {} flushes {} | ms: busy {} storage {} send {} raft {} disk wait {} (device: write {} flush {})",
                    p.wakeups,
                    p.ticks,
                    p.peer_in,
                    p.peer_out,
                    p.client_in,
                    p.client_out,
                    p.outputs,
                    p.batches,
                    p.entries_written,
                    p.disk_writes,
                    p.flushes,
                    p.busy_us / 1000,
                    p.storage_us / 1000,
                    p.send_us / 1000,
                    p.raft_us / 1000,
                    p.disk_wait_us / 1000,
                    p.write_us / 1000,
                    p.flush_us / 1000
                )
            }
            Ok(None) => outln!("node {id} no answer"),
            Err(e) => outln!("node {id} error: {e}"),
        }
    }
}

/// Every node's status (`None` for a node that does not answer).
fn all_status(client: &mut Client, nodes: u8) -> Vec<Option<Status>> {
    (1..=nodes)
        .map(|id| client.status(id, STATUS_TIMEOUT).ok().flatten())
        .collect()
}

/// Total CPU time of the given processes (those still readable).
fn qemu_cpu(pids: &[u32]) -> Vec<Duration> {
    pids.iter()
        .map(|&p| bench::cpu_time(p).unwrap_or_default())
        .collect()
}

fn bench_cmd(a: &Args) -> Result<()> {
    let dir = a.dir();
    let state = State::load(&dir)?;
    let seconds: f64 = a.opt("seconds", 5.0)?;
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err(usage_error("--seconds: between 0 and 3600"));
    }
    let value_bytes: usize = a.opt("value-bytes", 16)?;
    if value_bytes > MAX_VALUE_BYTES {
        return Err(usage_error(format!(
            "--value-bytes: at most {MAX_VALUE_BYTES}"
        )));
    }
    let windows: Vec<usize> = a
        .opts
        .get("windows")
        .map_or("1,16,64", String::as_str)
        .split(',')
        .map(|w| match w.trim().parse() {
            Ok(n) if (1..=bench::MAX_WINDOW).contains(&n) => Ok(n),
            _ => Err(usage_error(format!(
                "--windows: bad window {w:?} (1..={})",
                bench::MAX_WINDOW
            ))),
        })
        .collect::<Result<_>>()?;
    let spec = state.spec(&dir)?;
    let pids: Vec<u32> = state
        .node_pids
        .iter()
        .filter(|(&id, &p)| is_ours(p, &spec.image(id).display().to_string()))
        .map(|(_, &p)| p)
        .collect();
    let (mut c, nodes) = client_for(a)?;
    let gateway = Ports {
        base: state.base_port,
    }
    .gateway();
    let leader = wait_leader(&mut c)?;
    c.put(b"bench-warmup", b"1")?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    outln!(
        "bench: {nodes} nodes, leader {leader}, {value_bytes}-byte values, {seconds} s per window; \
         host load average {} ({} CPUs); {} QEMU processes",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        pids.len()
    );
    // Every node's status after the last window, for the RAM peaks.
    let mut last = Vec::new();
    for w in windows {
        let before = all_status(&mut c, nodes);
        let cpu0 = qemu_cpu(&pids);
        let r = bench::run_window(
            gateway,
            leader,
            w,
            value_bytes,
            Duration::from_secs_f64(seconds),
        )?;
        let cpu1 = qemu_cpu(&pids);
        let after = all_status(&mut c, nodes);
        let wall = r.elapsed.as_secs_f64().max(1e-9);
        let per_proc: Vec<String> = cpu0
            .iter()
            .zip(&cpu1)
            .map(|(a, b)| format!("{:.0}", 100.0 * b.saturating_sub(*a).as_secs_f64() / wall))
            .collect();
        let total: f64 = cpu0
            .iter()
            .zip(&cpu1)
            .map(|(a, b)| b.saturating_sub(*a).as_secs_f64())
            .sum();
        let ms = |d: Option<Duration>| {
            d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
        };
        outln!(
            "in flight {:>2}: {:>6.0} commits/s ({} in {:.2} s), latency p50 {} ms p99 {} ms, errors {} lost {}; \
             QEMU CPU {:.0}% of one core ({} %)",
            w,
            r.rate(),
            r.commits,
            wall,
            ms(r.percentile(50)),
            ms(r.percentile(99)),
            r.errors,
            r.lost,
            100.0 * total / wall,
            per_proc.join(" ")
        );
        if let Some(e) = &r.first_error {
            outln!("  first error answer: {e:?}");
        }
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            let id = i as u8 + 1;
            if let (Some(b), Some(a)) = (b, a) {
                let role = if id == leader { "leader  " } else { "follower" };
                outln!(
                    "  node {id} {role} {}",
                    bench::fmt_perf(&bench::perf_delta(&a.perf, &b.perf), r.commits, r.elapsed)
                );
            }
        }
        last = after;
    }
    let largest = last
        .iter()
        .flatten()
        .map(|s| (bench::ram_peak(s), s))
        .max_by_key(|p| p.0);
    if let Some((peak, s)) = largest {
        outln!(
            "RAM peak since boot (static + stack high-water + heap high-water), largest node: \
             node {} {peak} B = {} + {} + {} ({} B budget{})",
            s.node,
            s.static_bytes,
            s.stack_high_water,
            s.heap_high_water,
            bench::RAM_BUDGET_BYTES,
            if peak > bench::RAM_BUDGET_BYTES {
                ", OVER"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn client_for(a: &Args) -> Result<(Client, u8)> {
    let state = State::load(&a.dir())?;
    Ok((
        Client::new(
            Ports {
                base: state.base_port,
            }
            .gateway(),
            state.nodes,
        )?,
        state.nodes,
    ))
}

/// Node ids of a `member` command.
fn member_ids(words: &[&str]) -> Result<Vec<u8>> {
    if words.is_empty() {
        return Err(usage_error("name at least one node id"));
    }
    words
        .iter()
        .map(|w| match w.parse::<u8>() {
            Ok(id) if (1..=MAX_NODE_ID).contains(&id) => Ok(id),
            _ => Err(usage_error(format!(
                "bad node id {w:?} (1..={MAX_NODE_ID})"
            ))),
        })
        .collect()
}

/// The leader, found by asking every node's status until one leads.
fn wait_leader(client: &mut Client) -> Result<u8> {
    let until = Instant::now() + client.deadline;
    while Instant::now() < until {
        if let Some(l) = client.find_leader(STATUS_TIMEOUT)? {
            return Ok(l);
        }
        std::thread::sleep(POLL);
    }
    Err("no leader answers".into())
}

fn print_members(client: &mut Client, nodes: u8, from: u8, m: &Membership) {
    outln!("{m} (as node {from} sees it)");
    for id in 1..=nodes {
        let role = if m.is_voter(id) {
            "voter"
        } else if m.contains(id) {
            "learner"
        } else {
            "not a member"
        };
        match client.status(id, STATUS_TIMEOUT) {
            Ok(Some(s)) => outln!(
                "  node {id}: {role:<12} {:<12} applied {:<6} snapshots installed {}",
                format!("{:?}", s.role),
                s.applied,
                s.snapshots_installed
            ),
            _ => outln!("  node {id}: {role:<12} (no answer)"),
        }
    }
}

/// Refuses to promote a learner that is far behind the leader (it would
/// slow down every commit until it caught up).
fn check_caught_up(client: &mut Client, leader: u8, ids: &[u8]) -> Result<()> {
    let commit = client
        .status(leader, STATUS_TIMEOUT)?
        .ok_or("the leader does not answer")?
        .commit;
    for &id in ids {
        let applied = client.status(id, STATUS_TIMEOUT)?.map_or(0, |s| s.applied);
        if applied * 100 < commit * LEARNER_READY_PERCENT {
            return Err(format!(
                "node {id} has applied {applied} of the leader's {commit} entries; \
                 promote it once it has caught up (`member list` shows its progress)"
            )
            .into());
        }
    }
    Ok(())
}

fn member_cmd(a: &Args, w: &[&str]) -> Result<()> {
    if w == ["list"] {
        let (mut c, nodes) = client_for(a)?;
        let node = match a.opts.get("node") {
            Some(n) => n.parse().map_err(|_| usage_error("bad --node"))?,
            None => wait_leader(&mut c)?,
        };
        let m = c
            .members(node, STATUS_TIMEOUT)?
            .ok_or(format!("node {node} does not answer"))?;
        print_members(&mut c, nodes, node, &m);
        return Ok(());
    }
    let (verb, rest) = w
        .split_first()
        .ok_or_else(|| usage_error("member list | add | promote | remove"))?;
    let ids = member_ids(rest)?;
    let learner = a.flag("--learner");
    let op: fn(u8) -> MemberOp = match *verb {
        "add" if learner => MemberOp::AddLearner,
        "add" => MemberOp::AddVoter,
        "promote" => MemberOp::Promote,
        "remove" => MemberOp::Remove,
        _ => return Err(usage_error(format!("unknown member command {verb:?}"))),
    };
    if learner && *verb != "add" {
        return Err(usage_error("--learner goes with `member add`"));
    }
    let (mut c, nodes) = client_for(a)?;
    let leader = wait_leader(&mut c)?;
    if *verb == "promote" {
        check_caught_up(&mut c, leader, &ids)?;
    }
    let ops: Vec<MemberOp> = ids.iter().map(|&id| op(id)).collect();
    let mut m = match c.change_members(&ops) {
        Err(ClientError::Server(ErrorCode::BadMembershipChange)) => {
            return Err(format!(
                "refused: {} (see `member list`)",
                ErrorCode::BadMembershipChange
            )
            .into())
        }
        r => r?,
    };
    // Several voters at once went through joint consensus, which the
    // leader leaves by itself: wait for it.
    let until = Instant::now() + JOINT_LEAVE_TIMEOUT;
    while m.is_joint() && Instant::now() < until {
        std::thread::sleep(POLL);
        let leader = c.leader_hint.unwrap_or(leader);
        if let Ok(Some(now)) = c.members(leader, STATUS_TIMEOUT) {
            m = now;
        }
    }
    let from = c.leader_hint.unwrap_or(leader);
    print_members(&mut c, nodes, from, &m);
    Ok(())
}

fn fault_cmd(a: &Args) -> Result<()> {
    let state = State::load(&a.dir())?;
    let line = a.words[1..].join(" ");
    FaultCommand::parse(&line, state.nodes)?; // clear errors before sending
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send_to(
        line.as_bytes(),
        Ports {
            base: state.base_port,
        }
        .control(),
    )?;
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .map_err(|e| format!("hub did not answer: {e}"))?;
    outln!("{}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

fn run(a: &Args) -> Result<()> {
    let w: Vec<&str> = a.words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["build"] => outln!("{}", firmware::build()?.display()),
        ["size"] => {
            let elf = firmware::build()?;
            let text = firmware::section_bytes(&elf, ".text")?;
            let rodata = firmware::section_bytes(&elf, ".rodata")?;
            let bss = firmware::section_bytes(&elf, ".bss")?;
            let budget = firmware::TEXT_BUDGET_BYTES;
            outln!(
                ".text {text} bytes of {budget} ({} to spare); .rodata {rodata} bytes; .bss {bss} bytes",
                budget as i64 - text as i64
            );
            // The Cortex-M4F build of the same firmware (no budget of its own).
            let arm = firmware::build_arm()?;
            outln!(
                "Cortex-M4F (mps2-an386): .text {} bytes; .rodata {} bytes; .bss {} bytes",
                firmware::section_bytes(&arm, ".text")?,
                firmware::section_bytes(&arm, ".rodata")?,
                firmware::section_bytes(&arm, ".bss")?
            );
            if text > budget {
                return Err(format!(".text above its {budget}-byte budget").into());
            }
        }
        ["cluster", "up"] => cluster_up(a)?,
        ["cluster", "down"] => cluster_down(a)?,
        ["status"] => {
            let (mut c, nodes) = client_for(a)?;
            print_status(&mut c, nodes);
        }
        ["bench"] => bench_cmd(a)?,
        ["put", key, value] => {
            let (mut c, _) = client_for(a)?;
            outln!("OK revision {}", c.put(key.as_bytes(), value.as_bytes())?);
        }
        ["get", key] => {
            let (mut c, _) = client_for(a)?;
            let v = match a.opts.get("node") {
                Some(n) => c.get_from(n.parse().map_err(|_| "bad --node")?, key.as_bytes())?,
                None => c.get(key.as_bytes())?,
            };
            match v {
                Some(v) => outln!("{}", String::from_utf8_lossy(&v)),
                None => return Err(format!("key {key:?} not found").into()),
            }
        }
        ["delete", key] => {
            let (mut c, _) = client_for(a)?;
            outln!("deleted {}", c.delete(key.as_bytes())?);
        }
        ["fault", ..] if w.len() > 1 => fault_cmd(a)?,
        ["member", rest @ ..] if !rest.is_empty() => member_cmd(a, rest)?,
        ["node", ..] => node_cmd(a)?,
        ["disk", "scan", n] => {
            let state = State::load(&a.dir())?;
            let id: u8 = n.parse().map_err(|_| "bad node id")?;
            let scan = metalraft_fw::image::scan(&state.spec(&a.dir())?.image(id))?;
            outln!("hard state: {:?}", scan.hard_state);
            match &scan.snapshot {
                Some(h) => outln!(
                    "snapshot: index {} term {} {} bytes, log continues at sector {}",
                    h.index,
                    h.term,
                    h.data_len,
                    h.log_start_sector
                ),
                None => outln!("snapshot: none"),
            }
            outln!("{} valid records", scan.records.len());
            for r in scan.records.iter().rev().take(5).rev() {
                outln!(
                    "  index {} term {} epoch {} sector {} len {}",
                    r.header.index,
                    r.header.term,
                    r.header.epoch,
                    r.sector,
                    r.header.len
                );
            }
        }
        ["disk", "tear", n] | ["disk", "tear", n, _] => {
            let case = match w.get(3) {
                None => metalraft_fw::image::TearCase::Body,
                Some(name) => metalraft_fw::image::TearCase::from_name(name).ok_or_else(|| {
                    usage_error(format!(
                        "disk tear: unknown case {name:?} (body, header or gap)"
                    ))
                })?,
            };
            let state = State::load(&a.dir())?;
            let id: u8 = n.parse().map_err(|_| "bad node id")?;
            let spec = state.spec(&a.dir())?;
            if state
                .node_pids
                .get(&id)
                .is_some_and(|&p| is_ours(p, &spec.image(id).display().to_string()))
            {
                return Err(format!("node {id} is running; `node kill {id}` first").into());
            }
            let index = metalraft_fw::image::tear(&spec.image(id), case)?;
            outln!(
                "wrote a torn record ({}) claiming index {index} after node {id}'s log",
                case.name()
            );
        }
        ["hub"] => {
            let ports = Ports {
                base: a.opt("base-port", DEFAULT_BASE_PORT)?,
            };
            let nodes: u8 = a.opt("nodes", DEFAULT_NODES)?;
            let hub = Hub::start(ports, nodes, u64::from(ports.base))?;
            eprintln!(
                "hub: switch {} control {} gateway {} for {nodes} nodes",
                ports.switch(),
                ports.control(),
                ports.gateway()
            );
            hub.join();
        }
        ["help"] | [] => outln!("{USAGE}"),
        _ => return Err(usage_error(format!("unknown command {:?}", w.join(" ")))),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(a)) => a,
        Ok(None) => {
            outln!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("metalraft-fw: {e}\nRun `metalraft-fw --help` for usage.");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<UsageError>() => {
            eprintln!("metalraft-fw: {e}\nRun `metalraft-fw --help` for usage.");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("metalraft-fw: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> std::result::Result<Option<Args>, UsageError> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn help_asks_for_the_usage_wherever_it_stands() {
        for args in [
            &["--help"][..],
            &["-h"],
            &["cluster", "up", "--help"],
            &["--dir", "x", "-h"],
        ] {
            assert!(matches!(parse(args), Ok(None)), "{args:?}");
        }
    }

    #[test]
    fn options_flags_and_words() {
        let a = parse(&["member", "add", "4", "--learner", "--dir=d", "--node", "2"])
            .unwrap()
            .unwrap();
        assert_eq!(a.words, ["member", "add", "4"]);
        assert!(a.flag("--learner"));
        assert_eq!(a.dir(), PathBuf::from("d"));
        assert_eq!(a.opts.get("node").map(String::as_str), Some("2"));
        let a = parse(&["put", "k", "--", "-v"]).unwrap().unwrap();
        assert_eq!(a.words, ["put", "k", "-v"]);
    }

    #[test]
    fn unknown_options_and_missing_values_are_usage_errors() {
        assert_eq!(
            parse(&["status", "--bogus"]).unwrap_err(),
            UsageError("unknown option --bogus".into())
        );
        assert!(parse(&["status", "-x"]).is_err());
        assert_eq!(
            parse(&["status", "--dir"]).unwrap_err(),
            UsageError("--dir needs a value".into())
        );
    }

    #[test]
    fn member_ids_are_checked() {
        assert_eq!(member_ids(&["4", "5"]).unwrap(), vec![4, 5]);
        for bad in [&[][..], &["0"], &["8"], &["x"]] {
            let e = member_ids(bad).unwrap_err();
            assert!(e.is::<UsageError>(), "{bad:?}: {e}");
        }
    }
}
