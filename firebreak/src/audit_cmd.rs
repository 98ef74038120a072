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
        /// Verify the central NATS audit stream instead: every replica's journal as mirrored
        /// there, each line's hash, each journal's chain, and the link of every run one
        /// replica took over from another.
        #[arg(long, conflicts_with_all = ["file", "key"])]
        stream: bool,
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
        finished_runs_kept: cfg
            .audit
            .finished_runs_kept
            .unwrap_or(defaults.finished_runs_kept),
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
        AuditCommand::Verify { stream: true, .. } => verify_stream(cfg).await,
        AuditCommand::Verify { file, key, .. } => {
            let target = file.unwrap_or(path);
            let published = match &cfg.nats {
                Some(nats) => Some(published_checkpoints(cfg, nats).await?),
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

/// `firebreak audit verify --stream`.
async fn verify_stream(cfg: &Config) -> Result<()> {
    let Some(nats) = &cfg.nats else {
        bail!("--stream reads the NATS audit stream: set nats.url (or FIREBREAK_NATS_URL)");
    };
    let opts = nats.options()?;
    let bus = patiently(|| firebreak_bus::NatsBus::connect(&nats.url, opts.clone()))
        .await
        .with_context(|| format!("connecting to NATS at {}", nats.url))?;
    let messages = patiently(|| bus.audit_messages()).await?;
    let lines = messages
        .iter()
        .flat_map(|m| m.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty());
    let report = firebreak_audit::verify_stream(lines)
        .map_err(|e| anyhow::anyhow!("audit verify --stream failed: {e}"))?;
    println!(
        "ok: the audit stream at {} holds {} records of {} runs from {} journal(s), every hash holds, every chain is whole",
        nats.url,
        report.records,
        report.runs,
        report.chains.len()
    );
    for chain in &report.chains {
        println!(
            "journal: seq {}–{} ({} records), last hash {}",
            chain.first_seq, chain.last_seq, chain.records, chain.last_hash
        );
    }
    for (run, from, by) in &report.takeovers {
        println!("taken over: run {run} from {from} by {by}, linked by hash to its last record");
    }
    for seq in &report.relinks {
        println!("relinked: a journal was set aside and continued at seq {seq}");
    }
    Ok(())
}

/// The newest checkpoint this replica (the one whose data dir `cfg` names) published on the
/// NATS audit stream (none yet: empty), to verify the local journal against.
async fn published_checkpoints(
    cfg: &Config,
    nats: &crate::config::NatsConfig,
) -> Result<(String, Vec<u8>)> {
    let replica = match &nats.replica {
        Some(replica) => replica.clone(),
        None => match std::fs::read_to_string(cfg.data_dir.join("replica-id")) {
            Ok(id) => id.trim().to_owned(),
            // This data dir never served with NATS: nothing of it was published.
            Err(_) => return Ok((format!("the NATS audit stream at {}", nats.url), Vec::new())),
        },
    };
    let opts = nats.options()?;
    let bus = patiently(|| firebreak_bus::NatsBus::connect(&nats.url, opts.clone()))
        .await
        .with_context(|| {
            format!(
                "connecting to NATS at {} to read the published checkpoints",
                nats.url
            )
        })?;
    let subject = firebreak_bus::nats::checkpoint_subject(&replica);
    let lines = patiently(|| bus.last_audit_message(&subject))
        .await?
        .map(|b| b.to_vec())
        .unwrap_or_default();
    Ok((format!("the NATS audit stream at {}", nats.url), lines))
}

/// A read of NATS that waits out a cluster electing its leaders (a node just failed or
/// returned) for up to [`firebreak_bus::nats::ELECTION_PATIENCE`], saying so once on stderr.
async fn patiently<T, Fut>(attempt: impl FnMut() -> Fut) -> Result<T, firebreak_bus::BusError>
where
    Fut: std::future::Future<Output = Result<T, firebreak_bus::BusError>>,
{
    let mut said = false;
    firebreak_bus::nats::wait_out_elections(
        firebreak_bus::nats::ELECTION_PATIENCE,
        |e| {
            if !std::mem::replace(&mut said, true) {
                let causes: Vec<String> =
                    std::iter::successors(Some(e as &dyn std::error::Error), |e| e.source())
                        .map(ToString::to_string)
                        .collect();
                eprintln!(
                    "waiting for JetStream (up to {} s): {}",
                    firebreak_bus::nats::ELECTION_PATIENCE.as_secs(),
                    causes.join(": ")
                );
            }
        },
        attempt,
    )
    .await
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
    if reader.run(wanted)?.is_some() {
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
