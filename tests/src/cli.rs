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
