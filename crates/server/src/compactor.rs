//! Automatic compaction of the MVCC history, with etcd 3.4's flags and
//! semantics. Only the leader compacts, and it does so through the log
//! (an ordinary `Compact` command), so every member compacts at the same
//! revision.
//!
//! - `--auto-compaction-mode=periodic --auto-compaction-retention=R`
//!   (R in hours, or a duration): every `min(R, 1h)`, compact at the
//!   revision that was current `R` ago. Revisions are sampled every tenth
//!   of that interval, as etcd does, so the window kept is `R` give or
//!   take one sample.
//! - `--auto-compaction-mode=revision --auto-compaction-retention=N`:
//!   every [`REVISION_MODE_INTERVAL`] (5 minutes), compact at
//!   `revision - N`.
//!
//! Time is measured by this process from when it became leader: a new
//! leader starts its window over, so it never compacts history younger
//! than the retention.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use metalraft_kv as kv;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::Shared;
use crate::cli::AutoCompactionMode;
use crate::duration::parse_go_duration;

/// etcd's period in revision mode.
pub const REVISION_MODE_INTERVAL: Duration = Duration::from_secs(300);
/// etcd's longest period in periodic mode.
pub const MAX_PERIODIC_INTERVAL: Duration = Duration::from_secs(3600);
/// Samples per compaction period in periodic mode.
pub const SAMPLES_PER_PERIOD: u32 = 10;

/// A validated auto-compaction setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// Why the auto-compaction flags were refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AutoCompactionError {
    /// Not a number of hours nor a duration.
    #[error("invalid --auto-compaction-retention {0:?} for periodic mode: want hours or a duration such as 5m")]
    BadPeriod(String),
    /// Not a whole number of revisions.
    #[error(
        "invalid --auto-compaction-retention {0:?} for revision mode: want a number of revisions"
    )]
    BadRevisions(String),
}

impl AutoCompaction {
    /// Reads the flags; `Ok(None)` when compaction is off (retention 0).
    pub fn from_flags(
        mode: AutoCompactionMode,
        retention: &str,
    ) -> Result<Option<AutoCompaction>, AutoCompactionError> {
        let r = retention.trim();
        let setting = match mode {
            AutoCompactionMode::Periodic => {
                let window = match r.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    Err(_) => parse_go_duration(r)
                        .map_err(|_| AutoCompactionError::BadPeriod(r.into()))?,
                };
                (!window.is_zero()).then_some(AutoCompaction::Periodic(window))
            }
            AutoCompactionMode::Revision => {
                let n: i64 = r
                    .parse()
                    .map_err(|_| AutoCompactionError::BadRevisions(r.into()))?;
                if n < 0 {
                    return Err(AutoCompactionError::BadRevisions(r.into()));
                }
                (n > 0).then_some(AutoCompaction::Revision(n))
            }
        };
        Ok(setting)
    }

    /// How often the revision is sampled.
    fn sample_interval(self) -> Duration {
        match self {
            AutoCompaction::Periodic(w) => {
                (w.min(MAX_PERIODIC_INTERVAL) / SAMPLES_PER_PERIOD).max(Duration::from_millis(1))
            }
            AutoCompaction::Revision(_) => REVISION_MODE_INTERVAL,
        }
    }
}

/// The compaction decision, apart from clocks and the network, so it can be
/// tested on its own: fed samples of (time, revision), it says what to
/// compact at, if anything.
#[derive(Debug)]
pub struct Planner {
    setting: AutoCompaction,
    samples: VecDeque<(Instant, i64)>,
    last_compaction: Option<Instant>,
    started: Instant,
}

impl Planner {
    /// A planner whose window starts at `now`.
    pub fn new(setting: AutoCompaction, now: Instant) -> Self {
        Planner {
            setting,
            samples: VecDeque::new(),
            last_compaction: None,
            started: now,
        }
    }

    /// Records the store's `revision` at `now`; returns the revision to
    /// compact at now, if one is due and above `compacted`.
    pub fn sample(&mut self, now: Instant, revision: i64, compacted: i64) -> Option<i64> {
        self.samples.push_back((now, revision));
        let target = match self.setting {
            AutoCompaction::Revision(n) => revision.saturating_sub(n),
            AutoCompaction::Periodic(window) => {
                let period = window.min(MAX_PERIODIC_INTERVAL);
                let since = self.last_compaction.unwrap_or(self.started);
                if now.duration_since(since) < period || now.duration_since(self.started) < window {
                    return None;
                }
                // The newest sample at least `window` old.
                let cutoff = now.checked_sub(window)?;
                while self.samples.len() > 1 && self.samples[1].0 <= cutoff {
                    self.samples.pop_front();
                }
                match self.samples.front() {
                    Some(&(t, rev)) if t <= cutoff => rev,
                    _ => return None,
                }
            }
        };
        if matches!(self.setting, AutoCompaction::Revision(_)) {
            // Only the newest sample matters in revision mode.
            self.samples.clear();
        }
        self.last_compaction = Some(now);
        (target > compacted && target > 0).then_some(target)
    }
}

/// Runs until `stop`: while this member leads, samples the revision and
/// proposes compactions.
pub async fn run(shared: Arc<Shared>, setting: AutoCompaction, mut stop: watch::Receiver<bool>) {
    let mut status = shared.raft.status.clone();
    let mut ticker = tokio::time::interval(setting.sample_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut planner: Option<Planner> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = ticker.tick() => {}
        }
        if !status.borrow().is_leader {
            planner = None;
            continue;
        }
        let now = Instant::now();
        let planner = planner.get_or_insert_with(|| Planner::new(setting, now));
        let (revision, compacted) = match shared.raft.kv.read() {
            Ok(kv) => (kv.revision(), kv.compact_revision()),
            Err(_) => return,
        };
        let Some(target) = planner.sample(now, revision, compacted) else {
            continue;
        };
        tracing::info!(revision = target, ?setting, "starting auto-compaction");
        let cmd = kv::Command::Compact(kv::CompactionRequest { revision: target });
        match shared.write(cmd).await {
            Ok(_) => tracing::info!(revision = target, "finished auto-compaction"),
            Err(e) => {
                tracing::warn!(revision = target, error = %e, "auto-compaction failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_as_etcd_reads_them() {
        use AutoCompactionMode::*;
        let f = AutoCompaction::from_flags;
        assert_eq!(f(Periodic, "0"), Ok(None));
        assert_eq!(
            f(Periodic, "1"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            f(Periodic, "5m"),
            Ok(Some(AutoCompaction::Periodic(Duration::from_secs(300))))
        );
        assert_eq!(
            f(Revision, "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        assert_eq!(f(Revision, "0"), Ok(None));
        assert!(f(Revision, "5m").is_err());
        assert!(f(Revision, "-3").is_err());
        assert!(f(Periodic, "soon").is_err());
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let t0 = Instant::now();
        let mut p = Planner::new(AutoCompaction::Revision(100), t0);
        assert_eq!(p.sample(t0, 50, 0), None, "nothing below 1 to compact");
        assert_eq!(p.sample(t0, 1000, 0), Some(900));
        assert_eq!(p.sample(t0, 1000, 900), None, "already compacted there");
    }

    #[test]
    fn periodic_mode_compacts_at_the_revision_of_one_window_ago() {
        let window = Duration::from_secs(600);
        let step = AutoCompaction::Periodic(window).sample_interval();
        assert_eq!(step, Duration::from_secs(60));
        let t0 = Instant::now();
        let mut p = Planner::new(AutoCompaction::Periodic(window), t0);
        let mut got = Vec::new();
        for i in 0..=25u32 {
            let now = t0 + step * i;
            // One revision per minute: revision 10 * i + 1.
            if let Some(r) = p.sample(now, 10 * i64::from(i) + 1, 0) {
                got.push((i, r));
            }
        }
        // First at 10 minutes (the window), then every 10 minutes (the
        // period), each at the revision sampled one window earlier.
        assert_eq!(got, vec![(10, 1), (20, 101)]);
    }
}
