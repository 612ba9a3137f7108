//! Typed reading of a [`Node`] tree that collects every problem instead of stopping at the first.

use std::collections::HashMap;
use std::time::Duration;

use crate::Problem;
use crate::tree::{Node, Val};
use crate::validate::At;

/// Collects problems while reading, and the line of every key and value read, so that the
/// problems the shared validation finds on the built `Spec` get their lines too.
#[derive(Default)]
pub(crate) struct Problems {
    pub list: Vec<Problem>,
    /// Key path → the line of the key.
    keys: HashMap<String, usize>,
    /// Key path (array elements as `key[i]`) → the line where the value starts.
    values: HashMap<String, usize>,
}

impl Problems {
    pub fn add(&mut self, path: &str, line: usize, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.to_string(),
            line,
            message: message.into(),
        });
    }

    /// The line of a validation finding: the key's or the value's as asked, else the
    /// nearest enclosing table's (1 for the document).
    pub fn line_of(&self, at: &At) -> usize {
        let (mut path, mut key) = match at {
            At::Key(p) => (p.as_str(), true),
            At::Value(p) => (p.as_str(), false),
        };
        loop {
            let (first, second) = if key {
                (&self.keys, &self.values)
            } else {
                (&self.values, &self.keys)
            };
            if let Some(l) = first.get(path).or_else(|| second.get(path)) {
                return *l;
            }
            if path.is_empty() {
                return 1;
            }
            path = match path.strip_suffix(']').and_then(|p| p.rfind('[')) {
                Some(i) => &path[..i],
                None => path.rfind('.').map_or("", |i| &path[..i]),
            };
            key = false;
        }
    }
}

/// A table being read: tracks which keys were used so unknown keys can be reported.
pub(crate) struct Table<'a> {
    path: String,
    entries: &'a [(String, usize, Node)],
    used: Vec<bool>,
    pub line: usize,
}

impl<'a> Table<'a> {
    pub fn root(node: &'a Node, p: &mut Problems) -> Option<Self> {
        Self::from_node(String::new(), node, p)
    }

    fn from_node(path: String, node: &'a Node, p: &mut Problems) -> Option<Self> {
        match &node.val {
            Val::Table(entries) => {
                let t = Table {
                    path,
                    entries,
                    used: vec![false; entries.len()],
                    line: node.line,
                };
                p.values.entry(t.path.clone()).or_insert(node.line);
                for (k, key_line, value) in entries {
                    p.keys.insert(t.path(k), *key_line);
                    p.values.insert(t.path(k), value.line);
                }
                Some(t)
            }
            other => {
                p.add(
                    &path,
                    node.line,
                    format!("expected a table, found {}", other.type_name()),
                );
                None
            }
        }
    }

    pub fn path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.entries.iter().any(|(k, _, _)| k == key)
    }

    pub fn get(&mut self, key: &str) -> Option<&'a Node> {
        let i = self.entries.iter().position(|(k, _, _)| k == key)?;
        self.used[i] = true;
        Some(&self.entries[i].2)
    }

    pub fn line_of(&self, key: &str) -> usize {
        self.entries
            .iter()
            .find(|(k, _, _)| k == key)
            .map_or(self.line, |(_, l, _)| *l)
    }

    pub fn table(&mut self, key: &str, p: &mut Problems) -> Option<Table<'a>> {
        let path = self.path(key);
        let n = self.get(key)?;
        Table::from_node(path, n, p)
    }

    /// A string value; the shared validation checks what it may contain (no NUL byte, …).
    pub fn string(&mut self, key: &str, p: &mut Problems) -> Option<String> {
        let path = self.path(key);
        let n = self.get(key)?;
        match &n.val {
            Val::Str(s) => Some(s.clone()),
            other => {
                p.add(
                    &path,
                    n.line,
                    format!("expected a string, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A string naming one of a fixed set of values (a format, a mode): it does not reach the
    /// `Spec` as a string, so its NUL check is made here.
    pub fn keyword(&mut self, key: &str, p: &mut Problems) -> Option<String> {
        let path = self.path(key);
        let line = self.get(key)?.line;
        let s = self.string(key, p)?;
        no_nul(&path, line, &s, p);
        Some(s)
    }

    /// An integer that must fit 32 bits (the range of its value is checked by the shared
    /// validation).
    pub fn uint32(&mut self, key: &str, p: &mut Problems) -> Option<u32> {
        let path = self.path(key);
        let line = self.line_of(key);
        let v = self.uint(key, p)?;
        match u32::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                p.add(
                    &path,
                    line,
                    format!("expected an integer up to {}, found {v}", u32::MAX),
                );
                None
            }
        }
    }

    pub fn boolean(&mut self, key: &str, p: &mut Problems) -> Option<bool> {
        let path = self.path(key);
        let n = self.get(key)?;
        match &n.val {
            Val::Bool(b) => Some(*b),
            other => {
                p.add(
                    &path,
                    n.line,
                    format!("expected true or false, found {}", other.type_name()),
                );
                None
            }
        }
    }

    pub fn uint(&mut self, key: &str, p: &mut Problems) -> Option<u64> {
        let path = self.path(key);
        let n = self.get(key)?;
        match &n.val {
            Val::Int(i) if *i >= 0 => Some(*i as u64),
            Val::Int(i) => {
                p.add(
                    &path,
                    n.line,
                    format!("expected a non-negative integer, found {i}"),
                );
                None
            }
            other => {
                p.add(
                    &path,
                    n.line,
                    format!("expected an integer, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A byte size: an integer, or a string like "20GiB", "512M", "4096".
    pub fn size(&mut self, key: &str, p: &mut Problems) -> Option<u64> {
        let path = self.path(key);
        let n = self.get(key)?;
        match &n.val {
            Val::Int(i) if *i >= 0 => Some(*i as u64),
            Val::Str(s) => match parse_size(s) {
                Ok(v) => Some(v),
                Err(e) => {
                    p.add(&path, n.line, e);
                    None
                }
            },
            other => {
                p.add(
                    &path,
                    n.line,
                    format!(
                        "expected a size (bytes, or a string like \"20GiB\"), found {}",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }

    /// A duration: integer seconds, or a string like "60s", "500ms", "24h".
    pub fn duration(&mut self, key: &str, p: &mut Problems) -> Option<Duration> {
        let path = self.path(key);
        let n = self.get(key)?;
        match &n.val {
            Val::Int(i) if *i >= 0 => Some(Duration::from_secs(*i as u64)),
            Val::Str(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    p.add(&path, n.line, e);
                    None
                }
            },
            other => {
                p.add(
                    &path,
                    n.line,
                    format!(
                        "expected a duration (seconds, or a string like \"60s\"), found {}",
                        other.type_name()
                    ),
                );
                None
            }
        }
    }

    /// An array of strings.
    pub fn strings(&mut self, key: &str, p: &mut Problems) -> Option<Vec<String>> {
        self.string_list(key, false, p)
    }

    /// An array of keyword values (see [`Table::keyword`]).
    pub fn keywords(&mut self, key: &str, p: &mut Problems) -> Option<Vec<String>> {
        self.string_list(key, true, p)
    }

    fn string_list(&mut self, key: &str, keywords: bool, p: &mut Problems) -> Option<Vec<String>> {
        let path = self.path(key);
        let n = self.get(key)?;
        match &n.val {
            Val::Arr(items) => {
                let mut out = Vec::new();
                for (i, it) in items.iter().enumerate() {
                    let item = format!("{path}[{i}]");
                    p.values.insert(item.clone(), it.line);
                    match &it.val {
                        Val::Str(s) => {
                            if keywords {
                                no_nul(&item, it.line, s, p);
                            }
                            out.push(s.clone());
                        }
                        other => p.add(
                            &item,
                            it.line,
                            format!("expected a string, found {}", other.type_name()),
                        ),
                    }
                }
                Some(out)
            }
            other => {
                p.add(
                    &path,
                    n.line,
                    format!("expected an array of strings, found {}", other.type_name()),
                );
                None
            }
        }
    }

    /// A table of string → string (names and values are checked by the shared validation).
    pub fn string_map(&mut self, key: &str, p: &mut Problems) -> Option<Vec<(String, String)>> {
        let mut t = self.table(key, p)?;
        let mut out = Vec::new();
        let keys: Vec<String> = t.entries.iter().map(|(k, _, _)| k.clone()).collect();
        for k in keys {
            if let Some(v) = t.string(&k, p) {
                out.push((k, v));
            }
        }
        Some(out)
    }

    /// Report every key that was never read.
    pub fn finish(self, p: &mut Problems, allowed: &[&str]) {
        for ((k, line, _), used) in self.entries.iter().zip(&self.used) {
            if !used {
                let mut msg = format!("unknown key {k:?}");
                if !allowed.is_empty() {
                    msg.push_str(&format!(" (allowed here: {})", allowed.join(", ")));
                }
                p.add(&self.path(k), *line, msg);
            }
        }
    }
}

/// A keyword containing a NUL byte is a problem, as any spec string with one is (the message
/// is the shared validation's).
fn no_nul(path: &str, line: usize, s: &str, p: &mut Problems) {
    if let Some(f) = crate::validate::nul(path, s) {
        p.add(path, line, f.message);
    }
}

/// Parse a byte size: "4096", "512K", "20GiB", "1.5G" (K/M/G/T and KiB/MiB/GiB/TiB are binary,
/// KB/MB/GB/TB decimal). The value must be a whole number of bytes: "1.5KiB" is 1536, but
/// "4.3MiB" (4508876.8 bytes) is refused rather than rounded, since `verify.size` is an exact
/// count. Decimal arithmetic is exact (no floating point).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "p" | "pib" => 1 << 50,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB)"
            ));
        }
    };
    let bad_number =
        || format!("invalid size {s:?}: expected a number followed by an optional unit");
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit())
        || frac.len() > 18
    {
        return Err(bad_number());
    }
    let digits = |d: &str| -> Result<u128, String> {
        if d.is_empty() {
            Ok(0)
        } else {
            d.parse::<u128>().map_err(|_| bad_number())
        }
    };
    let out_of_range = || format!("invalid size {s:?}: out of range");
    let scale = 10u128.pow(frac.len() as u32);
    let whole = digits(int)?.checked_mul(mult).ok_or_else(out_of_range)?;
    let part = digits(frac)?.checked_mul(mult).ok_or_else(out_of_range)?;
    if part % scale != 0 {
        return Err(format!(
            "invalid size {s:?}: not a whole number of bytes ({}.{} bytes)",
            whole + part / scale,
            format!("{:0width$}", part % scale, width = frac.len()).trim_end_matches('0')
        ));
    }
    u64::try_from(whole + part / scale).map_err(|_| out_of_range())
}

/// Parse a duration: "60s", "500ms", "5m", "24h", "2d", or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| {
        format!("invalid duration {s:?}: expected a number followed by ms, s, m, h or d")
    })?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {s:?}: out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("1.5 MiB"), Ok(3 << 19));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert!(parse_size("12 parsecs").is_err());
        assert_eq!(parse_size("1.1TB"), Ok(1_100_000_000_000));
        assert_eq!(parse_size("0.5K"), Ok(512));
        let e = parse_size("4.3MiB").unwrap_err();
        assert!(
            e.contains("not a whole number of bytes (4508876.8 bytes)"),
            "{e}"
        );
        assert!(parse_size("1.5").is_err());
        assert!(parse_size("1..5").is_err());
        assert!(parse_size(".").is_err());
        assert!(parse_size("99999999999999999999").is_err());
        assert!(parse_size("GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert!(parse_duration("soon").is_err());
    }
}
