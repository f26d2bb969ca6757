//! Progress of a long archive command: a bar redrawn in place (segments, MB, MB/s, ETA)
//! when stderr is a terminal, one plain line per segment otherwise (logs, CI).
//!
//! Owns: how progress is shown. Must never: write to stdout (it is the command's output).

use std::io::{IsTerminal, Write};
use std::time::Instant;

/// What a command reports as it goes.
pub trait Progress: Send {
    /// The work: segments and bytes.
    fn start(&mut self, segments: u64, bytes: u64);
    /// One segment done (`skipped`: it was there already).
    fn segment(&mut self, name: &str, bytes: u64, skipped: bool);
    /// All done.
    fn finish(&mut self);
}

/// The progress display that suits stderr.
pub fn progress_for_stderr() -> Box<dyn Progress> {
    Box::new(Shown::new(
        std::io::stderr().is_terminal(),
        Box::new(std::io::stderr()),
    ))
}

/// Silent (tests, `archive get`).
pub struct Quiet;

impl Progress for Quiet {
    fn start(&mut self, _: u64, _: u64) {}
    fn segment(&mut self, _: &str, _: u64, _: bool) {}
    fn finish(&mut self) {}
}

struct Shown {
    bar: bool,
    out: Box<dyn Write + Send>,
    started: Instant,
    total: u64,
    total_bytes: u64,
    done: u64,
    bytes: u64,
}

impl Shown {
    fn new(bar: bool, out: Box<dyn Write + Send>) -> Self {
        Shown {
            bar,
            out,
            started: Instant::now(),
            total: 0,
            total_bytes: 0,
            done: 0,
            bytes: 0,
        }
    }

    fn rate(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.started.elapsed().as_secs_f64().max(0.001)
    }
}

impl Progress for Shown {
    fn start(&mut self, segments: u64, bytes: u64) {
        self.started = Instant::now();
        self.total = segments;
        self.total_bytes = bytes;
    }

    fn segment(&mut self, name: &str, bytes: u64, skipped: bool) {
        self.done += 1;
        if !skipped {
            self.bytes += bytes;
        }
        let rate = self.rate();
        let e = &mut self.out;
        if self.bar {
            const WIDTH: u64 = 30;
            let filled = (self.done * WIDTH / self.total.max(1)) as usize;
            let left_bytes = self
                .total_bytes
                .saturating_sub(self.done * (self.total_bytes / self.total.max(1)));
            let eta = if rate > 0.0 {
                format!("{:.0}s", left_bytes as f64 / 1e6 / rate)
            } else {
                "?".into()
            };
            let _ = write!(
                e,
                "\r[{}{}] {}/{} segments, {:.0} MB, {rate:.0} MB/s, ETA {eta}   ",
                "#".repeat(filled),
                ".".repeat(WIDTH as usize - filled),
                self.done,
                self.total,
                self.bytes as f64 / 1e6,
            );
        } else {
            let what = if skipped {
                "present, verified"
            } else {
                "restored"
            };
            let _ = writeln!(
                e,
                "{name} {what} ({}/{}, {rate:.0} MB/s)",
                self.done, self.total
            );
        }
    }

    fn finish(&mut self) {
        let rate = self.rate();
        let e = &mut self.out;
        if self.bar {
            let _ = writeln!(e);
        }
        let _ = writeln!(
            e,
            "{} segments, {:.0} MB written in {:.1} s ({rate:.0} MB/s)",
            self.done,
            self.bytes as f64 / 1e6,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn run(bar: bool) -> String {
        let c = Captured::default();
        let mut p = Shown::new(bar, Box::new(c.clone()));
        p.start(4, 4 << 24);
        p.segment("000000010000000000000001", 1 << 24, true);
        p.segment("000000010000000000000002", 1 << 24, false);
        p.finish();
        String::from_utf8(c.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_terminal_gets_a_bar_with_rate_and_eta() {
        let out = run(true);
        assert!(
            out.contains("\r[###############...............] 2/4 segments"),
            "{out:?}"
        );
        assert!(out.contains("MB/s, ETA "), "{out:?}");
        assert!(!out.contains("restored ("), "{out:?}");
    }

    #[test]
    fn elsewhere_a_line_per_segment() {
        let out = run(false);
        assert!(
            out.contains("000000010000000000000001 present, verified (1/4"),
            "{out}"
        );
        assert!(
            out.contains("000000010000000000000002 restored (2/4"),
            "{out}"
        );
        assert!(out.contains("2 segments, 17 MB written"), "{out}");
        assert!(!out.contains('\r'), "{out:?}");
    }
}
