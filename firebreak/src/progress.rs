//! How a run looks in the terminal: step lines as they are journaled, and rollout progress
//! drawn as a bar, because a person would rather watch a rollout than read counters.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use firebreak_connector::ProgressSink;

/// Parses kubectl-style rollout messages ("... 1 of 3 updated replicas are available...",
/// "... 2 out of 3 new replicas have been updated...") into (done, total).
pub fn parse_fraction(message: &str) -> Option<(u32, u32)> {
    let words: Vec<&str> = message.split_whitespace().collect();
    let number = |w: &str| {
        w.trim_matches(|c: char| !c.is_ascii_digit())
            .parse::<u32>()
            .ok()
    };
    (0..words.len()).find_map(|i| {
        let total_at = match (words.get(i + 1), words.get(i + 2)) {
            (Some(&"of"), _) => i + 2,
            (Some(&"out"), Some(&"of")) => i + 3,
            _ => return None,
        };
        let done = number(words[i])?;
        let total = number(words.get(total_at)?)?;
        (total > 0 && done <= total).then_some((done, total))
    })
}

/// A fixed-width bar, e.g. `[██████░░░░░░] 1/2`.
pub fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = (done as usize * width)
        .div_ceil(total.max(1) as usize)
        .min(width);
    format!(
        "[{}{}] {done}/{total}",
        "█".repeat(filled),
        "░".repeat(width - filled)
    )
}

/// A sink that prints each progress message on its own line, with a bar where the message
/// carries a fraction. Non-terminals get the same lines (logs stay readable in CI).
pub fn stdout_sink(prefix: &'static str) -> ProgressSink {
    Arc::new(move |message: &str| {
        let mut out = std::io::stdout().lock();
        let line = match parse_fraction(message) {
            Some((done, total)) => format!("{prefix}{} {message}", bar(done, total, 20)),
            None => format!("{prefix}{message}"),
        };
        let _ = writeln!(out, "{line}");
        if std::io::stdout().is_terminal() {
            let _ = out.flush();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubectl_rollout_messages() {
        assert_eq!(
            parse_fraction(
                "Waiting for deployment \"fraud-model\" rollout to finish: 1 of 3 updated replicas are available..."
            ),
            Some((1, 3))
        );
        assert_eq!(
            parse_fraction(
                "Waiting for deployment \"fraud-model\" rollout to finish: 2 out of 3 new replicas have been updated..."
            ),
            Some((2, 3))
        );
        assert_eq!(
            parse_fraction("deployment \"fraud-model\" successfully rolled out"),
            None
        );
    }

    #[test]
    fn bar_fills_in_proportion() {
        assert_eq!(bar(0, 4, 4), "[░░░░] 0/4");
        assert_eq!(bar(2, 4, 4), "[██░░] 2/4");
        assert_eq!(bar(4, 4, 4), "[████] 4/4");
    }
}
