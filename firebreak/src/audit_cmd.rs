//! `firebreak audit list | show RUN | verify | export`: reading the journal the engine wrote.
//!
//! These commands only read: they open the journal through [`JournalReader`], never as a
//! writer, so they work while `firebreak serve` is running.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::sync::Arc;

use firebreak_audit::{
    Journal, JournalOptions, JournalReader, SigningKey, VerifyOptions, render_timeline, verify_with,
};

use crate::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// List runs, newest last.
    List {
        /// Only this team's runs.
        #[arg(long)]
        team: Option<String>,
        /// Only this runbook's runs.
        #[arg(long)]
        runbook: Option<String>,
    },
    /// Print one run's step-by-step timeline (a unique prefix of the run id is enough).
    Show { run: String },
    /// Walk the hash chain, check every signed checkpoint and the head file, and name the
    /// first broken record.
    Verify {
        /// Journal or export to verify (default: the configured journal, every segment).
        file: Option<PathBuf>,
        /// The public key checkpoints must be signed with: 64 hex digits or a file holding
        /// them (default: the `.pub` file beside the journal).
        #[arg(long)]
        key: Option<String>,
    },
    /// Write every record as JSONL.
    Export {
        /// Output file (default: stdout).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
}

/// Where the engine keeps its audit journal inside the data dir.
pub fn journal_path(cfg: &Config) -> PathBuf {
    cfg.audit
        .path
        .clone()
        .unwrap_or_else(|| cfg.data_dir.join("audit.jsonl"))
}

/// The checkpoint signing key's path: configured, or beside the journal.
pub fn signing_key_path(cfg: &Config) -> PathBuf {
    cfg.audit
        .signing_key
        .clone()
        .unwrap_or_else(|| journal_path(cfg).with_extension("key"))
}

/// Opens the configured journal for writing, signing checkpoints with the configured key
/// (generated on first use).
pub fn open_journal(cfg: &Config) -> Result<Journal> {
    let path = journal_path(cfg);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let key_path = signing_key_path(cfg);
    let (key, created) = SigningKey::load_or_create(&key_path)?;
    if created {
        tracing::info!(key = %key_path.display(), public = %key.public_hex(), "generated the audit signing key; keep a copy of its .pub elsewhere to verify against");
    }
    let defaults = JournalOptions::default();
    let options = JournalOptions {
        signing_key: Some(Arc::new(key)),
        segment_bytes: cfg
            .audit
            .segment_mib
            .map_or(defaults.segment_bytes, |mib| mib.max(1) << 20),
        relink_broken: cfg.audit.relink_broken,
        ..defaults
    };
    Journal::open_with(&path, options)
        .with_context(|| format!("opening audit journal {}", path.display()))
}

pub async fn audit(cfg: &Config, command: AuditCommand) -> Result<()> {
    let path = journal_path(cfg);
    match command {
        AuditCommand::List { team, runbook } => {
            let reader = open(&path)?;
            println!(
                "{:<38} {:<26} {:<14} {:<10} STARTED",
                "RUN", "RUNBOOK", "TEAM", "STATUS"
            );
            let runs = reader.runs().into_iter().filter(|r| {
                team.as_ref().is_none_or(|t| r.team == *t)
                    && runbook.as_ref().is_none_or(|rb| r.runbook == *rb)
            });
            for run in runs {
                use firebreak_audit::EntryKind;
                let status = match (run.kind, run.status) {
                    (EntryKind::Refused, _) => "refused".to_string(),
                    (EntryKind::Skipped, _) => "skipped".to_string(),
                    (EntryKind::Parked, _) => "parked".to_string(),
                    (EntryKind::Run, Some(s)) => s.to_string(),
                    (EntryKind::Run, None) => "running".to_string(),
                };
                println!(
                    "{:<38} {:<26} {:<14} {:<10} {}",
                    run.run_id, run.runbook, run.team, status, run.started
                );
            }
            Ok(())
        }
        AuditCommand::Show { run } => {
            let reader = open(&path)?;
            let run_id = resolve_run(&reader, &run)?;
            let records = reader.records_for_run(&run_id)?;
            print!("{}", render_timeline(&records));
            Ok(())
        }
        AuditCommand::Verify { file, key } => {
            let target = file.unwrap_or(path);
            let published = match &cfg.nats {
                Some(nats) => Some(published_checkpoints(nats).await?),
                None => None,
            };
            match verify_with(&target, &VerifyOptions { key, published }) {
                Ok(report) => {
                    println!(
                        "ok: {} records in {} runs, {} file(s), chain intact; last hash {}",
                        report.records,
                        report.runs,
                        report.files.len(),
                        report.last_hash
                    );
                    match &report.key {
                        Some((key, trusted)) => println!(
                            "signed: {} checkpoint(s), every signature holds for key {key}{}; anchored through seq {}{}",
                            report.checkpoints,
                            if *trusted {
                                ""
                            } else {
                                " (the key the journal names: pass --key to check against one you hold)"
                            },
                            report.anchored_through,
                            if report.closed {
                                ", closed by the engine's stop"
                            } else {
                                ""
                            },
                        ),
                        None => {
                            println!("unsigned: no checkpoints; the chain cannot prove its tail")
                        }
                    }
                    if let Some((file, line, first, last)) = &report.unanchored {
                        println!(
                            "unanchored tail: {}:{line}: seq {first}–{last} came after the last checkpoint (a running engine signs them within seconds; after a crash, the next start does)",
                            file.display()
                        );
                    }
                    for (anchor, seq) in &report.anchors {
                        println!(
                            "anchored: {anchor} holds a signed checkpoint at seq {seq}, and so does the journal"
                        );
                    }
                    for relink in &report.relinks {
                        println!("relinked: {relink}");
                    }
                    if let Some(line) = report.torn_tail_line {
                        println!(
                            "note: line {line} is an incomplete write from a crash; it was never acknowledged"
                        );
                    }
                    Ok(())
                }
                Err(e) => bail!("audit verify failed: {e}"),
            }
        }
        AuditCommand::Export { out } => {
            let reader = open(&path)?;
            let records: usize = reader.runs().iter().map(|r| r.records).sum();
            let bytes = match out {
                Some(file) => {
                    let f = std::fs::File::create(&file)
                        .with_context(|| format!("creating {}", file.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = reader.export(&mut w)?;
                    w.flush()?;
                    n
                }
                None => reader.export(std::io::stdout().lock())?,
            };
            eprintln!("exported {records} records ({bytes} bytes)");
            Ok(())
        }
    }
}

/// The newest checkpoint the engine published on the NATS audit stream (none yet: empty), to
/// verify the local journal against.
async fn published_checkpoints(nats: &crate::config::NatsConfig) -> Result<(String, Vec<u8>)> {
    let opts = nats.options()?;
    let bus = firebreak_bus::NatsBus::connect(&nats.url, opts)
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {} to read the published checkpoints",
                nats.url
            )
        })?;
    let lines = bus
        .last_audit_message(firebreak_bus::nats::CHECKPOINT_SUBJECT)
        .await?
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Ok((format!("the NATS audit stream at {}", nats.url), lines))
}

fn open(path: &Path) -> Result<JournalReader> {
    if !path.exists() {
        bail!(
            "no audit journal at {} (has the engine run with this data_dir?)",
            path.display()
        );
    }
    JournalReader::open(path).with_context(|| format!("opening {}", path.display()))
}

/// Accepts a whole run id or a unique prefix of one.
fn resolve_run(reader: &JournalReader, wanted: &str) -> Result<String> {
    if reader.run(wanted).is_some() {
        return Ok(wanted.to_string());
    }
    let hits: Vec<String> = reader
        .runs()
        .into_iter()
        .filter(|r| r.run_id.starts_with(wanted))
        .map(|r| r.run_id)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no run {wanted} in the journal (see `firebreak audit list`)"),
        many => bail!("run prefix {wanted} is ambiguous: {}", many.join(", ")),
    }
}
