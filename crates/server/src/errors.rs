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

/// The start of the message tonic gives a request above the gRPC receive
/// limit (`max_decoding_message_size`), with OUT_OF_RANGE.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// The status etcd's server (grpc-go) gives where tonic's differs, for a
/// call of gRPC method `path` (`/etcdserverpb.KV/Put`); `services` are the
/// services served. `None` keeps tonic's.
///
/// - UNIMPLEMENTED without a message: grpc-go's `unknown service S` or
///   `unknown method M for service S`.
/// - A request above the receive limit: RESOURCE_EXHAUSTED
///   `grpc: received message larger than max (N vs. M)`, where tonic says
///   OUT_OF_RANGE.
pub fn grpc_go_status(path: &str, services: &[&str], s: &Status) -> Option<Status> {
    match s.code() {
        Code::Unimplemented if s.message().is_empty() => {
            let (service, method) = path
                .strip_prefix('/')
                .and_then(|p| p.split_once('/'))
                .unwrap_or((path, ""));
            let message = if services.contains(&service) {
                format!("unknown method {method} for service {service}")
            } else if service.is_empty() || method.is_empty() {
                format!("malformed method name: {path:?}")
            } else {
                format!("unknown service {service}")
            };
            Some(Status::unimplemented(message))
        }
        Code::OutOfRange => {
            let rest = s.message().strip_prefix(TONIC_TOO_LARGE)?;
            let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
            let limit = rest.strip_suffix(" bytes")?;
            let (found, limit) = (found.parse::<u64>().ok()?, limit.parse::<u64>().ok()?);
            Some(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({found} vs. {limit})"
            )))
        }
        _ => None,
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

    #[test]
    fn grpc_go_statuses_replace_tonics() {
        let known = ["etcdserverpb.KV"];
        let empty = Status::unimplemented("");
        let s = grpc_go_status("/etcdserverpb.KV/Nope", &known, &empty).unwrap();
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(
            s.message(),
            "unknown method Nope for service etcdserverpb.KV"
        );
        let s = grpc_go_status("/foo.Bar/Baz", &known, &empty).unwrap();
        assert_eq!(s.message(), "unknown service foo.Bar");
        let s = grpc_go_status("/nope", &known, &empty).unwrap();
        assert_eq!(s.message(), "malformed method name: \"/nope\"");
        let with_message = Status::unimplemented("etcd says why");
        assert!(grpc_go_status("/x/y", &known, &with_message).is_none());

        let big = Status::out_of_range(
            "Error, decoded message length too large: found 3000000 bytes, the limit is: 2097152 bytes",
        );
        let s = grpc_go_status("/etcdserverpb.KV/Put", &known, &big).unwrap();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "grpc: received message larger than max (3000000 vs. 2097152)"
        );
        // etcd's own OUT_OF_RANGE errors stay.
        let compacted: Status = EtcdError::Compacted.into();
        assert!(grpc_go_status("/etcdserverpb.KV/Range", &known, &compacted).is_none());
    }
}
