//! The host: figures from /proc for `/v1/host/status`, and the host's own System and
//! Attached-volume checks (memory and disk pressure, filesystems that went read-only or recorded
//! errors).
//!
//! Pressure thresholds default to the kubelet's hard-eviction defaults: `memory.available <
//! 100Mi`, `nodefs.available < 10%`, `nodefs.inodesFree < 5%`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use procfs::Current;
use serde::Serialize;

use crate::api::CheckStatus;

/// Why host figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A /proc file could not be read or parsed.
    #[error("cannot read {file}")]
    ReadProc {
        /// The file.
        file: &'static str,
        /// The cause.
        #[source]
        source: procfs::ProcError,
    },
}

/// Figures of the host, read from /proc when asked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostFigures {
    /// Host name.
    pub hostname: String,
    /// CPUs online.
    pub total_cpus: usize,
    /// `MemTotal`, MiB.
    pub total_memory_mb: u64,
    /// `MemAvailable`, MiB.
    pub available_memory_mb: u64,
    /// Seconds since boot, from /proc/uptime.
    pub uptime_seconds: f64,
    /// 1, 5 and 15 minute load averages, from /proc/loadavg.
    pub load_average: [f64; 3],
}

const MIB: u64 = 1024 * 1024;

/// Reads the host's figures now.
pub fn figures() -> Result<HostFigures, HostError> {
    let mem =
        procfs::Meminfo::current().map_err(|source| HostError::ReadProc { file: "/proc/meminfo", source })?;
    let uptime =
        procfs::Uptime::current().map_err(|source| HostError::ReadProc { file: "/proc/uptime", source })?;
    let load = procfs::LoadAverage::current()
        .map_err(|source| HostError::ReadProc { file: "/proc/loadavg", source })?;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    Ok(HostFigures {
        hostname,
        total_cpus: online_cpus(),
        total_memory_mb: mem.mem_total / MIB,
        available_memory_mb: mem.mem_available.unwrap_or(mem.mem_free) / MIB,
        uptime_seconds: uptime.uptime,
        load_average: [round2(load.one), round2(load.five), round2(load.fifteen)],
    })
}

/// /proc/loadavg has two decimals; keep them without the noise of `f32`.
fn round2(v: f32) -> f64 {
    (f64::from(v) * 100.0).round() / 100.0
}

/// CPUs online on the host (not the agent's own affinity or quota).
pub fn online_cpus() -> usize {
    // /sys/devices/system/cpu/online lists ranges such as `0-3,6`.
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/online").ok().and_then(|s| {
        s.trim().split(',').try_fold(0usize, |n, part| {
            Some(
                n + match part.split_once('-') {
                    Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse::<usize>().ok()?)? + 1,
                    None => {
                        part.parse::<usize>().ok()?;
                        1
                    }
                },
            )
        })
    });
    parsed.filter(|n| *n > 0).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// When the host counts as under pressure.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PressureThresholds {
    /// Memory pressure below this much `MemAvailable`.
    pub memory_available_bytes: u64,
    /// Disk pressure below this percentage of free space.
    pub disk_available_percent: f64,
    /// Disk pressure below this percentage of free inodes.
    pub inodes_free_percent: f64,
}

impl Default for PressureThresholds {
    fn default() -> Self {
        PressureThresholds {
            memory_available_bytes: 100 * MIB,
            disk_available_percent: 10.0,
            inodes_free_percent: 5.0,
        }
    }
}

/// One observation of a host check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// What was checked.
    pub name: String,
    /// Its status.
    pub status: CheckStatus,
    /// What was seen.
    pub message: String,
}

impl Observation {
    /// An observation.
    pub fn new(name: impl Into<String>, status: CheckStatus, message: impl Into<String>) -> Observation {
        Observation { name: name.into(), status, message: message.into() }
    }
}

/// The host's System and Attached-volume observations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostHealth {
    /// `memory-pressure`, `disk-pressure`, and with [`HostMonitor`] `cpu-temperature`,
    /// `cpu-throttling` and `disk-health:<device>`.
    pub system: Vec<Observation>,
    /// One per mounted block-device filesystem.
    pub volumes: Vec<Observation>,
}

/// Assesses the host now. `root` is where the host's root filesystem is seen (`/`, or the host's
/// `/` mounted into the agent's container): its `proc/meminfo`, `proc/1/mountinfo` and
/// `sys/fs/ext4` are read and its mounts checked under it. `paths` are filesystems the agent
/// needs (the host's root and the state folder): they are checked for disk pressure and must be
/// writable.
pub fn assess(thresholds: &PressureThresholds, paths: &[PathBuf], root: &Path) -> HostHealth {
    HostHealth {
        system: vec![memory(thresholds, root), disk(thresholds, paths)],
        volumes: volumes(paths, root),
    }
}

/// The host's assessment over time: [`assess`] plus the hardware details, which need memory
/// between rounds (the throttle counters, the last SMART answers).
#[derive(Debug)]
pub struct HostMonitor {
    thresholds: PressureThresholds,
    paths: Vec<PathBuf>,
    root: PathBuf,
    throttling: super::hardware::Throttling,
    disks: super::hardware::DiskHealth,
}

impl HostMonitor {
    /// A monitor of the host seen under `root`, asking `smartctl` about the disks at most once
    /// per `smart_interval`.
    pub fn new(
        thresholds: PressureThresholds,
        paths: Vec<PathBuf>,
        root: PathBuf,
        smartctl: PathBuf,
        smart_interval: std::time::Duration,
    ) -> HostMonitor {
        HostMonitor {
            thresholds,
            paths,
            root,
            throttling: super::hardware::Throttling::default(),
            disks: super::hardware::DiskHealth::new(smartctl, smart_interval),
        }
    }

    /// Assesses the host now (blocking: reads files and may run `smartctl`).
    pub fn assess(&mut self) -> HostHealth {
        let now = std::time::Instant::now();
        let mut health = assess(&self.thresholds, &self.paths, &self.root);
        health.system.push(super::hardware::temperature(&self.root));
        health.system.push(self.throttling.assess(&self.root, now));
        health.system.extend(self.disks.assess(now));
        health
    }
}

/// `path` (absolute, as the host sees it) under the host's root as this process sees it.
pub(super) fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn memory(t: &PressureThresholds, root: &Path) -> Observation {
    use procfs::FromRead;
    match procfs::Meminfo::from_file(under(root, Path::new("/proc/meminfo"))) {
        Ok(mem) => {
            let available = mem.mem_available.unwrap_or(mem.mem_free);
            let text = format!("{} MiB available of {} MiB", available / MIB, mem.mem_total / MIB);
            if available < t.memory_available_bytes {
                Observation::new(
                    "memory-pressure",
                    CheckStatus::Impaired,
                    format!("{text}, below {} MiB", t.memory_available_bytes / MIB),
                )
            } else {
                Observation::new("memory-pressure", CheckStatus::Ok, text)
            }
        }
        Err(e) => Observation::new(
            "memory-pressure",
            CheckStatus::InsufficientData,
            format!("cannot read /proc/meminfo: {e}"),
        ),
    }
}

fn disk(t: &PressureThresholds, paths: &[PathBuf]) -> Observation {
    let mut worst: Option<Observation> = None;
    for path in paths {
        let obs = match rustix::fs::statvfs(path) {
            Ok(st) if st.f_blocks > 0 => {
                let free_pct = st.f_bavail as f64 * 100.0 / st.f_blocks as f64;
                let inodes_pct =
                    if st.f_files > 0 { st.f_favail as f64 * 100.0 / st.f_files as f64 } else { 100.0 };
                let text =
                    format!("{}: {free_pct:.1}% space and {inodes_pct:.1}% inodes free", path.display());
                if free_pct < t.disk_available_percent || inodes_pct < t.inodes_free_percent {
                    Observation::new(
                        "disk-pressure",
                        CheckStatus::Impaired,
                        format!("{text}, below {}% / {}%", t.disk_available_percent, t.inodes_free_percent),
                    )
                } else {
                    Observation::new("disk-pressure", CheckStatus::Ok, text)
                }
            }
            Ok(_) => continue,
            Err(e) => Observation::new(
                "disk-pressure",
                CheckStatus::InsufficientData,
                format!("statvfs {}: {e}", path.display()),
            ),
        };
        if worst.as_ref().is_none_or(|w| obs.status.severity() > w.status.severity()) {
            worst = Some(obs);
        }
    }
    worst.unwrap_or_else(|| {
        Observation::new("disk-pressure", CheckStatus::InsufficientData, "no filesystem to check")
    })
}

/// Filesystem types that are not volumes.
const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "overlay",
    "squashfs",
    "nsfs",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "autofs",
    "hugetlbfs",
    "binfmt_misc",
];

fn volumes(paths: &[PathBuf], root: &Path) -> Vec<Observation> {
    use procfs::FromRead;
    // The host's mounts: the agent's own, or those of the host's init seen through the host's /proc.
    let mounts = if root == Path::new("/") {
        procfs::process::Process::myself().and_then(|p| p.mountinfo())
    } else {
        procfs::process::MountInfos::from_file(under(root, Path::new("/proc/1/mountinfo")))
    };
    let mounts = match mounts {
        Ok(m) => m,
        Err(e) => {
            return vec![Observation::new(
                "mounts",
                CheckStatus::InsufficientData,
                format!("cannot read mountinfo: {e}"),
            )];
        }
    };
    // One entry per device: the mount closest to the root (bind mounts repeat a device).
    let mut by_device: BTreeMap<String, &procfs::process::MountInfo> = BTreeMap::new();
    for m in mounts.iter() {
        let is_block = m.mount_source.as_deref().is_some_and(|s| s.starts_with("/dev/"));
        if !is_block || PSEUDO_FS.contains(&m.fs_type.as_str()) {
            continue;
        }
        let keep = by_device
            .get(&m.majmin)
            .is_none_or(|prev| m.mount_point.components().count() < prev.mount_point.components().count());
        if keep {
            by_device.insert(m.majmin.clone(), m);
        }
    }
    let needed: Vec<(PathBuf, String)> =
        paths.iter().filter_map(|p| device_of(p).map(|d| (p.clone(), d))).collect();
    by_device
        .values()
        .map(|m| {
            let name = m.mount_point.display().to_string();
            let device = m.mount_source.clone().unwrap_or_default();
            let read_only = m.mount_options.contains_key("ro");
            let needs_write = needed.iter().find(|(_, majmin)| *majmin == m.majmin).map(|(p, _)| p);
            if let Err(e) = rustix::fs::statvfs(under(root, &m.mount_point)) {
                return Observation::new(
                    name,
                    CheckStatus::Impaired,
                    format!("{device}: statvfs failed: {e}"),
                );
            }
            if let Some(errors) = ext4_errors(root, &device).filter(|n| *n > 0) {
                return Observation::new(
                    name,
                    CheckStatus::Impaired,
                    format!("{device}: {errors} filesystem errors recorded"),
                );
            }
            match (read_only, needs_write) {
                (true, Some(path)) => Observation::new(
                    name,
                    CheckStatus::Impaired,
                    format!("{device} is mounted read-only but {} must be writable", path.display()),
                ),
                (true, None) => {
                    Observation::new(name, CheckStatus::Ok, format!("{device} ({}, read-only)", m.fs_type))
                }
                (false, _) => Observation::new(name, CheckStatus::Ok, format!("{device} ({})", m.fs_type)),
            }
        })
        .collect()
}

/// `major:minor` of the device holding `path`.
fn device_of(path: &Path) -> Option<String> {
    let st = rustix::fs::stat(path).ok()?;
    let dev = st.st_dev;
    Some(format!("{}:{}", rustix::fs::major(dev), rustix::fs::minor(dev)))
}

/// Errors ext4 recorded on `device` (`/sys/fs/ext4/<dev>/errors_count`), when it is ext4.
fn ext4_errors(root: &Path, device: &str) -> Option<u64> {
    let name = Path::new(device).file_name()?.to_str()?;
    let file = under(root, &Path::new("/sys/fs/ext4").join(name).join("errors_count"));
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_match_proc() {
        let f = figures().unwrap();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let total_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert_eq!(f.total_memory_mb, total_kb / 1024);
        assert!(f.available_memory_mb <= f.total_memory_mb);
        assert!(f.total_cpus >= 1);
        assert!(f.uptime_seconds > 0.0);
    }

    #[test]
    fn impossible_thresholds_give_pressure() {
        let strict = PressureThresholds {
            memory_available_bytes: u64::MAX,
            disk_available_percent: 101.0,
            inodes_free_percent: 0.0,
        };
        let h = assess(&strict, &[PathBuf::from("/")], Path::new("/"));
        assert!(h.system.iter().all(|o| o.status == CheckStatus::Impaired), "{h:?}");
        let relaxed = PressureThresholds {
            memory_available_bytes: 0,
            disk_available_percent: 0.0,
            inodes_free_percent: 0.0,
        };
        let h = assess(&relaxed, &[PathBuf::from("/")], Path::new("/"));
        assert!(h.system.iter().all(|o| o.status == CheckStatus::Ok), "{h:?}");
    }

    /// A host seen from a container: its memory, mounts and ext4 error counts come from the
    /// host root given, not from the agent's own /proc.
    #[test]
    fn a_host_root_is_read_instead_of_the_agents_own() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("proc/1")).unwrap();
        std::fs::create_dir_all(r.join("data")).unwrap();
        std::fs::create_dir_all(r.join("sys/fs/ext4/vda1")).unwrap();
        std::fs::write(
            r.join("proc/meminfo"),
            [
                "MemTotal:        4096000 kB",
                "MemFree:           10240 kB",
                "MemAvailable:      51200 kB",
                "Buffers: 0 kB",
                "Cached: 0 kB",
                "SwapCached: 0 kB",
                "Active: 0 kB",
                "Inactive: 0 kB",
                "SwapTotal: 0 kB",
                "SwapFree: 0 kB",
                "Dirty: 0 kB",
                "Writeback: 0 kB",
                "Mapped: 0 kB",
                "Slab: 0 kB",
                "Committed_AS: 0 kB",
                "VmallocTotal: 0 kB",
                "VmallocUsed: 0 kB",
                "VmallocChunk: 0 kB",
            ]
            .join("\n"),
        )
        .unwrap();
        std::fs::write(
            r.join("proc/1/mountinfo"),
            "26 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
             27 26 254:17 / /data ro,relatime shared:2 - xfs /dev/vdb ro\n\
             28 26 0:22 / /proc rw - proc proc rw\n",
        )
        .unwrap();
        std::fs::write(r.join("sys/fs/ext4/vda1/errors_count"), "3\n").unwrap();
        let t = PressureThresholds::default();
        let h = assess(&t, &[r.to_path_buf()], r);
        let memory = &h.system[0];
        assert_eq!(memory.status, CheckStatus::Impaired, "{memory:?}");
        assert!(memory.message.starts_with("50 MiB available of 4000 MiB"), "{memory:?}");
        let names: Vec<&str> = h.volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["/", "/data"], "the host's block mounts, not the agent's: {h:?}");
        assert_eq!(h.volumes[0].status, CheckStatus::Impaired);
        assert!(h.volumes[0].message.contains("3 filesystem errors"), "{:?}", h.volumes[0]);
        assert_eq!(h.volumes[1].status, CheckStatus::Ok);
        assert!(h.volumes[1].message.contains("read-only"), "{:?}", h.volumes[1]);
    }
}
