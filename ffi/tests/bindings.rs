//! Runs the Python tests of the generated bindings (ffi/tests/python, pytest) as part of
//! `cargo test`: `scripts/ffi-python-test.sh --no-build` generates the Python bindings from the
//! library that cargo built for this test run and drives them, against a real relay process when
//! one is built in the target directory. A second test generates the Swift bindings and
//! compiles their C header.
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

/// The paths every binding test needs: (profile dir, library built for this run, workspace root).
fn paths() -> Result<(PathBuf, PathBuf, PathBuf), String> {
    let exe = std::env::current_exe().map_err(|e| format!("test executable path: {e}"))?;
    let profile_dir = profile_dir(&exe).ok_or("test executable is not in target/<profile>/deps")?;
    let libname = if cfg!(target_os = "macos") {
        "libhandover_ffi.dylib"
    } else {
        "libhandover_ffi.so"
    };
    // Built for this test run, next to this executable (see the module comment).
    let lib = exe.with_file_name(libname);
    if !lib.is_file() {
        return Err(format!("{} was not built", lib.display()));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    Ok((profile_dir, lib, root))
}

#[test]
fn python_binding_tests_pass() {
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("SKIPPED: python3 is not installed, so the Python binding tests did not run");
        return;
    }
    let (profile_dir, lib, root) = paths().expect("binding test paths");
    let target_dir = profile_dir.parent().expect("target directory");
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

/// Generates the Swift bindings and compiles their C header (and, with clang, imports the module
/// map), as `scripts/ffi-bindings.sh` does; Swift itself is not on these machines.
#[test]
fn swift_bindings_generate_and_header_compiles() {
    let (profile_dir, lib, root) = paths().expect("binding test paths");
    let target_dir = profile_dir.parent().expect("target directory");
    let status = Command::new("bash")
        .arg(root.join("scripts/ffi-bindings.sh"))
        .args(["--no-build", "--lang", "swift", "--out"])
        .arg(target_dir.join("ffi-bindings"))
        .env("CARGO_TARGET_DIR", target_dir)
        .env("HANDOVER_FFI_LIB_DIR", &profile_dir)
        .env("HANDOVER_FFI_LIB", &lib)
        .status()
        .expect("run scripts/ffi-bindings.sh");
    assert!(
        status.success(),
        "Swift binding generation or header check failed: {status}"
    );
}
