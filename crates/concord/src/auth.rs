//! Admin API authentication: bearer tokens with a read or write permission each, from a token
//! file that is re-read when it changes.
//!
//! The token file has one token a line, `<permission> <token>`, where the permission is `read`
//! (every GET) or `write` (every request; write implies read). Blank lines and lines starting
//! with `#` are ignored. A token is 16 to 256 characters of `A-Z a-z 0-9 - . _ ~ + / =` (the
//! characters a bearer token may hold); a token listed twice is an error.
//!
//! ```text
//! # deploy script
//! write 3f6c0c1e9a8b4d7e2f1a0b9c8d7e6f5a
//! # Prometheus
//! read  9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a
//! ```
//!
//! With tokens configured, every request but the probes (`GET /healthz`, `/readyz`) needs `Authorization: Bearer
//! <token>`: no token or an unknown one is 401, a read token on anything but GET/HEAD is 403.
//! `/metrics` needs a read token too (Prometheus: `authorization: { credentials_file: … }`).
//! The status page (`/ui…`) also takes the token from a cookie, set by `GET /ui?token=…`.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use concord_api::{ErrorBody, ErrorCode};
use concord_telemetry::tasks::Tasks;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Permission {
    /// GET and HEAD requests: status, builders, Envoys, discovery, metrics.
    Read,
    /// Every request, including puts, removes, membership changes and fault injection.
    Write,
}

/// Shortest token accepted: shorter ones are guessable.
const MIN_TOKEN_LEN: usize = 16;
/// Longest token accepted.
const MAX_TOKEN_LEN: usize = 256;

/// The tokens of a token file.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    entries: Vec<(Permission, Vec<u8>)>,
}

impl std::fmt::Debug for Tokens {
    // Never print the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let writers = self
            .entries
            .iter()
            .filter(|(p, _)| *p == Permission::Write)
            .count();
        write!(
            f,
            "Tokens {{ write: {writers}, read: {} }}",
            self.entries.len() - writers
        )
    }
}

impl Tokens {
    /// Parses the text of a token file; an error names the line.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries: Vec<(Permission, Vec<u8>)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split_whitespace();
            let (perm, token) = match (fields.next(), fields.next(), fields.next()) {
                (Some(p), Some(t), None) => (p, t),
                _ => {
                    return Err(format!(
                        "line {n}: expected `read <token>` or `write <token>`"
                    ));
                }
            };
            let perm = match perm {
                "read" => Permission::Read,
                "write" => Permission::Write,
                other => {
                    return Err(format!(
                        "line {n}: unknown permission {other:?}: use read or write"
                    ));
                }
            };
            if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&token.len()) {
                return Err(format!(
                    "line {n}: a token must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} characters \
                     long (this one has {})",
                    token.len()
                ));
            }
            if !token.bytes().all(is_token_char) {
                return Err(format!(
                    "line {n}: a token may only hold A-Z a-z 0-9 - . _ ~ + / ="
                ));
            }
            if entries.iter().any(|(_, t)| t == token.as_bytes()) {
                return Err(format!("line {n}: this token is listed twice"));
            }
            entries.push((perm, token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err("no tokens in the file: it would lock everyone out".into());
        }
        Ok(Tokens { entries })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read admin token file {}: {e}", path.display()))?;
        Tokens::parse(&text)
            .map_err(|e| format!("invalid admin token file {}: {e}", path.display()))
    }

    /// The permission of `presented`, if it is one of the tokens. Every token is compared in full
    /// whatever matches, in time that depends only on the lengths, so the time an answer takes
    /// tells nothing about how close a guess was.
    pub fn check(&self, presented: &[u8]) -> Option<Permission> {
        let mut found = None;
        for (perm, token) in &self.entries {
            if constant_time_eq(token, presented) {
                found = Some(*perm);
            }
        }
        found
    }
}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Compares two byte strings without an early exit on the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold back into an early-exit comparison.
    std::hint::black_box(diff) == 0
}

/// The admin API's access rule: open (no token file) or the current tokens of a file.
#[derive(Clone, Default)]
pub struct Auth {
    tokens: Option<Arc<RwLock<Arc<Tokens>>>>,
}

impl Auth {
    /// Anyone who can reach the admin API may do anything.
    pub fn open() -> Self {
        Auth::default()
    }

    /// Requests need one of `tokens`.
    pub fn with_tokens(tokens: Tokens) -> Self {
        Auth {
            tokens: Some(Arc::new(RwLock::new(Arc::new(tokens)))),
        }
    }

    /// Whether tokens are required.
    pub fn is_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    fn current(&self) -> Option<Arc<Tokens>> {
        self.tokens
            .as_ref()
            .map(|t| t.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    fn replace(&self, new: Tokens) {
        if let Some(t) = &self.tokens {
            *t.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        }
    }

    /// Re-reads `path` every `every` until `tasks` is cancelled, and uses its tokens from then on when it
    /// changed. A file that became unreadable or malformed is reported and the tokens in force
    /// stay: a half-written file must not lock operators out, nor let anyone in.
    pub fn reload_on_change(&self, path: PathBuf, every: Duration, tasks: &Tasks) {
        if !self.is_enabled() {
            return;
        }
        let auth = self.clone();
        let shutdown = tasks.token().clone();
        tasks.spawn("admin token reload", async move {
            let mut last_text = std::fs::read_to_string(&path).ok();
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let text = match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t),
                    Err(error) => {
                        if last_text.is_some() {
                            tracing::error!(
                                %error, path = %path.display(),
                                "cannot read the admin token file; keeping the tokens in force"
                            );
                        }
                        None
                    }
                };
                if text == last_text {
                    continue;
                }
                if let Some(text) = &text {
                    match Tokens::parse(text) {
                        Ok(tokens) => {
                            tracing::info!(path = %path.display(), ?tokens, "admin tokens reloaded");
                            auth.replace(tokens);
                        }
                        Err(error) => tracing::error!(
                            %error, path = %path.display(),
                            "invalid admin token file; keeping the tokens in force"
                        ),
                    }
                }
                last_text = text;
            }
        });
    }
}

/// What a request needs: nothing for the liveness probe, read for GET/HEAD, write for the rest.
fn needed(method: &Method, path: &str) -> Option<Permission> {
    if path == "/healthz" || path == "/readyz" {
        None
    } else if method == Method::GET || method == Method::HEAD {
        Some(Permission::Read)
    } else {
        Some(Permission::Write)
    }
}

/// The credentials of an `Authorization: Bearer <token>` value (the scheme is case-insensitive).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = ErrorBody::new(code, message);
    let mut resp = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"concord\""),
        );
    }
    resp
}

/// The cookie the status page's token is kept in (`Path=/ui`): a browser's `EventSource` cannot
/// send an `Authorization` header.
const UI_COOKIE: &str = "concord_token";

/// Whether `path` is the status page's.
fn is_ui(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// The value of cookie `name` in a `Cookie` header.
fn cookie<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    value.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let rest = pair.strip_prefix(name.as_bytes())?;
        rest.strip_prefix(b"=")
    })
}

/// The `token` parameter of a URI's query (percent-decoded; `+` is a space, as in forms).
fn query_token(uri: &axum::http::Uri) -> Option<String> {
    let axum::extract::Query(mut params) =
        axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(uri)
            .ok()?;
    params.remove("token")
}

/// Middleware: lets a request through if its bearer token allows it. The status page (`/ui…`)
/// also takes the token from its cookie, and `GET /ui?token=…` (the URL `concord ui` prints)
/// sets that cookie and redirects to `/ui`, so the token leaves the address bar.
pub async fn require_token(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let Some(tokens) = auth.current() else {
        return next.run(req).await;
    };
    let Some(need) = needed(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let ui = is_ui(req.uri().path());
    let (presented, via_query) = presented_token(&req, ui);
    let Some(presented) = presented else {
        let message = if ui {
            "the status page needs a read token: open the URL `concord ui` prints (it carries \
             one), or send `Authorization: Bearer <token>`"
        } else {
            "this admin API needs `Authorization: Bearer <token>`"
        };
        return refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message);
    };
    match tokens.check(&presented) {
        None => {
            tracing::warn!(method = %req.method(), path = req.uri().path(), "admin request with an unknown token");
            refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                "unknown token",
            )
        }
        Some(have) if have < need => refuse(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this token may only read; this request needs a write token",
        ),
        Some(_) if via_query => remember_ui_token(&presented),
        Some(_) => next.run(req).await,
    }
}

/// The token a request presents, and whether it came in the query (`/ui?token=…`): the query's
/// on the status page, else the `Authorization` header's, else (status page only) the cookie's.
fn presented_token(req: &Request, ui: bool) -> (Option<Vec<u8>>, bool) {
    let from_query = ui
        .then(|| query_token(req.uri()))
        .flatten()
        .map(String::into_bytes);
    if from_query.is_some() {
        return (from_query, true);
    }
    let from_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    let from_cookie = || {
        req.headers()
            .get_all(header::COOKIE)
            .iter()
            .find_map(|v| cookie(v.as_bytes(), UI_COOKIE))
    };
    let token = from_header.or_else(|| if ui { from_cookie() } else { None });
    (token.map(<[u8]>::to_vec), false)
}

/// `303 See Other` to `/ui`, setting the cookie that carries `token` on the page's requests.
fn remember_ui_token(token: &[u8]) -> Response {
    // Tokens hold only cookie-safe characters (A-Z a-z 0-9 - . _ ~ + / =): checked when parsed.
    let value = format!(
        "{UI_COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict",
        String::from_utf8_lossy(token)
    );
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let headers = resp.headers_mut();
    headers.insert(header::LOCATION, header::HeaderValue::from_static("/ui"));
    if let Ok(v) = header::HeaderValue::from_str(&value) {
        headers.insert(header::SET_COOKIE, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: &str = "wwwwwwwwwwwwwwwwwwww";
    const R: &str = "rrrrrrrrrrrrrrrrrrrr";

    #[test]
    fn parses_and_checks() {
        let t = Tokens::parse(&format!("# ops\n\nwrite {W}\n  read\t{R}  \n")).unwrap();
        assert_eq!(t.check(W.as_bytes()), Some(Permission::Write));
        assert_eq!(t.check(R.as_bytes()), Some(Permission::Read));
        assert_eq!(t.check(b"rrrrrrrrrrrrrrrrrrrx"), None);
        assert_eq!(t.check(b""), None);
        assert_eq!(t.check(&R.as_bytes()[..19]), None);
        assert!(!format!("{t:?}").contains(W), "Debug must not print tokens");
    }

    #[test]
    fn malformed_files_name_the_line() {
        let cases = [
            (
                format!("write {W}\nadmin {R}\n"),
                "line 2: unknown permission",
            ),
            ("#\nwrite\n".to_string(), "line 2: expected"),
            (format!("write {W} extra\n"), "line 1: expected"),
            ("read short\n".to_string(), "line 1: a token must be 16"),
            (
                format!("read {W}\nwrite {W}\n"),
                "line 2: this token is listed twice",
            ),
            (
                "read ääääääääääääääääää\n".to_string(),
                "line 1: a token may only",
            ),
            ("# nothing\n".to_string(), "no tokens"),
        ];
        for (text, want) in cases {
            let err = Tokens::parse(&text).unwrap_err();
            assert!(
                err.contains(want),
                "{text:?}: {err:?} should contain {want:?}"
            );
        }
    }

    #[test]
    fn permission_per_request() {
        assert_eq!(needed(&Method::GET, "/healthz"), None);
        assert_eq!(needed(&Method::GET, "/readyz"), None);
        assert_eq!(needed(&Method::GET, "/metrics"), Some(Permission::Read));
        assert_eq!(needed(&Method::GET, "/v1/builders"), Some(Permission::Read));
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            assert_eq!(needed(&m, "/v1/builders/x"), Some(Permission::Write));
        }
        assert!(Permission::Write > Permission::Read);
    }

    #[test]
    fn ui_token_sources() {
        assert!(is_ui("/ui") && is_ui("/ui/events") && !is_ui("/uix") && !is_ui("/v1/ui"));
        assert_eq!(
            cookie(b"a=b; concord_token=tok123; c=d", UI_COOKIE),
            Some(&b"tok123"[..])
        );
        assert_eq!(cookie(b"concord_tokenx=1", UI_COOKIE), None);
        assert_eq!(cookie(b"", UI_COOKIE), None);
        let token = |uri: &str| query_token(&uri.parse().expect("a URI"));
        assert_eq!(token("/ui?token=a%2Bb%2F%3D&x=1").as_deref(), Some("a+b/="));
        assert_eq!(token("/ui?x=1"), None);
        assert_eq!(token("/ui?%zz"), None);
    }

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }
}
