//! The status page on every replica's admin port, behind a read token:
//!
//! | path | what |
//! | --- | --- |
//! | `/ui` | the page, rendered here ([`render`]); `?token=…` once sets a cookie for the rest |
//! | `/ui/events` | server-sent events: every second, each section's HTML, swapped in by the script |
//! | `/ui/state` | the same view as JSON ([`ClusterView`]) |
//! | `/ui/app.js`, `/ui/style.css` | the page's plain script and style, built into the binary |
//!
//! The view is assembled by asking every member over the peer channel ([`Node::local_status_of`])
//! with a short timeout, so a member that does not answer is shown as such and the page keeps
//! updating. Views are shared: however many pages are open, a replica assembles and renders at
//! most about one a second. Event streams end when the replica shuts down, so they never hold its shutdown up.

pub mod render;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use concord_api::ClusterView;
use concord_raft::Node;
use futures::Stream;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often an open page is updated.
const EVERY: Duration = Duration::from_secs(1);
/// How long a member has to answer before the page shows it as not answering.
const ASK_TIMEOUT: Duration = Duration::from_millis(800);
/// A view younger than this is served again instead of asking the members anew.
const FRESH: Duration = Duration::from_millis(900);

/// The page's script: opens the event stream and swaps each section in.
const APP_JS: &str = include_str!("app.js");
/// The page's style.
const STYLE_CSS: &str = include_str!("style.css");

/// The status page's routes, for the admin router (which puts the token check in front).
pub fn router(node: Arc<Node>, shutdown: CancellationToken) -> Router {
    let views = Arc::new(Views {
        node,
        latest: Mutex::new(None),
        assembling: tokio::sync::Mutex::new(()),
        shutdown,
    });
    Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/state", get(state))
        .route("/ui/events", get(events))
        .route(
            "/ui/app.js",
            get(|| asset("text/javascript; charset=utf-8", APP_JS)),
        )
        .route(
            "/ui/style.css",
            get(|| asset("text/css; charset=utf-8", STYLE_CSS)),
        )
        .route("/ui/{*rest}", get(unknown))
        .with_state(views)
}

/// The views of one replica, shared by every open page.
struct Views {
    node: Arc<Node>,
    latest: Mutex<Option<(Instant, Arc<Rendered>)>>,
    /// Held while a view is assembled, so pages opened together wait for one round of asks.
    assembling: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
}

/// One view, and its HTML rendered once for every page that shows it.
struct Rendered {
    view: ClusterView,
    /// The whole page (`GET /ui`).
    page: String,
    /// The sections as one live update's data (`/ui/events`).
    event: String,
}

impl Views {
    fn fresh(&self) -> Option<Arc<Rendered>> {
        let latest = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        latest
            .as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH)
            .map(|(_, v)| v.clone())
    }

    /// The cluster now: a view assembled (and rendered) less than [`FRESH`] ago, or a new one.
    async fn current(&self) -> Arc<Rendered> {
        if let Some(v) = self.fresh() {
            return v;
        }
        let _one = self.assembling.lock().await;
        if let Some(v) = self.fresh() {
            return v;
        }
        let node = &self.node;
        let status = crate::admin::status_body(node.status());
        let asks = status
            .members
            .iter()
            .map(|m| async move { (m.id, node.local_status_of(m.id, ASK_TIMEOUT).await) });
        let answers = futures::future::join_all(asks).await;
        let at_ms = concord_telemetry::unix_micros() / 1000;
        let view = ClusterView::assemble(&status, at_ms, answers);
        let sections = render::sections(&view);
        let rendered = Arc::new(Rendered {
            page: render::page(&view.cluster, &sections),
            event: render::sections_json(&sections),
            view,
        });
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), rendered.clone()));
        rendered
    }
}

async fn page(State(views): State<Arc<Views>>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(views.current().await.page.clone()),
    )
        .into_response()
}

async fn state(State(views): State<Arc<Views>>) -> Json<ClusterView> {
    Json(views.current().await.view.clone())
}

/// Every [`EVERY`], the sections' HTML as one JSON object (`{"replicas": "<h2>…", …}`) in a
/// `sections` event; until the page goes or the replica shuts down.
async fn events(
    State(views): State<Arc<Views>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let shutdown = views.shutdown.clone();
    let stream = futures::stream::unfold((views, true), |(views, first)| async move {
        if !first {
            tokio::time::sleep(EVERY).await;
        }
        let data = views.current().await.event.clone();
        let event = Event::default().event("sections").data(data);
        Some((Ok(event), (views, false)))
    });
    let stream = futures::StreamExt::take_until(stream, shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn unknown(uri: Uri) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(format!(
            "<!doctype html><title>not found</title><p>No page {} here: the status page is at \
             <a href=\"/ui\">/ui</a>.</p>",
            render::esc(uri.path())
        )),
    )
        .into_response()
}
