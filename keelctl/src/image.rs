//! `keelctl image`: the host's image store, through keel-init (which asks
//! keel-pull). The answer is a stream of event lines: a pull's progress
//! per blob, then the outcome.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};

use anyhow::{bail, Context};
use clap::Subcommand;
use keel_api::init::Request;
use keel_api::pull::{ImageInfo, PullEvent};

use crate::target::Target;

/// An event line is small, but for a listing of a large store; a longer
/// one is not keel-init's.
const MAX_EVENT: u64 = 8 << 20;
/// Bars drawn at once; an image with more layers shows the first ones.
const MAX_BARS: usize = 64;
/// The bar's width in characters.
const BAR: usize = 30;

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Pull an image from its registry (through the mirrors the host
    /// config names, with its credentials), even if the store has it.
    Pull {
        /// `registry.example:5000/team/app:1.2`, `nginx`, `...@sha256:...`
        reference: String,
    },
    /// The images in the store, the last pulled first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no container of the host config uses.
    Rm { reference: String },
    /// Remove every image no container of the host config uses.
    Prune,
}

/// Run `cmd` against keel-init at `t`.
pub fn run(t: &Target, cmd: ImageCmd) -> anyhow::Result<()> {
    let (req, json) = match cmd {
        ImageCmd::Pull { reference } => (Request::ImagePull { reference }, false),
        ImageCmd::List { json } => (Request::ImageList, json),
        ImageCmd::Rm { reference } => (Request::ImageRm { reference }, false),
        ImageCmd::Prune => (Request::ImagePrune, false),
    };
    let stream = t.init(&req, &[])?;
    let socket = t.name();
    let mut bars = Bars::new(std::io::stderr().is_terminal());
    let mut events = BufReader::new(stream);
    loop {
        let mut line = String::new();
        let n = (&mut events)
            .take(MAX_EVENT)
            .read_line(&mut line)
            .with_context(|| format!("reading the answer of {socket}"))?;
        if n == 0 {
            bail!("{socket} hung up without an answer");
        }
        let event: PullEvent = serde_json::from_str(&line)
            .with_context(|| format!("{socket} answered {:?}", line.trim_end()))?;
        match event {
            PullEvent::Progress {
                digest,
                done,
                total,
            } => {
                let mut err = std::io::stderr().lock();
                bars.update(&mut err, &digest, done, total)?;
            }
            PullEvent::Queued { ahead } => {
                eprintln!(
                    "waiting for {} other pull(s) to finish",
                    ahead.saturating_add(1)
                );
            }
            PullEvent::Pulled {
                manifest,
                fetched,
                host,
            } => {
                let from = if host.is_empty() {
                    "the store".to_string()
                } else {
                    printable(&host)
                };
                println!(
                    "{} ({} fetched from {from})",
                    printable(&manifest),
                    human(fetched)
                );
                return Ok(());
            }
            // Newest first, as `docker images` lists them (the store
            // keeps them in the order they were pulled).
            PullEvent::Images { mut images } if json => {
                images.reverse();
                println!("{}", serde_json::to_string_pretty(&images)?);
                return Ok(());
            }
            PullEvent::Images { mut images } => {
                images.reverse();
                print!("{}", table(&images));
                return Ok(());
            }
            PullEvent::Removed {
                references,
                freed,
                size,
            } => {
                for r in &references {
                    println!("removed {}", printable(r));
                }
                println!("{} freed, the store holds {}", human(freed), human(size));
                return Ok(());
            }
            PullEvent::Failed { message } => bail!("{}", printable(&message)),
        }
    }
}

/// Each blob's progress: on a terminal, a bar per blob redrawn in place;
/// elsewhere (a log, a pipe) one line per blob once it is in.
struct Bars {
    tty: bool,
    blobs: Vec<(String, u64, u64)>,
    /// Lines of bars on the terminal.
    drawn: usize,
}

impl Bars {
    fn new(tty: bool) -> Bars {
        Bars {
            tty,
            blobs: Vec::new(),
            drawn: 0,
        }
    }

    fn update(
        &mut self,
        out: &mut dyn Write,
        digest: &str,
        done: u64,
        total: u64,
    ) -> std::io::Result<()> {
        let at = match self.blobs.iter().position(|(d, _, _)| d == digest) {
            Some(i) => i,
            None if self.blobs.len() >= MAX_BARS => return Ok(()),
            None => {
                self.blobs.push((digest.to_string(), 0, total));
                self.blobs.len().saturating_sub(1)
            }
        };
        let was_done = self.blobs.get(at).is_some_and(|(_, d, t)| d == t);
        if let Some(b) = self.blobs.get_mut(at) {
            b.1 = done;
            b.2 = total;
        }
        if !self.tty {
            if done == total && !was_done {
                writeln!(out, "{}", line(digest, done, total))?;
            }
            return Ok(());
        }
        // Back up to the first bar drawn, then every bar again.
        if self.drawn > 0 {
            write!(out, "\x1b[{}A", self.drawn)?;
        }
        for (d, done, total) in &self.blobs {
            writeln!(out, "\x1b[2K{}", line(d, *done, *total))?;
        }
        self.drawn = self.blobs.len();
        out.flush()
    }
}

/// One blob's line: its short digest, a bar, bytes of total.
fn line(digest: &str, done: u64, total: u64) -> String {
    let short: String = digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .take(12)
        .collect();
    // In u128, where done * BAR always fits.
    let filled = u128::from(done.min(total))
        .saturating_mul(BAR as u128)
        .checked_div(u128::from(total))
        .map_or(BAR, |f| usize::try_from(f).unwrap_or(BAR));
    format!(
        "{short} [{}{}] {} / {}",
        "=".repeat(filled),
        " ".repeat(BAR.saturating_sub(filled)),
        human(done),
        human(total)
    )
}

/// `text` with its control characters escaped: what keel-pull says comes
/// from registries in the end, and a terminal must not take orders from
/// them.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Bytes as Docker shows them: decimal units, three figures.
fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len().saturating_sub(1) {
        v /= 1000.0;
        unit = unit.saturating_add(1);
    }
    format!("{v:.1} {}", UNITS.get(unit).copied().unwrap_or("PB"))
}

/// `image list`'s table: reference, image id (its config's digest, 12
/// characters, as Docker shows it), size.
fn table(images: &[ImageInfo]) -> String {
    let width = images
        .iter()
        .map(|i| printable(&i.reference).chars().count())
        .max()
        .unwrap_or(0)
        .max("REFERENCE".len());
    let mut out = format!("{:<width$}  {:<12}  SIZE\n", "REFERENCE", "IMAGE ID");
    for i in images {
        let id: String =
            i.id.as_deref()
                .map(|d| {
                    d.strip_prefix("sha256:")
                        .unwrap_or(d)
                        .chars()
                        .take(12)
                        .collect()
                })
                .unwrap_or_else(|| "-".into());
        let missing = if i.whole {
            ""
        } else {
            "  (incomplete: pulled again on use)"
        };
        out.push_str(&format!(
            "{:<width$}  {:<12}  {}{missing}\n",
            printable(&i.reference),
            printable(&id),
            human(i.size)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_hostile_string_cannot_drive_the_terminal() {
        assert_eq!(printable("ok: r/a:1"), "ok: r/a:1");
        assert_eq!(printable("\x1b[2Jgone\r\n"), "\\u{1b}[2Jgone\\r\\n");
    }

    #[test]
    fn sizes_read_like_dockers() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(999), "999 B");
        assert_eq!(human(52_400_000), "52.4 MB");
        assert_eq!(human(u64::MAX), "18446.7 PB");
    }

    #[test]
    fn a_line_has_the_short_digest_a_bar_and_the_bytes() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            line(&d, 5_000_000, 10_000_000),
            format!(
                "abababababab [{}{}] 5.0 MB / 10.0 MB",
                "=".repeat(15),
                " ".repeat(15)
            )
        );
        // A registry's nonsense does not break the bar.
        assert!(line("x", 10, 0).contains(&"=".repeat(BAR)));
        assert!(line("x", 20, 10).contains(&"=".repeat(BAR)));
    }

    #[test]
    fn without_a_terminal_each_blob_is_one_line_once_it_is_in() {
        let mut bars = Bars::new(false);
        let mut out = Vec::new();
        for (d, done) in [
            ("sha256:aa", 1),
            ("sha256:bb", 5),
            ("sha256:aa", 2),
            ("sha256:aa", 2),
        ] {
            bars.update(&mut out, d, done, if d == "sha256:aa" { 2 } else { 5 })
                .unwrap();
        }
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("bb ") && lines[1].starts_with("aa "),
            "{text}"
        );
    }

    #[test]
    fn on_a_terminal_the_bars_are_redrawn_in_place() {
        let mut bars = Bars::new(true);
        let mut out = Vec::new();
        bars.update(&mut out, "sha256:aa", 1, 4).unwrap();
        bars.update(&mut out, "sha256:bb", 1, 4).unwrap();
        out.clear();
        bars.update(&mut out, "sha256:aa", 4, 4).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("\x1b[2A"), "{text:?}");
        assert_eq!(text.matches("\x1b[2K").count(), 2);
    }

    #[test]
    fn the_table_lines_up_and_says_what_is_incomplete() {
        let img = |r: &str, whole| ImageInfo {
            reference: r.into(),
            manifest: "sha256:00".into(),
            id: Some(format!("sha256:{}", "cd".repeat(32))),
            size: 1_500_000,
            whole,
        };
        let t = table(&[
            img("docker.io/library/nginx:latest", true),
            img("r/a:1", false),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].find("IMAGE ID"), lines[1].find("cdcdcdcdcdcd"));
        assert!(lines[1].ends_with("1.5 MB"));
        assert!(lines[2].contains("incomplete"));
    }
}
