//! Container resource figures, collected in the background and served from memory.
//!
//! The Engine's stats call takes about a second per container even with `one-shot` (it waits
//! for a sample), so containers are sampled concurrently on an interval, never per request. A
//! one-shot answer has no previous CPU sample: the CPU percentage comes from two samples the
//! agent keeps itself. Where the API has no block-I/O figures (empty blkio arrays, as on
//! cgroup v1 hosts whose disk is not accounted), the cgroup files are read; `null` is reported
//! where neither has a figure.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerBlkioStatEntry, ContainerStatsResponse};
use bollard::query_parameters::StatsOptionsBuilder;
use futures_util::StreamExt;
use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{DockerRuntime, RunState, watch::volume_observations};

/// How stats are collected.
#[derive(Clone, Copy, Debug)]
pub struct StatsConfig {
    /// Time between two samples of the same container.
    pub interval: Duration,
    /// Stats calls at once.
    pub concurrency: usize,
}

/// The figures served for one container. `None` where there is no figure.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU used, percent of one CPU (200 = two CPUs busy), between the last two samples.
    pub cpu_percent: Option<f64>,
    /// Memory in use (without page cache), MiB.
    #[serde(rename = "memoryUsageMB")]
    pub memory_usage_mb: Option<f64>,
    /// Memory limit (the host's memory when unlimited), MiB.
    #[serde(rename = "memoryLimitMB")]
    pub memory_limit_mb: Option<f64>,
    /// Usage over limit, percent.
    pub memory_percent: Option<f64>,
    /// Received over all networks, MiB.
    #[serde(rename = "networkRxMB")]
    pub network_rx_mb: Option<f64>,
    /// Sent over all networks, MiB.
    #[serde(rename = "networkTxMB")]
    pub network_tx_mb: Option<f64>,
    /// Read from block devices, MiB.
    #[serde(rename = "blockReadMB")]
    pub block_read_mb: Option<f64>,
    /// Written to block devices, MiB.
    #[serde(rename = "blockWriteMB")]
    pub block_write_mb: Option<f64>,
    /// Processes and threads.
    pub pids: Option<u64>,
}

/// One sample: raw figures, for metrics, for [`Resources`] and for the next percentage.
#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub at: Timestamp,
    pub raw: Raw,
}

/// Raw counters of a sample.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Raw {
    /// CPU used since the previous sample, percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Container CPU time, ns.
    pub cpu_total_ns: Option<u64>,
    /// Host CPU time, ns (jiffies × …, as Docker reports it).
    pub system_ns: Option<u64>,
    /// CPUs online.
    pub online_cpus: Option<u32>,
    /// Memory in use, bytes.
    pub memory_bytes: Option<u64>,
    /// Memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Network received, bytes.
    pub rx_bytes: Option<u64>,
    /// Network sent, bytes.
    pub tx_bytes: Option<u64>,
    /// Block read, bytes.
    pub read_bytes: Option<u64>,
    /// Block written, bytes.
    pub write_bytes: Option<u64>,
    /// Pids.
    pub pids: Option<u64>,
}

const MIB: f64 = 1024.0 * 1024.0;

fn mib(bytes: Option<u64>) -> Option<f64> {
    bytes.map(|b| round2(b as f64 / MIB))
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl From<&Raw> for Resources {
    fn from(raw: &Raw) -> Resources {
        Resources {
            cpu_percent: raw.cpu_percent,
            memory_usage_mb: mib(raw.memory_bytes),
            memory_limit_mb: mib(raw.memory_limit_bytes),
            memory_percent: match (raw.memory_bytes, raw.memory_limit_bytes) {
                (Some(u), Some(l)) => Some(round2(u as f64 / l as f64 * 100.0)),
                _ => None,
            },
            network_rx_mb: mib(raw.rx_bytes),
            network_tx_mb: mib(raw.tx_bytes),
            block_read_mb: mib(raw.read_bytes),
            block_write_mb: mib(raw.write_bytes),
            pids: raw.pids,
        }
    }
}

/// The figures of one stats answer. `previous` is the container's last sample, for the CPU
/// percentage; `cgroup_io` is read when the API has no block-I/O figures.
pub fn figures(
    stats: &ContainerStatsResponse,
    previous: Option<&Raw>,
    cgroup_io: impl FnOnce() -> Option<(u64, u64)>,
) -> Raw {
    let cpu = stats.cpu_stats.as_ref();
    let memory = stats.memory_stats.as_ref();
    let cache = memory
        .and_then(|m| m.stats.as_ref())
        .and_then(|s| {
            s.get("inactive_file").or_else(|| s.get("total_inactive_file")).or_else(|| s.get("cache"))
        })
        .copied()
        .unwrap_or(0);
    let memory_bytes = memory.and_then(|m| m.usage).map(|u| u.saturating_sub(cache));
    let (rx, tx) = match &stats.networks {
        Some(n) if !n.is_empty() => (
            Some(n.values().filter_map(|i| i.rx_bytes).sum()),
            Some(n.values().filter_map(|i| i.tx_bytes).sum()),
        ),
        _ => (None, None),
    };
    let blkio = stats
        .blkio_stats
        .as_ref()
        .and_then(|b| b.io_service_bytes_recursive.as_ref())
        .filter(|entries| !entries.is_empty());
    let (read_bytes, write_bytes) = match blkio {
        Some(entries) => (Some(sum_op(entries, "read")), Some(sum_op(entries, "write"))),
        None => cgroup_io().map_or((None, None), |(r, w)| (Some(r), Some(w))),
    };
    let mut raw = Raw {
        cpu_percent: None,
        cpu_total_ns: cpu.and_then(|c| c.cpu_usage.as_ref()).and_then(|u| u.total_usage),
        system_ns: cpu.and_then(|c| c.system_cpu_usage),
        online_cpus: cpu.and_then(|c| {
            c.online_cpus
                .filter(|n| *n > 0)
                .or_else(|| c.cpu_usage.as_ref()?.percpu_usage.as_ref().map(|p| p.len() as u32))
        }),
        memory_bytes,
        memory_limit_bytes: memory.and_then(|m| m.limit).filter(|l| *l > 0),
        rx_bytes: rx,
        tx_bytes: tx,
        read_bytes,
        write_bytes,
        pids: stats.pids_stats.as_ref().and_then(|p| p.current),
    };
    raw.cpu_percent = previous.and_then(|p| {
        let container = raw.cpu_total_ns?.checked_sub(p.cpu_total_ns?)?;
        let system = raw.system_ns?.checked_sub(p.system_ns?)?;
        let cpus = f64::from(raw.online_cpus?);
        (system > 0).then(|| round2(container as f64 / system as f64 * cpus * 100.0))
    });
    raw
}

fn sum_op(entries: &[ContainerBlkioStatEntry], op: &str) -> u64 {
    entries
        .iter()
        .filter(|e| e.op.as_deref().is_some_and(|o| o.eq_ignore_ascii_case(op)))
        .filter_map(|e| e.value)
        .sum()
}

/// Bytes read and written by a container, from its cgroup: v1 `blkio.throttle.io_service_bytes`
/// (the `Total` lines summed by operation), or v2 `io.stat`. `None` when neither file exists.
pub fn cgroup_io(root: &std::path::Path, id: &str) -> Option<(u64, u64)> {
    let v1 = root.join("blkio/docker").join(id).join("blkio.throttle.io_service_bytes");
    if let Ok(text) = std::fs::read_to_string(v1) {
        return parse_blkio_v1(&text);
    }
    for dir in [format!("system.slice/docker-{id}.scope"), format!("docker/{id}")] {
        if let Ok(text) = std::fs::read_to_string(root.join(dir).join("io.stat")) {
            return parse_io_stat(&text);
        }
    }
    None
}

/// `8:0 Read 4096` lines. A file with no device line (only `Total 0`: the disk is not
/// accounted, as on some VMs) has no figure.
pub fn parse_blkio_v1(text: &str) -> Option<(u64, u64)> {
    let (mut read, mut write, mut devices) = (0, 0, 0);
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(_dev), Some(op), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        devices += 1;
        match op {
            "Read" => read += value,
            "Write" => write += value,
            _ => {}
        }
    }
    (devices > 0).then_some((read, write))
}

/// `8:0 rbytes=4096 wbytes=0 …` lines; an empty file has no figure.
pub fn parse_io_stat(text: &str) -> Option<(u64, u64)> {
    if text.trim().is_empty() {
        return None;
    }
    let (mut read, mut write) = (0, 0);
    for field in text.split_whitespace() {
        if let Some(v) = field.strip_prefix("rbytes=") {
            read += v.parse::<u64>().unwrap_or(0);
        } else if let Some(v) = field.strip_prefix("wbytes=") {
            write += v.parse::<u64>().unwrap_or(0);
        }
    }
    Some((read, write))
}

/// Samples every running container each `interval` until `cancel`; also looks at their mounts
/// again (for the Attached-volume check).
pub async fn collect(docker: DockerRuntime, config: StatsConfig, cancel: CancellationToken) {
    let cgroup_root = std::path::PathBuf::from("/sys/fs/cgroup");
    // A CPU percentage needs two samples: the first round after (re)connecting is taken twice,
    // back to back.
    let mut rounds = 0u64;
    loop {
        let wait = if !docker.daemon().reachable || !docker.synced() {
            rounds = 0;
            Duration::from_millis(250)
        } else if rounds <= 1 {
            Duration::ZERO
        } else {
            config.interval
        };
        if wait > Duration::ZERO {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
        if !docker.daemon().reachable || !docker.synced() {
            continue;
        }
        rounds += 1;
        let running: Vec<String> =
            docker.containers().into_iter().filter(|c| c.state == RunState::Running).map(|c| c.id).collect();
        let samples: Vec<(String, Option<ContainerStatsResponse>)> = futures_util::stream::iter(running)
            .map(|id| {
                let client = docker.client();
                async move {
                    let Ok(client) = client else { return (id, None) };
                    let options = StatsOptionsBuilder::default().stream(false).one_shot(true).build();
                    let answer = client.stats(&id, Some(options)).next().await;
                    (id, answer.and_then(Result::ok))
                }
            })
            .buffer_unordered(config.concurrency.max(1))
            .collect()
            .await;
        let now = Timestamp::now();
        {
            let mut stats = docker.stats.write().unwrap_or_else(|e| e.into_inner());
            let mut fresh = HashMap::with_capacity(samples.len());
            for (id, answer) in samples {
                let Some(answer) = answer else { continue };
                let previous = stats.get(&id).map(|s| &s.raw);
                let raw = figures(&answer, previous, || cgroup_io(&cgroup_root, &id));
                fresh.insert(id, Sample { at: now, raw });
            }
            debug!(containers = fresh.len(), "container stats sampled");
            // Stopped and removed containers leave with this.
            *stats = fresh;
        }
        // Mounts can disappear under a running container.
        let mut changed = false;
        {
            let mut index = docker.write();
            for c in index.containers.values_mut() {
                let seen = volume_observations(&c.mounts);
                if seen != c.volumes {
                    c.volumes = seen;
                    changed = true;
                }
            }
        }
        if changed {
            docker.bump();
        }
    }
}

/// Raw figures of every sampled container, for metrics.
pub(super) fn raw_of(docker: &DockerRuntime) -> HashMap<String, Raw> {
    let stats = docker.stats.read().unwrap_or_else(|e| e.into_inner());
    stats.iter().map(|(id, s)| (id.clone(), s.raw)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(json: &str) -> ContainerStatsResponse {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cpu_percent_comes_from_two_samples_and_empty_blkio_falls_back() {
        let first = answer(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":1000000000},"system_cpu_usage":100000000000,"online_cpus":2},
                "memory_stats":{"usage":104857600,"limit":209715200,"stats":{"cache":4194304}},
                "networks":{"eth0":{"rx_bytes":1048576,"tx_bytes":2097152}},
                "blkio_stats":{"io_service_bytes_recursive":[]},"pids_stats":{"current":3}}"#,
        );
        let raw1 = figures(&first, None, || None);
        let r1 = Resources::from(&raw1);
        assert_eq!(r1.cpu_percent, None, "one sample gives no percentage");
        assert_eq!(r1.memory_usage_mb, Some(96.0));
        assert_eq!(r1.memory_limit_mb, Some(200.0));
        assert_eq!(r1.memory_percent, Some(48.0));
        assert_eq!((r1.network_rx_mb, r1.network_tx_mb), (Some(1.0), Some(2.0)));
        assert_eq!((r1.block_read_mb, r1.block_write_mb), (None, None), "no figure anywhere: null");
        assert_eq!(r1.pids, Some(3));
        let second = answer(
            r#"{"cpu_stats":{"cpu_usage":{"total_usage":2000000000},"system_cpu_usage":102000000000,"online_cpus":2},
                "blkio_stats":{"io_service_bytes_recursive":null}}"#,
        );
        // 1 s of container CPU over 2 s of host time on 2 CPUs: one CPU busy.
        let r2 = Resources::from(&figures(&second, Some(&raw1), || Some((3 * 1048576, 1048576))));
        assert_eq!(r2.cpu_percent, Some(100.0));
        assert_eq!((r2.block_read_mb, r2.block_write_mb), (Some(3.0), Some(1.0)));
    }

    #[test]
    fn api_blkio_is_summed_by_operation() {
        let a = answer(
            r#"{"blkio_stats":{"io_service_bytes_recursive":[
                {"major":8,"minor":0,"op":"Read","value":1048576},{"major":8,"minor":0,"op":"Write","value":2097152},
                {"major":8,"minor":16,"op":"read","value":1048576}]}}"#,
        );
        let r = Resources::from(&figures(&a, None, || panic!("the API had figures")));
        assert_eq!((r.block_read_mb, r.block_write_mb), (Some(2.0), Some(2.0)));
    }

    #[test]
    fn cgroup_files_parse() {
        let v1 = "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Total 12288\nTotal 12288\n";
        assert_eq!(parse_blkio_v1(v1), Some((4096, 8192)));
        assert_eq!(parse_blkio_v1("Total 0\n"), None, "no device accounted: no figure");
        assert_eq!(
            parse_io_stat("8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n"),
            Some((101, 202))
        );
        assert_eq!(parse_io_stat(""), None);
    }
}
