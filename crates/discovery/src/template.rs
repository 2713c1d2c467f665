//! The SNI name of a discovered builder, from a template over its record's fields, e.g.
//! `{id}.builders.example.com`. Placeholders: `{id}`, `{ip}` (with `.` and `:` as `-`),
//! `{region}`, `{app}`, `{name}` (the DNS name queried).

use crate::parse::Fields;
use concord_registry::is_dns_name;

/// Why a template was refused (a configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// A `{` without its `}`.
    #[error("unclosed '{{' in SNI template {template:?}")]
    Unclosed {
        /// The template as given.
        template: String,
    },
    /// A placeholder the template language does not know.
    #[error(
        "unknown placeholder {{{placeholder}}} in SNI template {template:?}; \
         use {{id}}, {{ip}}, {{region}}, {{app}} or {{name}}"
    )]
    UnknownPlaceholder {
        /// The placeholder's name, without braces.
        placeholder: String,
        /// The template as given.
        template: String,
    },
    /// Neither `{id}` nor `{ip}`: every builder would get the same name.
    #[error(
        "SNI template {template:?} must contain {{id}} or {{ip}}, or every builder would get the same name"
    )]
    NoUniquePart {
        /// The template as given.
        template: String,
    },
}

/// A rendered name that is not a valid DNS name (a data error: the record is skipped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SNI name {name:?} from template {template:?} is not a valid DNS name")]
pub struct RenderError {
    /// What the template rendered, lower-cased.
    pub name: String,
    /// The template.
    pub template: String,
}

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
    pub fn parse(s: &str) -> Result<SniTemplate, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| TemplateError::Unclosed {
                    template: s.to_string(),
                })?;
            parts.push(match &rest[open + 1..open + close] {
                "id" => Part::Id,
                "ip" => Part::Ip,
                "region" => Part::Region,
                "app" => Part::App,
                "name" => Part::Name,
                other => {
                    return Err(TemplateError::UnknownPlaceholder {
                        placeholder: other.to_string(),
                        template: s.to_string(),
                    });
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if !parts.contains(&Part::Id) && !parts.contains(&Part::Ip) {
            return Err(TemplateError::NoUniquePart {
                template: s.to_string(),
            });
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
    pub fn render(&self, f: &Fields<'_>) -> Result<String, RenderError> {
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
            Err(RenderError {
                name: out,
                template: self.source.clone(),
            })
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
        let e = SniTemplate::parse("{idd}.x").unwrap_err();
        assert!(
            matches!(&e, TemplateError::UnknownPlaceholder { placeholder, .. } if placeholder == "idd")
        );
        assert!(e.to_string().contains("unknown placeholder {idd}"), "{e}");
        let e = SniTemplate::parse("{id.x").unwrap_err();
        assert!(matches!(e, TemplateError::Unclosed { .. }));
        assert!(e.to_string().contains("unclosed '{'"), "{e}");
        let e = SniTemplate::parse("static.example.com").unwrap_err();
        assert!(matches!(e, TemplateError::NoUniquePart { .. }));
        assert!(e.to_string().contains("must contain {id} or {ip}"), "{e}");
    }
}
