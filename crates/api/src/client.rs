//! The typed admin API client (feature `client`): one method per endpoint, the request and
//! response types of this crate, the bearer token, a timeout, and error answers mapped to
//! [`Error`] with the HTTP status and the server's message. The CLI (`crates/concord`,
//! `cli/`), the end-to-end tests and the benchmarks (`tests/`) and the chaos runner (`chaos/`)
//! all talk to replicas through it.
//!
//! The admin API is plain HTTP (it binds loopback unless tokens guard it), so this client
//! speaks plain HTTP; an `https://` address fails when the request is sent.

use crate::{
    AddLearner, BatchBody, BuilderList, ClusterEnvoys, DiscoveryStatus, ErrorBody, ErrorCode,
    Isolate, Isolated, LocalEnvoys, MembershipChanged, OneBuilder, Promote, PutBuilder, Status,
    Written, XdsResources,
};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long a request may take by default: a write waits for a commit, which takes up to the
/// replica's request timeout (10 s by default) through an election.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin address is not a URL (or `host:port`).
    #[error("invalid admin address {addr:?}: {reason}")]
    InvalidAddress {
        /// What was given.
        addr: String,
        /// Why it is not an address.
        reason: String,
    },
    /// The HTTP client could not be set up (a token with characters a header cannot carry).
    #[error("cannot set up the admin client: {0}")]
    Setup(String),
    /// No answer: the replica is down, unreachable, or did not answer within the timeout.
    #[error("cannot reach {url}: {message}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// The innermost cause.
        message: String,
        /// True when the timeout ran out.
        timeout: bool,
    },
    /// The replica answered with an error status.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The error body's code ([`ErrorCode::Unknown`] without one).
        code: ErrorCode,
        /// The server's message, or `HTTP <status>` without one.
        message: String,
    },
    /// A success answer whose body is not of the endpoint's shape (another version?).
    #[error("unexpected answer from {url} (HTTP {status}): {message}")]
    Decode {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What did not fit.
        message: String,
    },
}

impl Error {
    /// The HTTP status of an answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of an error answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True for a 404 answer.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// The innermost cause of an error, which for a transport error names what happened
/// (connection refused, …) rather than "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The base URL of `admin`: `http://host:port`, `https://…`, or a bare `host:port`.
fn base_url(admin: &str) -> Result<Url, Error> {
    let trimmed = admin.trim_end_matches('/');
    let text = if trimmed.starts_with("http://") || trimmed.starts_with("https://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let url = Url::parse(&text).map_err(|e| Error::InvalidAddress {
        addr: admin.to_string(),
        reason: e.to_string(),
    })?;
    if url.cannot_be_a_base() {
        return Err(Error::InvalidAddress {
            addr: admin.to_string(),
            reason: "not a base URL".into(),
        });
    }
    Ok(url)
}

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    admin: String,
    token: Option<String>,
    timeout: Duration,
    http: Option<reqwest::Client>,
}

impl ClientBuilder {
    /// Sends `token` as `Authorization: Bearer <token>` (none: no header).
    pub fn token(mut self, token: Option<impl Into<String>>) -> Self {
        self.token = token.map(Into::into);
        self
    }

    /// How long one request may take, answer included (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Uses this HTTP client (its connection pool) instead of a new one, e.g. one
    /// shared by clients of several replicas.
    pub fn http(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        let base = base_url(&self.admin)?;
        let auth = match &self.token {
            Some(t) => Some(
                reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    Error::Setup("the token has characters a header cannot carry".into())
                })?,
            ),
            None => None,
        };
        let http = match self.http {
            Some(h) => h,
            None => reqwest::Client::builder()
                .build()
                .map_err(|e| Error::Setup(root_cause(&e)))?,
        };
        Ok(Client {
            http,
            base,
            auth,
            timeout: self.timeout,
        })
    }
}

/// A typed client of one replica's admin API. Cheap to clone (the connection pool is shared).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: Option<reqwest::header::HeaderValue>,
    timeout: Duration,
}

impl Client {
    /// A client of the replica at `admin` (`host:port` or `http://host:port`), without a token.
    pub fn new(admin: &str) -> Result<Client, Error> {
        Client::builder(admin).build()
    }

    /// A builder for a client of the replica at `admin`.
    pub fn builder(admin: &str) -> ClientBuilder {
        ClientBuilder {
            admin: admin.to_string(),
            token: None,
            timeout: DEFAULT_TIMEOUT,
            http: None,
        }
    }

    /// The replica's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` (each percent-encoded as one path segment) under the base.
    fn url(&self, segments: &[&str], consistent: Option<bool>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if let Some(c) = consistent {
            url.set_query(Some(&format!("consistent={c}")));
        }
        url
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<reqwest::Response, Error> {
        let mut req = self.http.request(method, url.clone()).timeout(self.timeout);
        if let Some(auth) = &self.auth {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            url: url.to_string(),
            message: root_cause(&e),
            timeout: e.is_timeout(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (ErrorCode::from(status), format!("HTTP {status}")),
        };
        Err(Error::Api {
            status: status.as_u16(),
            code,
            message,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> Result<T, Error> {
        let resp = self.send(method, url.clone(), body).await?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Unreachable {
            url: url.to_string(),
            message: root_cause(&e),
            timeout: e.is_timeout(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode {
            url: url.to_string(),
            status: status.as_u16(),
            message: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, url: Url) -> Result<T, Error> {
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET /healthz`: the replica's HTTP server is up.
    pub async fn healthz(&self) -> Result<(), Error> {
        let url = self.url(&["healthz"], None);
        self.send(Method::GET, url, None::<&()>).await.map(|_| ())
    }

    /// `GET /v1/envoys/stats`: what this replica's Envoys streamed of their stats.
    pub async fn envoy_stats(&self) -> Result<crate::StatsReport, Error> {
        self.get(self.url(&["v1", "envoys", "stats"], None)).await
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, Error> {
        self.get(self.url(&["v1", "status"], None)).await
    }

    /// `GET /v1/builders[?consistent=true]`: the registry; `consistent` confirms with the leader
    /// first, so the list includes every committed write.
    pub async fn builders(&self, consistent: bool) -> Result<BuilderList, Error> {
        self.get(self.url(&["v1", "builders"], Some(consistent)))
            .await
    }

    /// `GET /v1/builders/{id}[?consistent=true]`.
    pub async fn get_builder(&self, id: &str, consistent: bool) -> Result<OneBuilder, Error> {
        self.get(self.url(&["v1", "builders", id], Some(consistent)))
            .await
    }

    /// `PUT /v1/builders/{id}`: answered once the cluster has committed it.
    pub async fn put_builder(&self, id: &str, body: &PutBuilder) -> Result<Written, Error> {
        let url = self.url(&["v1", "builders", id], None);
        self.call(Method::PUT, url, Some(body)).await
    }

    /// `DELETE /v1/builders/{id}`: answered once the cluster has committed it.
    pub async fn remove_builder(&self, id: &str) -> Result<Written, Error> {
        let url = self.url(&["v1", "builders", id], None);
        self.call(Method::DELETE, url, None::<&()>).await
    }

    /// `GET /v1/config`: the services half's desired state as the replica has applied it.
    pub async fn config(&self) -> Result<crate::Config, Error> {
        let url = self.url(&["v1", "config"], None);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `PUT /v1/config`: sets the whole desired state in one log entry, answered once the
    /// cluster has committed it (refused as a whole, with every problem, if invalid).
    pub async fn apply_config(
        &self,
        desired: &concord_registry::services::Desired,
    ) -> Result<Written, Error> {
        let url = self.url(&["v1", "config"], None);
        self.call(Method::PUT, url, Some(desired)).await
    }

    /// `PUT /v1/services/{service}/endpoints/{id}`: registers an endpoint (granting its lease),
    /// answered once committed.
    pub async fn register_endpoint(
        &self,
        service: &str,
        id: &str,
        body: &crate::RegisterEndpoint,
    ) -> Result<Written, Error> {
        let url = self.url(&["v1", "services", service, "endpoints", id], None);
        self.call(Method::PUT, url, Some(body)).await
    }

    /// `POST /v1/services/{service}/endpoints/{id}/renew`: renews its lease (on the leader;
    /// not a log entry). 404 when it is not registered (its lease lapsed): register it again.
    pub async fn renew_endpoint(&self, service: &str, id: &str) -> Result<crate::Renewed, Error> {
        let url = self.url(&["v1", "services", service, "endpoints", id, "renew"], None);
        self.call(Method::POST, url, None::<&()>).await
    }

    /// `POST /v1/services/{service}/endpoints/{id}/drain`: no new requests; removed after the
    /// service's drain timeout.
    pub async fn drain_endpoint(&self, service: &str, id: &str) -> Result<Written, Error> {
        let url = self.url(&["v1", "services", service, "endpoints", id, "drain"], None);
        self.call(Method::POST, url, None::<&()>).await
    }

    /// `DELETE /v1/services/{service}/endpoints/{id}`: removes it at once.
    pub async fn deregister_endpoint(&self, service: &str, id: &str) -> Result<Written, Error> {
        let url = self.url(&["v1", "services", service, "endpoints", id], None);
        self.call(Method::DELETE, url, None::<&()>).await
    }

    /// `GET /v1/services/{service}/endpoints`: its registered endpoints.
    pub async fn endpoints(&self, service: &str) -> Result<crate::EndpointList, Error> {
        let url = self.url(&["v1", "services", service, "endpoints"], None);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `PUT /v1/config/stage`: stages a desired state to a group of Envoys first.
    pub async fn stage_config(&self, body: &crate::StageBody) -> Result<Written, Error> {
        let url = self.url(&["v1", "config", "stage"], None);
        self.call(Method::PUT, url, Some(body)).await
    }

    /// `GET /v1/config/stage`: what is staged, and how the last stage ended.
    pub async fn stage(&self) -> Result<crate::StageStatus, Error> {
        let url = self.url(&["v1", "config", "stage"], None);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `POST /v1/config/stage/{action}`: `promote` or `abort` what is staged.
    pub async fn stage_action(&self, action: &str) -> Result<Written, Error> {
        let url = self.url(&["v1", "config", "stage", action], None);
        self.call(Method::POST, url, None::<&()>).await
    }

    /// `POST /v1/rollouts`: starts a rollout, answered once committed.
    pub async fn start_rollout(
        &self,
        spec: &concord_registry::services::RolloutSpec,
    ) -> Result<Written, Error> {
        let url = self.url(&["v1", "rollouts"], None);
        self.call(Method::POST, url, Some(spec)).await
    }

    /// `GET /v1/rollouts`: every rollout, with the leader's judgement of running steps.
    pub async fn rollouts(&self) -> Result<crate::RolloutList, Error> {
        let url = self.url(&["v1", "rollouts"], None);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET /v1/rollouts/{service}`.
    pub async fn rollout(&self, service: &str) -> Result<crate::RolloutStatus, Error> {
        let url = self.url(&["v1", "rollouts", service], None);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `POST /v1/rollouts/{service}/{action}`: `pause`, `resume` or `abort`.
    pub async fn rollout_action(&self, service: &str, action: &str) -> Result<Written, Error> {
        let url = self.url(&["v1", "rollouts", service, action], None);
        self.call(Method::POST, url, None::<&()>).await
    }

    /// `PUT /v1/certificates/{name}`: adds or rotates a certificate (checked: the key must be
    /// the certificate's), answered once committed.
    pub async fn put_certificate(
        &self,
        name: &str,
        body: &crate::PutCertificate,
    ) -> Result<Written, Error> {
        let url = self.url(&["v1", "certificates", name], None);
        self.call(Method::PUT, url, Some(body)).await
    }

    /// `GET /v1/certificates`: names, DNS names and expiry; never a key.
    pub async fn certificates(&self) -> Result<crate::CertificateList, Error> {
        let url = self.url(&["v1", "certificates"], None);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `DELETE /v1/certificates/{name}` (refused while a listener uses it).
    pub async fn remove_certificate(&self, name: &str) -> Result<Written, Error> {
        let url = self.url(&["v1", "certificates", name], None);
        self.call(Method::DELETE, url, None::<&()>).await
    }

    /// `POST /v1/builders`: puts and removes in one log entry, all or nothing.
    pub async fn batch(&self, body: &BatchBody) -> Result<Written, Error> {
        let url = self.url(&["v1", "builders"], None);
        self.call(Method::POST, url, Some(body)).await
    }

    /// `POST /v1/cluster/learners`.
    pub async fn add_learner(&self, node_id: u64, addr: &str) -> Result<MembershipChanged, Error> {
        let body = AddLearner {
            node_id,
            addr: addr.to_string(),
        };
        let url = self.url(&["v1", "cluster", "learners"], None);
        self.call(Method::POST, url, Some(&body)).await
    }

    /// `POST /v1/cluster/voters`: promote a learner.
    pub async fn promote(&self, node_id: u64) -> Result<MembershipChanged, Error> {
        let url = self.url(&["v1", "cluster", "voters"], None);
        self.call(Method::POST, url, Some(&Promote { node_id }))
            .await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub async fn remove_member(&self, node_id: u64) -> Result<MembershipChanged, Error> {
        let id = node_id.to_string();
        let url = self.url(&["v1", "cluster", "members", &id], None);
        self.call(Method::DELETE, url, None::<&()>).await
    }

    /// `GET /v1/envoys`: the Envoys streaming from this replica.
    pub async fn envoys(&self) -> Result<LocalEnvoys, Error> {
        self.get(self.url(&["v1", "envoys"], None)).await
    }

    /// `GET /v1/cluster/envoys`: every Envoy on every member.
    pub async fn cluster_envoys(&self) -> Result<ClusterEnvoys, Error> {
        self.get(self.url(&["v1", "cluster", "envoys"], None)).await
    }

    /// `GET /v1/discovery`.
    pub async fn discovery(&self) -> Result<DiscoveryStatus, Error> {
        self.get(self.url(&["v1", "discovery"], None)).await
    }

    /// `GET /v1/xds/resources`.
    pub async fn xds_resources(&self) -> Result<XdsResources, Error> {
        self.get(self.url(&["v1", "xds", "resources"], None)).await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let url = self.url(&["metrics"], None);
        let resp = self.send(Method::GET, url.clone(), None::<&()>).await?;
        resp.text().await.map_err(|e| Error::Unreachable {
            url: url.to_string(),
            message: root_cause(&e),
            timeout: e.is_timeout(),
        })
    }

    /// `POST /v1/debug/isolate` (replicas run with `--enable-fault-injection` only).
    pub async fn isolate(&self, isolated: bool) -> Result<Isolated, Error> {
        let url = self.url(&["v1", "debug", "isolate"], None);
        let body = Isolate {
            isolated,
            from: Vec::new(),
        };
        self.call(Method::POST, url, Some(&body)).await
    }

    /// `POST /v1/debug/hold-forward-replies`: the next `count` writes forwarded to this replica
    /// are answered `hold_ms` late (replicas run with `--enable-fault-injection` only).
    pub async fn hold_forward_replies(
        &self,
        count: u32,
        hold_ms: u64,
    ) -> Result<crate::request::HoldForwardReplies, Error> {
        let url = self.url(&["v1", "debug", "hold-forward-replies"], None);
        let body = crate::request::HoldForwardReplies { count, hold_ms };
        self.call(Method::POST, url, Some(&body)).await
    }

    /// `POST /v1/debug/isolate` with `from`: cuts the replica off from `peers` only, both ways
    /// (one side of a partition); no peers heals it.
    pub async fn cut_off(&self, peers: &[u64]) -> Result<Isolated, Error> {
        let url = self.url(&["v1", "debug", "isolate"], None);
        let body = Isolate {
            isolated: !peers.is_empty(),
            from: peers.to_vec(),
        };
        self.call(Method::POST, url, Some(&body)).await
    }
}

impl From<StatusCode> for ErrorCode {
    /// The code an answer of `status` carries when its body has none.
    fn from(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            _ => ErrorCode::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_paths() {
        let c = Client::new("127.0.0.1:8101").unwrap();
        assert_eq!(c.base_url().as_str(), "http://127.0.0.1:8101/");
        let c = Client::new("http://[::1]:8101/").unwrap();
        assert_eq!(
            c.url(&["v1", "builders", "b1"], Some(true)).as_str(),
            "http://[::1]:8101/v1/builders/b1?consistent=true"
        );
        // An id is one path segment, whatever it holds: the server refuses it, not the router.
        assert_eq!(
            c.url(&["v1", "builders", "a/b c?"], None).as_str(),
            "http://[::1]:8101/v1/builders/a%2Fb%20c%3F"
        );
        assert!(matches!(
            Client::new("not an address"),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(
            Client::builder("127.0.0.1:1")
                .token(Some("bad\ntoken"))
                .build(),
            Err(Error::Setup(_))
        ));
    }

    #[test]
    fn statuses_without_a_body_get_a_code() {
        assert_eq!(ErrorCode::from(StatusCode::NOT_FOUND), ErrorCode::NotFound);
        assert_eq!(
            ErrorCode::from(StatusCode::UNAUTHORIZED),
            ErrorCode::Unauthorized
        );
        assert_eq!(ErrorCode::from(StatusCode::BAD_GATEWAY), ErrorCode::Unknown);
    }
}
