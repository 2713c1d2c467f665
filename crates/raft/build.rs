//! Generates the peer RPC code from `proto/raft.proto` with protox, a pure-Rust protobuf compiler,
//! so that building concord needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): the compiled build script is shared by every
    // checkout that uses the same target dir (CI clones into new paths), so a compile-time path
    // would point at whichever checkout built it first.
    let proto_dir = format!("{}/../../proto", std::env::var("CARGO_MANIFEST_DIR")?);
    let file = format!("{proto_dir}/raft.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([&file], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
