//! `handover app` as a separate process: the real command, on a profile directory of its own,
//! serving on a loopback port it picks itself.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// How long an app may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `handover app`. Dropping it kills the process.
#[derive(Debug)]
pub struct AppProcess {
    child: Child,
    /// The launch address printed on the ready line (it carries the per-launch secret, once).
    pub launch_url: String,
    /// `http://127.0.0.1:PORT`, the origin the app serves.
    pub origin: String,
}

impl AppProcess {
    /// Starts `bin` (the `handover` CLI) as `--profile PROFILE app --no-browser --listen
    /// 127.0.0.1:0` plus `extra`, and waits for `handover app ready url=...`. Set
    /// `HANDOVER_TEST_LOG=1` to see its standard error.
    pub fn start(bin: &Path, profile: &Path, extra: &[&str]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("--profile")
            .arg(profile)
            .arg("app")
            .arg("--no-browser")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("HANDOVER_TEST_LOG").is_none() {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(url) = line.strip_prefix("handover app ready url=") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let Ok(launch_url) = rx.recv_timeout(START_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err("handover app did not print its ready line".into());
        };
        let rest = launch_url
            .strip_prefix("http://")
            .ok_or("the launch address is not http://")?;
        let host = rest.split('/').next().unwrap_or(rest);
        let origin = format!("http://{host}");
        Ok(Self {
            child,
            launch_url,
            origin,
        })
    }

    /// Stops the app as Ctrl-C does (SIGINT: it locks, then exits) and waits up to `timeout`
    /// for its exit status.
    pub fn interrupt(mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()?;
        if !status.success() {
            return Err("kill -INT failed".into());
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err("handover app did not exit after SIGINT".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
