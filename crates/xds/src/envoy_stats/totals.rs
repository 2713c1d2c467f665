//! The pure core of the stats stream: which of an Envoy's stats rollouts are judged on, parsed
//! strictly from their full names (`cluster.service_echo~v2.upstream_rq_5xx`), and the
//! per-cluster sums of their deltas since start (and of the request-time histograms, which
//! Envoy's sink sends per flush interval), bounded in size; while a configuration is
//! staged, also the sums of the stage's group and of the other Envoys apart (config canaries
//! are judged on them). No I/O, no clock: the service above ([`super::service`]) feeds it
//! decoded messages, each saying whether its Envoy is of the staged group, and logs what it
//! refused.

use concord_api::{ClusterTotals, LATENCY_BOUNDS_MS, Latency, StageCounts, VersionCounts};
use envoy_types::pb::io::prometheus::client::{MetricFamily, MetricType};
use std::collections::{BTreeSet, HashMap};

/// The most clusters tracked: a hostile or broken client naming ever new clusters cannot grow a
/// replica's memory past this. Far above the services a registry holds (a rollout adds one
/// cluster per version).
pub const MAX_CLUSTERS: usize = 4096;

/// The longest cluster name taken: a service name and a version are short.
const MAX_CLUSTER_NAME: usize = 256;

/// The largest delta taken from one flush: a counter's rise over a few seconds, so anything
/// near this is a broken or hostile client, and summing it would swamp every real count.
const MAX_DELTA: f64 = 1e12;

/// Which counter of a cluster a stat adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A response of class 1xx to 4xx: counts towards `rq_total`.
    Rq,
    /// A 5xx response: counts towards `rq_total` and `rq_5xx`.
    Rq5xx,
    /// `grpc.total`.
    GrpcTotal,
    /// `grpc.failure`.
    GrpcFailure,
    /// The request-time histogram (`upstream_rq_time`, milliseconds).
    RqTime,
}

/// The stat suffixes (after `cluster.<name>.`) that are summed, and into what.
const SUFFIXES: [(&str, Field); 8] = [
    ("upstream_rq_1xx", Field::Rq),
    ("upstream_rq_2xx", Field::Rq),
    ("upstream_rq_3xx", Field::Rq),
    ("upstream_rq_4xx", Field::Rq),
    ("upstream_rq_5xx", Field::Rq5xx),
    ("grpc.total", Field::GrpcTotal),
    ("grpc.failure", Field::GrpcFailure),
    ("upstream_rq_time", Field::RqTime),
];

/// Buckets of a request-time histogram: Envoy's default bounds.
const BUCKETS: usize = LATENCY_BOUNDS_MS.len();

/// One flush's request times of one cluster (Envoy sends each flush interval's histogram, not
/// the histogram since start), or their sum over flushes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Times {
    samples: u64,
    sum_us: u64,
    /// Per bound of [`LATENCY_BOUNDS_MS`], the samples at or under it.
    buckets: [u64; BUCKETS],
}

impl Times {
    fn add(&mut self, other: &Times) {
        self.samples = self.samples.saturating_add(other.samples);
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        for (b, o) in self.buckets.iter_mut().zip(other.buckets) {
            *b = b.saturating_add(o);
        }
    }

    fn latency(&self) -> Latency {
        if *self == Times::default() {
            return Latency::default();
        }
        Latency {
            samples: self.samples,
            sum_us: self.sum_us,
            buckets: self.buckets.to_vec(),
        }
    }

    /// A histogram as Envoy's sink sends one, if it is one of the default bounds whose counts
    /// are counts (cumulative, never above the samples).
    fn of(h: &envoy_types::pb::io::prometheus::client::Histogram) -> Option<Times> {
        let samples = h.sample_count.and_then(|n| count(n as f64))?;
        let sum = h.sample_sum.unwrap_or(0.0);
        if !(sum.is_finite() && (0.0..=MAX_DELTA).contains(&sum)) || h.bucket.len() != BUCKETS {
            return None;
        }
        let mut t = Times {
            samples,
            sum_us: (sum * 1000.0).round() as u64,
            buckets: [0; BUCKETS],
        };
        let mut below = 0;
        for ((b, slot), bound) in h.bucket.iter().zip(&mut t.buckets).zip(LATENCY_BOUNDS_MS) {
            let n = b.cumulative_count?;
            if b.upper_bound != Some(bound) || n < below || n > samples {
                return None;
            }
            *slot = n;
            below = n;
        }
        Some(t)
    }
}

/// What one stat of a message adds to its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// A counter's rise.
    Count(Field, u64),
    /// A flush's request times.
    Times(Times),
}

/// What a stat's name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name<'a> {
    /// Not one of the stats summed (another stat, or a builder's cluster): ignored, as most of
    /// what Envoy sends is.
    Ignored,
    /// One of the summed stats of a service cluster whose name is not one concord makes.
    Bad,
    /// A summed stat of service cluster `.0`.
    Stat(&'a str, Field),
}

/// Parses a full stat name: `cluster.` + cluster + `.` + one of the summed suffixes, where the
/// cluster is `service_<service>` or `service_<service>~<version>` (a service name is
/// `[a-z0-9-]+`, a version `[a-z0-9_-]+`: neither holds a `.`, so the split is unambiguous).
pub fn parse(name: &str) -> Name<'_> {
    let Some(rest) = name.strip_prefix("cluster.") else {
        return Name::Ignored;
    };
    let Some((cluster, field)) = SUFFIXES.iter().find_map(|(suffix, field)| {
        let cluster = rest.strip_suffix(suffix)?.strip_suffix('.')?;
        Some((cluster, *field))
    }) else {
        return Name::Ignored;
    };
    let Some(service) = cluster.strip_prefix("service_") else {
        // Builders' clusters (`builder_<id>`, SNI names) and concord's own: not judged.
        return Name::Ignored;
    };
    let (service, version) = match service.split_once('~') {
        Some((s, v)) => (s, Some(v)),
        None => (service, None),
    };
    let service_ok = !service.is_empty()
        && service
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_'))
    });
    if cluster.len() <= MAX_CLUSTER_NAME && service_ok && version_ok {
        Name::Stat(cluster, field)
    } else {
        Name::Bad
    }
}

/// A counter delta as a count, if it is one: finite, whole, not negative, not absurdly large.
fn count(v: f64) -> Option<u64> {
    (v.is_finite() && (0.0..=MAX_DELTA).contains(&v) && v.fract() == 0.0).then_some(v as u64)
}

/// The summed stats of one message, borrowed from it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deltas<'a> {
    /// Cluster, what it adds.
    pub items: Vec<(&'a str, Delta)>,
    /// Values of summed stats left out: a bad cluster name, not a counter, or a value that is
    /// not a count.
    pub skipped: u64,
}

/// The summed stats of `families` (one message), parsed before any lock is taken.
pub fn deltas(families: &[MetricFamily]) -> Deltas<'_> {
    let mut d = Deltas::default();
    for f in families {
        let name = f.name.as_deref().unwrap_or_default();
        let (cluster, field) = match parse(name) {
            Name::Ignored => continue,
            Name::Bad => {
                d.skipped += f.metric.len().max(1) as u64;
                continue;
            }
            Name::Stat(c, field) => (c, field),
        };
        // proto2: an unset type is a counter.
        let want = match field {
            Field::RqTime => MetricType::Histogram,
            _ => MetricType::Counter,
        };
        if f.r#type.unwrap_or(MetricType::Counter as i32) != want as i32 || f.metric.is_empty() {
            d.skipped += f.metric.len().max(1) as u64;
            continue;
        }
        // Without labels there is one metric per family; should a client send several, they
        // are parts of the same count.
        for m in &f.metric {
            let delta = match field {
                Field::RqTime => m.histogram.as_ref().and_then(Times::of).map(Delta::Times),
                _ => m
                    .counter
                    .as_ref()
                    .and_then(|c| c.value)
                    .and_then(count)
                    .map(|n| Delta::Count(field, n)),
            };
            match delta {
                Some(delta) => d.items.push((cluster, delta)),
                None => d.skipped += 1,
            }
        }
    }
    d
}

/// One cluster's sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    rq_total: u64,
    rq_5xx: u64,
    grpc_total: u64,
    grpc_failure: u64,
    rq_time: Times,
}

impl Sums {
    fn add(&mut self, delta: &Delta) {
        let (field, n) = match delta {
            Delta::Count(field, n) => (*field, *n),
            Delta::Times(t) => return self.rq_time.add(t),
        };
        // Saturating: a sum that cannot grow is wrong, one that wraps is worse.
        let add = |s: &mut u64| *s = s.saturating_add(n);
        match field {
            Field::Rq => add(&mut self.rq_total),
            Field::Rq5xx => {
                add(&mut self.rq_total);
                add(&mut self.rq_5xx);
            }
            Field::GrpcTotal => add(&mut self.grpc_total),
            Field::GrpcFailure => add(&mut self.grpc_failure),
            // Carried as times, never as a count.
            Field::RqTime => {}
        }
    }

    fn counts(&self) -> VersionCounts {
        let (requests, errors) = self.totals("").requests_and_errors();
        VersionCounts { requests, errors }
    }

    fn totals(&self, cluster: &str) -> ClusterTotals {
        ClusterTotals {
            cluster: cluster.to_string(),
            rq_total: self.rq_total,
            rq_5xx: self.rq_5xx,
            grpc_total: self.grpc_total,
            grpc_failure: self.grpc_failure,
            rq_time: self.rq_time.latency(),
        }
    }
}

/// Whether a message's Envoy is of the staged configuration's group, while one is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staging {
    /// The stage's start index.
    pub at: u64,
    /// The Envoy is of its group.
    pub in_group: bool,
}

/// Per service cluster, the sums of a stage's group (`[0]`) and of the other Envoys (`[1]`),
/// since the first message sent while it was staged. Kept per cluster since requests and
/// errors are gRPC's or HTTP's by cluster.
#[derive(Debug)]
struct StageSums {
    at: u64,
    clusters: HashMap<Box<str>, [Sums; 2]>,
}

/// Per service cluster, the sums of every delta received since start, over every Envoy; at most
/// `max_clusters` of them. And the latest stage's sums, over the same clusters.
#[derive(Debug)]
pub struct Totals {
    clusters: HashMap<Box<str>, Sums>,
    max_clusters: usize,
    stage: Option<StageSums>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals::with_limit(MAX_CLUSTERS)
    }
}

impl Totals {
    /// Totals that track at most `max_clusters` clusters.
    pub fn with_limit(max_clusters: usize) -> Totals {
        Totals {
            clusters: HashMap::new(),
            max_clusters,
            stage: None,
        }
    }

    /// Adds a message's deltas, sent while `staging` (by an Envoy of the stage's group or
    /// not); returns how many were refused because they name a new cluster when
    /// `max_clusters` are tracked already. A cluster, once tracked, stays: its sums must only
    /// grow for as long as the replica runs (the leader compares them over time). A newer
    /// stage starts its sums from zero; a message sent under an older one (a stream that read
    /// the stage a moment before it changed) counts only towards the cluster sums.
    pub fn add(&mut self, deltas: &Deltas<'_>, staging: Option<Staging>) -> u64 {
        if let Some(st) = staging
            && self.stage.as_ref().is_none_or(|s| s.at < st.at)
        {
            self.stage = Some(StageSums {
                at: st.at,
                clusters: HashMap::new(),
            });
        }
        let mut stage = match (staging, self.stage.as_mut()) {
            (Some(st), Some(s)) if s.at == st.at => Some((s, usize::from(!st.in_group))),
            _ => None,
        };
        let mut refused = 0;
        for (cluster, delta) in &deltas.items {
            let cluster = *cluster;
            if let Some(s) = self.clusters.get_mut(cluster) {
                s.add(delta);
            } else if self.clusters.len() < self.max_clusters {
                self.clusters.entry(cluster.into()).or_default().add(delta);
            } else {
                refused += 1;
                continue;
            }
            // Only tracked clusters: the stage's sums are bounded as the others are.
            if let Some((s, side)) = stage.as_mut() {
                match s.clusters.get_mut(cluster) {
                    Some(sums) => sums[*side].add(delta),
                    None => {
                        let mut sums = [Sums::default(); 2];
                        sums[*side].add(delta);
                        s.clusters.insert(cluster.into(), sums);
                    }
                }
            }
        }
        refused
    }

    /// The latest stage's counts (group and rest, over every cluster), once a message was
    /// sent under it.
    pub fn stage(&self) -> Option<StageCounts> {
        let s = self.stage.as_ref()?;
        let mut c = StageCounts {
            at: s.at,
            ..StageCounts::default()
        };
        for [group, rest] in s.clusters.values() {
            for (sum, of) in [(&mut c.group, group), (&mut c.rest, rest)] {
                let n = of.counts();
                sum.requests = sum.requests.saturating_add(n.requests);
                sum.errors = sum.errors.saturating_add(n.errors);
            }
        }
        Some(c)
    }

    /// Clusters tracked.
    pub fn len(&self) -> usize {
        self.clusters.len()
    }

    /// Whether no cluster is tracked yet.
    pub fn is_empty(&self) -> bool {
        self.clusters.is_empty()
    }

    /// The totals of `clusters` (zeros for one never seen), or of every tracked cluster when
    /// none are named; sorted by name, each once.
    pub fn report(&self, clusters: &[String]) -> Vec<ClusterTotals> {
        if clusters.is_empty() {
            let mut all: Vec<ClusterTotals> =
                self.clusters.iter().map(|(c, s)| s.totals(c)).collect();
            all.sort_by(|a, b| a.cluster.cmp(&b.cluster));
            return all;
        }
        let named: BTreeSet<&str> = clusters.iter().map(String::as_str).collect();
        named
            .into_iter()
            .map(|c| self.clusters.get(c).copied().unwrap_or_default().totals(c))
            .collect()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use envoy_types::pb::io::prometheus::client::{Counter, Gauge, Metric};

    /// A counter family as Envoy's sink sends one (also for the stream tests).
    pub(crate) fn counter(name: &str, v: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                counter: Some(Counter {
                    value: Some(v),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A request-time histogram family as Envoy's sink sends one in HISTOGRAM mode: `times`
    /// are the flush interval's samples in milliseconds.
    pub(crate) fn histogram(name: &str, times: &[f64]) -> MetricFamily {
        use envoy_types::pb::io::prometheus::client::{Bucket, Histogram};
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .map(|b| Bucket {
                cumulative_count: Some(times.iter().filter(|t| *t <= b).count() as u64),
                upper_bound: Some(*b),
                ..Default::default()
            })
            .collect();
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                histogram: Some(Histogram {
                    sample_count: Some(times.len() as u64),
                    sample_sum: Some(times.iter().sum()),
                    bucket,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn apply(t: &mut Totals, families: &[MetricFamily]) -> (u64, u64) {
        let d = deltas(families);
        (t.add(&d, None), d.skipped)
    }

    #[test]
    fn names_are_parsed_strictly() {
        use Field::*;
        assert_eq!(
            parse("cluster.service_echo.upstream_rq_2xx"),
            Name::Stat("service_echo", Rq)
        );
        assert_eq!(
            parse("cluster.service_echo~v2_1-a.upstream_rq_5xx"),
            Name::Stat("service_echo~v2_1-a", Rq5xx)
        );
        assert_eq!(
            parse("cluster.service_a-1.grpc.failure"),
            Name::Stat("service_a-1", GrpcFailure)
        );
        assert_eq!(
            parse("cluster.service_a.grpc.total"),
            Name::Stat("service_a", GrpcTotal)
        );
        // Other stats, other clusters: ignored, not skipped.
        for ignored in [
            "cluster.service_echo.upstream_rq_total",
            "cluster.service_echo.upstream_rq_503",
            "cluster.service_echo.grpc.success",
            "cluster.service_echo.grpc.0",
            "cluster.builder_7.upstream_rq_5xx",
            "cluster.concord_xds.grpc.total",
            "cluster.service_echo.xupstream_rq_5xx",
            "http.ingress.downstream_rq_5xx",
            "service_echo.upstream_rq_5xx",
            "",
        ] {
            assert_eq!(parse(ignored), Name::Ignored, "{ignored}");
        }
        // Summed stats of a cluster concord never names.
        let long = format!("cluster.service_{}.upstream_rq_2xx", "a".repeat(300));
        for bad in [
            "cluster.service_.upstream_rq_2xx",
            "cluster.service_Echo.upstream_rq_2xx",
            "cluster.service_a.b.upstream_rq_2xx",
            "cluster.service_a~.upstream_rq_2xx",
            "cluster.service_~v1.upstream_rq_2xx",
            "cluster.service_a~v1~v2.upstream_rq_2xx",
            "cluster.service_a~v.1.grpc.total",
            "cluster.service_a b.grpc.total",
            "cluster.service_a_b.grpc.total",
            long.as_str(),
        ] {
            assert_eq!(parse(bad), Name::Bad, "{bad}");
        }
    }

    #[test]
    fn deltas_are_summed_per_cluster() {
        let mut t = Totals::default();
        let first = [
            counter("cluster.service_echo.upstream_rq_2xx", 10.0),
            counter("cluster.service_echo.upstream_rq_4xx", 3.0),
            counter("cluster.service_echo.upstream_rq_5xx", 2.0),
            counter("cluster.service_echo~v2.upstream_rq_1xx", 1.0),
            counter("cluster.service_echo~v2.grpc.total", 7.0),
            counter("cluster.service_echo~v2.grpc.failure", 0.0),
            counter("cluster.builder_1.upstream_rq_5xx", 99.0),
            counter("cluster.service_echo.upstream_rq_total", 15.0),
        ];
        assert_eq!(apply(&mut t, &first), (0, 0));
        let second = [
            counter("cluster.service_echo.upstream_rq_3xx", 1.0),
            counter("cluster.service_echo.upstream_rq_5xx", 1.0),
            counter("cluster.service_echo~v2.grpc.failure", 4.0),
        ];
        assert_eq!(apply(&mut t, &second), (0, 0));
        assert_eq!(t.len(), 2, "builders are not tracked");
        let echo = ClusterTotals {
            cluster: "service_echo".into(),
            rq_total: 17,
            rq_5xx: 3,
            grpc_total: 0,
            grpc_failure: 0,
            rq_time: Latency::default(),
        };
        let v2 = ClusterTotals {
            cluster: "service_echo~v2".into(),
            rq_total: 1,
            rq_5xx: 0,
            grpc_total: 7,
            grpc_failure: 4,
            rq_time: Latency::default(),
        };
        assert_eq!(t.report(&[]), vec![echo.clone(), v2.clone()]);
        // Named clusters: sorted, once each, zeros for one never seen.
        let asked = [
            "service_new".to_string(),
            "service_echo".into(),
            "service_echo".into(),
        ];
        assert_eq!(
            t.report(&asked),
            vec![
                echo,
                ClusterTotals {
                    cluster: "service_new".into(),
                    ..Default::default()
                }
            ]
        );
        assert_eq!(v2.requests_and_errors(), (7, 4));
    }

    #[test]
    fn values_that_are_not_counts_are_skipped() {
        let mut t = Totals::default();
        let c = "cluster.service_a.upstream_rq_5xx";
        let mut families: Vec<MetricFamily> = [
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e13,
            f64::MAX,
            0.5,
        ]
        .into_iter()
        .map(|v| counter(c, v))
        .collect();
        // A gauge, a counter without a value, a family without metrics, a bad name.
        families.push(MetricFamily {
            name: Some(c.into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                gauge: Some(Gauge { value: Some(1.0) }),
                ..Default::default()
            }],
            ..Default::default()
        });
        families.push(MetricFamily {
            name: Some(c.into()),
            metric: vec![Metric::default()],
            ..Default::default()
        });
        families.push(MetricFamily {
            name: Some(c.into()),
            ..Default::default()
        });
        families.push(counter("cluster.service_A.upstream_rq_5xx", 1.0));
        families.push(counter(c, 2.0));
        assert_eq!(apply(&mut t, &families), (0, 11));
        assert_eq!(t.report(&[])[0].rq_5xx, 2);
        assert_eq!(t.report(&[])[0].rq_total, 2);
    }

    #[test]
    fn a_stage_sums_its_group_and_the_rest_apart_from_its_first_message() {
        let mut t = Totals::default();
        let http = |n: f64, bad: f64| {
            vec![
                counter("cluster.service_web.upstream_rq_2xx", n),
                counter("cluster.service_web.upstream_rq_5xx", bad),
            ]
        };
        // gRPC errors answered over HTTP 200: judged on gRPC's counts for that cluster.
        let grpc = |n: f64, bad: f64| {
            vec![
                counter("cluster.service_echo.upstream_rq_2xx", n),
                counter("cluster.service_echo.grpc.total", n),
                counter("cluster.service_echo.grpc.failure", bad),
            ]
        };
        let staged = |at, in_group| Some(Staging { at, in_group });
        let add = |t: &mut Totals, f: Vec<MetricFamily>, s| t.add(&deltas(&f), s);
        add(&mut t, http(100.0, 50.0), None);
        assert_eq!(t.stage(), None, "nothing staged yet");
        add(&mut t, http(8.0, 2.0), staged(7, true));
        add(&mut t, grpc(10.0, 10.0), staged(7, true));
        add(&mut t, http(90.0, 0.0), staged(7, false));
        add(&mut t, grpc(5.0, 1.0), staged(7, false));
        let vc = |requests, errors| VersionCounts { requests, errors };
        let want = StageCounts {
            at: 7,
            group: vc(20, 12),
            rest: vc(95, 1),
        };
        assert_eq!(t.stage(), Some(want));
        // Once the stage ends, its sums stay as they were; a message from before it (an older
        // stage) changes nothing of them.
        add(&mut t, http(1.0, 1.0), None);
        add(&mut t, http(1.0, 1.0), staged(6, true));
        assert_eq!(t.stage(), Some(want));
        // A newer stage starts from zero; the cluster sums count everything.
        add(&mut t, http(3.0, 0.0), staged(9, false));
        assert_eq!(
            t.stage(),
            Some(StageCounts {
                at: 9,
                group: vc(0, 0),
                rest: vc(3, 0)
            })
        );
        let web = &t.report(&["service_web".into()])[0];
        assert_eq!((web.rq_total, web.rq_5xx), (257, 54));
    }

    #[test]
    fn sums_saturate() {
        let mut t = Totals::default();
        let f = [counter("cluster.service_a.grpc.total", 1e12)];
        for _ in 0..3 {
            apply(&mut t, &f);
        }
        assert_eq!(t.report(&[])[0].grpc_total, 3_000_000_000_000);
        let mut sums = Sums::default();
        sums.add(&Delta::Count(Field::GrpcTotal, u64::MAX));
        sums.add(&Delta::Count(Field::GrpcTotal, 5));
        assert_eq!(sums.grpc_total, u64::MAX);
    }

    #[test]
    fn new_clusters_past_the_limit_are_refused() {
        let mut t = Totals::with_limit(3);
        let f: Vec<MetricFamily> = (0..5)
            .map(|i| counter(&format!("cluster.service_s{i}.upstream_rq_2xx"), 1.0))
            .collect();
        assert_eq!(apply(&mut t, &f), (2, 0));
        assert_eq!(t.len(), 3);
        // Tracked clusters still count; new ones are still refused.
        assert_eq!(apply(&mut t, &f), (2, 0));
        let names: Vec<String> = t.report(&[]).into_iter().map(|c| c.cluster).collect();
        assert_eq!(names, ["service_s0", "service_s1", "service_s2"]);
        assert!(t.report(&[]).iter().all(|c| c.rq_total == 2));
        assert_eq!(Totals::default().max_clusters, MAX_CLUSTERS);
    }

    #[test]
    fn request_times_are_summed_per_cluster_bucket_by_bucket() {
        let mut t = Totals::default();
        let c = "cluster.service_echo~v2.upstream_rq_time";
        assert_eq!(parse(c), Name::Stat("service_echo~v2", Field::RqTime));
        // Two flushes: each sends its interval's times, which add up.
        assert_eq!(apply(&mut t, &[histogram(c, &[0.4, 3.0, 60.0])]), (0, 0));
        assert_eq!(apply(&mut t, &[histogram(c, &[70.0, 7000.0])]), (0, 0));
        let l = t.report(&[]).remove(0).rq_time;
        assert_eq!((l.samples, l.sum_us), (5, 7_133_400));
        assert_eq!(&l.buckets[..8], &[1, 1, 2, 2, 2, 2, 4, 4]);
        assert_eq!(l.buckets[12], 5);
        let p50 = l.quantile_ms(0.5).unwrap();
        assert!((50.0..=100.0).contains(&p50), "{p50}");
        // A histogram of other bounds, counts that fall, more in a bucket than samples, not
        // a histogram: skipped, nothing added.
        let mut other_bounds = histogram(c, &[1.0]);
        let h = other_bounds.metric[0].histogram.as_mut().unwrap();
        h.bucket[3].upper_bound = Some(11.0);
        let mut falling = histogram(c, &[1.0, 2.0]);
        let h = falling.metric[0].histogram.as_mut().unwrap();
        h.bucket[5].cumulative_count = Some(1);
        let mut too_many = histogram(c, &[1.0]);
        too_many.metric[0].histogram.as_mut().unwrap().bucket[18].cumulative_count = Some(2);
        let mut negative = histogram(c, &[1.0]);
        negative.metric[0].histogram.as_mut().unwrap().sample_sum = Some(-1.0);
        let as_counter = counter(c, 1.0);
        let bad = [other_bounds, falling, too_many, negative, as_counter];
        assert_eq!(apply(&mut t, &bad), (0, 5));
        assert_eq!(t.report(&[]).remove(0).rq_time, l);
    }
}
