//! Test-only control over [`super::Wal::sync`]: hold an `fdatasync` back
//! (a slow disk), make one fail, and read what the last completed sync made
//! durable. Compiled only under `#[cfg(test)]`, so no build an operator runs
//! has it.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use metalraft_core::HardState;

/// What the WAL holds once a sync completes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Durable {
    /// The last hard state written before the sync.
    pub(crate) hard_state: HardState,
    /// Index of the last entry written before the sync.
    pub(crate) last_index: u64,
}

#[derive(Debug)]
struct State {
    open: bool,
    /// `errno` the next sync fails with (after the gate lets it through).
    fail_errno: Option<i32>,
    /// What the sync now waiting at the gate would make durable.
    waiting: Option<Durable>,
    durable: Durable,
}

/// A gate in front of every `fdatasync` of one WAL.
#[derive(Debug)]
pub(crate) struct SyncGate {
    state: Mutex<State>,
    changed: Condvar,
}

impl SyncGate {
    /// A gate, open or closed, over a WAL whose synced content is `durable`.
    pub(crate) fn new(open: bool, durable: Durable) -> SyncGate {
        SyncGate {
            state: Mutex::new(State {
                open,
                fail_errno: None,
                waiting: None,
                durable,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets every sync through from now on.
    pub(crate) fn open(&self) {
        self.lock().open = true;
        self.changed.notify_all();
    }

    /// Lets the waiting sync (and later ones) through, but the next one
    /// fails with `errno` without syncing.
    pub(crate) fn open_failing(&self, errno: i32) {
        let mut s = self.lock();
        s.fail_errno = Some(errno);
        s.open = true;
        drop(s);
        self.changed.notify_all();
    }

    /// What the last completed sync made durable.
    pub(crate) fn durable(&self) -> Durable {
        self.lock().durable
    }

    /// Waits until a sync that would make `pred` true is held at the gate;
    /// returns what it would make durable, or `None` after `timeout`.
    pub(crate) fn wait_held(
        &self,
        timeout: Duration,
        pred: impl Fn(&Durable) -> bool,
    ) -> Option<Durable> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        loop {
            if let Some(w) = s.waiting.filter(|w| pred(w)) {
                return Some(w);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            s = self
                .changed
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Called by the WAL before `fdatasync`: blocks while the gate is
    /// closed, then returns the injected failure, if any.
    pub(super) fn before_sync(&self, pending: Durable) -> std::io::Result<()> {
        let mut s = self.lock();
        s.waiting = Some(pending);
        self.changed.notify_all();
        while !s.open {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.waiting = None;
        match s.fail_errno.take() {
            Some(errno) => Err(std::io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }

    /// Called by the WAL once `fdatasync` returned success.
    pub(super) fn after_sync(&self, now_durable: Durable) {
        self.lock().durable = now_durable;
        self.changed.notify_all();
    }
}
