//! Errors returned to etcd clients, with etcd's gRPC codes and messages
//! (etcd's `rpctypes`), so etcdctl and client libraries react as they do
//! against etcd (e.g. retry on "no leader", show "request is too large").

use tonic::{Code, Status};

/// A client-visible failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// The request exceeds `--max-request-bytes`.
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    /// No leader is known.
    #[error("etcdserver: no leader")]
    NoLeader,
    /// The request did not complete in time (it may still be applied).
    #[error("etcdserver: request timed out")]
    Timeout,
    /// Leadership changed while the request was in flight.
    #[error("etcdserver: leader changed")]
    LeaderChanged,
    /// The disk is full (the NOSPACE alarm is raised).
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// The requested revision was compacted.
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    /// The requested revision is in the future.
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    /// The key is empty.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// `ignore_value` on a missing key.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// `ignore_value` with a value.
    #[error("etcdserver: value is provided")]
    ValueProvided,
    /// A put or revoke names a lease that does not exist.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    /// A grant names a lease ID that exists.
    #[error("etcdserver: lease already exists")]
    LeaseExist,
    /// A grant's TTL is above etcd's maximum.
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    /// A put has both `ignore_lease` and a lease.
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    /// Too many operations in a txn.
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    /// A txn writes one key twice.
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    /// The member is not the leader (for leader-only operations).
    #[error("etcdserver: not leader")]
    NotLeader,
    /// MoveLeader to a bad target.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// The member is shutting down or its Raft node stopped.
    #[error("etcdserver: server stopped")]
    Stopped,
    /// The member is not found.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// A request asks for something this server does not implement.
    #[error("{0}")]
    Unsupported(String),
    /// A request that is malformed in a way etcd has no specific error for.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server is overloaded (a bounded queue is full).
    #[error("etcdserver: too many requests")]
    TooManyRequests,
    /// An internal failure (storage, encoding); logged on the server.
    #[error("etcdserver: {0}")]
    Internal(String),
    /// A membership change the leader cannot take yet (another change is
    /// still uncommitted, or the leader has not committed an entry of its
    /// term): the Cluster service retries it until its request timeout.
    #[error("etcdserver: membership change refused for now: {0}")]
    MembershipChangeNotReady(String),
    /// A learner was asked for something etcd 3.4 serves only on voters
    /// (everything but serializable Range and Status).
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    /// A serializable read on a member that is repairing its log after
    /// mid-log WAL damage (ADR 0021): its state may be older than what it
    /// acknowledged. etcd's message for a member that cannot serve a
    /// request; the code is `Unavailable` (etcd uses `FailedPrecondition`
    /// for it) so that clients retry on another endpoint.
    #[error("etcdserver: not capable")]
    NotCapable,
    /// An auth failure ([`crate::auth::AuthError`]: etcd's codes and messages).
    #[error("{0}")]
    Auth(crate::auth::AuthError),
}

impl EtcdError {
    /// etcd's gRPC status code for this error.
    pub fn code(&self) -> Code {
        match self {
            EtcdError::RequestTooLarge
            | EtcdError::EmptyKey
            | EtcdError::KeyNotFound
            | EtcdError::ValueProvided
            | EtcdError::LeaseProvided
            | EtcdError::TooManyOps
            | EtcdError::DuplicateKey
            | EtcdError::InvalidArgument(_) => Code::InvalidArgument,
            EtcdError::NoLeader
            | EtcdError::Timeout
            | EtcdError::LeaderChanged
            | EtcdError::Stopped
            | EtcdError::TooManyRequests
            | EtcdError::NotSupportedForLearner
            | EtcdError::NotCapable
            | EtcdError::MembershipChangeNotReady(_) => Code::Unavailable,
            EtcdError::NoSpace => Code::ResourceExhausted,
            EtcdError::Compacted | EtcdError::FutureRevision | EtcdError::LeaseTtlTooLarge => {
                Code::OutOfRange
            }
            EtcdError::LeaseExist => Code::FailedPrecondition,
            EtcdError::LeaseNotFound | EtcdError::MemberNotFound => Code::NotFound,
            EtcdError::NotLeader | EtcdError::BadLeaderTransferee => Code::FailedPrecondition,
            EtcdError::Unsupported(_) => Code::Unimplemented,
            EtcdError::Internal(_) => Code::Internal,
            EtcdError::Auth(a) => a.code(),
        }
    }
}

impl From<EtcdError> for Status {
    fn from(e: EtcdError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

/// Maps a status received from a peer (forwarded request) back to an
/// [`EtcdError`] when its message is one of ours; otherwise keeps it opaque.
pub fn from_status(s: &Status) -> EtcdError {
    const KNOWN: &[EtcdError] = &[
        EtcdError::RequestTooLarge,
        EtcdError::NoLeader,
        EtcdError::Timeout,
        EtcdError::LeaderChanged,
        EtcdError::NoSpace,
        EtcdError::Compacted,
        EtcdError::FutureRevision,
        EtcdError::EmptyKey,
        EtcdError::KeyNotFound,
        EtcdError::ValueProvided,
        EtcdError::LeaseNotFound,
        EtcdError::LeaseExist,
        EtcdError::LeaseTtlTooLarge,
        EtcdError::LeaseProvided,
        EtcdError::TooManyOps,
        EtcdError::DuplicateKey,
        EtcdError::NotLeader,
        EtcdError::Stopped,
        EtcdError::TooManyRequests,
        EtcdError::NotSupportedForLearner,
        EtcdError::NotCapable,
    ];
    for k in KNOWN {
        if k.to_string() == s.message() {
            return k.clone();
        }
    }
    if let Some(a) = crate::auth::AuthError::from_message(s.message()) {
        return EtcdError::Auth(a);
    }
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => EtcdError::Timeout,
        _ => EtcdError::Internal(format!("forwarding to the leader: {}", s.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_codes_match_etcd() {
        let s: Status = EtcdError::RequestTooLarge.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: request is too large");
        let s: Status = EtcdError::NoLeader.into();
        assert_eq!(s.code(), Code::Unavailable);
        let s: Status = EtcdError::NoSpace.into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "etcdserver: mvcc: database space exceeded");
        assert_eq!(
            from_status(&EtcdError::Compacted.into()),
            EtcdError::Compacted
        );
        let s: Status = EtcdError::LeaseNotFound.into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s: Status = EtcdError::LeaseExist.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "etcdserver: lease already exists");
        let s: Status = EtcdError::LeaseTtlTooLarge.into();
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: too large lease TTL");
        let s: Status = EtcdError::LeaseProvided.into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(s.message(), "etcdserver: lease is provided");
        let s: Status = EtcdError::NotCapable.into();
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(s.message(), "etcdserver: not capable");
    }
}
