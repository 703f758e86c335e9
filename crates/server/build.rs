//! Compiles the etcd API and peer .proto files with protox (pure Rust, so no
//! `protoc` is needed) and generates tonic services and prost messages, plus
//! serde impls of the etcd messages in protobuf's JSON mapping (pbjson, with
//! the original field names, as etcd's HTTP gateway writes them).

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/metalraft/peer.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    let descriptors = fds.encode_to_vec();
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .preserve_proto_field_names()
        .build(&[
            ".etcdserverpb",
            ".mvccpb",
            ".authpb",
            ".v3lockpb",
            ".v3electionpb",
        ])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
