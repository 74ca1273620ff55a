//! The real relay entry point as a binary of this package, so integration tests can start it as
//! a separate process through `CARGO_BIN_EXE_relay-under-test`.

fn main() -> std::process::ExitCode {
    handover_relay::cli::run()
}
