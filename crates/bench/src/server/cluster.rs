//! Starting, watching and killing the clusters (etcd and metalraft; 3
//! members unless `--members` says otherwise)
//! as child processes on loopback, and reading their CPU time and peak RSS
//! from `/proc`.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};

/// Members per cluster unless `--members` says otherwise.
pub const DEFAULT_MEMBERS: usize = 3;
/// Fewest members per cluster: the workloads read from, watch on and kill
/// followers, and failover needs a majority to survive the leader.
pub const MIN_MEMBERS: usize = 3;
/// Most members per cluster: member `i` uses ports `base + 10*i` and
/// `+ 1`, and the two systems' port ranges are `PORT_GAP` (100) apart.
pub const MAX_MEMBERS: usize = 9;
/// How long a cluster may take to elect a leader after its processes start.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one status request while waiting for a cluster.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between status polls while waiting for a cluster.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// Which server a cluster runs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum System {
    Etcd,
    Metalraft,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Etcd => "etcd",
            System::Metalraft => "metalraft",
        }
    }
}

/// Settings both clusters share.
#[derive(Clone, Debug)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    /// `--snapshot-count` for every member, if set (else each system's default).
    pub snapshot_count: Option<u64>,
    /// Founding members per cluster (`--members`, [`MIN_MEMBERS`]..=[`MAX_MEMBERS`]).
    pub members: usize,
}

/// One member: its command line, and its process while it runs.
struct Member {
    name: String,
    client_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster of `Timing::members` founders (plus, for a while, members added by
/// [`Cluster::add_member`]).
pub struct Cluster {
    pub system: System,
    bin: PathBuf,
    members: Vec<Member>,
    /// Where the data directories and logs are.
    dir: PathBuf,
    /// The first client port; member `i` uses `base_port + 10*i` and `+1`.
    base_port: u16,
    /// `--initial-cluster` of the founding members.
    initial: String,
    /// How many founding members (the first `founders` of `members`).
    founders: usize,
}

/// CPU seconds (user + system), peak RSS and current RSS of one member
/// process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub cpu_secs: f64,
    pub hwm_kib: u64,
    pub rss_kib: u64,
}

impl Cluster {
    /// Starts the members: client ports `base_port + 10*i`, peer ports
    /// `base_port + 10*i + 1`, data directories under `data_root/<system>/`.
    pub fn start(
        system: System,
        bin: &Path,
        data_root: &Path,
        base_port: u16,
        timing: &Timing,
    ) -> Result<Cluster, String> {
        let dir = data_root.join(system.name());
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let peer = |i: usize| format!("http://127.0.0.1:{}", base_port + 10 * i as u16 + 1);
        let founders = timing.members;
        for i in 0..founders {
            for port in [base_port + 10 * i as u16, base_port + 10 * i as u16 + 1] {
                std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| {
                    format!(
                        "port {port} for {} is not free ({e}); pick another --base-port",
                        system.name()
                    )
                })?;
            }
        }
        let initial: Vec<String> = (0..founders)
            .map(|i| format!("m{}={}", i + 1, peer(i)))
            .collect();
        let initial = initial.join(",");
        let mut members = Vec::new();
        for i in 0..founders {
            members.push(member(system, &dir, base_port, i, &initial, "new", timing));
        }
        let mut c = Cluster {
            system,
            bin: bin.to_path_buf(),
            members,
            dir,
            base_port,
            initial,
            founders,
        };
        for i in 0..founders {
            c.spawn(i)?;
        }
        Ok(c)
    }

    /// Prepares one more member (`m4`, ...) with an empty data directory,
    /// to join with `--initial-cluster-state existing` once a MemberAdd of
    /// its peer URL (returned) is committed; [`restart`](Self::restart)
    /// starts it. Returns its index and peer URL.
    pub fn add_member(&mut self, timing: &Timing) -> (usize, String) {
        let i = self.members.len();
        let peer = format!("http://127.0.0.1:{}", self.base_port + 10 * i as u16 + 1);
        let initial = format!("{},m{}={peer}", self.initial, i + 1);
        let m = member(
            self.system,
            &self.dir,
            self.base_port,
            i,
            &initial,
            "existing",
            timing,
        );
        let _ = fs::remove_dir_all(self.dir.join(&m.name));
        self.members.push(m);
        (i, peer)
    }

    /// Kills the last added member and forgets it (its MemberRemove is the
    /// caller's).
    pub fn drop_added(&mut self) {
        let last = self.members.len() - 1;
        if last >= self.founders {
            self.kill(last);
            self.members.pop();
        }
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(|e| format!("open {}: {e}", m.log.display()))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.bin)
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("start {} {}: {e}", self.bin.display(), m.name))?;
        m.child = Some(child);
        Ok(())
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        self.members[i].client_url.clone()
    }

    /// Founding members (indexes `0..founders()`).
    pub fn founders(&self) -> usize {
        self.founders
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    /// The last lines of a member's log, for error messages.
    pub fn log_tail(&self, i: usize) -> String {
        let s = fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// Fails if a member process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    let name = m.name.clone();
                    m.child = None;
                    return Err(format!(
                        "{} member {name} exited ({st}); log tail:\n{}",
                        self.system.name(),
                        self.log_tail(i)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Waits until every running member answers Status and they agree on a
    /// leader; returns the index of the leader member.
    pub async fn wait_ready(&mut self) -> Result<usize, String> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            self.check_alive()?;
            let last = match self.leader().await {
                Ok(l) => return Ok(l),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!(
                    "{} cluster not ready after {STARTUP_TIMEOUT:?}: {last}",
                    self.system.name()
                ));
            }
            tokio::time::sleep(STATUS_POLL).await;
        }
    }

    /// Asks every member for its status; all must answer and name the same
    /// leader, which must be one of them.
    pub async fn leader(&self) -> Result<usize, String> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let opts = ConnectOptions::new()
                .with_timeout(STATUS_TIMEOUT)
                .with_connect_timeout(STATUS_TIMEOUT);
            let mut c = Client::connect([m.client_url.as_str()], Some(opts))
                .await
                .map_err(|e| format!("{}: {e}", m.name))?;
            let s = c.status().await.map_err(|e| format!("{}: {e}", m.name))?;
            let id = s.header().map(|h| h.member_id()).unwrap_or(0);
            ids.push(id);
            leaders.push(s.leader());
        }
        let l = leaders[0];
        if l == 0 || leaders.iter().any(|&x| x != l) {
            return Err(format!("leaders disagree or unknown: {leaders:x?}"));
        }
        ids.iter()
            .position(|&id| id == l)
            .ok_or_else(|| format!("leader {l:x} is not among members {ids:x?}"))
    }

    /// kill -9 of one member; returns when the process is reaped.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed member again with the same command line and data.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        assert!(
            self.members[i].child.is_none(),
            "restart of a running member"
        );
        self.spawn(i)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// The command line of member `i` (`m{i+1}`): ports `base_port + 10*i`
/// (client) and `+1` (peer), data directory and log under `dir`.
fn member(
    system: System,
    dir: &Path,
    base_port: u16,
    i: usize,
    initial: &str,
    state: &str,
    timing: &Timing,
) -> Member {
    let client = format!("http://127.0.0.1:{}", base_port + 10 * i as u16);
    let peer = format!("http://127.0.0.1:{}", base_port + 10 * i as u16 + 1);
    let name = format!("m{}", i + 1);
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.clone(),
        "--data-dir".into(),
        dir.join(&name).display().to_string(),
        "--listen-client-urls".into(),
        client.clone(),
        "--advertise-client-urls".into(),
        client.clone(),
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer,
        "--initial-cluster".into(),
        initial.into(),
        "--initial-cluster-state".into(),
        state.into(),
        "--initial-cluster-token".into(),
        format!("bench-{}", system.name()),
        "--heartbeat-interval".into(),
        timing.heartbeat_ms.to_string(),
        "--election-timeout".into(),
        timing.election_ms.to_string(),
        "--log-level".into(),
        "warn".into(),
    ];
    if let Some(n) = timing.snapshot_count {
        args.push("--snapshot-count".into());
        args.push(n.to_string());
    }
    if system == System::Etcd {
        // etcd 3.4 logs through capnslog unless told to use zap,
        // and only zap honours --log-level.
        args.push("--logger".into());
        args.push("zap".into());
    }
    Member {
        log: dir.join(format!("{name}.log")),
        name,
        client_url: client,
        args,
        child: None,
    }
}

/// Clock ticks per second of /proc/<pid>/stat's utime and stime.
fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// utime + stime (fields 14 and 15 of /proc/<pid>/stat), VmHWM and VmRSS.
pub fn proc_stats(pid: u32) -> Option<ProcStats> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields restart after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 → index 11.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcStats {
        cpu_secs: ticks / clk_tck(),
        hwm_kib: kib("VmHWM:"),
        rss_kib: kib("VmRSS:"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_proc_stats() {
        let s = proc_stats(std::process::id()).expect("own /proc entry");
        assert!(s.hwm_kib > 0);
        assert!(s.rss_kib > 0 && s.rss_kib <= s.hwm_kib);
        assert!(s.cpu_secs >= 0.0);
    }
}
