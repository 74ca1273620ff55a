//! Compiles the `.proto` wire contract with a pure-Rust protobuf compiler (protox), so building
//! needs no system `protoc`. Comments in the `.proto` files become the Rust docs.

use std::error::Error;

const PROTOS: &[&str] = &[
    "handover/v1/relay.proto",
    "handover/v1/e2e.proto",
    "handover/v1/referral.proto",
    "handover/v1/message.proto",
];

/// Wire types that carry a secret key or a send capability. prost does not derive `Debug` for
/// them; `src/redact.rs` implements it by hand with the secret fields redacted.
const REDACTED_DEBUG: &[&str] = &[
    ".handover.e2e.v1.BlobRef",
    ".handover.e2e.v1.DeviceAddress",
    ".handover.e2e.v1.SectionKey",
    ".handover.relay.v1.Send",
    ".handover.relay.v1.EnvelopeStatus",
    ".handover.relay.v1.PrekeyTake",
    ".handover.relay.v1.CreateMailbox",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let descriptors = compiler.file_descriptor_set();
    let mut config = prost_build::Config::new();
    config.enable_type_names();
    config.skip_debug(REDACTED_DEBUG);
    config.compile_fds(descriptors)?;
    Ok(())
}
