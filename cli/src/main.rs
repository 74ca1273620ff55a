//! `handover`: the command-line client for caseworkers and organisation admins, and the
//! end-to-end demo. The commands live in the `handover_cli` library so that tests can run the
//! same entry point as a binary of their own package.

fn main() -> std::process::ExitCode {
    handover_cli::run()
}
