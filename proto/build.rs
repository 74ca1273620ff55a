//! Compiles the `.proto` wire contract with a pure-Rust protobuf compiler (protox), so building
//! needs no system `protoc`. Comments in the `.proto` files become the Rust docs.

use std::error::Error;

const PROTOS: &[&str] = &[
    "handover/v1/relay.proto",
    "handover/v1/e2e.proto",
    "handover/v1/referral.proto",
    "handover/v1/message.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config.compile_fds(descriptors)?;
    Ok(())
}
