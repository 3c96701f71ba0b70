//! What a build tells the person waiting for it: each step as it starts and
//! ends, how far along it is when that is known, and, for the long compiles
//! that only write a log, what the log said last.
//!
//! On a terminal [`Bars`] draws an indicatif bar (a spinner with the log's
//! last line while the end is unknown); elsewhere [`Lines`] prints one line
//! per finished step, which is what a CI log wants.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Told about a build as it goes.
pub trait Progress {
    /// A step starts.
    fn begin(&mut self, step: &str);
    /// The running step's tool writes its output to `log`.
    fn log(&mut self, _log: &Path) {}
    /// The running step has done `done` of `total`.
    fn advance(&mut self, _done: u64, _total: u64) {}
    /// The step ended; `summary` says what it made.
    fn end(&mut self, summary: &str);
}

/// Tells nobody.
#[derive(Debug, Default)]
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&mut self, _step: &str) {}
    fn end(&mut self, _summary: &str) {}
}

/// One line on stderr per finished step, with its time.
#[derive(Debug)]
pub struct Lines {
    prefix: String,
    step: String,
    started: Instant,
}

impl Lines {
    pub fn new(prefix: &str) -> Lines {
        Lines {
            prefix: prefix.to_string(),
            step: String::new(),
            started: Instant::now(),
        }
    }
}

impl Progress for Lines {
    fn begin(&mut self, step: &str) {
        self.started = Instant::now();
        self.step = step.to_string();
    }
    fn log(&mut self, log: &Path) {
        // A long compile: say where to look while it runs.
        eprintln!("{}: {} (log {})", self.prefix, self.step, log.display());
    }
    fn end(&mut self, summary: &str) {
        eprintln!(
            "{}: {summary} ({:.1} s)",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// The last non-empty line of the end of `log`, for a spinner's message.
pub fn last_line(log: &Path) -> Option<String> {
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(4096))).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    Some(line.chars().take(70).collect())
}

/// indicatif bars on a terminal; the finished step stays as a line.
#[derive(Debug)]
pub struct Bars {
    prefix: String,
    bar: Option<indicatif::ProgressBar>,
    step: String,
    started: Instant,
    /// Stops the thread that shows the log's last line.
    watching: Option<Arc<AtomicBool>>,
}

impl Bars {
    pub fn new(prefix: &str) -> Bars {
        Bars {
            prefix: prefix.to_string(),
            bar: None,
            step: String::new(),
            started: Instant::now(),
            watching: None,
        }
    }

    fn stop_watching(&mut self) {
        if let Some(stop) = self.watching.take() {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

impl Progress for Bars {
    fn begin(&mut self, step: &str) {
        self.stop_watching();
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {wide_msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.set_prefix(format!("{}: {step}", self.prefix));
        bar.enable_steady_tick(Duration::from_millis(120));
        self.bar = Some(bar);
        self.step = step.to_string();
        self.started = Instant::now();
    }

    fn log(&mut self, log: &Path) {
        let Some(bar) = self.bar.clone() else { return };
        self.stop_watching();
        let stop = Arc::new(AtomicBool::new(false));
        self.watching = Some(stop.clone());
        let log: PathBuf = log.to_path_buf();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Some(line) = last_line(&log) {
                    bar.set_message(line);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
    }

    fn advance(&mut self, done: u64, total: u64) {
        let Some(bar) = &self.bar else { return };
        if bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{elapsed}] [{bar:30}] {percent:>3}%",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
        }
        bar.set_position(done);
    }

    fn end(&mut self, summary: &str) {
        self.stop_watching();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}: {summary} ({:.1} s)",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.stop_watching();
        if let Some(bar) = self.bar.take() {
            // A step that failed: leave where it stopped on the screen.
            bar.abandon_with_message(format!("{} failed", self.step));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_line_is_the_last_non_empty_one_shortened() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        assert_eq!(last_line(&log), None);
        let long = "x".repeat(100);
        std::fs::write(
            &log,
            format!("  CC  kernel/fork.o\n  LD  vmlinux\n\n{long}\n\n"),
        )
        .unwrap();
        assert_eq!(last_line(&log).unwrap(), "x".repeat(70));
        std::fs::write(&log, "a\n  CC  mm/slab.o\n").unwrap();
        assert_eq!(last_line(&log).unwrap(), "CC  mm/slab.o");
    }

    #[derive(Default)]
    struct Record(Vec<String>);

    impl Progress for Record {
        fn begin(&mut self, step: &str) {
            self.0.push(format!("begin {step}"));
        }
        fn advance(&mut self, done: u64, total: u64) {
            self.0.push(format!("{done}/{total}"));
        }
        fn end(&mut self, summary: &str) {
            self.0.push(format!("end {summary}"));
        }
    }

    #[test]
    fn qemu_img_progress_becomes_fractions() {
        let mut r = Record::default();
        crate::outputs::relay_qemu_img_progress(
            &b"    (0.00/100%)\r    (12.50/100%)\r    (100.00/100%)\r\n"[..],
            &mut r,
        );
        assert_eq!(r.0, ["0/10000", "1250/10000", "10000/10000"]);
    }
}
