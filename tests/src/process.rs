//! A relay as a separate process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use handover_relay::store::postgres::testing::TestDatabase;

use crate::Result;
use std::sync::{Arc, Mutex};

/// How long a relay may take to print its ready line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running relay process. Dropping it kills the process.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    /// QUIC address.
    pub addr: SocketAddr,
    /// Admin address, if enabled.
    pub admin: Option<SocketAddr>,
    /// SPKI pin.
    pub pin: [u8; 32],
    /// Data directory.
    pub data_dir: PathBuf,
}

/// With `HANDOVER_TEST_RELAY_STORE=postgres`: the database of each data directory, so that a
/// relay restarted on the same directory finds its data. Kept for the test binary's run; the
/// next runs drop them once stale (see `TestDatabase::create`).
static DATABASES: Mutex<Vec<(PathBuf, Arc<TestDatabase>)>> = Mutex::new(Vec::new());

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
}

impl RelayProcess {
    /// Starts `bin` on a loopback port with data in `data_dir`, a 2 MiB write-ahead log and extra
    /// flags, and waits for
    /// its ready line. Set `HANDOVER_TEST_LOG=1` to see the relay's logs.
    ///
    /// With `HANDOVER_TEST_RELAY_STORE=postgres` the relay keeps its data in a PostgreSQL
    /// database of its own instead (created on the test server, see
    /// `handover_relay::store::postgres::testing`), so that a relay test suite runs unchanged
    /// on PostgreSQL. Suites that restart a relay on the same data do not support that.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_at(bin, data_dir, SocketAddr::from(([127, 0, 0, 1], 0)), extra)
    }

    /// [`RelayProcess::start`] on the QUIC address `listen`. A relay restarted on the same data
    /// directory and address (for example with `--admit-org` added) keeps its certificate, so
    /// the addresses and pins that clients hold stay valid.
    pub fn start_at(
        bin: &Path,
        data_dir: &Path,
        listen: SocketAddr,
        extra: &[&str],
    ) -> Result<Self> {
        let database = match std::env::var("HANDOVER_TEST_RELAY_STORE").as_deref() {
            Ok("postgres") => {
                let mut all = DATABASES.lock().unwrap_or_else(|e| e.into_inner());
                match all.iter().find(|(dir, _)| dir == data_dir) {
                    Some((_, db)) => Some(db.clone()),
                    None => {
                        let db = Arc::new(TestDatabase::create()?);
                        all.push((data_dir.to_path_buf(), db.clone()));
                        Some(db)
                    }
                }
            }
            _ => None,
        };
        Self::spawn(
            bin,
            data_dir,
            database.as_ref().map(|d| d.url.as_str()),
            listen,
            extra,
        )
    }

    /// [`RelayProcess::start`] with the data in the PostgreSQL database at `store` if given
    /// (`--store`), which several relays may share.
    pub fn start_with(
        bin: &Path,
        data_dir: &Path,
        store: Option<&str>,
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn(
            bin,
            data_dir,
            store,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            extra,
        )
    }

    fn spawn(
        bin: &Path,
        data_dir: &Path,
        store: Option<&str>,
        listen: SocketAddr,
        extra: &[&str],
    ) -> Result<Self> {
        let mut cmd = Command::new(bin);
        if let Some(url) = store {
            cmd.arg("--store").arg(url);
        }
        cmd.arg("--listen")
            .arg(listen.to_string())
            .arg("--admin")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            // A small write-ahead log keeps test directories small and makes checkpoints
            // (log full) happen during the tests, also under the crash test's SIGKILLs.
            .arg("--wal-mib")
            .arg("2")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        if std::env::var_os("HANDOVER_TEST_LOG").is_none() {
            cmd.stderr(Stdio::null()).env("RUST_LOG", "warn");
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line.starts_with("handover-relay ready") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("relay did not become ready".into());
            }
        };
        let addr = field(&line, "quic").ok_or("no quic address")?.parse()?;
        let admin = match field(&line, "admin") {
            Some("off") | None => None,
            Some(a) => Some(a.parse()?),
        };
        let pin_hex = field(&line, "pin").ok_or("no pin")?;
        let pin: [u8; 32] = hex::decode(pin_hex)?
            .try_into()
            .map_err(|_| "pin is not 32 bytes")?;
        Ok(Self {
            child,
            addr,
            admin,
            pin,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// Kills the process with SIGKILL (a crash) and reaps it.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM (graceful shutdown) without waiting.
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err("kill -TERM failed".into())
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err("relay did not exit in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
