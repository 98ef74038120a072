//! Durations and instants as scripts write them, turned into what the Prometheus API takes.
//!
//! Start at [`parse_duration`] (`"10m"`, `"1h30m"`, `"30s"`, or whole seconds, the form
//! docs/ARCHITECTURE.md's "Duration params" asks every connector to accept) and
//! [`parse_time`] (RFC 3339, Unix seconds, `"now"`, or `"now-10m"`/`"-10m"` relative to now).
//! Everything here is pure; "now" is passed in.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

/// Prometheus's duration units, longest suffix first so `ms` is not read as `m`.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
    ("w", 604_800_000),
    ("y", 31_536_000_000),
];

/// Parses a positive duration: Prometheus syntax (`"90s"`, `"1h30m"`, `"500ms"`) or a number
/// of seconds (`30`, `"30"`, `0.5`).
pub fn parse_duration(value: &Value) -> Result<Duration, String> {
    let duration = match value {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            seconds(secs).ok_or_else(|| format!("{n} is not a number of seconds"))?
        }
        Value::String(text) => parse_duration_text(text)?,
        other => {
            return Err(format!(
                "expected a duration like \"5m\" or seconds, got {other}"
            ));
        }
    };
    if duration.is_zero() {
        return Err("duration must be greater than zero".to_owned());
    }
    Ok(duration)
}

fn seconds(secs: f64) -> Option<Duration> {
    (0.0..1e12)
        .contains(&secs)
        .then(|| Duration::from_secs_f64(secs))
}

fn parse_duration_text(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("{text:?} is not a duration (use e.g. \"30s\", \"5m\", \"1h30m\" or seconds)");
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<f64>() {
        return seconds(secs).ok_or_else(bad);
    }
    let mut rest = trimmed;
    let mut millis: u64 = 0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, factor) = UNITS
            .iter()
            .find(|(unit, _)| rest.starts_with(unit))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        millis = amount
            .checked_mul(*factor)
            .and_then(|m| millis.checked_add(m))
            .ok_or_else(bad)?;
    }
    Ok(Duration::from_millis(millis))
}

/// Parses an instant: RFC 3339 (`"2026-11-27T04:00:00Z"`), Unix seconds (number or numeric
/// string), `"now"`, or now minus a duration (`"now-10m"`, `"-10m"`).
pub fn parse_time(value: &Value, now: Timestamp) -> Result<Timestamp, String> {
    match value {
        Value::Number(n) => {
            let secs = n.as_f64().unwrap_or(f64::NAN);
            from_unix(secs).ok_or_else(|| format!("{n} is not a Unix time in seconds"))
        }
        Value::String(text) => {
            let t = text.trim();
            if t == "now" {
                return Ok(now);
            }
            if let Some(ago) = t.strip_prefix("now-").or_else(|| t.strip_prefix('-')) {
                let ago = parse_duration_text(ago).map_err(|_| {
                    format!("{text:?}: expected \"now-<duration>\", e.g. \"now-10m\"")
                })?;
                let ago = SignedDuration::try_from(ago).map_err(|e| format!("{text:?}: {e}"))?;
                return now.checked_sub(ago).map_err(|e| format!("{text:?}: {e}"));
            }
            if let Ok(secs) = t.parse::<f64>() {
                return from_unix(secs)
                    .ok_or_else(|| format!("{text:?} is not a Unix time in seconds"));
            }
            t.parse::<Timestamp>().map_err(|e| {
                format!("{text:?} is not a time (use RFC 3339, Unix seconds or \"now-10m\"): {e}")
            })
        }
        other => Err(format!(
            "expected a time (RFC 3339, Unix seconds or \"now-10m\"), got {other}"
        )),
    }
}

fn from_unix(secs: f64) -> Option<Timestamp> {
    if !secs.is_finite() {
        return None;
    }
    Timestamp::from_millisecond((secs * 1000.0).round() as i64).ok()
}

/// The API's form of an instant: Unix seconds with millisecond precision.
pub fn to_api(t: Timestamp) -> String {
    let ms = t.as_millisecond();
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}", ms / 1000, ms % 1000)
}

/// The API's form of a duration (`step`, `timeout`): seconds with millisecond precision.
pub fn duration_to_api(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_in_prometheus_syntax_and_seconds() {
        let cases = [
            (json!("30s"), 30_000),
            (json!("10m"), 600_000),
            (json!("1h30m"), 5_400_000),
            (json!("500ms"), 500),
            (json!("1m30s500ms"), 90_500),
            (json!("2d"), 172_800_000),
            (json!("1w"), 604_800_000),
            (json!(45), 45_000),
            (json!(0.25), 250),
            (json!("15"), 15_000),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(&input),
                Ok(Duration::from_millis(ms)),
                "{input}"
            );
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_input() {
        for input in [
            json!(""),
            json!("m"),
            json!("5 minutes"),
            json!("10x"),
            json!("-5m"),
        ] {
            let err = parse_duration(&input).unwrap_err();
            assert!(err.contains("not a duration"), "{input}: {err}");
        }
        assert_eq!(
            parse_duration(&json!("0s")).unwrap_err(),
            "duration must be greater than zero"
        );
        assert_eq!(
            parse_duration(&json!(0)).unwrap_err(),
            "duration must be greater than zero"
        );
        assert!(
            parse_duration(&json!(-3))
                .unwrap_err()
                .contains("not a number of seconds")
        );
        assert!(
            parse_duration(&json!(true))
                .unwrap_err()
                .contains("expected a duration")
        );
        assert!(parse_duration(&json!("99999999999999999999y")).is_err());
    }

    #[test]
    fn times_absolute_unix_and_relative() {
        let now: Timestamp = "2026-11-27T04:00:00Z".parse().unwrap();
        let at = |v: Value| parse_time(&v, now).map(to_api);
        assert_eq!(at(json!("now")).unwrap(), "1795752000.000");
        assert_eq!(at(json!("now-10m")).unwrap(), "1795751400.000");
        assert_eq!(at(json!("-1h")).unwrap(), "1795748400.000");
        assert_eq!(at(json!("2026-11-27T03:00:00Z")).unwrap(), "1795748400.000");
        assert_eq!(
            at(json!("2026-11-27T05:00:00+01:00")).unwrap(),
            "1795752000.000"
        );
        assert_eq!(at(json!(1795730504.354)).unwrap(), "1795730504.354");
        assert_eq!(at(json!("1795730504")).unwrap(), "1795730504.000");
        assert!(
            at(json!("yesterday"))
                .unwrap_err()
                .contains("is not a time")
        );
        assert!(
            at(json!("now-ages"))
                .unwrap_err()
                .contains("now-<duration>")
        );
        assert!(at(json!([])).unwrap_err().contains("expected a time"));
    }

    #[test]
    fn api_forms() {
        assert_eq!(duration_to_api(Duration::from_millis(30_500)), "30.500");
        assert_eq!(
            to_api(Timestamp::from_millisecond(-1500).unwrap()),
            "-1.500"
        );
    }
}
