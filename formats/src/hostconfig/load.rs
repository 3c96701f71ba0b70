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
];

/// Sections whose entries are read one by one.
const NAMED: &[&str] = &["services", "containers", "vms"];

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

    /// Deserialize one item as `T`, reporting a problem at its place.
    fn shape<T: DeserializeOwned>(&mut self, item: &Item, key: &str) -> Option<T> {
        let value = match item.clone().into_value() {
            Ok(v) => v,
            Err(item) => {
                self.at(item.span(), key, "expected a value or a table".into());
                return None;
            }
        };
        match T::deserialize(value.into_deserializer()) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span().or_else(|| item.span());
                self.at(span, key, e.message().to_string());
                None
            }
        }
    }
}

/// Read one file's shape: syntax, unknown keys, types. Returns the file
/// as a plain table (for merging) without the parts whose shape is wrong,
/// and the problems with those parts; the rest can still be checked.
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
    // Paths (one or two keys deep) to leave out of the table.
    let mut bad: Vec<(String, Option<String>)> = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let before = r.diags.len();
        if !SECTIONS.contains(&key) {
            let span = doc.as_table().key(key).and_then(|k| k.span());
            r.at(
                span,
                key,
                format!("unknown key; a host config has {}", SECTIONS.join(", ")),
            );
        } else if NAMED.contains(&key) {
            let Some(entries) = item.as_table_like() else {
                r.at(item.span(), key, "expected a table of named entries".into());
                bad.push((key.to_string(), None));
                continue;
            };
            for (name, entry) in entries.iter() {
                let k = dotted(&[key.to_string(), name.to_string()]);
                let ok = match key {
                    "services" => r
                        .shape::<super::types::ServiceOverride>(entry, &k)
                        .is_some(),
                    "containers" => r.shape::<super::types::UserContainer>(entry, &k).is_some(),
                    _ => r.shape::<super::types::Vm>(entry, &k).is_some(),
                };
                if !ok {
                    bad.push((key.to_string(), Some(name.to_string())));
                }
            }
            continue;
        } else {
            if key == "network" {
                if let Some(ifaces) = item.get("interfaces").and_then(Item::as_table_like) {
                    for (name, entry) in ifaces.iter() {
                        let k = dotted(&["network".into(), "interfaces".into(), name.to_string()]);
                        let _ = r.shape::<super::types::Interface>(entry, &k);
                    }
                }
            }
            // The whole section, unless an entry of it was already reported
            // (it would be reported again).
            if r.diags.len() == before {
                let mut one = toml_edit::Table::new();
                one.insert(key, item.clone());
                let _ = r.shape::<HostConfig>(&Item::Table(one), key);
            }
        }
        if r.diags.len() > before {
            bad.push((key.to_string(), None));
        }
    }
    let mut table = src.text.parse::<toml::Table>().unwrap_or_default();
    for (key, name) in bad {
        match name {
            None => drop(table.remove(&key)),
            Some(n) => {
                if let Some(toml::Value::Table(t)) = table.get_mut(&key) {
                    t.remove(&n);
                }
            }
        }
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
