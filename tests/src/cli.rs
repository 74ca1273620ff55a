//! The `handover` CLI as a separate process: the end-to-end CLI tests run every command
//! through [`run_cli`].

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// The passphrase every test profile uses (via `HANDOVER_PASSPHRASE`).
pub const TEST_PASSPHRASE: &str = "correct horse battery staple";

/// What one CLI invocation did.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// The standard output of a run of `handover args` that must have succeeded without a
    /// panic. Test support: fails the calling test (panics) otherwise, with the command and its
    /// standard error.
    #[allow(clippy::panic)]
    pub fn expect_success(self, args: &[&str]) -> String {
        if !self.ok || self.stderr.contains("panicked") {
            panic!("`handover {}` failed: {}", args.join(" "), self.stderr);
        }
        self.stdout
    }

    /// The standard error of a run of `handover args` that must have been refused: a non-zero
    /// exit, a message that starts with `error: ` and no panic. Test support: fails the calling
    /// test (panics) otherwise.
    #[allow(clippy::panic)]
    pub fn expect_refusal(self, args: &[&str]) -> String {
        if self.ok {
            panic!("`handover {}` should have failed", args.join(" "));
        }
        if self.stderr.contains("panicked") || !self.stderr.starts_with("error: ") {
            panic!(
                "`handover {}` was not refused in words: {}",
                args.join(" "),
                self.stderr
            );
        }
        self.stderr
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    })
}

/// Runs `bin args` (with `--profile profile` if given) with [`TEST_PASSPHRASE`], no standard
/// input and no `HANDOVER_PROFILE`, and echoes the command and its output to standard error
/// for the test log. A run longer than `timeout` is killed and is an error (a hang, not a
/// timing assertion).
pub fn run_cli(
    bin: &Path,
    profile: Option<&Path>,
    args: &[&str],
    timeout: Duration,
) -> Result<CliOutput> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("HANDOVER_PASSPHRASE", TEST_PASSPHRASE)
        .env_remove("HANDOVER_PROFILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(p) = profile {
        cmd.arg("--profile").arg(p);
    }
    let mut child = cmd.spawn()?;
    let out = read_all(child.stdout.take().ok_or("no stdout")?);
    let err = read_all(child.stderr.take().ok_or("no stderr")?);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("`handover {}` did not finish in time", args.join(" ")).into());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = CliOutput {
        ok: status.success(),
        stdout: out.join().map_err(|_| "stdout reader failed")?,
        stderr: err.join().map_err(|_| "stderr reader failed")?,
    };
    let who = profile
        .and_then(Path::file_name)
        .map(|n| format!("  [{}]", n.to_string_lossy()))
        .unwrap_or_default();
    eprintln!(
        "$ handover {}{who}\n{}{}",
        args.join(" "),
        output.stdout,
        output.stderr
    );
    Ok(output)
}
