//! Durations as runbooks write them: `500ms`, `30s`, `5m`, `1h`, `7d`, and sums like `1h30m`
//! (Prometheus style, integer amounts). `0` alone means zero. Start at [`parse_duration`].

use std::time::Duration;

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    /// The text as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Parses `500ms`, `30s`, `5m`, `1h`, `1h30m`, `2h45m10s`, `7d`, `2w`, `0`. Units: `ms`, `s`,
/// `m`, `h`, `d` (24 h), `w` (7 d), as Prometheus writes them.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        text: text.to_owned(),
        reason,
    };
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("expected a number and a unit, e.g. 30s or 1h30m"));
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(err("expected a number and a unit, e.g. 30s or 1h30m"));
        }
        let amount: u64 = s[start..i].parse().map_err(|_| err("number too large"))?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" => return Err(err("missing unit (ms, s, m, h, d or w)")),
            _ => return Err(err("unknown unit; use ms, s, m, h, d or w")),
        };
        total_ms = amount
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(|| err("duration too large"))?;
    }
    Ok(Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_sums() {
        let ms = |t| parse_duration(t).unwrap().as_millis();
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("30s"), 30_000);
        assert_eq!(ms("5m"), 300_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("1h30m"), 5_400_000);
        assert_eq!(ms("2h45m10s500ms"), 9_910_500);
        assert_eq!(ms("0"), 0);
        assert_eq!(ms(" 10m "), 600_000);
        assert_eq!(ms("7d"), 7 * 86_400_000);
        assert_eq!(ms("2w1d"), 15 * 86_400_000);
    }

    #[test]
    fn bad_durations_say_why() {
        for (text, reason) in [
            ("", "expected a number"),
            ("10", "missing unit"),
            ("5 minutes", "missing unit"),
            ("5min", "unknown unit"),
            ("1y", "unknown unit"),
            ("m5", "expected a number"),
            ("1.5h", "missing unit"),
            ("-5m", "expected a number"),
            ("99999999999999999999h", "number too large"),
            ("9999999999999999h", "duration too large"),
        ] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.reason.contains(reason), "{text}: {e}");
            assert!(e.to_string().starts_with("invalid duration"));
        }
    }
}
