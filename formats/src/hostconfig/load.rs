//! Reading host config files with errors as precise as a compiler's:
//! `file:line:column: `key`: message`, every problem at once where the
//! file allows it (each section and each named entry is read on its own,
//! so one bad service does not hide another).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{ImDocument, Item};

use super::types::HostConfig;
use super::validate::{dotted, validate, Context};

/// One problem, where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// From 1; 0 when the problem has no place in the file.
    pub line: usize,
    pub column: usize,
    /// The key path, dotted; empty for a syntax error.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All of a file's problems, one per line.
pub fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A host config file's name (for messages) and text.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub name: &'a Path,
    pub text: &'a str,
}

/// (line, column), both from 1, of byte `offset` of `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

const SECTIONS: &[&str] = &[
    "hostname",
    "timezone",
    "sysctl",
    "network",
    "time",
    "admin",
    "services",
    "containers",
    "vms",
    "update",
    "registries",
    "images",
];

/// Sections whose entries are read one by one.
const NAMED: &[&str] = &["services", "containers", "vms", "registries"];

struct Reader<'a> {
    src: Source<'a>,
    diags: Vec<Diagnostic>,
}

impl Reader<'_> {
    fn at(&mut self, span: Option<std::ops::Range<usize>>, key: &str, message: String) {
        let (line, column) = span.map_or((0, 0), |s| line_col(self.src.text, s.start));
        self.diags.push(Diagnostic {
            file: self.src.name.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message,
        });
    }

    /// Deserialize `item` (at key `path`) as `T`. Each bad value is
    /// reported at its key and taken out, then the rest is read again, so
    /// that every bad value of the item is found; returns the key paths
    /// taken out (below `path`), or `None` when the item is bad as a whole
    /// (a missing key, a value where a table belongs).
    fn shape<T: DeserializeOwned>(
        &mut self,
        item: &Item,
        path: &[String],
    ) -> Option<Vec<Vec<String>>> {
        let mut item = item.clone();
        let mut pruned = Vec::new();
        // A bound, so that a value whose problem cannot be taken out ends it.
        for _ in 0..MAX_PROBLEMS {
            let value = match item.clone().into_value() {
                Ok(v) => v,
                Err(item) => {
                    self.at(
                        item.span(),
                        &dotted(path),
                        "expected a value or a table".into(),
                    );
                    return None;
                }
            };
            let e = match T::deserialize(value.into_deserializer()) {
                Ok(_) => return Some(pruned),
                Err(e) => e,
            };
            let span = e.span().or_else(|| item.span());
            let below = span
                .as_ref()
                .and_then(|s| key_at(&item, s.start))
                .filter(|p| !p.is_empty());
            let mut key = path.to_vec();
            key.extend(below.iter().flatten().cloned());
            self.at(span, &dotted(&key), e.message().to_string());
            match below {
                Some(p) if remove_item(&mut item, &p) => pruned.push(p),
                _ => return None,
            }
        }
        None
    }
}

/// The most problems one item is read for.
const MAX_PROBLEMS: usize = 64;

/// The path of the deepest key below `item` whose key or value is at byte
/// `at` of the file.
fn key_at(item: &Item, at: usize) -> Option<Vec<String>> {
    let table = item.as_table_like()?;
    let hit = |s: Option<std::ops::Range<usize>>| {
        s.is_some_and(|s| s.start <= at && at < s.end.max(s.start.saturating_add(1)))
    };
    for (k, v) in table.iter() {
        if let Some(mut p) = key_at(v, at) {
            p.insert(0, k.to_string());
            return Some(p);
        }
        let key_span = table.get_key_value(k).and_then(|(key, _)| key.span());
        if hit(v.span()) || hit(key_span) {
            return Some(vec![k.to_string()]);
        }
    }
    None
}

/// Take the key at `path` out of `item`; whether it was there.
fn remove_item(item: &mut Item, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut at = item;
    for p in parents {
        match at.as_table_like_mut().and_then(|t| t.get_mut(p)) {
            Some(next) => at = next,
            None => return false,
        }
    }
    at.as_table_like_mut()
        .and_then(|t| t.remove(last))
        .is_some()
}

/// Take the key at `path` out of a plain table.
fn remove_value(table: &mut toml::Table, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = table;
    for p in parents {
        match at.get_mut(p) {
            Some(toml::Value::Table(t)) => at = t,
            _ => return,
        }
    }
    at.remove(last);
}

/// Read one file's shape: syntax, unknown keys, types. Returns the file
/// as a plain table (for merging) without the values whose shape is
/// wrong, and the problems with those; the rest can still be checked.
fn read(src: Source<'_>) -> (toml::Table, Vec<Diagnostic>) {
    let mut r = Reader {
        src,
        diags: Vec::new(),
    };
    let doc = match ImDocument::parse(src.text) {
        Ok(d) => d,
        Err(e) => {
            r.at(e.span(), "", e.message().trim().to_string());
            return (toml::Table::new(), r.diags);
        }
    };
    // Key paths to leave out of the table.
    let mut bad: Vec<Vec<String>> = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let section = vec![key.to_string()];
        if !SECTIONS.contains(&key) {
            let span = doc.as_table().key(key).and_then(|k| k.span());
            r.at(
                span,
                key,
                format!("unknown key; a host config has {}", SECTIONS.join(", ")),
            );
            bad.push(section);
        } else if NAMED.contains(&key) {
            let Some(entries) = item.as_table_like() else {
                r.at(item.span(), key, "expected a table of named entries".into());
                bad.push(section);
                continue;
            };
            for (name, entry) in entries.iter() {
                let at = vec![key.to_string(), name.to_string()];
                let pruned = match key {
                    "services" => r.shape::<super::types::ServiceOverride>(entry, &at),
                    "containers" => r.shape::<super::types::UserContainer>(entry, &at),
                    "registries" => r.shape::<super::types::Registry>(entry, &at),
                    _ => r.shape::<super::types::Vm>(entry, &at),
                };
                match pruned {
                    Some(paths) => bad.extend(paths.into_iter().map(|p| [at.clone(), p].concat())),
                    None => bad.push(at),
                }
            }
        } else {
            // The section on its own, as the one key of a config.
            let mut one = toml_edit::Table::new();
            one.insert(key, item.clone());
            match r.shape::<HostConfig>(&Item::Table(one), &[]) {
                Some(paths) => bad.extend(paths),
                None => bad.push(section),
            }
        }
    }
    let mut table = src.text.parse::<toml::Table>().unwrap_or_default();
    for path in bad {
        remove_value(&mut table, &path);
    }
    (table, r.diags)
}

/// Merge `over` into `base` key by key: tables merge, anything else
/// (values, arrays) is replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Where `path` is set in the TOML `text`: (how many parts of the path
/// the file has, line, column) of the deepest of them. Image recipes use
/// it too, to place their errors.
pub fn locate(text: &str, path: &[String]) -> Option<(usize, usize, usize)> {
    let doc = ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut found = None;
    for (depth, part) in path.iter().enumerate() {
        let Some((k, item)) = table.get_key_value(part) else {
            break;
        };
        let span = k.span().or_else(|| item.span());
        if let Some(s) = span {
            let (l, c) = line_col(text, s.start);
            found = Some((depth + 1, l, c));
        }
        match item.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
    }
    found
}

/// Read the image's defaults and the person's file (either may be absent),
/// merge them key by key (the person's file wins) and check the result.
/// Every problem found is returned, each placed in the file that set it.
pub fn load(
    defaults: Option<Source<'_>>,
    user: Option<Source<'_>>,
    ctx: &Context,
) -> Result<HostConfig, Vec<Diagnostic>> {
    let mut diags = Vec::new();
    let mut merged = toml::Table::new();
    for src in [defaults, user].into_iter().flatten() {
        let (table, d) = read(src);
        merge(&mut merged, table);
        diags.extend(d);
    }
    let name_of = |s: Option<Source<'_>>| s.map(|s| s.name.to_path_buf());
    let config: HostConfig = match toml::Value::Table(merged).try_into() {
        Ok(c) => c,
        Err(e) => {
            let e: toml::de::Error = e;
            diags.push(Diagnostic {
                file: name_of(user).or(name_of(defaults)).unwrap_or_default(),
                line: 0,
                column: 0,
                key: String::new(),
                message: e.message().to_string(),
            });
            return Err(diags);
        }
    };
    let problems = validate(&config, ctx);
    if problems.is_empty() && diags.is_empty() {
        return Ok(config);
    }
    diags.extend(problems.into_iter().map(|p| {
        // The file that sets the deepest part of the key is to blame.
        let mut best: Option<(usize, usize, usize, PathBuf)> = None;
        for src in [user, defaults].into_iter().flatten() {
            if let Some((depth, line, column)) = locate(src.text, &p.path) {
                if best.as_ref().is_none_or(|b| depth > b.0) {
                    best = Some((depth, line, column, src.name.to_path_buf()));
                }
            }
        }
        let (line, column, file) = match best {
            Some((_, l, c, f)) => (l, c, f),
            None => (
                0,
                0,
                name_of(user).or(name_of(defaults)).unwrap_or_default(),
            ),
        };
        Diagnostic {
            file,
            line,
            column,
            key: dotted(&p.path),
            message: p.message,
        }
    }));
    Err(diags)
}

/// One file on its own (`keel config validate FILE`).
pub fn check(src: Source<'_>, ctx: &Context) -> Result<HostConfig, Vec<Diagnostic>> {
    load(None, Some(src), ctx)
}

/// The sections a host config has, for the reference test.
pub fn sections() -> &'static [&'static str] {
    SECTIONS
}
