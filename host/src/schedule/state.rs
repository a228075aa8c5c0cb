//! Durable schedule state: what a scheduler has done, kept in one small
//! JSON file per probe under `--state-dir`, so a restart resumes where the
//! last process stopped instead of at the moment it started.
//!
//! The file holds the last scheduled instant the probe fired, missed or
//! skipped (CronJob's `lastScheduleTime`), and the last run's result. On
//! start, the scheduler considers only instants after that one: a firing
//! that fell due while pulse was down runs late, once, if it is still within
//! `startingDeadlineSeconds`, and is logged missed otherwise. The instant is
//! written before its run starts, so a crash during a run never makes it run
//! twice. Every write goes to a temporary file that is synced and renamed
//! over the old one, so a crash mid-write leaves the old state or the new,
//! never half of one.
//!
//! A file written for another schedule or time zone is not resumed from:
//! the changed schedule starts afresh (and says so). A file that cannot be
//! read or parsed is renamed aside with a `.corrupt-<unix time>` suffix and
//! reported; scheduling goes on afresh. Without `--state-dir`, the same
//! record lives in memory only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ops::metrics::Remembered;
use crate::probe::{Outcome, ProbeRecord};
use crate::schedule::cron::Schedule;

/// The version of the file format this build writes and reads.
const FORMAT_VERSION: u32 = 1;

/// The directory holding every probe's state file.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Creates `dir` if needed and checks that pulse can write there; the
    /// error names the directory and the setting.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let fail = |what: &str| {
            format!(
                "cannot {what} --state-dir {}: give a writable directory (an emptyDir in Kubernetes), or leave the setting out to keep schedule state in memory only",
                dir.display()
            )
        };
        std::fs::create_dir_all(dir).with_context(|| fail("create"))?;
        let check = dir.join(".pulse-write-check");
        std::fs::write(&check, b"").with_context(|| fail("write to"))?;
        let _ = std::fs::remove_file(&check);
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// The state file of the probe called `name`.
    fn file_of(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}.json", file_stem(name)))
    }
}

/// A probe name as a file name: letters, digits, `-`, `_` and `.` stay, any
/// other byte becomes `%XX`, so distinct names never share a file.
fn file_stem(name: &str) -> String {
    let mut stem = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.') {
            stem.push(char::from(byte));
        } else {
            stem.push_str(&format!("%{byte:02X}"));
        }
    }
    stem
}

/// What the scheduler decided about a scheduled instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// A run was started for it.
    Fired,
    /// It could not start within the starting deadline.
    Missed,
    /// The previous run was still going (concurrencyPolicy Forbid).
    Skipped,
}

/// One probe's state file, as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The file format's version.
    pub version: u32,
    /// The probe's name.
    pub probe: String,
    /// The cron expression the record was kept for.
    pub schedule: String,
    /// The time zone the record was kept for.
    pub time_zone: String,
    /// Since when this schedule has been kept.
    pub tracked_since: DateTime<Utc>,
    /// The last scheduled instant fired, missed or skipped.
    #[serde(default)]
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// What happened to it.
    #[serde(default)]
    pub last_decision: Option<Decision>,
    /// When the last run (scheduled or not) ended.
    #[serde(default)]
    pub last_run_time: Option<DateTime<Utc>>,
    /// How it ended.
    #[serde(default)]
    pub last_outcome: Option<Outcome>,
    /// The HTTP status it got, if any.
    #[serde(default)]
    pub last_status: Option<u16>,
    /// When the last healthy run ended.
    #[serde(default)]
    pub last_successful_time: Option<DateTime<Utc>>,
}

impl Record {
    /// What this record remembers of earlier runs, for the metrics.
    pub fn remembered(&self, suspended: bool) -> Remembered {
        Remembered {
            tracked_since: self.tracked_since,
            last_success: self.last_successful_time,
            last_outcome: self.last_outcome,
            last_status: self.last_status,
            suspended,
        }
    }

    fn fresh(name: &str, schedule: &Schedule, now: DateTime<Utc>) -> Self {
        Self {
            version: FORMAT_VERSION,
            probe: name.to_owned(),
            schedule: schedule.expression().to_owned(),
            time_zone: schedule.zone().name().to_owned(),
            tracked_since: now,
            last_schedule_time: None,
            last_decision: None,
            last_run_time: None,
            last_outcome: None,
            last_status: None,
            last_successful_time: None,
        }
    }

    fn kept_for(&self, schedule: &Schedule) -> bool {
        self.schedule == schedule.expression() && self.time_zone == schedule.zone().name()
    }
}

/// One probe's schedule state: read once at start, written on every
/// decision and every finished run.
#[derive(Debug)]
pub struct ProbeState {
    file: Option<PathBuf>,
    record: Mutex<Record>,
}

impl ProbeState {
    /// State kept in memory only.
    pub fn in_memory(name: &str, schedule: &Schedule, now: DateTime<Utc>) -> Self {
        Self {
            file: None,
            record: Mutex::new(Record::fresh(name, schedule, now)),
        }
    }

    /// Reads the state of probe `name` from `dir`, or starts afresh (and
    /// says why) when there is none, it was kept for another schedule, or
    /// it cannot be read.
    pub fn load(dir: &StateDir, name: &str, schedule: &Schedule, now: DateTime<Utc>) -> Self {
        let file = dir.file_of(name);
        let record = match read(&file) {
            Ok(None) => {
                tracing::info!(probe = name, state_file = %file.display(), "no schedule state yet; starting afresh");
                Record::fresh(name, schedule, now)
            }
            Ok(Some(record)) if !record.kept_for(schedule) => {
                tracing::warn!(event = "state_schedule_changed",
                    probe = name,
                    state_file = %file.display(),
                    was_schedule = record.schedule,
                    was_time_zone = record.time_zone,
                    schedule = schedule.expression(),
                    time_zone = %schedule.zone(),
                    "the schedule changed since the state was written; starting afresh"
                );
                Record::fresh(name, schedule, now)
            }
            Ok(Some(record)) => {
                tracing::info!(
                    probe = name,
                    state_file = %file.display(),
                    last_schedule_time = record.last_schedule_time.map(|t| t.to_rfc3339()),
                    last_decision = ?record.last_decision,
                    last_successful_time = record.last_successful_time.map(|t| t.to_rfc3339()),
                    "resuming from schedule state"
                );
                record
            }
            Err(reason) => {
                set_aside(name, &file, &reason, now);
                Record::fresh(name, schedule, now)
            }
        };
        let state = Self {
            file: Some(file),
            record: Mutex::new(record),
        };
        state.save();
        state
    }

    /// A copy of the record as it is now.
    pub fn snapshot(&self) -> Record {
        self.lock().clone()
    }

    /// The instant scheduling resumes after: the last one decided, or
    /// `now` when none was.
    pub fn resume_after(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.lock().last_schedule_time.unwrap_or(now)
    }

    /// Records what was decided for the scheduled instant `at`, durably,
    /// before any run for it starts.
    pub async fn decided(self: &Arc<Self>, at: DateTime<Utc>, decision: Decision) {
        {
            let mut record = self.lock();
            record.last_schedule_time = Some(at);
            record.last_decision = Some(decision);
        }
        self.persist().await;
    }

    /// Records a finished run.
    pub async fn ran(self: &Arc<Self>, run: &ProbeRecord, ended: DateTime<Utc>) {
        {
            let mut record = self.lock();
            record.last_run_time = Some(ended);
            record.last_outcome = Some(run.outcome);
            record.last_status = run.status;
            if run.outcome == Outcome::Healthy {
                record.last_successful_time = Some(ended);
            }
        }
        self.persist().await;
    }

    /// [`ProbeState::save`] on a blocking thread: its fsyncs can take
    /// milliseconds, which an async worker that also serves requests must
    /// not spend waiting. Returns once the write is done.
    async fn persist(self: &Arc<Self>) {
        if self.file.is_none() {
            return;
        }
        let state = Arc::clone(self);
        if let Err(e) = tokio::task::spawn_blocking(move || state.save()).await {
            tracing::error!(error = %e, "the schedule state write did not finish");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        // A panic while holding the lock cannot leave a record half
        // updated (each update is a few plain assignments), so a poisoned
        // lock is still good.
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Writes the record, if it has a file; a failure is logged, and the
    /// next write tries again.
    fn save(&self) {
        let Some(file) = &self.file else { return };
        // Hold the lock across the write so writes land in order.
        let record = self.lock();
        if let Err(e) = write_atomically(file, &record) {
            tracing::error!(state_file = %file.display(), error = format!("{e:#}"),
                "cannot write schedule state; a restart may repeat or lose this decision");
        }
    }
}

/// The record in `file`: `None` if there is no file, an error saying what
/// is wrong with it otherwise.
fn read(file: &Path) -> Result<Option<Record>, String> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let record: Record =
        serde_json::from_str(&text).map_err(|e| format!("it is not a state record: {e}"))?;
    if record.version != FORMAT_VERSION {
        return Err(format!(
            "it has format version {}, this pulse reads version {FORMAT_VERSION}",
            record.version
        ));
    }
    Ok(Some(record))
}

/// Renames an unusable state file aside and reports it.
fn set_aside(name: &str, file: &Path, reason: &str, now: DateTime<Utc>) {
    let mut aside = file.as_os_str().to_owned();
    aside.push(format!(".corrupt-{}", now.timestamp()));
    let aside = PathBuf::from(aside);
    match std::fs::rename(file, &aside) {
        Ok(()) => tracing::error!(event = "state_set_aside",
            probe = name,
            state_file = %file.display(),
            moved_to = %aside.display(),
            reason,
            "unusable schedule state set aside; starting afresh (the firing due now, if any, is not known to have run)"
        ),
        Err(e) => tracing::error!(
            probe = name,
            state_file = %file.display(),
            reason,
            error = %e,
            "unusable schedule state could not be set aside; starting afresh, and it will be overwritten"
        ),
    }
}

/// Writes `record` to `file` through a synced temporary file and a rename,
/// then syncs the directory so the rename itself is durable.
fn write_atomically(file: &Path, record: &Record) -> anyhow::Result<()> {
    let mut text = serde_json::to_vec_pretty(record)?;
    text.push(b'\n');
    let mut temporary = file.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut out = std::fs::File::create(&temporary)
        .with_context(|| format!("cannot create {}", temporary.display()))?;
    out.write_all(&text)?;
    out.sync_all()?;
    drop(out);
    std::fs::rename(&temporary, file)
        .with_context(|| format!("cannot rename {} into place", temporary.display()))?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(expression: &str) -> Schedule {
        Schedule::parse(expression, chrono_tz::Tz::UTC).unwrap()
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn temporary_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pulse-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_map_to_distinct_safe_file_names() {
        assert_eq!(file_stem("probe"), "probe");
        assert_eq!(file_stem("a/b"), "a%2Fb");
        assert_ne!(file_stem("a/b"), file_stem("a%2Fb"));
        assert_eq!(file_stem("é"), "%C3%A9");
    }

    #[tokio::test]
    async fn a_decision_survives_a_restart_and_a_changed_schedule_starts_afresh() {
        let dir = temporary_dir("resume");
        let states = StateDir::open(&dir).unwrap();
        let daily = schedule("0 8 * * *");
        let state = Arc::new(ProbeState::load(
            &states,
            "probe",
            &daily,
            at("2026-05-01T07:00:00Z"),
        ));
        assert_eq!(
            state.resume_after(at("2026-05-01T07:00:00Z")),
            at("2026-05-01T07:00:00Z")
        );
        state
            .decided(at("2026-05-01T08:00:00Z"), Decision::Fired)
            .await;
        drop(state);

        let again = ProbeState::load(&states, "probe", &daily, at("2026-05-01T08:00:02Z"));
        assert_eq!(
            again.resume_after(at("2026-05-01T08:00:02Z")),
            at("2026-05-01T08:00:00Z")
        );
        assert_eq!(again.snapshot().tracked_since, at("2026-05-01T07:00:00Z"));

        let hourly = schedule("0 * * * *");
        let changed = ProbeState::load(&states, "probe", &hourly, at("2026-05-01T08:30:00Z"));
        assert_eq!(
            changed.resume_after(at("2026-05-01T08:30:00Z")),
            at("2026-05-01T08:30:00Z")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_file_is_set_aside_and_a_fresh_one_written() {
        let dir = temporary_dir("corrupt");
        let states = StateDir::open(&dir).unwrap();
        std::fs::write(dir.join("probe.json"), b"{not json").unwrap();
        let now = at("2026-05-01T08:00:00Z");
        let state = ProbeState::load(&states, "probe", &schedule("0 8 * * *"), now);
        assert_eq!(state.resume_after(now), now);
        let aside = dir.join(format!("probe.json.corrupt-{}", now.timestamp()));
        assert_eq!(std::fs::read(&aside).unwrap(), b"{not json");
        let written: Record =
            serde_json::from_slice(&std::fs::read(dir.join("probe.json")).unwrap()).unwrap();
        assert_eq!(written.tracked_since, now);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
