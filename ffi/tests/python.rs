//! Runs the Python tests of the generated bindings (ffi/tests/python, pytest) as part of
//! `cargo test`: `scripts/ffi-python-test.sh --no-build` generates the Python bindings from the
//! library that cargo built for this test run and drives them, against a real relay process when
//! one is built in the target directory.
//!
//! No cargo command runs from here: cargo test holds the target directory's lock, so a nested
//! build would wait forever. The library is already built: cargo compiles every crate type of
//! `handover-ffi`, the `cdylib` included, when it builds the `lib` this test links, and leaves it
//! in `target/<profile>/deps/` (it copies it up to `target/<profile>/` only for `cargo build`),
//! the directory of this test's executable. `uniffi-bindgen` is a workspace member built by
//! `cargo test --workspace`; under `cargo test -p handover-ffi` alone the script builds it once
//! into a separate target directory, which has its own lock.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>`: this test executable lives in `target/<profile>/deps/`.
fn profile_dir(exe: &Path) -> Option<PathBuf> {
    Some(exe.parent()?.parent()?.to_path_buf())
}

#[test]
fn python_binding_tests_pass() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed, so the Python binding tests did not run");
        return;
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = profile_dir(&exe).expect("test executable is in target/<profile>/deps");
    let libname = if cfg!(target_os = "macos") {
        "libhandover_ffi.dylib"
    } else {
        "libhandover_ffi.so"
    };
    // Built for this test run, next to this executable (see the module comment).
    let lib = exe.with_file_name(libname);
    assert!(lib.is_file(), "{} was not built", lib.display());
    let target_dir = profile_dir.parent().expect("target directory");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let status = Command::new("bash")
        .arg(root.join("scripts/ffi-python-test.sh"))
        .arg("--no-build")
        .args(["-q", "-rs"])
        .env("CARGO_TARGET_DIR", target_dir)
        .env("HANDOVER_FFI_LIB_DIR", &profile_dir)
        .env("HANDOVER_FFI_LIB", &lib)
        .status()
        .expect("run scripts/ffi-python-test.sh");
    assert!(
        status.success(),
        "the Python binding tests failed: {status}"
    );
}
