//! Desired-state files (`concord apply -f`, `concord diff -f`): read, decoded and validated
//! before anything is sent, every problem named by file, line and field (DESIGN rule 12); and
//! the desired state printed back as YAML (`concord get`).

pub mod yaml;

use concord_api::MAX_CONFIG_BYTES;
use concord_registry::services::{Desired, validate};
use serde_json::Value;
use std::fmt;
use std::path::Path;

/// One problem with a file: where, which field, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line (1-based), when the field is in the file.
    pub line: Option<usize>,
    /// The field's path (empty for the file as a whole).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Why a desired-state file is refused.
#[derive(Debug)]
pub enum FileError {
    /// It cannot be read.
    Read {
        /// The file.
        file: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// It is larger than the API takes.
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        size: u64,
    },
    /// It is not a YAML document of the accepted kind, or its fields are wrong.
    Problems {
        /// The file.
        file: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Read { file, source } => write!(f, "cannot read {file}: {source}"),
            FileError::TooLarge { file, size } => write!(
                f,
                "{file}: {size} bytes is more than a desired-state file may hold ({MAX_CONFIG_BYTES})"
            ),
            FileError::Problems { file, problems } => {
                for (i, p) in problems.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    match p.line {
                        Some(line) => write!(f, "{file}:{line}: ")?,
                        None => write!(f, "{file}: ")?,
                    }
                    if !p.field.is_empty() {
                        write!(f, "{}: ", p.field)?;
                    }
                    write!(f, "{}", p.message)?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for FileError {}

/// Reads, decodes and validates the file at `path` (`-`: standard input).
pub fn read(path: &Path) -> Result<Desired, FileError> {
    let file = path.display().to_string();
    let read = |source| FileError::Read {
        file: file.clone(),
        source,
    };
    let text = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut std::io::Read::take(std::io::stdin(), MAX_CONFIG_BYTES as u64 + 1),
            &mut text,
        )
        .map_err(read)?;
        text
    } else {
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_CONFIG_BYTES as u64 {
            return Err(FileError::TooLarge { file, size });
        }
        std::fs::read_to_string(path).map_err(read)?
    };
    if text.len() > MAX_CONFIG_BYTES {
        return Err(FileError::TooLarge {
            file,
            size: text.len() as u64,
        });
    }
    parse(&file, &text)
}

/// Decodes and validates `text`, the content of `file`.
pub fn parse(file: &str, text: &str) -> Result<Desired, FileError> {
    let problems = |problems| FileError::Problems {
        file: file.to_string(),
        problems,
    };
    let located = yaml::parse(text).map_err(|e| {
        problems(vec![Problem {
            line: Some(e.line),
            field: String::new(),
            message: format!("not YAML (column {}): {}", e.column, e.message),
        }])
    })?;
    if !located.value.is_object() {
        let message = match &located.value {
            Value::Null => "the file is empty; a desired state has `services`, `route_tables` \
                            and `listeners` (write `{}` to remove them all)"
                .to_string(),
            _ => "a desired state is a mapping of `services`, `route_tables` and `listeners`"
                .to_string(),
        };
        return Err(problems(vec![Problem {
            line: Some(1),
            field: String::new(),
            message,
        }]));
    }
    let desired: Desired = serde_path_to_error::deserialize(&located.value).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        problems(vec![Problem {
            line: located.line_of(&field),
            field,
            message: e.inner().to_string(),
        }])
    })?;
    validate(&desired).map_err(|errors| {
        problems(
            errors
                .into_iter()
                .map(|e| Problem {
                    line: located.line_of(&e.path),
                    field: e.path,
                    message: e.message,
                })
                .collect(),
        )
    })?;
    Ok(desired)
}

/// `value` as a YAML document.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    let doc = yaml_of(value);
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    // Writing into a String cannot fail.
    let _ = emitter.dump(&doc);
    let body = out.strip_prefix("---\n").unwrap_or(&out).to_string();
    format!("{body}\n")
}

fn yaml_of(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(yaml_of).collect()),
        Value::Object(o) => Yaml::Hash(
            o.iter()
                .map(|(k, v)| (Yaml::String(k.clone()), yaml_of(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests;
