//! etcd's `publish`: every member replicates its own name and client URLs
//! through the log, so every member can list every other one, up or down.
//!
//! The member side is one task, [`run`]: whenever the registry this member
//! has applied does not hold its attributes as its flags say (after a
//! fresh start, a restart with other `--name` or `--advertise-client-urls`,
//! an upgrade from a data directory written before attributes were
//! replicated, or a snapshot from a leader that lacked them), it proposes
//! [`RegistryOp::Publish`]: directly on the leader, through the leader's
//! Peer service elsewhere ([`accept`] is the leader's side). It retries
//! until the entry is applied here, so a leader killed after accepting
//! costs a retry, not the attributes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{Shared, REQUEST_TIMEOUT};
use crate::config::MemberConfig;
use crate::errors::{self, EtcdError};
use crate::proto::peer as peerpb;
use crate::registry::{Attributes, RegistryOp};

/// Pause after a failed publish (no leader yet, the leader changed, a
/// timeout) before the next try: short, since MemberList lacks this member
/// until a try succeeds; one try is one small entry.
pub const PUBLISH_RETRY: Duration = Duration::from_millis(200);
/// Longest wait between two checks of the registry when nothing wakes the
/// task (every applied entry wakes it through the Raft loop's status).
pub const PUBLISH_RECHECK: Duration = Duration::from_secs(1);
/// Most bytes of a published name plus client URLs (etcd bounds them only
/// by the request size; a peer gets no more room than a sane operator needs).
pub const PUBLISH_MAX_BYTES: usize = 64 * 1024;

/// The attributes `cfg` gives this member.
pub fn own_attributes(cfg: &MemberConfig) -> Attributes {
    Attributes {
        name: cfg.name.clone(),
        client_urls: Shared::url_strings(&cfg.advertise_client_urls),
    }
}

/// Keeps this member's published attributes equal to its flags until
/// `stop` changes.
pub(crate) async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let me = shared.cfg.id;
    let want = own_attributes(&shared.cfg);
    let mut status = shared.raft.status.clone();
    loop {
        // Not registered yet (a joining member before it caught up), or
        // published already: wait for the next applied change.
        let due = shared
            .raft
            .registry
            .attributes(me)
            .is_some_and(|a| a != want);
        let pause = if !due {
            PUBLISH_RECHECK
        } else {
            match publish_once(&shared, &want).await {
                Ok(()) => {
                    tracing::info!(name = %want.name, client_urls = ?want.client_urls, "published this member's attributes");
                    // Applied on the leader; this member may apply it a
                    // moment later: wait for that rather than publish twice.
                    REQUEST_TIMEOUT
                }
                Err(e) => {
                    tracing::debug!(error = %e, "publishing this member's attributes failed; retrying");
                    PUBLISH_RETRY
                }
            }
        };
        let published = |s: &crate::raft_loop::NodeStatus| {
            s.stopped || shared.raft.registry.attributes(me).as_ref() == Some(&want)
        };
        let wake = async {
            if due {
                let _ = tokio::time::timeout(pause, status.wait_for(published)).await;
            } else {
                let _ = tokio::time::timeout(pause, status.changed()).await;
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = wake => {}
        }
        if status.borrow().stopped {
            return;
        }
    }
}

/// One try: propose on the leader, or ask it to.
async fn publish_once(shared: &Shared, want: &Attributes) -> Result<(), EtcdError> {
    let st = *shared.raft.status.borrow();
    let leader = st.leader.ok_or(EtcdError::NoLeader)?;
    if st.is_leader {
        let op = RegistryOp::Publish {
            id: shared.cfg.id,
            attributes: want.clone(),
        };
        return shared.raft.propose_registry(op, REQUEST_TIMEOUT).await;
    }
    let mut client = shared.peer_client(leader).ok_or(EtcdError::NoLeader)?;
    let req = peerpb::PublishRequest {
        envelope: Some(shared.envelope(leader)),
        name: want.name.clone(),
        client_urls: want.client_urls.clone(),
    };
    tokio::time::timeout(REQUEST_TIMEOUT, client.publish(req))
        .await
        .map_err(|_| EtcdError::Timeout)?
        .map_err(|s| errors::from_status(&s))?;
    Ok(())
}

/// The leader's side of a member's publish: `from` is the sender the Peer
/// service authenticated; answered once the entry is applied.
pub(crate) async fn accept(
    shared: &Shared,
    from: u64,
    name: String,
    client_urls: Vec<String>,
) -> Result<(), EtcdError> {
    if !shared.raft.status.borrow().is_leader {
        return Err(EtcdError::LeaderChanged);
    }
    let size = name.len() + client_urls.iter().map(String::len).sum::<usize>();
    if size > PUBLISH_MAX_BYTES {
        return Err(EtcdError::RequestTooLarge);
    }
    let op = RegistryOp::Publish {
        id: from,
        attributes: Attributes { name, client_urls },
    };
    shared.raft.propose_registry(op, REQUEST_TIMEOUT).await
}
