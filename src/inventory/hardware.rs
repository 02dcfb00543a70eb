//! The host's hardware, for its System check: CPU temperatures against their critical trip points
//! and CPU throttling from sysfs, and disk health from `smartctl --json` (Debian's
//! `smartmontools`). Where the host exposes nothing (a VM has no thermal zones, a virtio disk no
//! SMART), the detail is `insufficient-data` with the reason, never a made-up figure.
//!
//! Everything is read under the host root (`--host-root`), so that fixture trees stand in for a
//! real host in tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::host::{Observation, under};
use crate::api::CheckStatus;

/// The detail names.
pub mod names {
    /// The hottest thermal zone against its critical trip point.
    pub const TEMPERATURE: &str = "cpu-temperature";
    /// CPU throttling events.
    pub const THROTTLING: &str = "cpu-throttling";
    /// One per disk: `disk-health:<device>`; alone when no disk could be asked.
    pub const DISK_HEALTH: &str = "disk-health";
}

/// Whether `detail` is one of these sensors: shown as `insufficient-data` where the host has
/// none, without making the whole System check so (a VM has no thermal zones; that says nothing
/// about its health). Impaired, it impairs the check like any other detail.
pub fn is_sensor(detail: &str) -> bool {
    detail == names::TEMPERATURE || detail == names::THROTTLING || detail.starts_with(names::DISK_HEALTH)
}

/// How long the CPU counts as throttled after its counters last grew: one event does not flap
/// the System check.
pub const THROTTLE_HOLD: Duration = Duration::from_secs(60);

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// One thermal zone as read.
#[derive(Clone, Debug, PartialEq)]
struct Zone {
    name: String,
    celsius: f64,
    /// The `critical` trip point (else `hot`), °C.
    critical: Option<f64>,
}

fn zones(root: &Path) -> Result<Vec<Zone>, String> {
    let dir = under(root, Path::new("/sys/class/thermal"));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return Ok(Vec::new()),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("thermal_zone")))
        .collect();
    paths.sort();
    let mut zones = Vec::new();
    let mut unreadable = Vec::new();
    for zone in &paths {
        let label = zone.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let name = read_trimmed(&zone.join("type")).unwrap_or_else(|| label.clone());
        // Millidegrees; a zone whose sensor does not answer (EINVAL, ENODATA) is left out.
        let Some(milli) = read_trimmed(&zone.join("temp")).and_then(|t| t.parse::<i64>().ok()) else {
            unreadable.push(label);
            continue;
        };
        let mut critical = None;
        let mut hot = None;
        for i in 0..32 {
            let Some(kind) = read_trimmed(&zone.join(format!("trip_point_{i}_type"))) else { break };
            let temp = read_trimmed(&zone.join(format!("trip_point_{i}_temp")))
                .and_then(|t| t.parse::<i64>().ok())
                .filter(|t| *t > 0)
                .map(|t| t as f64 / 1000.0);
            match kind.as_str() {
                "critical" => critical = critical.or(temp),
                "hot" => hot = hot.or(temp),
                _ => {}
            }
        }
        zones.push(Zone { name, celsius: milli as f64 / 1000.0, critical: critical.or(hot) });
    }
    if zones.is_empty() && !unreadable.is_empty() {
        return Err(format!("no thermal zone answered ({})", unreadable.join(", ")));
    }
    Ok(zones)
}

/// The hottest zone against its critical trip point.
pub fn temperature(root: &Path) -> Observation {
    let zones = match zones(root) {
        Ok(z) => z,
        Err(why) => return Observation::new(names::TEMPERATURE, CheckStatus::InsufficientData, why),
    };
    if zones.is_empty() {
        return Observation::new(
            names::TEMPERATURE,
            CheckStatus::InsufficientData,
            "the host exposes no thermal zones (/sys/class/thermal), as in a VM",
        );
    }
    if let Some(z) = zones.iter().find(|z| z.critical.is_some_and(|c| z.celsius >= c)) {
        return Observation::new(
            names::TEMPERATURE,
            CheckStatus::Impaired,
            format!(
                "{} at {:.1} °C, at or above its critical trip point {:.1} °C",
                z.name,
                z.celsius,
                z.critical.unwrap_or_default()
            ),
        );
    }
    let hottest = zones.iter().max_by(|a, b| a.celsius.total_cmp(&b.celsius)).unwrap_or(&zones[0]);
    let limit = hottest.critical.map(|c| format!(", critical at {c:.1} °C")).unwrap_or_default();
    Observation::new(
        names::TEMPERATURE,
        CheckStatus::Ok,
        format!("hottest of {} zones: {} at {:.1} °C{limit}", zones.len(), hottest.name, hottest.celsius),
    )
}

/// CPU throttling, from the counters of `thermal_throttle`: impaired while they grew within
/// [`THROTTLE_HOLD`]. Keeps the last counts between assessments.
#[derive(Debug, Default)]
pub struct Throttling {
    last: Option<u64>,
    grew_at: Option<Instant>,
    grew_by: u64,
}

impl Throttling {
    /// Reads the counters now.
    pub fn assess(&mut self, root: &Path, now: Instant) -> Observation {
        let Some(total) = throttle_events(root) else {
            self.last = None;
            return Observation::new(
                names::THROTTLING,
                CheckStatus::InsufficientData,
                "the CPUs expose no throttle counters (thermal_throttle), as in a VM",
            );
        };
        if let Some(last) = self.last
            && total > last
        {
            self.grew_at = Some(now);
            self.grew_by = total - last;
        }
        self.last = Some(total);
        match self.grew_at {
            Some(at) if now.saturating_duration_since(at) < THROTTLE_HOLD => Observation::new(
                names::THROTTLING,
                CheckStatus::Impaired,
                format!("the CPU is being throttled: {} more events ({total} since boot)", self.grew_by),
            ),
            _ => Observation::new(
                names::THROTTLING,
                CheckStatus::Ok,
                format!("not throttled lately ({total} events since boot)"),
            ),
        }
    }
}

/// Core and package throttle events over every CPU, when any CPU counts them.
fn throttle_events(root: &Path) -> Option<u64> {
    let dir = under(root, Path::new("/sys/devices/system/cpu"));
    let mut total = None;
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.strip_prefix("cpu").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        for counter in ["core_throttle_count", "package_throttle_count"] {
            if let Some(n) = read_trimmed(&entry.path().join("thermal_throttle").join(counter))
                .and_then(|v| v.parse::<u64>().ok())
            {
                *total.get_or_insert(0) += n;
            }
        }
    }
    total
}

/// SMART attributes whose raw value above zero means data at risk now (Backblaze's failure
/// predictors): reported sectors, pending sectors, uncorrectable sectors.
const AT_RISK: &[(u64, &str)] = &[
    (5, "reallocated sectors"),
    (187, "reported uncorrectable errors"),
    (197, "pending sectors"),
    (198, "offline uncorrectable sectors"),
];

/// The detail of one disk from `smartctl --json -H -A` output.
pub fn judge_smart(device: &str, answer: &Value) -> Observation {
    let name = format!("{}:{}", names::DISK_HEALTH, device.trim_start_matches("/dev/"));
    let messages: Vec<&str> = answer["smartctl"]["messages"]
        .as_array()
        .map(|m| m.iter().filter_map(|m| m["string"].as_str()).collect())
        .unwrap_or_default();
    let Some(passed) = answer["smart_status"]["passed"].as_bool() else {
        let why = if messages.is_empty() { "no SMART status".to_owned() } else { messages.join("; ") };
        return Observation::new(name, CheckStatus::InsufficientData, format!("{device}: {why}"));
    };
    let model = answer["model_name"].as_str().unwrap_or("disk");
    if !passed {
        return Observation::new(
            name,
            CheckStatus::Impaired,
            format!("{device} ({model}): SMART overall-health self-assessment FAILED"),
        );
    }
    let nvme = &answer["nvme_smart_health_information_log"];
    if let Some(warning) = nvme["critical_warning"].as_u64().filter(|w| *w != 0) {
        return Observation::new(
            name,
            CheckStatus::Impaired,
            format!("{device} ({model}): NVMe critical warning 0x{warning:02x} ({})", nvme_warnings(warning)),
        );
    }
    let mut risks = Vec::new();
    for attr in answer["ata_smart_attributes"]["table"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let id = attr["id"].as_u64().unwrap_or_default();
        let raw = attr["raw"]["value"].as_u64().unwrap_or_default();
        let failed = attr["when_failed"].as_str().unwrap_or_default();
        if !failed.is_empty() {
            risks.push(format!("{} failing ({failed})", attr["name"].as_str().unwrap_or("an attribute")));
        } else if let Some((_, what)) = AT_RISK.iter().find(|(i, _)| *i == id).filter(|_| raw > 0) {
            risks.push(format!("{raw} {what}"));
        }
    }
    if let Some(errors) = nvme["media_errors"].as_u64().filter(|n| *n > 0) {
        risks.push(format!("{errors} media errors"));
    }
    if risks.is_empty() {
        let temperature =
            answer["temperature"]["current"].as_u64().map(|t| format!(", {t} °C")).unwrap_or_default();
        Observation::new(name, CheckStatus::Ok, format!("{device} ({model}): SMART passed{temperature}"))
    } else {
        Observation::new(name, CheckStatus::Impaired, format!("{device} ({model}): {}", risks.join(", ")))
    }
}

fn nvme_warnings(bits: u64) -> String {
    const BITS: [&str; 6] = [
        "spare below threshold",
        "temperature out of range",
        "reliability degraded",
        "read-only",
        "volatile backup failed",
        "persistent memory read-only",
    ];
    let named: Vec<&str> =
        BITS.iter().enumerate().filter(|(i, _)| bits & (1 << i) != 0).map(|(_, n)| *n).collect();
    if named.is_empty() { "unknown bits".to_owned() } else { named.join(", ") }
}

/// Disk health through `smartctl`, asked at most once per `interval` (SMART queries are not free
/// and the figures move slowly); the last details are kept in between.
#[derive(Debug)]
pub struct DiskHealth {
    smartctl: PathBuf,
    interval: Duration,
    last: Option<(Instant, Vec<Observation>)>,
}

impl DiskHealth {
    /// Disk health with the `smartctl` program found at `smartctl` (or on `PATH`).
    pub fn new(smartctl: PathBuf, interval: Duration) -> DiskHealth {
        DiskHealth { smartctl, interval, last: None }
    }

    /// The details now, asking the disks again when the last answer is older than the interval.
    pub fn assess(&mut self, now: Instant) -> Vec<Observation> {
        if let Some((at, details)) = &self.last
            && now.saturating_duration_since(*at) < self.interval
        {
            return details.clone();
        }
        let details = self.ask();
        self.last = Some((now, details.clone()));
        details
    }

    fn run(&self, args: &[&str]) -> Result<Value, String> {
        let out = std::process::Command::new(&self.smartctl)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    format!("{} is not installed (Debian package smartmontools)", self.smartctl.display())
                }
                _ => format!("cannot run {}: {e}", self.smartctl.display()),
            })?;
        // smartctl's exit status is a bit mask of findings; the JSON says what they are.
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{} {} did not answer JSON: {e}", self.smartctl.display(), args.join(" ")))
    }

    fn ask(&self) -> Vec<Observation> {
        let alone =
            |why: String| vec![Observation::new(names::DISK_HEALTH, CheckStatus::InsufficientData, why)];
        let scan = match self.run(&["--scan", "--json"]) {
            Ok(s) => s,
            Err(why) => return alone(why),
        };
        let devices: Vec<(String, String)> = scan["devices"]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|d| {
                        Some((
                            d["name"].as_str()?.to_owned(),
                            d["type"].as_str().unwrap_or("auto").to_owned(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if devices.is_empty() {
            return alone(
                "smartctl --scan found no disk that speaks SMART (virtual disks do not)".to_owned(),
            );
        }
        devices
            .iter()
            .map(|(device, kind)| {
                // -n standby: a disk that sleeps is not woken for this.
                match self.run(&["--json", "-H", "-A", "-n", "standby", "-d", kind, device]) {
                    Ok(answer) => judge_smart(device, &answer),
                    Err(why) => Observation::new(
                        format!("{}:{}", names::DISK_HEALTH, device.trim_start_matches("/dev/")),
                        CheckStatus::InsufficientData,
                        why,
                    ),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let path = under(root, Path::new(path));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_host_without_thermal_zones_or_throttle_counters_is_insufficient_data() {
        let root = tempfile::tempdir().unwrap();
        let t = temperature(root.path());
        assert_eq!(t.status, CheckStatus::InsufficientData);
        assert!(t.message.contains("no thermal zones"), "{t:?}");
        let mut throttling = Throttling::default();
        let o = throttling.assess(root.path(), Instant::now());
        assert_eq!(o.status, CheckStatus::InsufficientData);
        assert!(o.message.contains("no throttle counters"), "{o:?}");
    }

    #[test]
    fn the_hottest_zone_is_judged_against_its_critical_trip_point() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "/sys/class/thermal/thermal_zone0/type", "acpitz\n");
        write(r, "/sys/class/thermal/thermal_zone0/temp", "27800\n");
        write(r, "/sys/class/thermal/thermal_zone0/trip_point_0_type", "critical\n");
        write(r, "/sys/class/thermal/thermal_zone0/trip_point_0_temp", "119000\n");
        write(r, "/sys/class/thermal/thermal_zone1/type", "x86_pkg_temp\n");
        write(r, "/sys/class/thermal/thermal_zone1/temp", "54000\n");
        write(r, "/sys/class/thermal/thermal_zone1/trip_point_0_type", "passive\n");
        write(r, "/sys/class/thermal/thermal_zone1/trip_point_0_temp", "90000\n");
        write(r, "/sys/class/thermal/thermal_zone1/trip_point_1_type", "hot\n");
        write(r, "/sys/class/thermal/thermal_zone1/trip_point_1_temp", "100000\n");
        // A zone whose sensor does not answer is left out, not read as 0 °C.
        write(r, "/sys/class/thermal/thermal_zone2/type", "iwlwifi_1\n");
        write(r, "/sys/class/thermal/cooling_device0/type", "Processor\n");
        let t = temperature(r);
        assert_eq!(t.status, CheckStatus::Ok, "{t:?}");
        assert_eq!(t.message, "hottest of 2 zones: x86_pkg_temp at 54.0 °C, critical at 100.0 °C");
        write(r, "/sys/class/thermal/thermal_zone1/temp", "100500\n");
        let t = temperature(r);
        assert_eq!(t.status, CheckStatus::Impaired);
        assert_eq!(t.message, "x86_pkg_temp at 100.5 °C, at or above its critical trip point 100.0 °C");
    }

    #[test]
    fn growing_throttle_counters_impair_for_a_while() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        write(r, "/sys/devices/system/cpu/cpu0/thermal_throttle/core_throttle_count", "3\n");
        write(r, "/sys/devices/system/cpu/cpu0/thermal_throttle/package_throttle_count", "4\n");
        write(r, "/sys/devices/system/cpu/cpu1/thermal_throttle/core_throttle_count", "0\n");
        write(r, "/sys/devices/system/cpu/cpufreq/ondemand", "");
        let mut t = Throttling::default();
        let start = Instant::now();
        let o = t.assess(r, start);
        assert_eq!(
            (o.status, o.message.as_str()),
            (CheckStatus::Ok, "not throttled lately (7 events since boot)")
        );
        write(r, "/sys/devices/system/cpu/cpu1/thermal_throttle/core_throttle_count", "5\n");
        let o = t.assess(r, start + Duration::from_secs(10));
        assert_eq!(o.status, CheckStatus::Impaired);
        assert_eq!(o.message, "the CPU is being throttled: 5 more events (12 since boot)");
        // Still within the hold, counters unchanged: still throttled.
        assert_eq!(t.assess(r, start + Duration::from_secs(40)).status, CheckStatus::Impaired);
        assert_eq!(t.assess(r, start + Duration::from_secs(71)).status, CheckStatus::Ok);
    }

    fn recorded(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smart").join(name);
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn smart_answers_are_judged() {
        let ok = judge_smart("/dev/sda", &recorded("sata-healthy.json"));
        assert_eq!(ok.name, "disk-health:sda");
        assert_eq!(ok.status, CheckStatus::Ok, "{ok:?}");
        assert_eq!(ok.message, "/dev/sda (Samsung SSD 860 EVO 500GB): SMART passed, 31 °C");
        let pending = judge_smart("/dev/sdb", &recorded("sata-pending-sectors.json"));
        assert_eq!(pending.status, CheckStatus::Impaired);
        assert_eq!(
            pending.message,
            "/dev/sdb (WDC WD40EFRX-68N32N0): 8 pending sectors, 8 offline uncorrectable sectors"
        );
        let failed = judge_smart("/dev/sdc", &recorded("sata-failed.json"));
        assert_eq!(failed.status, CheckStatus::Impaired);
        assert!(failed.message.ends_with("SMART overall-health self-assessment FAILED"), "{failed:?}");
        let nvme = judge_smart("/dev/nvme0", &recorded("nvme-spare-low.json"));
        assert_eq!(nvme.status, CheckStatus::Impaired);
        assert_eq!(
            nvme.message,
            "/dev/nvme0 (Samsung SSD 970 EVO Plus 1TB): NVMe critical warning 0x01 (spare below threshold)"
        );
        let virtio = judge_smart("/dev/vda", &recorded("virtio-unsupported.json"));
        assert_eq!(virtio.status, CheckStatus::InsufficientData);
        assert!(virtio.message.starts_with("/dev/vda: /dev/vda: Unable to detect device type"), "{virtio:?}");
    }

    #[test]
    fn without_smartctl_disk_health_says_what_to_install() {
        let mut disks = DiskHealth::new(PathBuf::from("/nonexistent/smartctl"), Duration::from_secs(300));
        let details = disks.assess(Instant::now());
        assert_eq!(details.len(), 1);
        assert_eq!(details[0].name, "disk-health");
        assert_eq!(details[0].status, CheckStatus::InsufficientData);
        assert!(details[0].message.contains("smartmontools"), "{details:?}");
    }
}
