//! Generates the test gRPC backend's code from `proto/echo.proto` with protox (no `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not baked in with env!(): the compiled build script is shared by every
    // checkout that uses the same target dir.
    let proto_dir = format!("{}/../../proto", std::env::var("CARGO_MANIFEST_DIR")?);
    let file = format!("{proto_dir}/echo.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([&file], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
