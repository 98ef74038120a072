//! Checking the central audit stream: the journal lines every replica mirrored to NATS,
//! interleaved. Each replica's journal is its own hash chain; a run taken over by another
//! replica continues in that replica's chain, and its `run_taken_over` record links back to the
//! run's last record in the first chain by hash. [`verify_stream`] checks all of it.

use std::collections::{BTreeMap, HashMap};

use crate::record::{GENESIS_HASH, Record, RecordBody};
use crate::verify::{Problem, read_line};

/// One journal's chain as the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Seq of its first record on the stream (1 unless the journal was mirrored only later).
    pub first_seq: u64,
    /// Seq and hash of its last record.
    pub last_seq: u64,
    pub last_hash: String,
    pub records: usize,
}

/// What [`verify_stream`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// Distinct records (a line published twice counts once).
    pub records: usize,
    /// Distinct runs.
    pub runs: usize,
    /// The journals' chains, by the hash of their first record.
    pub chains: Vec<Chain>,
    /// `(run id, from replica, by replica)` of every takeover, each link checked.
    pub takeovers: Vec<(String, String, String)>,
    /// Seqs where a journal was relinked (set aside after damage and continued).
    pub relinks: Vec<u64>,
}

/// Checks `lines` (journal lines from the audit stream, in stream order): every line's hash
/// holds; within each journal every record follows its predecessor with the next seq, and no
/// two records follow the same one (but a `relinked` record, which restarts a damaged journal
/// from its last good record); every `run_taken_over` names a record of the same run on the
/// stream by its seq and hash. A chain may start past seq 1 (a journal mirrored only from some
/// point on): each chain is reported with its range.
pub fn verify_stream<'a>(
    lines: impl IntoIterator<Item = &'a [u8]>,
) -> Result<StreamReport, String> {
    let mut by_hash: HashMap<String, Record> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for (n, line) in lines.into_iter().enumerate() {
        let record = read_line(line).map_err(|p| format!("stream line {}: {p}", n + 1))?;
        if !by_hash.contains_key(&record.hash) {
            order.push(record.hash.clone());
            by_hash.insert(record.hash.clone(), record);
        }
    }
    // Who follows whom.
    let mut next: HashMap<&str, Vec<&Record>> = HashMap::new();
    for hash in &order {
        let record = &by_hash[hash];
        next.entry(record.prev_hash.as_str())
            .or_default()
            .push(record);
    }
    let mut report = StreamReport {
        records: order.len(),
        ..StreamReport::default()
    };
    let mut runs = std::collections::BTreeSet::new();
    for hash in &order {
        let record = &by_hash[hash];
        if !record.run_id.is_empty() {
            runs.insert(record.run_id.as_str());
        }
        if record.prev_hash != GENESIS_HASH
            && let Some(prev) = by_hash.get(&record.prev_hash)
            && prev.seq + 1 != record.seq
        {
            return Err(format!(
                "record seq {} (hash {}) follows seq {}: {}",
                record.seq,
                record.hash,
                prev.seq,
                Problem::SeqGap {
                    expected: prev.seq + 1,
                    found: record.seq
                }
            ));
        }
        match &record.body {
            RecordBody::Relinked { .. } => report.relinks.push(record.seq),
            RecordBody::RunTakenOver {
                by_replica,
                from_replica,
                last_hash,
                last_seq,
                ..
            } => {
                let linked = by_hash.get(last_hash).ok_or_else(|| {
                    format!(
                        "run {}: its takeover by {by_replica} (seq {}) links to hash {last_hash}, which is not on the stream",
                        record.run_id, record.seq
                    )
                })?;
                if linked.run_id != record.run_id || linked.seq != *last_seq {
                    return Err(format!(
                        "run {}: its takeover by {by_replica} links to seq {last_seq}, but hash {last_hash} is seq {} of run {}",
                        record.run_id, linked.seq, linked.run_id
                    ));
                }
                report.takeovers.push((
                    record.run_id.clone(),
                    from_replica.clone(),
                    by_replica.clone(),
                ));
            }
            _ => {}
        }
    }
    for (prev, followers) in &next {
        let continuing: Vec<&&Record> = followers
            .iter()
            .filter(|r| !matches!(r.body, RecordBody::Relinked { .. }))
            .collect();
        // Two journals both begin at the genesis hash; past it, one record follows another.
        if *prev != GENESIS_HASH && continuing.len() > 1 {
            return Err(format!(
                "records seq {} (hash {}) and seq {} (hash {}) both follow hash {prev}: the chain was forked",
                continuing[0].seq, continuing[0].hash, continuing[1].seq, continuing[1].hash
            ));
        }
    }
    // Chains: from each record whose predecessor is not on the stream, follow the links.
    let mut chains = BTreeMap::new();
    for hash in &order {
        let head = &by_hash[hash];
        if by_hash.contains_key(&head.prev_hash) {
            continue;
        }
        let mut at = head;
        let mut records = 1;
        while let Some(follower) = next.get(at.hash.as_str()).and_then(|f| {
            f.iter()
                .find(|r| !matches!(r.body, RecordBody::Relinked { .. }))
                .or(f.first())
        }) {
            at = follower;
            records += 1;
        }
        chains.insert(
            head.hash.clone(),
            Chain {
                first_seq: head.seq,
                last_seq: at.seq,
                last_hash: at.hash.clone(),
                records,
            },
        );
    }
    report.chains = chains.into_values().collect();
    report.runs = runs.len();
    Ok(report)
}
