//! `handover-relay`: runs a Handover relay. See `handover-relay --help` and docs/OPERATIONS.md.

fn main() -> std::process::ExitCode {
    handover_relay::cli::run()
}
