//! Keeps the `uniffi-bindgen` binary built by `cargo test --workspace` (cargo builds a package's
//! binaries only for its integration tests), so handover-ffi's binding tests find it in the target
//! directory without running cargo themselves.

use std::process::Command;

#[test]
fn bindgen_binary_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_uniffi-bindgen"))
        .arg("--help")
        .output()
        .expect("run uniffi-bindgen");
    assert!(
        out.status.success(),
        "uniffi-bindgen --help failed: {out:?}"
    );
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("generate"), "unexpected help text: {help}");
}
