//! Generated gRPC code: the etcd v3 API (`etcdserverpb`, `mvccpb`) and the
//! internal peer service. The .proto sources are in `crates/server/proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]

/// etcd's key-value record.
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}

/// etcd's auth records (users, roles, permissions).
pub mod authpb {
    tonic::include_proto!("authpb");
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}

/// etcd's v3 client API.
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}

/// etcd's server-side lock.
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}

/// etcd's server-side election.
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}

/// The member-to-member service.
pub mod peer {
    tonic::include_proto!("metalraft.peer.v1");
}
