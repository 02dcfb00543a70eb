//! The owners' own verdicts on their instances (EC2's ReportInstanceStatus): in a cluster the
//! `spec.report` of this node's InstanceStatus objects, set with `kubectl patch`; standalone one
//! file per instance in the state folder's `reports/`. Both go into the store, which shows them
//! beside the status checks and never acts on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::runtime::watcher;
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, InstanceStatus, ReportedStatus, UserReport};
use crate::cluster::Objects;
use crate::engine::store::Store;

/// How often reports are looked at again: the folder read, and windows that begin or end.
pub const INTERVAL: Duration = Duration::from_secs(2);

/// What is wrong with a report, by field.
pub fn problems(report: &UserReport) -> Vec<String> {
    let mut problems = Vec::new();
    if report.status == ReportedStatus::Impaired && report.reasons.is_empty() {
        problems.push("reasons: an impaired report needs at least one reason".to_owned());
    }
    if let (Some(start), Some(end)) = (&report.start_time, &report.end_time)
        && end.0 <= start.0
    {
        problems.push("endTime: must be after startTime".to_owned());
    }
    if report.description.as_ref().is_some_and(|d| d.chars().count() > 512) {
        problems.push("description: at most 512 characters".to_owned());
    }
    problems
}

/// One report file: the same YAML as an InstanceStatus's `spec.report`.
pub fn parse(text: &str) -> Result<UserReport, String> {
    let doc = serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| e.to_string())?;
    let (report, unknown): (UserReport, _) = super::strict(doc, &[])?;
    if !unknown.is_empty() {
        return Err(format!(
            "unknown field {} (the fields are status, reasons, description, startTime, endTime)",
            unknown.join(", ")
        ));
    }
    let problems = problems(&report);
    if problems.is_empty() { Ok(report) } else { Err(problems.join("; ")) }
}

/// The reports folder: `<instance id or name>.yaml` each.
#[derive(Debug)]
pub struct ReportFolder {
    dir: PathBuf,
    /// By file: the last text read and what it gave (the last valid report of a file that
    /// became invalid is kept, and the problem said once).
    files: HashMap<PathBuf, (String, Option<UserReport>)>,
}

impl ReportFolder {
    /// The folder `dir` (created when absent, so that a user finds where to write).
    pub fn open(dir: &Path) -> std::io::Result<ReportFolder> {
        std::fs::create_dir_all(dir)?;
        Ok(ReportFolder { dir: dir.to_owned(), files: HashMap::new() })
    }

    /// Reads the folder: the reports by instance id or name.
    pub fn read(&mut self) -> HashMap<String, UserReport> {
        let mut seen = HashMap::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => {
                warn!(dir = %self.dir.display(), "cannot read the reports folder: {e}");
                return self.reports();
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_report = path.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json");
            if !is_report {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let previous = self.files.remove(&path);
            let entry = match previous {
                Some((old, report)) if old == text => (old, report),
                previous => match parse(&text) {
                    Ok(report) => {
                        info!(file = %path.display(), status = report.status.as_str(), "report taken");
                        (text, Some(report))
                    }
                    Err(problem) => {
                        let kept = previous.and_then(|(_, r)| r);
                        warn!(
                            file = %path.display(),
                            kept = kept.is_some(),
                            "invalid report, not taken (the last valid one stays): {problem}"
                        );
                        (text, kept)
                    }
                },
            };
            seen.insert(path, entry);
        }
        self.files = seen;
        self.reports()
    }

    fn reports(&self) -> HashMap<String, UserReport> {
        self.files
            .iter()
            .filter_map(|(path, (_, report))| {
                let instance = path.file_stem()?.to_str()?.to_owned();
                Some((instance, report.clone()?))
            })
            .collect()
    }
}

/// Standalone: reads the folder every [`INTERVAL`] into `store` until `cancel`.
pub async fn follow_folder(
    mut folder: ReportFolder,
    store: std::sync::Arc<Store>,
    cancel: CancellationToken,
) {
    let mut last = None;
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reports = tokio::task::block_in_place(|| folder.read());
        if last.as_ref() != Some(&reports) {
            store.set_reports(reports.clone());
            last = Some(reports);
        } else {
            store.refresh_reports();
        }
    }
}

/// In a cluster: watches this node's InstanceStatus objects for their `spec.report` until
/// `cancel`.
pub async fn watch_cluster(
    client: Client,
    node: String,
    store: std::sync::Arc<Store>,
    cancel: CancellationToken,
) {
    let api: Api<InstanceStatus> = Api::all(client);
    let selector = format!("{}={node}", api::labels::NODE);
    let mut objects = Objects::new(api, watcher::Config::default().labels(&selector));
    let mut tick = tokio::time::interval(INTERVAL);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = objects.changed() => match changed {
                Ok(()) => {
                    failing = false;
                    let reports: HashMap<String, UserReport> = objects
                        .current()
                        .values()
                        .filter_map(|doc| {
                            let report = doc.spec.report.clone()?;
                            let problems = problems(&report);
                            if !problems.is_empty() {
                                warn!(instance = doc.spec.instance.id, "invalid report, not taken: {}", problems.join("; "));
                                return None;
                            }
                            Some((doc.spec.instance.id.clone(), report))
                        })
                        .collect();
                    store.set_reports(reports);
                }
                Err(e) => {
                    if !failing {
                        warn!("watching this node's InstanceStatus reports: {e}");
                    }
                    failing = true;
                }
            },
            _ = tick.tick() => store.refresh_reports(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_files_are_checked_field_by_field() {
        let ok =
            parse("status: impaired\nreasons: [unresponsive, performance-network]\ndescription: ssh hangs\n")
                .unwrap();
        assert_eq!(ok.status, ReportedStatus::Impaired);
        assert_eq!(ok.reasons.len(), 2);
        assert!(parse("status: ok\n").is_ok());
        let no_reason = parse("status: impaired\n").unwrap_err();
        assert!(no_reason.contains("reasons: an impaired report needs at least one reason"), "{no_reason}");
        let bad_status = parse("status: broken\n").unwrap_err();
        assert!(bad_status.contains("status") && bad_status.contains("impaired"), "{bad_status}");
        let bad_reason = parse("status: impaired\nreasons: [slow]\n").unwrap_err();
        assert!(bad_reason.contains("reasons[0]") && bad_reason.contains("unresponsive"), "{bad_reason}");
        let window = parse("status: ok\nstartTime: 2026-12-02T10:00:00Z\nendTime: 2026-12-02T09:00:00Z\n")
            .unwrap_err();
        assert!(window.contains("endTime: must be after startTime"), "{window}");
        let unknown = parse("status: ok\nuntil: tomorrow\n").unwrap_err();
        assert!(unknown.contains("unknown field until"), "{unknown}");
    }

    #[test]
    fn an_invalid_edit_keeps_the_last_valid_report() {
        let dir = tempfile::tempdir().unwrap();
        let mut folder = ReportFolder::open(&dir.path().join("reports")).unwrap();
        let file = dir.path().join("reports/web-1.yaml");
        std::fs::write(&file, "status: impaired\nreasons: [unresponsive]\n").unwrap();
        assert_eq!(folder.read()["web-1"].status, ReportedStatus::Impaired);
        std::fs::write(&file, "status: impaired\n").unwrap();
        assert_eq!(folder.read()["web-1"].status, ReportedStatus::Impaired, "the valid one stays");
        std::fs::write(&file, "status: ok\n").unwrap();
        assert_eq!(folder.read()["web-1"].status, ReportedStatus::Ok);
        std::fs::remove_file(&file).unwrap();
        assert!(folder.read().is_empty());
    }
}
