//! Time zones without a zone database in every container: the image
//! carries one line per IANA zone with the zone's POSIX TZ rule (the
//! footer of its TZif file, e.g. `CET-1CEST,M3.5.0,M10.5.0/3`), and
//! keel-init hands the chosen rule to every container as `TZ`, which musl
//! and glibc read without any file. Past transitions are not kept; the
//! current rule is.

use std::collections::BTreeMap;

/// The zone table in the root filesystem: `Zone<TAB>rule` lines.
pub const ZONES: &str = "/usr/lib/keel/zones";

/// The POSIX TZ rule at the end of a TZif (version 2 or later) file.
pub fn footer(tzif: &[u8]) -> Option<String> {
    if !tzif.starts_with(b"TZif") || tzif.get(4).is_none_or(|v| *v < b'2') {
        return None;
    }
    let body = tzif.strip_suffix(b"\n")?;
    let start = body.iter().rposition(|b| *b == b'\n')? + 1;
    let rule = std::str::from_utf8(&body[start..]).ok()?;
    (!rule.is_empty() && rule.is_ascii()).then(|| rule.to_string())
}

/// Read a zone table.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(z, r)| (z.to_string(), r.to_string()))
        .collect()
}

/// Write a zone table.
pub fn render(zones: &BTreeMap<String, String>) -> String {
    zones.iter().map(|(z, r)| format!("{z}\t{r}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_the_last_line_of_a_v2_file() {
        let mut f = b"TZif2".to_vec();
        f.extend([0u8; 40]);
        f.extend(b"\nCET-1CEST,M3.5.0,M10.5.0/3\n");
        assert_eq!(footer(&f).as_deref(), Some("CET-1CEST,M3.5.0,M10.5.0/3"));
        let mut v1 = f.clone();
        v1[4] = 0;
        assert_eq!(footer(&v1), None, "version 1 has no footer");
        assert_eq!(footer(b"not a zone"), None);
        let table = BTreeMap::from([("Europe/Berlin".to_string(), "CET-1CEST".to_string())]);
        assert_eq!(parse(&render(&table)), table);
    }
}
