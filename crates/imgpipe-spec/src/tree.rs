//! A format-neutral document tree with line numbers, built from TOML or JSON, so validation can
//! report every problem with its key path and line whichever syntax the spec was written in.

/// A value with the line it starts on (1-based).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub val: Val,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Arr(Vec<Node>),
    /// Keys in document order, each with the line of the key.
    Table(Vec<(String, usize, Node)>),
    /// A value with no meaning in a spec (TOML datetime, JSON null).
    Other(&'static str),
}

impl Val {
    pub fn type_name(&self) -> &'static str {
        match self {
            Val::Str(_) => "a string",
            Val::Int(_) => "an integer",
            Val::Float(_) => "a float",
            Val::Bool(_) => "a boolean",
            Val::Arr(_) => "an array",
            Val::Table(_) => "a table",
            Val::Other(t) => t,
        }
    }
}

/// A syntax error, with its line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub line: usize,
    pub message: String,
}

fn line_of(text: &str, byte: usize) -> usize {
    let end = byte.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Parse TOML into a tree.
pub(crate) fn from_toml(text: &str) -> Result<Node, Vec<SyntaxError>> {
    use toml::de::{DeTable, DeValue};
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return Err(errors
            .iter()
            .map(|e| SyntaxError {
                line: e.span().map_or(1, |s| line_of(text, s.start)),
                message: e.message().trim().to_string(),
            })
            .collect());
    }
    fn conv(text: &str, v: &DeValue<'_>, line: usize) -> Node {
        let val = match v {
            DeValue::String(s) => Val::Str(s.to_string()),
            DeValue::Integer(i) => {
                let digits: String = i.as_str().chars().filter(|c| *c != '_').collect();
                let digits = digits
                    .trim_start_matches('+')
                    .trim_start_matches("0x")
                    .trim_start_matches("0o")
                    .trim_start_matches("0b");
                match i64::from_str_radix(digits, i.radix()) {
                    Ok(n) => Val::Int(n),
                    Err(_) => Val::Other("an out-of-range integer"),
                }
            }
            DeValue::Float(f) => match f.as_str().replace('_', "").parse::<f64>() {
                Ok(x) => Val::Float(x),
                Err(_) => Val::Other("a float"),
            },
            DeValue::Boolean(b) => Val::Bool(*b),
            DeValue::Datetime(_) => Val::Other("a datetime"),
            DeValue::Array(a) => Val::Arr(
                a.iter()
                    .map(|e| conv(text, e.get_ref(), line_of(text, e.span().start)))
                    .collect(),
            ),
            DeValue::Table(t) => table(text, t),
        };
        Node { val, line }
    }
    fn table(text: &str, t: &DeTable<'_>) -> Val {
        Val::Table(
            t.iter()
                .map(|(k, v)| {
                    let kl = line_of(text, k.span().start);
                    let vl = line_of(text, v.span().start);
                    (k.get_ref().to_string(), kl, conv(text, v.get_ref(), vl))
                })
                .collect(),
        )
    }
    Ok(Node {
        val: table(text, doc.get_ref()),
        line: 1,
    })
}

/// Parse JSON into a tree (a small strict parser that keeps line numbers).
pub(crate) fn from_json(text: &str) -> Result<Node, Vec<SyntaxError>> {
    let mut p = Json {
        b: text.as_bytes(),
        i: 0,
        line: 1,
        depth: 0,
    };
    let run = |p: &mut Json<'_>| -> Result<Node, String> {
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.i != p.b.len() {
            return Err("trailing characters after the document".into());
        }
        Ok(v)
    };
    match run(&mut p) {
        Ok(n) => Ok(n),
        Err(message) => Err(vec![SyntaxError {
            line: p.line,
            message,
        }]),
    }
}

struct Json<'a> {
    b: &'a [u8],
    i: usize,
    line: usize,
    depth: usize,
}

impl Json<'_> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            match c {
                b'\n' => self.line += 1,
                b' ' | b'\t' | b'\r' => {}
                _ => break,
            }
            self.i += 1;
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!(
                "expected '{}', found {}",
                c as char,
                self.peek()
                    .map_or("the end of the input".to_string(), |x| format!(
                        "'{}'",
                        x as char
                    ))
            ))
        }
    }
    fn value(&mut self) -> Result<Node, String> {
        let line = self.line;
        let val = match self.peek() {
            Some(b'{') => self.object()?,
            Some(b'[') => self.array()?,
            Some(b'"') => Val::Str(self.string()?),
            Some(b't') => self.word("true", Val::Bool(true))?,
            Some(b'f') => self.word("false", Val::Bool(false))?,
            Some(b'n') => self.word("null", Val::Other("null"))?,
            Some(c) if c == b'-' || c.is_ascii_digit() => self.number()?,
            Some(c) => return Err(format!("unexpected character '{}'", c as char)),
            None => return Err("unexpected end of input".into()),
        };
        Ok(Node { val, line })
    }
    fn word(&mut self, w: &str, v: Val) -> Result<Val, String> {
        if self.b[self.i..].starts_with(w.as_bytes()) {
            self.i += w.len();
            Ok(v)
        } else {
            Err("invalid literal".into())
        }
    }
    fn number(&mut self) -> Result<Val, String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E') {
                self.i += 1;
            } else {
                break;
            }
        }
        let s = std::str::from_utf8(&self.b[start..self.i]).map_err(|e| e.to_string())?;
        if let Ok(n) = s.parse::<i64>() {
            Ok(Val::Int(n))
        } else {
            s.parse::<f64>()
                .map(Val::Float)
                .map_err(|_| format!("invalid number {s:?}"))
        }
    }
    fn hex4(&mut self) -> Result<u32, String> {
        let s = self
            .b
            .get(self.i..self.i + 4)
            .ok_or("truncated \\u escape")?;
        self.i += 4;
        let s = std::str::from_utf8(s).map_err(|e| e.to_string())?;
        u32::from_str_radix(s, 16).map_err(|_| format!("invalid \\u escape {s:?}"))
    }
    fn string(&mut self) -> Result<String, String> {
        self.expect(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = self.peek().ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    let e = self.peek().ok_or("unterminated escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                self.expect(b'\\')?;
                                self.expect(b'u')?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err("invalid surrogate pair".into());
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            char::from_u32(cp).ok_or("invalid code point")?
                        }
                        other => return Err(format!("invalid escape '\\{}'", other as char)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                b'\n' => return Err("newline inside a string".into()),
                c => out.push(c),
            }
        }
        String::from_utf8(out).map_err(|_| "string is not UTF-8".into())
    }
    fn nest(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > 64 {
            Err("nesting deeper than 64 levels".into())
        } else {
            Ok(())
        }
    }
    fn array(&mut self) -> Result<Val, String> {
        self.expect(b'[')?;
        self.nest()?;
        let mut v = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Val::Arr(v));
        }
        loop {
            self.ws();
            v.push(self.value()?);
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    break;
                }
                _ => return Err("expected ',' or ']' in array".into()),
            }
        }
        self.depth -= 1;
        Ok(Val::Arr(v))
    }
    fn object(&mut self) -> Result<Val, String> {
        self.expect(b'{')?;
        self.nest()?;
        let mut v: Vec<(String, usize, Node)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            self.depth -= 1;
            return Ok(Val::Table(v));
        }
        loop {
            self.ws();
            let kl = self.line;
            let k = self.string()?;
            if v.iter().any(|(e, _, _)| *e == k) {
                return Err(format!("duplicate key {k:?}"));
            }
            self.ws();
            self.expect(b':')?;
            self.ws();
            let val = self.value()?;
            v.push((k, kl, val));
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    break;
                }
                _ => return Err("expected ',' or '}' in object".into()),
            }
        }
        self.depth -= 1;
        Ok(Val::Table(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(n: &'a Node, k: &str) -> &'a Node {
        match &n.val {
            Val::Table(t) => {
                &t.iter()
                    .find(|(key, _, _)| key == k)
                    .unwrap_or_else(|| panic!("{k}"))
                    .2
            }
            _ => panic!("not a table"),
        }
    }

    #[test]
    fn toml_and_json_give_the_same_tree_shape_with_lines() {
        let t = from_toml("[source]\npath = \"a.img\"\n\n[verify]\nsize = 0x10\nlist = [1, 2]\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        let j = from_json(
            "{\"source\": {\"path\": \"a.img\"},\n \"verify\": {\"size\": 16,\n \"list\": [1, 2]}}",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(get(get(&t, "source"), "path").val, Val::Str("a.img".into()));
        assert_eq!(get(get(&t, "verify"), "size").val, Val::Int(16));
        assert_eq!(get(get(&t, "verify"), "size").line, 5);
        assert_eq!(get(get(&j, "verify"), "size").val, Val::Int(16));
        assert_eq!(get(get(&j, "verify"), "list").line, 3);
    }

    #[test]
    fn json_errors_have_lines() {
        let e = from_json("{\n\"a\": 1,\n\"a\": 2}").unwrap_err();
        assert_eq!(e[0].line, 3);
        assert!(e[0].message.contains("duplicate"));
        assert!(from_json("{\"a\": \"\\ud83d\\ude00\"}").is_ok());
        assert!(from_json("[").is_err());
        assert!(
            from_json(&"[".repeat(100)).unwrap_err()[0]
                .message
                .contains("nesting")
        );
    }

    #[test]
    fn toml_syntax_errors_have_lines() {
        let e = from_toml("[source]\npath = \n").unwrap_err();
        assert_eq!(e[0].line, 2);
    }
}
