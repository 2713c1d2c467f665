//! Durations as operators write them: a whole number with its unit (`15s`, `250ms`, `2m`, `1h`).
//! A bare number is refused (is `15` seconds or milliseconds?), with a message saying what to
//! write instead.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A duration written with a unit; millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration {
    millis: u64,
}

/// Why a duration does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDuration {
    /// A number without a unit.
    #[error("a duration needs a unit: write `{0}s` (or `{0}ms`), not `{0}`")]
    NoUnit(String),
    /// Anything else that is not `<whole number><ms|s|m|h>`.
    #[error("`{0}` is not a duration: write a whole number with a unit, such as `15s` or `250ms`")]
    Invalid(String),
}

impl Duration {
    /// `n` milliseconds.
    pub const fn from_millis(millis: u64) -> Self {
        Duration { millis }
    }

    /// `n` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        Duration {
            millis: secs * 1000,
        }
    }

    /// Its length in milliseconds.
    pub fn as_millis(self) -> u64 {
        self.millis
    }

    /// As a standard duration.
    pub fn std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }

    /// Parses `15s`, `250ms`, `2m` or `1h`.
    pub fn parse(s: &str) -> Result<Self, BadDuration> {
        let t = s.trim();
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadDuration::NoUnit(t.to_string()));
        }
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (n, unit) = t.split_at(digits);
        let n: u64 = n.parse().map_err(|_| BadDuration::Invalid(s.to_string()))?;
        let scale = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(BadDuration::Invalid(s.to_string())),
        };
        n.checked_mul(scale)
            .map(Duration::from_millis)
            .ok_or_else(|| BadDuration::Invalid(s.to_string()))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.millis;
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, such as `15s` or `250ms`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(BadDuration::NoUnit(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(BadDuration::NoUnit(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(BadDuration::NoUnit(v.to_string())))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_with_units_and_printed_back() {
        for (text, ms, shown) in [
            ("15s", 15_000, "15s"),
            ("250ms", 250, "250ms"),
            ("1500ms", 1500, "1500ms"),
            ("2000ms", 2000, "2s"),
            ("2m", 120_000, "2m"),
            ("1h", 3_600_000, "1h"),
            ("0s", 0, "0s"),
        ] {
            let d = Duration::parse(text).unwrap();
            assert_eq!(
                (d.as_millis(), d.to_string().as_str()),
                (ms, shown),
                "{text}"
            );
        }
    }

    #[test]
    fn a_bare_number_says_what_to_write() {
        let e = serde_json::from_str::<Duration>("15")
            .unwrap_err()
            .to_string();
        assert!(e.contains("write `15s`"), "{e}");
        assert_eq!(Duration::parse("15"), Err(BadDuration::NoUnit("15".into())));
        for bad in [
            "",
            "s",
            "1.5s",
            "15 s",
            "-1s",
            "15d",
            "99999999999999999999h",
        ] {
            assert!(Duration::parse(bad).is_err(), "{bad:?}");
        }
    }
}
