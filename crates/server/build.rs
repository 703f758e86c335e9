//! Compiles the etcd API and peer .proto files with protox (pure Rust, so no
//! `protoc` is needed) and generates tonic services and prost messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/metalraft/peer.proto",
    ];
    let fds = protox::compile(files, ["proto"])?;
    tonic_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
