//! The real `handover` CLI entry point as a binary of this package, so integration tests can run
//! it as separate processes through `CARGO_BIN_EXE_handover-under-test`.

fn main() -> std::process::ExitCode {
    handover_cli::run()
}
