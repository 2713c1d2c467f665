//! The stats stream over a real socket: a replica's xDS server on a loopback port, a tonic
//! client streaming as Envoy's sink does, and what the replica then reports; and the stream's
//! ends (shutdown, lost quorum, too many streams).

use super::totals::Totals;
use super::totals::tests::{counter, histogram};
use super::*;
use crate::server::{XdsConfig, XdsServer};
use concord_registry::Registry;
use concord_telemetry::tasks::Tasks;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_client::MetricsServiceClient;
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, stream_metrics_message};
use envoy_types::pb::io::prometheus::client::MetricFamily;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const DEADLINE: Duration = Duration::from_secs(5);

fn message(node: Option<&str>, families: Vec<MetricFamily>) -> StreamMetricsMessage {
    StreamMetricsMessage {
        identifier: node.map(|id| stream_metrics_message::Identifier {
            node: Some(Node {
                id: id.into(),
                ..Default::default()
            }),
        }),
        envoy_metrics: families,
    }
}

/// Waits until `cond` holds, or fails with `what`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A replica's xDS server serving on a loopback port.
struct Served {
    xds: XdsServer,
    tasks: Tasks,
    serving: watch::Sender<bool>,
    url: String,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn serve() -> Served {
    let (_registry_tx, registry) = watch::channel(Arc::new(Registry::new()));
    let (serving, up) = watch::channel(true);
    let tasks = Tasks::new();
    let config = XdsConfig {
        identifier: "replica-1".into(),
        catch_up_timeout: Duration::from_millis(300),
        max_stream_age: None,
        resources: Default::default(),
        served_envoys: Default::default(),
    };
    let xds = XdsServer::new(
        config,
        registry,
        up,
        Arc::new(|_, _| Vec::new()),
        tasks.clone(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(xds.clone().serve(listener, None));
    Served {
        xds,
        tasks,
        serving,
        url,
        server,
    }
}

/// Opens a stats stream: the sender of its messages, and the call's result when it ends.
async fn stream(
    url: &str,
) -> (
    mpsc::Sender<StreamMetricsMessage>,
    tokio::task::JoinHandle<Result<(), tonic::Status>>,
) {
    let mut client = MetricsServiceClient::connect(url.to_string())
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let call = tokio::spawn(async move {
        client
            .stream_metrics(ReceiverStream::new(rx))
            .await
            .map(|_| ())
    });
    (tx, call)
}

#[tokio::test]
async fn streamed_stats_are_reported() {
    let s = serve().await;
    let empty = s.xds.stats_report(&[]);
    assert_eq!((empty.streams, empty.messages), (0, 0));
    assert!(empty.clusters.is_empty());

    let (tx, call) = stream(&s.url).await;
    let first = vec![
        counter("cluster.service_echo.upstream_rq_2xx", 8.0),
        counter("cluster.service_echo.upstream_rq_5xx", 2.0),
        counter("cluster.builder_1.upstream_rq_2xx", 100.0),
        counter("cluster.service_echo~v2.grpc.total", 5.0),
    ];
    tx.send(message(Some("envoy-1"), first)).await.unwrap();
    let second = vec![
        counter("cluster.service_echo~v2.grpc.failure", 1.0),
        counter("cluster.service_echo.upstream_rq_5xx", f64::NAN),
        histogram("cluster.service_echo~v2.upstream_rq_time", &[12.0, 30.0]),
    ];
    tx.send(message(None, second)).await.unwrap();
    eventually("two messages", || s.xds.stats_report(&[]).messages == 2).await;

    let r = s.xds.stats_report(&[]);
    assert_eq!(r.streams, 1);
    assert_ne!(r.incarnation, 0);
    assert_eq!(
        r.clusters,
        vec![
            concord_api::ClusterTotals {
                cluster: "service_echo".into(),
                rq_total: 10,
                rq_5xx: 2,
                grpc_total: 0,
                grpc_failure: 0,
                rq_time: Default::default(),
            },
            concord_api::ClusterTotals {
                cluster: "service_echo~v2".into(),
                rq_total: 0,
                rq_5xx: 0,
                grpc_total: 5,
                grpc_failure: 1,
                rq_time: concord_api::Latency {
                    samples: 2,
                    sum_us: 42_000,
                    buckets: [0, 0, 0, 0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2].into(),
                },
            },
        ]
    );
    let one = s.xds.stats_report(&["service_echo~v2".into()]);
    assert_eq!(one.clusters.len(), 1);
    assert_eq!(one.clusters[0].requests_and_errors(), (5, 1));
    let mut page = String::new();
    s.xds.render_stats_metrics(&mut page);
    assert!(
        page.contains("concord_envoy_stats_messages_total 2\n"),
        "{page}"
    );
    assert!(
        page.contains("concord_envoy_stats_skipped_total 1\n"),
        "{page}"
    );
    assert!(page.contains("concord_envoy_stats_streams 1\n"), "{page}");
    for series in [
        "concord_envoy_upstream_requests_total{cluster=\"service_echo~v2\"} 5\n",
        "concord_envoy_upstream_errors_total{cluster=\"service_echo\"} 2\n",
        "concord_envoy_upstream_rq_time_ms_bucket{cluster=\"service_echo~v2\",le=\"25\"} 1\n",
        "concord_envoy_upstream_rq_time_ms_bucket{cluster=\"service_echo~v2\",le=\"+Inf\"} 2\n",
        "concord_envoy_upstream_rq_time_ms_sum{cluster=\"service_echo~v2\"} 42\n",
    ] {
        assert!(page.contains(series), "{series} in {page}");
    }
    assert!(
        !page.contains("rq_time_ms_count{cluster=\"service_echo\"}"),
        "no times, no histogram: {page}"
    );

    // The Envoy closes its side: the call is answered, the stream is gone, the sums stay.
    drop(tx);
    tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    eventually("the stream to close", || {
        s.xds.stats_report(&[]).streams == 0
    })
    .await;
    assert_eq!(s.xds.stats_report(&[]).clusters, r.clusters);
    // A restart would start again from zero under another incarnation.
    assert_ne!(EnvoyStats::default().report(&[]).incarnation, r.incarnation);
    s.tasks.cancel();
}

#[tokio::test]
async fn an_open_stream_does_not_hold_up_shutdown() {
    let s = serve().await;
    let (tx, call) = stream(&s.url).await;
    tx.send(message(Some("envoy-1"), vec![])).await.unwrap();
    eventually("the message", || s.xds.stats_report(&[]).messages == 1).await;
    s.tasks.cancel();
    tokio::time::timeout(DEADLINE, s.server)
        .await
        .expect("the server drains with a stats stream open")
        .unwrap()
        .unwrap();
    let _ = tokio::time::timeout(DEADLINE, call).await.unwrap();
    drop(tx);
}

#[tokio::test]
async fn streams_end_when_the_replica_stops_serving() {
    let s = serve().await;
    let (tx, call) = stream(&s.url).await;
    tx.send(message(Some("envoy-1"), vec![])).await.unwrap();
    eventually("the message", || s.xds.stats_report(&[]).messages == 1).await;
    s.serving.send_replace(false);
    // Answered, so the Envoy's next flush opens a stream to a replica that serves.
    tokio::time::timeout(DEADLINE, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (_tx2, refused) = stream(&s.url).await;
    let status = tokio::time::timeout(DEADLINE, refused)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    drop(tx);
    s.tasks.cancel();
}

#[tokio::test]
async fn streams_past_the_limit_are_refused() {
    let stats = Arc::new(EnvoyStats::new(Totals::default(), 1));
    let (_up_tx, up) = watch::channel(true);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let service = service::StatsService {
        stats: stats.clone(),
        serving: up,
        shutdown: shutdown.clone(),
        tls: None,
        snapshots: watch::channel(Arc::new(crate::snapshot::Snapshot::build(
            Default::default(),
            Default::default(),
        )))
        .1,
    }
    .into_server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    let (tx, _call) = stream(&url).await;
    tx.send(message(Some("envoy-1"), vec![])).await.unwrap();
    eventually("the first stream", || stats.report(&[]).messages == 1).await;
    let (_tx2, second) = stream(&url).await;
    let status = tokio::time::timeout(DEADLINE, second)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(stats.streams(), 1);
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn open_gives_its_slot_back() {
    let stats = Arc::new(EnvoyStats::new(Totals::default(), 2));
    let a = stats.open().unwrap();
    let b = stats.open().unwrap();
    assert!(stats.open().is_none());
    assert_eq!(stats.streams(), 2);
    drop(a);
    let c = stats.open();
    assert!(c.is_some());
    drop((b, c));
    assert_eq!(stats.streams(), 0);
}
