//! Guard rails the engine enforces on every mutating action, whatever the script says, from
//! the teams file: freeze windows and blast-radius caps.
//!
//! ```yaml
//! freezes:
//!   - name: black-friday                 # one-off: RFC 3339 instants
//!     from: 2026-11-27T00:00:00Z
//!     until: 2026-11-30T00:00:00Z
//!     teams: [ml]                        # the teams' runbooks, and/or
//!     namespaces: [checkout]             # these namespaces; neither = everything
//!   - name: weekend                      # weekly, in a time zone
//!     weekly: { days: [sat, sun], from: "00:00", until: "24:00", tz: Europe/Berlin }
//!     namespaces: [ml-serving]
//! blast_radius:                          # across all runs and teams of this engine
//!   per_namespace: 5                     # mutating actions per namespace ...
//!   per_cluster: 20                      # ... and in all, within
//!   window: 10m                          # a sliding window
//! ```
//!
//! Inside a freeze window a mutation is refused unless its runbook says
//! `allow_during_freeze: true` and the run was approved (see the manifest's `approval`).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::diag::Diagnostic;

pub(crate) mod raw {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Freeze {
        pub name: String,
        pub from: Option<String>,
        pub until: Option<String>,
        pub weekly: Option<Weekly>,
        #[serde(default)]
        pub teams: Vec<String>,
        #[serde(default)]
        pub namespaces: Vec<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Weekly {
        pub days: Vec<String>,
        pub from: String,
        pub until: String,
        #[serde(default)]
        pub tz: Option<String>,
    }
}

/// What a team's Deployments must look like before firebreak writes them (checked on the
/// `workload` a deploying action's intent describes), as an admission policy would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPolicy {
    /// Every container has a readiness probe.
    #[serde(default)]
    pub readiness_probe: bool,
    /// Every container requests and limits cpu and memory.
    #[serde(default)]
    pub resources: bool,
    /// Images come from one of these prefixes (`registry.example.com/ml/`); empty: any.
    #[serde(default)]
    pub registries: Vec<String>,
}

impl DeployPolicy {
    /// What in `workload` (`{"containers": [{name, image, readiness_probe, requests,
    /// limits}]}`) breaks the policy.
    pub fn violations(&self, workload: &serde_json::Value) -> Vec<String> {
        let mut found = Vec::new();
        let containers = workload["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in &containers {
            let name = c["name"].as_str().unwrap_or("?");
            if self.readiness_probe && c["readiness_probe"] != true {
                found.push(format!("container {name} has no readinessProbe"));
            }
            if self.resources && (c["requests"] != true || c["limits"] != true) {
                found.push(format!(
                    "container {name} does not request and limit cpu and memory"
                ));
            }
            let image = c["image"].as_str().unwrap_or("");
            if !self.registries.is_empty()
                && !self
                    .registries
                    .iter()
                    .any(|r| image.starts_with(r.as_str()))
            {
                found.push(format!(
                    "container {name} image {image} is not from an allowed registry ({})",
                    self.registries.join(", ")
                ));
            }
        }
        found
    }
}

/// A caps on mutating actions in a sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlastRadiusSpec {
    pub per_namespace: Option<u32>,
    pub per_cluster: Option<u32>,
    #[serde(default = "default_window", with = "window_text")]
    pub window: Duration,
}

fn default_window() -> Duration {
    Duration::from_secs(600)
}

mod window_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::duration::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// When a freeze applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    Once {
        from: jiff::Timestamp,
        until: jiff::Timestamp,
    },
    /// Days of the week (Monday = 1) and minutes of the day `[from, until)` in `tz`.
    Weekly {
        days: Vec<i8>,
        from_minute: u32,
        until_minute: u32,
        tz: jiff::tz::TimeZone,
    },
}

/// A freeze window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    pub name: String,
    pub when: When,
    /// Runbooks of these teams are frozen (empty with empty `namespaces`: all).
    pub teams: Vec<String>,
    /// Actions in these namespaces are frozen.
    pub namespaces: Vec<String>,
}

impl Freeze {
    /// Whether this freeze covers an action of `team` in `namespace` at `at`.
    pub fn covers(&self, team: &str, namespace: Option<&str>, at: jiff::Timestamp) -> bool {
        let scoped = (self.teams.is_empty() && self.namespaces.is_empty())
            || self.teams.iter().any(|t| t == team)
            || namespace.is_some_and(|ns| self.namespaces.iter().any(|n| n == ns));
        scoped && self.active(at)
    }

    /// Whether the window is open at `at`.
    pub fn active(&self, at: jiff::Timestamp) -> bool {
        match &self.when {
            When::Once { from, until } => *from <= at && at < *until,
            When::Weekly {
                days,
                from_minute,
                until_minute,
                tz,
            } => {
                let local = at.to_zoned(tz.clone());
                let day = local.weekday().to_monday_one_offset();
                let minute = local.hour() as u32 * 60 + local.minute() as u32;
                days.contains(&day) && *from_minute <= minute && minute < *until_minute
            }
        }
    }
}

/// Checks the `freezes` of a teams file.
pub(crate) fn check_freezes(
    file: &Path,
    raw: Vec<raw::Freeze>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Freeze> {
    let mut freezes = Vec::new();
    for f in raw {
        let mut problem = |m: String| {
            diags.push(Diagnostic::new(
                file,
                1,
                1,
                format!("freeze {:?}: {m}", f.name),
            ))
        };
        let when = match (&f.from, &f.until, &f.weekly) {
            (Some(from), Some(until), None) => {
                match (
                    from.parse::<jiff::Timestamp>(),
                    until.parse::<jiff::Timestamp>(),
                ) {
                    (Ok(from), Ok(until)) if from < until => When::Once { from, until },
                    (Ok(_), Ok(_)) => {
                        problem("`from` must be before `until`".into());
                        continue;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        problem(format!(
                            "from/until must be RFC 3339 instants like 2026-11-27T00:00:00Z: {e}"
                        ));
                        continue;
                    }
                }
            }
            (None, None, Some(weekly)) => match check_weekly(weekly) {
                Ok(when) => when,
                Err(e) => {
                    problem(e);
                    continue;
                }
            },
            _ => {
                problem("give either `from` and `until`, or `weekly`".into());
                continue;
            }
        };
        freezes.push(Freeze {
            name: f.name,
            when,
            teams: f.teams,
            namespaces: f.namespaces,
        });
    }
    freezes
}

fn check_weekly(w: &raw::Weekly) -> Result<When, String> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let mut days = Vec::new();
    for d in &w.days {
        let lower = d.to_ascii_lowercase();
        let i = DAYS
            .iter()
            .position(|x| lower.starts_with(x))
            .ok_or_else(|| format!("weekly.days: {d:?} is not a day (mon … sun)"))?;
        days.push(i as i8 + 1);
    }
    if days.is_empty() {
        return Err("weekly.days is empty".into());
    }
    let minute = |t: &str| -> Result<u32, String> {
        let (h, m) = t
            .split_once(':')
            .ok_or_else(|| format!("{t:?} is not HH:MM"))?;
        let (h, m): (u32, u32) = (
            h.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
            m.parse().map_err(|_| format!("{t:?} is not HH:MM"))?,
        );
        if m >= 60 || h * 60 + m > 24 * 60 {
            return Err(format!("{t:?} is not a time of day (00:00 … 24:00)"));
        }
        Ok(h * 60 + m)
    };
    let (from_minute, until_minute) = (minute(&w.from)?, minute(&w.until)?);
    if from_minute >= until_minute {
        return Err(
            "weekly.from must be before weekly.until (split a window over midnight into two days)"
                .into(),
        );
    }
    let tz = match w.tz.as_deref() {
        None | Some("UTC") => jiff::tz::TimeZone::UTC,
        Some(name) => jiff::tz::TimeZone::get(name)
            .map_err(|e| format!("weekly.tz: unknown time zone {name:?}: {e}"))?,
    };
    Ok(When::Weekly {
        days,
        from_minute,
        until_minute,
        tz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weekly(days: &[&str], from: &str, until: &str, tz: &str) -> Freeze {
        let raw = raw::Weekly {
            days: days.iter().map(|d| d.to_string()).collect(),
            from: from.into(),
            until: until.into(),
            tz: Some(tz.into()),
        };
        Freeze {
            name: "w".into(),
            when: check_weekly(&raw).unwrap(),
            teams: vec![],
            namespaces: vec!["ml".into()],
        }
    }

    #[test]
    fn weekly_windows_follow_their_time_zone() {
        // Saturday 2026-12-05 00:30 in Berlin is Friday 23:30 UTC.
        let f = weekly(&["sat", "sun"], "00:00", "24:00", "Europe/Berlin");
        let fri_2330_utc: jiff::Timestamp = "2026-12-04T23:30:00Z".parse().unwrap();
        let fri_2230_utc: jiff::Timestamp = "2026-12-04T22:30:00Z".parse().unwrap();
        assert!(f.covers("any", Some("ml"), fri_2330_utc));
        assert!(!f.covers("any", Some("ml"), fri_2230_utc));
        assert!(
            !f.covers("any", Some("other"), fri_2330_utc),
            "scoped to ml"
        );
    }

    #[test]
    fn bad_freezes_are_named() {
        let mut diags = Vec::new();
        let raw = vec![
            raw::Freeze {
                name: "backwards".into(),
                from: Some("2026-12-02T00:00:00Z".into()),
                until: Some("2026-12-01T00:00:00Z".into()),
                weekly: None,
                teams: vec![],
                namespaces: vec![],
            },
            raw::Freeze {
                name: "tz".into(),
                from: None,
                until: None,
                weekly: Some(raw::Weekly {
                    days: vec!["sat".into()],
                    from: "00:00".into(),
                    until: "24:00".into(),
                    tz: Some("Mars/Olympus".into()),
                }),
                teams: vec![],
                namespaces: vec![],
            },
        ];
        let freezes = check_freezes(Path::new("teams.yaml"), raw, &mut diags);
        assert!(freezes.is_empty());
        let text = diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            text.contains("backwards") && text.contains("before"),
            "{text}"
        );
        assert!(text.contains("Mars/Olympus"), "{text}");
    }
}
