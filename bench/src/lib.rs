//! Shared argument types of the benchmark binaries in `src/bin/` (each takes clap flags and
//! prints them with `--help`). The binaries drive real processes through the test harness
//! (`concord-tests`), so what they measure is what the tests check.

pub mod ads_client;

use clap::ValueEnum;

/// The xDS protocol a simulated or real Envoy speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdsProtocol {
    /// State of the world.
    Sotw,
    /// Incremental (delta) xDS.
    Delta,
}

impl XdsProtocol {
    /// The name the flags and the replicas use.
    pub fn flag(self) -> &'static str {
        match self {
            XdsProtocol::Sotw => "sotw",
            XdsProtocol::Delta => "delta",
        }
    }
}

/// The replicas' `--listener-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ListenerMode {
    /// One filter chain per builder.
    FilterChains,
    /// One chain on the SNI suffix with the `sni_cluster` filter.
    SniCluster,
}

impl ListenerMode {
    /// The value `concord serve --listener-mode` takes.
    pub fn flag(self) -> &'static str {
        match self {
            ListenerMode::FilterChains => "filter-chains",
            ListenerMode::SniCluster => "sni-cluster",
        }
    }
}

/// CPU seconds (user + system) process `pid` has used (`/proc/<pid>/stat`).
pub fn cpu_secs(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // utime and stime are fields 14 and 15 (1-based) of the whole line: 12 and 13 after `)`.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    anyhow::ensure!(fields.len() > 12, "unexpected /proc/{pid}/stat: {stat}");
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// The load averages (1, 5 and 15 minutes) from `/proc/loadavg`, printed beside each figure.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Resident memory (MiB) of process `pid` (`VmRSS` of `/proc/<pid>/status`; 0 if unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
