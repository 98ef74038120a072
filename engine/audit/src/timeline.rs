//! `firebreak audit show RUN`: one run's records as a step-by-step timeline for a terminal.
//! Start at [`render_timeline`].

use std::fmt::Write as _;

use serde_json::Value;

use crate::record::{Record, RecordBody, RunStatus, StepStatus};

/// Longest rendering of one JSON value before it is cut with `…`.
const MAX_VALUE_CHARS: usize = 96;

/// Renders the records of one run (in journal order) as a readable timeline: a header with
/// who/what/when, then one line per event with its offset from the run's start, `✓`/`✗`,
/// durations, key inputs and outputs, evidence, refusals, and the final status.
pub fn render_timeline(records: &[Record]) -> String {
    let mut out = String::new();
    let Some(first) = records.first() else {
        return "no records\n".to_owned();
    };
    let start = first.time;
    let _ = writeln!(out, "run {}", first.run_id);
    let _ = writeln!(
        out,
        "  runbook {} · team {} · actor {} · event {}",
        first.runbook, first.team, first.actor, first.event_id
    );
    let _ = writeln!(
        out,
        "  started {} · records {}..{}",
        start.strftime("%Y-%m-%d %H:%M:%S%.3f UTC"),
        first.seq,
        records.last().map_or(first.seq, |r| r.seq)
    );
    let _ = writeln!(out);

    // Steps started and not yet finished: their inputs and start offset, shown on the
    // step's finishing line (which is placed at the step's start time).
    let mut open: std::collections::BTreeMap<u32, OpenStep> = Default::default();
    let mut finished = false;
    let offset_of = |time: jiff::Timestamp| {
        format!(
            "{:>10}",
            format!("+{:.3}s", time.duration_since(start).as_secs_f64())
        )
    };
    let blank = " ".repeat(10);
    for record in records {
        let offset = record.time.duration_since(start);
        let at = offset_of(record.time);
        match &record.body {
            RecordBody::RunStarted {
                event,
                params,
                dry_run,
                namespaces,
                timeout_ms,
                lock_key,
                ..
            } => {
                let mut line = format!("{at}  ▶ run started");
                if *dry_run {
                    line.push_str(" (dry run)");
                }
                if !namespaces.is_empty() {
                    let _ = write!(line, " · namespaces {}", namespaces.join(","));
                }
                if let Some(ms) = timeout_ms {
                    let _ = write!(line, " · timeout {}s", ms / 1000);
                }
                if let Some(key) = lock_key {
                    let _ = write!(line, " · key {key}");
                }
                let _ = writeln!(out, "{line}");
                let event = event.value();
                let kind = event.get("type").and_then(Value::as_str).unwrap_or("?");
                let source = event.get("source").and_then(Value::as_str).unwrap_or("?");
                let subject = event.get("subject").and_then(Value::as_str).unwrap_or("?");
                let _ = writeln!(out, "{blank}    event {source}/{kind} {subject}");
                if params.as_object().is_some_and(|m| !m.is_empty()) {
                    let _ = writeln!(out, "{blank}    params {}", brief_map(params));
                }
            }
            RecordBody::RunTakenOver {
                by_replica,
                from_replica,
                records,
                ..
            } => {
                let _ = writeln!(
                    out,
                    "{at}  ⇄ taken over by {by_replica} from {from_replica}, whose lease ran out ({records} records read back from the audit stream)"
                );
            }
            RecordBody::RunResumed { replayable_steps } => {
                let _ = writeln!(
                    out,
                    "{at}  ↻ resumed after a restart ({replayable_steps} finished steps replay from the journal)"
                );
            }
            RecordBody::StepStarted {
                step,
                name,
                inputs,
                intent,
            } => {
                let mut notes = Vec::new();
                if let Some(intent) = intent {
                    let what = intent
                        .get("summary")
                        .and_then(Value::as_str)
                        .map_or_else(|| brief(intent), str::to_owned);
                    notes.push(format!("{blank}      intent {what}"));
                }
                open.insert(
                    *step,
                    OpenStep {
                        name: name.clone(),
                        inputs: inputs.clone(),
                        at,
                        notes,
                    },
                );
            }
            RecordBody::StepFinished {
                step,
                name,
                inputs: own_inputs,
                status,
                outputs,
                error,
                duration_ms,
                attempts,
            } => {
                let mark = match status {
                    StepStatus::Ok => "✓",
                    StepStatus::Error => "✗",
                    StepStatus::Skipped => "–",
                    StepStatus::Replayed => "↻",
                };
                let (inputs, at, notes) = match (open.remove(step), own_inputs) {
                    (Some(o), _) => (Some(o.inputs), o.at, o.notes),
                    // A local step's one record: placed at its start, the record's time
                    // less its duration.
                    (None, Some(inputs)) => {
                        let began = record.time
                            - jiff::SignedDuration::from_millis(
                                i64::try_from(*duration_ms).unwrap_or(i64::MAX),
                            );
                        (
                            Some(inputs.clone()),
                            offset_of(began.max(start)),
                            Vec::new(),
                        )
                    }
                    (None, None) => (None, at, Vec::new()),
                };
                let mut line = format!("{at}  {mark} #{step} {name:<24} {duration_ms:>6} ms");
                if *attempts > 1 {
                    let _ = write!(line, " ({attempts} attempts)");
                }
                if matches!(status, StepStatus::Replayed) {
                    line.push_str(" (replayed)");
                }
                let _ = writeln!(out, "{line}");
                if let Some(i) = inputs.as_ref().filter(|v| !is_empty(v)) {
                    let _ = writeln!(out, "{blank}      in  {}", brief_map(i));
                }
                if !is_empty(outputs) {
                    let _ = writeln!(out, "{blank}      out {}", brief(outputs));
                }
                if let Some(e) = error {
                    let _ = writeln!(out, "{blank}      error ({}) {}", e.kind, e.message);
                }
                for note in notes {
                    let _ = writeln!(out, "{note}");
                }
            }
            RecordBody::Evidence { step, name, data } => {
                let note = format!("{at}      ◆ evidence {name}: {}", summarize(data));
                note_or_print(&mut out, &mut open, Some(*step), note);
            }
            RecordBody::Progress { step, message } => {
                let note = format!("{at}      … {message}");
                note_or_print(&mut out, &mut open, Some(*step), note);
            }
            RecordBody::Refusal {
                step,
                action,
                reason,
            } => {
                finished |= step.is_none();
                let note = format!("{at}      ⛔ refused {action}: {reason}");
                note_or_print(&mut out, &mut open, *step, note);
            }
            RecordBody::ApprovalRequested {
                step,
                action,
                reason,
                expires_at,
                ..
            } => {
                let step = step.map(|s| format!("#{s} ")).unwrap_or_default();
                let reason = reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "{at}  ⏸ {step}waiting for approval of {action}{reason} (expires {expires_at})"
                );
            }
            RecordBody::Approval {
                step,
                approver,
                approved,
                comment,
                channel,
                ..
            } => {
                let step = step.map(|s| format!("#{s} ")).unwrap_or_default();
                let verdict = if *approved { "approved" } else { "denied" };
                let comment = comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                let via = channel
                    .as_deref()
                    .map(|c| format!(" via {c}"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{at}  ✋ {step}{verdict} by {approver}{via}{comment}");
            }
            RecordBody::RunFinished { status, error } => {
                finished = true;
                let mark = match status {
                    RunStatus::Succeeded => "■ run succeeded",
                    RunStatus::Failed => "■ run FAILED",
                    RunStatus::Cancelled => "■ run cancelled",
                    RunStatus::TimedOut => "■ run TIMED OUT",
                    RunStatus::Denied => "■ run DENIED",
                    RunStatus::Expired => "■ run EXPIRED (no approval in time)",
                };
                let _ = writeln!(out, "{at}  {mark} after {:.3}s", offset.as_secs_f64());
                if let Some(e) = error {
                    let _ = writeln!(out, "{blank}      {e}");
                }
            }
            RecordBody::EventJoined {
                event_id, summary, ..
            } => {
                let _ = writeln!(out, "{at}  ⇢ joined {summary} (event {event_id})");
            }
            RecordBody::Skipped { reason, active_run } => {
                finished = true;
                let run = active_run
                    .as_deref()
                    .map(|r| format!(" (handled by run {r})"))
                    .unwrap_or_default();
                let _ = writeln!(out, "{at}  ⤼ skipped: {reason}{run}");
            }
            RecordBody::Parked { origin, reason, .. } => {
                finished = true;
                let _ = writeln!(out, "{at}  ⚑ parked a message from {origin}: {reason}");
            }
            // Not part of any run's story.
            RecordBody::Checkpoint { .. } | RecordBody::Relinked { .. } => {}
        }
    }
    for (step, o) in open {
        let _ = writeln!(
            out,
            "{}  ⋯ #{step} {} started, no outcome journaled",
            o.at, o.name
        );
        for note in o.notes {
            let _ = writeln!(out, "{note}");
        }
    }
    if !finished {
        let _ = writeln!(
            out,
            "\n  (no run_finished record: the run is still going or was interrupted)"
        );
    }
    out
}

/// A step whose `step_started` has been seen and its `step_finished` not yet.
struct OpenStep {
    name: String,
    inputs: Value,
    /// Offset of the start, where the step's line is placed.
    at: String,
    /// Evidence, progress and refusals of the step, printed under its line.
    notes: Vec<String>,
}

/// Lines about a step go under the step's line once it finishes; others print now.
fn note_or_print(
    out: &mut String,
    open: &mut std::collections::BTreeMap<u32, OpenStep>,
    step: Option<u32>,
    note: String,
) {
    match step.and_then(|s| open.get_mut(&s)) {
        Some(o) => o.notes.push(note),
        None => {
            let _ = writeln!(out, "{note}");
        }
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// `key=value key=value` for maps, compact JSON otherwise; cut to a terminal-friendly width.
fn brief_map(v: &Value) -> String {
    match v {
        Value::Object(m) => cut(m
            .iter()
            .map(|(k, v)| format!("{k}={}", compact(v)))
            .collect::<Vec<_>>()
            .join(" ")),
        other => brief(other),
    }
}

fn brief(v: &Value) -> String {
    cut(compact(v))
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Evidence is often large: say what it is rather than print it.
fn summarize(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("{} items", a.len()),
        Value::Object(m) if compact(v).chars().count() > MAX_VALUE_CHARS => {
            let keys: Vec<&str> = m.keys().map(String::as_str).take(6).collect();
            format!(
                "{{{}{}}}",
                keys.join(", "),
                if m.len() > 6 { ", …" } else { "" }
            )
        }
        Value::String(s) if s.lines().count() > 1 => format!("{} lines", s.lines().count()),
        other => brief(other),
    }
}

fn cut(s: String) -> String {
    if s.chars().count() <= MAX_VALUE_CHARS {
        return s;
    }
    let mut short: String = s.chars().take(MAX_VALUE_CHARS - 1).collect();
    short.push('…');
    short
}
