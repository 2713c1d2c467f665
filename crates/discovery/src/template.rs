//! The SNI name of a discovered builder, from a template over its record's fields, e.g.
//! `{id}.builders.example.com`. Placeholders: `{id}`, `{ip}` (with `.` and `:` as `-`),
//! `{region}`, `{app}`, `{name}` (the DNS name queried).

use crate::parse::Fields;
use concord_registry::is_dns_name;

/// A parsed SNI template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniTemplate {
    parts: Vec<Part>,
    source: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Id,
    Ip,
    Region,
    App,
    Name,
}

impl SniTemplate {
    /// Parses a template; an unknown or unclosed placeholder is an error naming it.
    pub fn parse(s: &str) -> Result<SniTemplate, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in SNI template {s:?}"))?;
            parts.push(match &rest[open + 1..open + close] {
                "id" => Part::Id,
                "ip" => Part::Ip,
                "region" => Part::Region,
                "app" => Part::App,
                "name" => Part::Name,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} in SNI template {s:?}; \
                         use {{id}}, {{ip}}, {{region}}, {{app}} or {{name}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.contains(&Part::Id) && !parts.contains(&Part::Ip) {
            return Err(format!(
                "SNI template {s:?} must contain {{id}} or {{ip}}, or every builder would get the same name"
            ));
        }
        Ok(SniTemplate {
            parts,
            source: s.to_string(),
        })
    }

    /// The fixed text after the last placeholder (`.builders.example.com` of
    /// `{id}.builders.example.com`), lower-cased: every name it renders ends with it.
    pub fn fixed_tail(&self) -> Option<String> {
        match self.parts.last()? {
            Part::Text(t) => Some(t.to_ascii_lowercase()),
            _ => None,
        }
    }

    /// The template as given.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The SNI name for `f`, lower-cased; an error if it is not a valid DNS name.
    pub fn render(&self, f: &Fields<'_>) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Id => out.push_str(f.id),
                Part::Ip => out.push_str(&f.ip.replace(['.', ':'], "-")),
                Part::Region => out.push_str(f.region),
                Part::App => out.push_str(f.app),
                Part::Name => out.push_str(f.name.trim_end_matches('.')),
            }
        }
        let out = out.to_ascii_lowercase();
        if is_dns_name(&out) {
            Ok(out)
        } else {
            Err(format!(
                "SNI name {out:?} from template {:?} is not a valid DNS name",
                self.source
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_fields() {
        let t = SniTemplate::parse("{id}.{region}.builders.example.com").unwrap();
        let f = Fields {
            id: "B1",
            region: "ord",
            ..Fields::default()
        };
        assert_eq!(t.render(&f).unwrap(), "b1.ord.builders.example.com");
        let t = SniTemplate::parse("{ip}.b.test").unwrap();
        let f = Fields {
            ip: "fdaa:0:1::3".into(),
            ..Fields::default()
        };
        assert_eq!(t.render(&f).unwrap(), "fdaa-0-1--3.b.test");
        // An empty region leaves an empty label: refused, not a crash.
        let t = SniTemplate::parse("{id}.{region}.test").unwrap();
        assert!(
            t.render(&Fields {
                id: "a",
                ..Fields::default()
            })
            .is_err()
        );
    }

    #[test]
    fn bad_templates_are_named() {
        assert!(
            SniTemplate::parse("{idd}.x")
                .unwrap_err()
                .contains("unknown placeholder {idd}")
        );
        assert!(
            SniTemplate::parse("{id.x")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            SniTemplate::parse("static.example.com")
                .unwrap_err()
                .contains("must contain")
        );
    }
}
