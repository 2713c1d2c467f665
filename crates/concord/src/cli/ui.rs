//! `concord ui`: the URL of the target replica's status page, once the replica answered with
//! the token given. The URL carries the token (percent-encoded) when there is one: opening it
//! sets the page's cookie and redirects to `/ui`, so the token leaves the address bar.

use super::Target;
use serde::Serialize;
use std::process::ExitCode;

/// What `concord ui --json` prints.
#[derive(Serialize)]
struct PageUrl {
    url: String,
}

/// The page's URL on the replica whose API is at `base` (`http://host:port/`).
fn page_url(base: &str, token: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    match token {
        Some(t) => format!("{base}/ui?token={}", encode(t)),
        None => format!("{base}/ui"),
    }
}

/// Percent-encodes everything but the unreserved characters (`+` would read as a space).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `concord ui`.
pub async fn ui(t: &Target) -> ExitCode {
    let token = match t.token() {
        Ok(token) => token,
        Err(f) => return t.finish::<PageUrl>(Err(f), |_| String::new()),
    };
    t.run(
        async |c| {
            // Asked first, so a wrong address or token is said here, not in the browser.
            c.status().await?;
            Ok(PageUrl {
                url: page_url(c.base_url().as_str(), token.as_deref()),
            })
        },
        |p| format!("{}\n", p.url),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            page_url("http://127.0.0.1:8101/", None),
            "http://127.0.0.1:8101/ui"
        );
        assert_eq!(
            page_url("http://h:1/", Some("ab+c/d=e~f")),
            "http://h:1/ui?token=ab%2Bc%2Fd%3De~f"
        );
    }
}
