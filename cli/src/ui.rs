//! Presentation helpers: the error type people see, and a hand-drawn progress bar.

use std::fmt;
use std::io::{IsTerminal, Write};

/// A failure explained for a person: what went wrong and what to do.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Result of a CLI operation.
pub(crate) type Outcome<T = ()> = Result<T, Failure>;

/// Builds a failure from a message.
pub(crate) fn fail(message: impl Into<String>) -> Failure {
    Failure(message.into())
}

/// Adds "what we were doing" and "what to do" to any error.
pub(crate) trait Context<T> {
    /// `doing`: what failed, in words; `todo`: what the person should do next.
    fn ctx(self, doing: &str, todo: &str) -> Outcome<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, doing: &str, todo: &str) -> Outcome<T> {
        self.map_err(|e| Failure(format!("{doing} failed: {e}. {todo}")))
    }
}

/// A one-line progress bar on standard error, redrawn in place.
pub(crate) struct Progress {
    label: String,
    total: u64,
    last_percent: Option<u64>,
    /// Redraw in place only on a terminal; otherwise print one line at the end.
    live: bool,
}

impl Progress {
    const WIDTH: u64 = 30;

    /// A bar for `total` bytes.
    pub(crate) fn new(label: &str, total: u64) -> Self {
        Self {
            label: label.to_owned(),
            total: total.max(1),
            last_percent: None,
            live: std::io::stderr().is_terminal(),
        }
    }

    /// Shows `done` bytes of the total.
    pub(crate) fn update(&mut self, done: u64) {
        let done = done.min(self.total);
        let percent = done * 100 / self.total;
        if self.last_percent == Some(percent) {
            return;
        }
        self.last_percent = Some(percent);
        if self.live {
            self.draw(done);
        }
    }

    fn draw(&self, done: u64) {
        let percent = done * 100 / self.total;
        let filled = (done * Self::WIDTH / self.total) as usize;
        let bar = format!(
            "{}{}",
            "#".repeat(filled),
            "-".repeat(Self::WIDTH as usize - filled)
        );
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r      {} [{bar}] {percent:>3}% of {}",
            self.label,
            human_size(self.total)
        );
        let _ = err.flush();
    }

    /// Ends the line.
    pub(crate) fn finish(self) {
        if !self.live {
            self.draw(self.total);
        }
        eprintln!();
    }
}

/// "12.3 KiB" and friends.
pub(crate) fn human_size(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    }
}

/// Prints `data` as a QR code with Unicode half blocks (two modules per character cell), dark
/// modules drawn as spaces on a light background so phones scan it from dark terminals too.
pub(crate) fn print_qr(data: &str) -> Outcome {
    let code = qrcode::QrCode::new(data.as_bytes()).ctx(
        "drawing the QR code",
        "Share the link as text instead (run with --no-qr).",
    )?;
    let width = code.width();
    let colors = code.to_colors();
    let quiet = 2usize;
    let size = width + 2 * quiet;
    let dark = |x: usize, y: usize| -> bool {
        if x < quiet || y < quiet || x >= width + quiet || y >= width + quiet {
            return false;
        }
        colors[(y - quiet) * width + (x - quiet)] == qrcode::Color::Dark
    };
    let mut out = String::new();
    for y in (0..size).step_by(2) {
        for x in 0..size {
            let top = dark(x, y);
            let bottom = y + 1 < size && dark(x, y + 1);
            out.push(match (top, bottom) {
                (false, false) => '█',
                (true, false) => '▄',
                (false, true) => '▀',
                (true, true) => ' ',
            });
        }
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}
