//! What changes between two desired states, field by field (`concord diff -f`): compared as
//! their serialised forms, so every field of every object is covered without a hand-written
//! comparison that could fall behind the model.

use super::Desired;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One field (or whole object) added, changed or removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The field's path (`services.echo.connect_timeout`).
    pub path: String,
    /// Its value before; absent when it is new.
    pub before: Option<Value>,
    /// Its value after; absent when it is removed.
    pub after: Option<Value>,
}

/// The changes that turn `from` into `to`, in path order; empty when they are equal.
pub fn diff(from: &Desired, to: &Desired) -> Vec<Change> {
    let (a, b) = (to_value(from), to_value(to));
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

fn to_value(d: &Desired) -> Value {
    serde_json::to_value(d).unwrap_or(Value::Null)
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    let join = |k: &str| match path {
        "" => k.to_string(),
        _ => format!("{path}.{k}"),
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => walk(&join(k), va, vb, out),
                    (va, vb) => out.push(Change {
                        path: join(k),
                        before: va.cloned(),
                        after: vb.cloned(),
                    }),
                }
            }
        }
        // Lists are compared element by element only when their lengths agree (a changed
        // timeout of the third route); otherwise the whole list is shown.
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                walk(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(Change {
            path: path.to_string(),
            before: Some(a.clone()),
            after: Some(b.clone()),
        }),
        _ => {}
    }
}
