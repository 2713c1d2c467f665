//! YAML to JSON values, remembering the line of every field: the parser's events (yaml-rust2)
//! are built into a [`serde_json::Value`] with the path of each key and item mapped to where it
//! starts, so an error found later (a bare duration, a route to an unknown service) can name the
//! operator's line. YAML 1.2 core schema for plain scalars; quoted scalars are strings. Anchors
//! and aliases are refused (a desired-state file has no use for them, and they would let a small
//! file expand without bound).

use serde_json::{Map, Number, Value};
use std::collections::BTreeMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A document and the line (1-based) where each field's key or item starts, by path
/// (`route_tables.main.virtual_hosts[0].domains`).
#[derive(Debug, Default)]
pub struct Located {
    /// The document.
    pub value: Value,
    /// Lines by path.
    pub lines: BTreeMap<String, usize>,
}

impl Located {
    /// The line of `path`, or of the nearest enclosing field that has one.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(line) = self.lines.get(p) {
                return Some(*line);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// Why a text is not a YAML document of the kind accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

enum Frame {
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        path: String,
    },
    Seq {
        items: Vec<Value>,
        path: String,
    },
}

struct Builder {
    stack: Vec<Frame>,
    done: Option<Value>,
    lines: BTreeMap<String, usize>,
    error: Option<SyntaxError>,
    documents: usize,
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError {
                line: mark.line(),
                column: mark.col() + 1,
                message,
            });
        }
    }

    /// The path of the next value in the innermost frame, or `None` when the value is a
    /// mapping key. The line of a sequence item is recorded here (a mapping value's is its
    /// key's).
    fn next_path(&mut self, mark: Marker) -> Option<String> {
        let path = match self.stack.last() {
            None => String::new(),
            Some(Frame::Map { key: None, .. }) => return None,
            Some(Frame::Map {
                key: Some(k), path, ..
            }) => join(path, k),
            Some(Frame::Seq { items, path }) => {
                let p = format!("{path}[{}]", items.len());
                self.lines.insert(p.clone(), mark.line());
                p
            }
        };
        Some(path)
    }

    fn put(&mut self, v: Value, mark: Marker) {
        if let Err(message) = self.try_put(v, mark) {
            self.fail(mark, message);
        }
    }

    fn try_put(&mut self, v: Value, mark: Marker) -> Result<(), String> {
        let Some(top) = self.stack.last_mut() else {
            self.done = Some(v);
            return Ok(());
        };
        match top {
            Frame::Seq { items, .. } => items.push(v),
            Frame::Map { map, key, path } => match key.take() {
                Some(k) => {
                    map.insert(k, v);
                }
                None => {
                    let k = match v {
                        Value::String(s) => s,
                        Value::Null => "null".into(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err("a mapping key must be a plain value".into()),
                    };
                    let at = join(path, &k);
                    if map.contains_key(&k) {
                        return Err(format!("{at} appears twice"));
                    }
                    self.lines.insert(at, mark.line());
                    *key = Some(k);
                }
            },
        }
        Ok(())
    }
}

fn join(path: &str, key: &str) -> String {
    match path {
        "" => key.to_string(),
        _ => format!("{path}.{key}"),
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::DocumentStart => {
                self.documents += 1;
                if self.documents > 1 {
                    self.fail(mark, "one document per file (found a second `---`)".into());
                }
            }
            Event::Alias(_) => self.fail(mark, "aliases (`*name`) are not supported".into()),
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 {
                    return self.fail(mark, "anchors (`&name`) are not supported".into());
                }
                self.next_path(mark);
                let v = scalar(text, style, tag.as_ref());
                self.put(v, mark);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) if anchor != 0 => {
                self.fail(mark, "anchors (`&name`) are not supported".into())
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let Some(path) = self.next_path(mark) else {
                    return self.fail(mark, "a mapping key must be a plain value".into());
                };
                let frame = match ev {
                    Event::MappingStart(..) => Frame::Map {
                        map: Map::new(),
                        key: None,
                        path,
                    },
                    _ => Frame::Seq {
                        items: Vec::new(),
                        path,
                    },
                };
                self.stack.push(frame);
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let v = match self.stack.pop() {
                    Some(Frame::Map { map, .. }) => Value::Object(map),
                    Some(Frame::Seq { items, .. }) => Value::Array(items),
                    None => return,
                };
                self.put(v, mark);
            }
            _ => {}
        }
    }
}

/// A scalar by the core schema: plain `null`/`~`/empty, booleans, integers and floats are
/// typed; everything else, and anything quoted or tagged `!!str`, is a string.
fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if style != TScalarStyle::Plain || tag.is_some_and(|t| t.suffix == "str") {
        return Value::String(text);
    }
    match text.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = text.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = text.parse::<u64>() {
            return Value::Number(n.into());
        }
    }
    let looks_float = digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_float
        && let Ok(f) = text.parse::<f64>()
        && let Some(n) = Number::from_f64(f)
    {
        return Value::Number(n);
    }
    Value::String(text)
}

/// Parses one YAML document.
pub fn parse(text: &str) -> Result<Located, SyntaxError> {
    let mut b = Builder {
        stack: Vec::new(),
        done: None,
        lines: BTreeMap::new(),
        error: None,
        documents: 0,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        return Err(SyntaxError {
            line: e.marker().line(),
            column: e.marker().col() + 1,
            message: e.info().to_string(),
        });
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(Located {
        value: b.done.unwrap_or(Value::Null),
        lines: b.lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_and_their_lines() {
        let text = "\
services:
  echo:
    protocol: grpc
    connect_timeout: 250ms
    weight: 3
    ratio: 0.5
    on: true
    off: ~
    quoted: \"15\"
    list:
      - a
      - {x: 1}
";
        let l = parse(text).unwrap();
        assert_eq!(
            l.value,
            json!({"services": {"echo": {"protocol": "grpc", "connect_timeout": "250ms",
                "weight": 3, "ratio": 0.5, "on": true, "off": null, "quoted": "15",
                "list": ["a", {"x": 1}]}}})
        );
        assert_eq!(l.lines["services"], 1);
        assert_eq!(l.lines["services.echo.connect_timeout"], 4);
        assert_eq!(l.lines["services.echo.list[0]"], 11);
        assert_eq!(l.lines["services.echo.list[1]"], 12);
        assert_eq!(l.line_of("services.echo.list[1].x"), Some(12));
        assert_eq!(l.line_of("services.echo.nothing.deeper"), Some(2));
    }

    #[test]
    fn refused_with_their_line() {
        for (text, line, what) in [
            ("a: 1\na: 2\n", 2, "a appears twice"),
            ("a: &x 1\nb: *x\n", 1, "anchors"),
            ("a: [1, 2\n", 2, ""),
            ("a: 1\n---\nb: 2\n", 2, "one document"),
            ("a:\n  - b\n c: d\n", 3, ""),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
        }
    }
}
