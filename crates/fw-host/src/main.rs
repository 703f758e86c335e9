//! `metalraft-fw`: build, run and poke a MetalRaft firmware cluster in QEMU.
//! Run `metalraft-fw help` for usage.

use std::collections::BTreeMap;
use std::fs;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use metalraft_fw::client::Client;
use metalraft_fw::cluster::ClusterSpec;
use metalraft_fw::fault::FaultCommand;
use metalraft_fw::firmware;
use metalraft_fw::hub::Hub;
use metalraft_fw::ports::{Ports, DEFAULT_BASE_PORT};
use metalraft_fw_proto::client::{DroppedDatagrams, Role, Status};

const USAGE: &str = "\
metalraft-fw — MetalRaft firmware cluster in QEMU

USAGE:
  metalraft-fw build                              build the firmware, print the ELF path
  metalraft-fw cluster up [--nodes N] [--base-port P] [--keep-disks] [--no-build]
                                                  start N (3..7, default 5) nodes + hub in the background
  metalraft-fw cluster down                       stop the cluster's nodes and hub
  metalraft-fw status                             every node's role, term, leader, indexes, memory
  metalraft-fw put KEY VALUE                      write through the leader
  metalraft-fw get KEY [--node N]                 linearizable read (through the leader, or served by node N)
  metalraft-fw delete KEY                         delete through the leader
  metalraft-fw fault isolate N | cut A B | partition 1,2/3,4,5 | drop PERCENT | heal | show
  metalraft-fw fault garbage FROM TO COUNT        spray COUNT garbage datagrams at node TO's Raft port
  metalraft-fw node kill N | start N              kill -9 / restart one node (it keeps its disk)
  metalraft-fw disk scan N                        the log on node N's disk as recovery sees it
  metalraft-fw disk tear N                        simulate a crash mid-write on a stopped node's disk
  metalraft-fw hub --base-port P --nodes N        run the L2 hub in the foreground (used by `cluster up`)

Every command takes --dir DIR (default metalraft-data/fw-cluster): images, per-node logs
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
const STATE_FILE: &str = "cluster.state";

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Parsed command line: positional words and `--flag value` options.
struct Args {
    words: Vec<String>,
    opts: BTreeMap<String, String>,
    flags: Vec<String>,
}

const BOOL_FLAGS: &[&str] = &["--keep-disks", "--no-build"];

fn parse_args() -> Result<Args> {
    let mut a = Args {
        words: Vec::new(),
        opts: BTreeMap::new(),
        flags: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(w) = it.next() {
        if BOOL_FLAGS.contains(&w.as_str()) {
            a.flags.push(w);
        } else if let Some(name) = w.strip_prefix("--") {
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            a.opts.insert(name.to_string(), v);
        } else {
            a.words.push(w);
        }
    }
    Ok(a)
}

impl Args {
    fn opt<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.opts.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: bad value {v:?}").into()),
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
    base_port: u16,
    hub_pid: u32,
    node_pids: BTreeMap<u8, u32>,
    elf: PathBuf,
}

impl State {
    fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let mut s = format!(
            "nodes={}\nbase_port={}\nhub_pid={}\nelf={}\n",
            self.nodes,
            self.base_port,
            self.hub_pid,
            self.elf.display()
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
        Ok(State {
            nodes,
            base_port: get("base_port")?.parse().map_err(|_| bad("base_port"))?,
            hub_pid: get("hub_pid")?.parse().map_err(|_| bad("hub_pid"))?,
            node_pids,
            elf: PathBuf::from(get("elf")?),
        })
    }

    fn spec(&self, dir: &Path) -> Result<ClusterSpec> {
        Ok(ClusterSpec::new(
            dir,
            self.nodes,
            Ports {
                base: self.base_port,
            },
            &self.elf,
        )?)
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
    let nodes = a.opt("nodes", DEFAULT_NODES)?;
    let ports = Ports {
        base: a.opt("base-port", DEFAULT_BASE_PORT)?,
    };
    let elf = if a.flag("--no-build") {
        firmware::elf_path()
    } else {
        firmware::build()?
    };
    let spec = ClusterSpec::new(&dir, nodes, ports, &elf)?;
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
        base_port: ports.base,
        hub_pid: hub.id(),
        node_pids: BTreeMap::new(),
        elf,
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
        "started {nodes} nodes (logs in {}), waiting for a leader...",
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
        "node {} {:<12} term {:<4} leader {:<4} commit {:<6} applied {:<6} last {:<6} snap {:<6} keys {:<5} heap {}/{} (hwm {}) boots {} torn {} bad_requests {} dropped {}",
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
        s.boots,
        s.recovered_torn_records,
        s.bad_requests,
        fmt_dropped(&s.dropped)
    )
}

fn print_status(client: &mut Client, nodes: u8) {
    for id in 1..=nodes {
        match client.status(id, STATUS_TIMEOUT) {
            Ok(Some(s)) => outln!("{}", fmt_status(&s)),
            Ok(None) => outln!("node {id} no answer"),
            Err(e) => outln!("node {id} error: {e}"),
        }
    }
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
        ["cluster", "up"] => cluster_up(a)?,
        ["cluster", "down"] => cluster_down(a)?,
        ["status"] => {
            let (mut c, nodes) = client_for(a)?;
            print_status(&mut c, nodes);
        }
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
        ["disk", "tear", n] => {
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
            let index = metalraft_fw::image::append_torn_record(&spec.image(id))?;
            outln!("wrote a torn record claiming index {index} after node {id}'s log");
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
        _ => return Err(format!("unknown command {:?}\n\n{USAGE}", w.join(" ")).into()),
    }
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|a| run(&a));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metalraft-fw: {e}");
            ExitCode::FAILURE
        }
    }
}
