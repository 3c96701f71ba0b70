//! Service output: every line stamped with the time, kept in a bounded ring
//! in memory for `keelctl logs`, and appended to
//! `/var/log/keel/<name>.log`, which is rotated by size.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Bytes of lines kept in memory per service.
pub const RING_BYTES: usize = 64 * 1024;
/// A log file larger than this is moved to `<name>.log.1`.
pub const ROTATE_BYTES: u64 = 1 << 20;
/// A line longer than this is cut, so a service without newlines cannot
/// grow keel-init's memory.
const MAX_LINE: usize = 4096;

/// One service's log.
#[derive(Debug)]
pub struct LogSink {
    ring: VecDeque<(u64, String)>,
    ring_bytes: usize,
    partial: Vec<u8>,
    next_seq: u64,
    path: Option<PathBuf>,
    file: Option<File>,
    size: u64,
}

/// `2026-11-26T12:00:00.123Z` from a system time.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// (year, month, day) of the day `days` after 1970-01-01 (Howard
/// Hinnant's algorithm).
// cannot overflow: days <= u64::MAX / 86_400 < 2^48, so z, era * 400 and
// every other intermediate stay far below i64::MAX.
#[allow(clippy::arithmetic_side_effects)]
fn civil_date(days: u64) -> (i64, i64, i64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl LogSink {
    /// A sink writing to `path` (None: memory only).
    pub fn new(path: Option<PathBuf>) -> Self {
        LogSink {
            ring: VecDeque::new(),
            ring_bytes: 0,
            partial: Vec::new(),
            next_seq: 0,
            path,
            file: None,
            size: 0,
        }
    }

    /// Take bytes the service wrote; complete lines are stamped and stored.
    pub fn ingest(&mut self, bytes: &[u8], now: SystemTime) {
        self.partial.extend_from_slice(bytes);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.push(&line[..i], now);
        }
        if self.partial.len() > MAX_LINE {
            let line: Vec<u8> = self.partial.drain(..).collect();
            self.push(&line[..MAX_LINE], now);
        }
    }

    /// Store what is left of an unfinished line (the service ended).
    pub fn flush(&mut self, now: SystemTime) {
        if !self.partial.is_empty() {
            let line: Vec<u8> = self.partial.drain(..).collect();
            self.push(&line, now);
        }
    }

    /// Record a line from keel-init itself about this service.
    pub fn note(&mut self, text: &str, now: SystemTime) {
        self.push(format!("[keel] {text}").as_bytes(), now);
    }

    fn push(&mut self, line: &[u8], now: SystemTime) {
        let text = format!(
            "{} {}",
            timestamp(now),
            String::from_utf8_lossy(line).trim_end_matches('\r')
        );
        self.write_file(&text);
        self.ring_bytes = self.ring_bytes.saturating_add(text.len());
        self.ring.push_back((self.next_seq, text));
        self.next_seq = self.next_seq.wrapping_add(1);
        while self.ring_bytes > RING_BYTES {
            match self.ring.pop_front() {
                Some((_, old)) => self.ring_bytes = self.ring_bytes.saturating_sub(old.len()),
                None => break,
            }
        }
    }

    fn write_file(&mut self, text: &str) {
        let Some(path) = &self.path else { return };
        let line_len = (text.len() as u64).saturating_add(1);
        if self.size.saturating_add(line_len) > ROTATE_BYTES {
            self.file = None;
            let mut old = path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(path, old);
        }
        if self.file.is_none() {
            self.file = OpenOptions::new().create(true).append(true).open(path).ok();
            self.size = self
                .file
                .as_ref()
                .and_then(|f| f.metadata().ok())
                .map_or(0, |m| m.len());
        }
        if let Some(f) = &mut self.file {
            if writeln!(f, "{text}").is_ok() {
                self.size = self.size.saturating_add(line_len);
            }
        }
    }

    /// Lines with sequence number `since` or later still in memory, and the
    /// sequence number to ask for next.
    pub fn since(&self, since: u64) -> (Vec<String>, u64) {
        let lines = self
            .ring
            .iter()
            .filter(|(s, _)| *s >= since)
            .map(|(_, l)| l.clone())
            .collect();
        (lines, self.next_seq)
    }
}

#[cfg(test)]
mod tests {
    // Test code, not reachable from input.
    #![allow(clippy::arithmetic_side_effects)]

    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            timestamp(at(1_795_694_400) + Duration::from_millis(7)),
            "2026-11-26T12:00:00.007Z"
        );
        assert_eq!(timestamp(at(951_782_400)), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_are_split_stamped_and_followed() {
        let mut s = LogSink::new(None);
        s.ingest(b"one\ntw", at(0));
        s.ingest(b"o\nthree", at(1));
        let (lines, next) = s.since(0);
        assert_eq!(
            lines,
            [
                "1970-01-01T00:00:00.000Z one",
                "1970-01-01T00:00:01.000Z two"
            ]
        );
        assert_eq!(next, 2);
        s.flush(at(2));
        assert_eq!(s.since(next).0, ["1970-01-01T00:00:02.000Z three"]);
    }

    #[test]
    fn the_ring_is_bounded_and_long_lines_are_cut() {
        let mut s = LogSink::new(None);
        let line = vec![b'x'; 1000];
        for _ in 0..200 {
            s.ingest(&line, at(0));
            s.ingest(b"\n", at(0));
        }
        let (lines, next) = s.since(0);
        assert_eq!(next, 200);
        assert!(lines.len() < 70 && lines.len() > 60, "{}", lines.len());
        s.ingest(&vec![b'y'; MAX_LINE + 10], at(0));
        assert_eq!(
            s.since(next).0[0].len(),
            "1970-01-01T00:00:00.000Z ".len() + MAX_LINE
        );
    }

    #[test]
    fn files_rotate_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.log");
        let mut s = LogSink::new(Some(path.clone()));
        let line = vec![b'z'; 999];
        for _ in 0..1100 {
            s.ingest(&line, at(0));
            s.ingest(b"\n", at(0));
        }
        let cur = std::fs::metadata(&path).unwrap().len();
        let old = std::fs::metadata(dir.path().join("svc.log.1"))
            .unwrap()
            .len();
        assert!(old <= ROTATE_BYTES && old > ROTATE_BYTES - 2000, "{old}");
        assert!(cur < ROTATE_BYTES, "{cur}");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .all(|l| l.ends_with('z')));
    }
}
