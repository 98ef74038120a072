//! The typed audit records and the hash chain that links them.
//!
//! Start at [`Record`]: one line of the journal. A caller builds a [`RecordDraft`] (who + what);
//! the journal's writer [`seal`](RecordDraft::seal)s it with a sequence number, a time and the
//! previous record's hash. [`redact`] runs before sealing, so secrets never reach the hash or
//! the disk. [`canonical_json`] and [`chain_hash`] define the chain; `verify` recomputes them.

use std::io::Write as _;
use std::sync::Arc;

use firebreak_event::json;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record in a journal: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What replaces the value of a secret-looking key.
pub const REDACTED: &str = "[redacted]";

/// One audit record: one line of the journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Position in the journal, starting at 1, without gaps.
    pub seq: u64,
    /// When the journal sealed the record.
    pub time: jiff::Timestamp,
    pub run_id: String,
    pub runbook: String,
    pub team: String,
    /// Who started the run (`alertmanager`, a user name, ...).
    pub actor: String,
    /// The id of the event that triggered the run.
    pub event_id: String,
    pub body: RecordBody,
    /// The previous record's `hash` ([`GENESIS_HASH`] for the first record).
    pub prev_hash: String,
    /// `hex(sha256(prev_hash || canonical_json(record without hash)))`.
    pub hash: String,
}

/// What a record says happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RecordBody {
    /// A run began. Holds everything needed to re-run it (see the runtime's `resume`).
    RunStarted {
        /// The triggering event, as JSON (its redacted canonical text).
        event: CanonicalJson,
        /// The runbook's parameters for this run.
        params: Value,
        dry_run: bool,
        /// Namespaces the runbook may act on.
        #[serde(default)]
        namespaces: Vec<String>,
        /// Cluster-scoped mutating actions the runbook's team is granted (teams file
        /// `cluster_actions`); absent: no teams file, no such restriction.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cluster_actions: Option<Vec<String>>,
        /// The run's timeout in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
        /// The concurrency lock the run holds (`<runbook>/<key>`): a resumed run takes it again
        /// before it goes on, so a repeat of its incident starts no second run.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lock_key: Option<String>,
        /// The cooldown put on `lock_key` when the run ends, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cooldown_ms: Option<u64>,
        /// Started by a person's terminal (`firebreak run`). Left unfinished, it is closed as
        /// abandoned by the next engine, never resumed behind the person's back.
        #[serde(default, skip_serializing_if = "is_false")]
        interactive: bool,
        /// Who must approve before the run's first mutating action (the manifest's
        /// `approval`); absent: none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        approval: Option<ApprovalPolicy>,
        /// The run's OpenTelemetry trace id (hex), when traces are exported.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trace_id: Option<String>,
    },
    /// An unfinished run was picked up again after a restart; steps already journaled as
    /// finished are replayed from the journal from here on.
    RunResumed {
        /// How many steps of the earlier attempt finished and can be replayed.
        replayable_steps: u32,
    },
    /// This replica took the run over from another whose lease ran out (it died, or stopped
    /// and let go). The run's earlier records are on the audit stream, in the other replica's
    /// journal; this record links to the last of them by its hash, so the run's whole trail
    /// can be followed and checked across journals. A `run_resumed` follows.
    RunTakenOver {
        /// This replica.
        by_replica: String,
        /// The replica whose lease ran out.
        from_replica: String,
        /// The hash of the run's last record the stream held.
        last_hash: String,
        /// That record's seq in the other replica's journal.
        last_seq: u64,
        /// How many of the run's records the stream held.
        records: u32,
    },
    /// A step began; `inputs` are journaled before anything happens. A mutating action
    /// journals its `intent` here too (what it resolved to do: the target revision and template
    /// hash, the replica count, ...), so a retry or a resume finishes that very intent instead
    /// of deciding again.
    StepStarted {
        step: u32,
        name: String,
        inputs: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        intent: Option<Value>,
    },
    /// A step ended.
    StepFinished {
        step: u32,
        name: String,
        /// The inputs of a local step that ended at once (`log`, `now`, `fail`, ...): such a
        /// step journals this one record and no `step_started` (it would join the same durable
        /// write; its start is this record's time less `duration_ms`). Absent when a
        /// `step_started` holds them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        inputs: Option<Value>,
        status: StepStatus,
        outputs: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<StepError>,
        duration_ms: u64,
        attempts: u32,
    },
    /// Something an observing step saw, attached to the run.
    Evidence {
        step: u32,
        name: String,
        data: Value,
    },
    /// A progress line from a long action.
    Progress { step: u32, message: String },
    /// The engine refused an action (tenancy, namespace scope, policy).
    Refusal {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        action: String,
        reason: String,
    },
    /// The run paused for people to approve what it will do next.
    ApprovalRequested {
        /// The mutating step it waits before, or the `approve(..)` step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        /// The action it will take (`k8s::rollback`), or `approve`.
        action: String,
        /// Why, in the script's words (`approve("why")`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// What it will do: the action's resolved intent and its dry-run answer.
        plan: Value,
        /// Past this, the run ends as expired.
        expires_at: jiff::Timestamp,
    },
    /// A person's decision on a paused run.
    Approval {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<u32>,
        approver: String,
        approved: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
        /// Where the decision came from: `api`, `cli`, `slack`, `mattermost`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        /// What the approver was shown when deciding.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seen: Option<String>,
    },
    /// A run ended.
    RunFinished {
        status: RunStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An event about this run's incident arrived while the run was active (the alert
    /// resolved, or fired again) and was handed to the run instead of starting another.
    EventJoined {
        event_id: String,
        /// `firing`, `resolved`, `trigger`, ...
        status: String,
        /// What the event was, for people (`alertmanager/resolved ModelLatencyHigh`).
        summary: String,
    },
    /// A matched event that started no run (the key in cooldown, its incident handled by a
    /// run elsewhere). Its own entry in the journal, never a run.
    Skipped {
        reason: String,
        /// The run that handles the incident, when one does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        active_run: Option<String>,
    },
    /// A message the bus delivered that can never be processed (not an event): kept here,
    /// whole, instead of being dropped.
    Parked {
        /// Where it came from (the NATS subject, the bus log).
        origin: String,
        reason: String,
        /// The message as text (lossy UTF-8).
        payload: String,
    },
    /// The journal's signature over the chain up to the record before it (see
    /// [`crate::checkpoint`]). Belongs to no run.
    Checkpoint {
        /// `seq` of the last record signed: the one right before this checkpoint.
        covers: u64,
        /// That record's hash.
        head: String,
        /// The Ed25519 public key, hex.
        key: String,
        /// The signature of [`crate::checkpoint::checkpoint_message`], hex.
        signature: String,
        /// Written as the engine stopped: nothing may follow but a new engine's opening
        /// checkpoint.
        #[serde(default, skip_serializing_if = "is_false")]
        last: bool,
    },
    /// The engine found the journal's tail broken at start and, told to, set the broken file
    /// aside and went on from the last record that verified. Belongs to no run.
    Relinked {
        /// Where the broken journal file was moved, whole.
        set_aside: String,
        /// What was wrong, as `audit verify` would say.
        problem: String,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Who must approve a run before it changes anything (a manifest's `approval`), as its
/// start record keeps it, so a resumed run asks the same people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalPolicy {
    // Fields in sorted order: the record's canonical form writes them as declared.
    /// Teams whose members may approve.
    pub approvers: Vec<String>,
    /// How long a request waits before the run ends as expired.
    pub expires_ms: u64,
    /// Distinct people who must approve.
    pub required: u32,
    /// Whoever started the run may be one of the approvers.
    #[serde(default, skip_serializing_if = "is_false")]
    pub self_approval: bool,
}

impl RecordBody {
    /// The `type` tag as written in the journal.
    pub fn kind(&self) -> &'static str {
        match self {
            RecordBody::RunStarted { .. } => "run_started",
            RecordBody::RunResumed { .. } => "run_resumed",
            RecordBody::RunTakenOver { .. } => "run_taken_over",
            RecordBody::StepStarted { .. } => "step_started",
            RecordBody::StepFinished { .. } => "step_finished",
            RecordBody::Evidence { .. } => "evidence",
            RecordBody::Progress { .. } => "progress",
            RecordBody::Refusal { .. } => "refusal",
            RecordBody::ApprovalRequested { .. } => "approval_requested",
            RecordBody::Approval { .. } => "approval",
            RecordBody::RunFinished { .. } => "run_finished",
            RecordBody::EventJoined { .. } => "event_joined",
            RecordBody::Skipped { .. } => "skipped",
            RecordBody::Parked { .. } => "parked",
            RecordBody::Checkpoint { .. } => "checkpoint",
            RecordBody::Relinked { .. } => "relinked",
        }
    }

    /// Whether this record starts an entry of its own that is not a run (a refusal before any
    /// run, a skipped event, a parked message): such entries are listed, never resumed.
    pub fn is_notice(&self) -> bool {
        matches!(
            self,
            RecordBody::Refusal { step: None, .. }
                | RecordBody::Skipped { .. }
                | RecordBody::Parked { .. }
        )
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    Error,
    /// Not executed (e.g. a mutating action in a dry run that the connector chose to skip).
    Skipped,
    /// Not executed again on resume: the output comes from the journal.
    Replayed,
}

/// Why a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepError {
    /// `transient`, `permanent`, `not_found`, `conflict`, `denied`, `timeout`, `script`,
    /// `cancelled`, `audit`, ...
    pub kind: String,
    pub message: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    /// An approver said no.
    Denied,
    /// Nobody decided before the approval request expired.
    Expired,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TimedOut => "timed_out",
            RunStatus::Denied => "denied",
            RunStatus::Expired => "expired",
        })
    }
}

/// Who a run is: the fields every record of one run repeats. Built once per run and shared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub runbook: String,
    pub team: String,
    pub actor: String,
    pub event_id: String,
}

/// A record before the journal gives it a place in the chain.
#[derive(Debug, Clone)]
pub struct RecordDraft {
    pub run: Arc<RunMeta>,
    pub body: RecordBody,
}

impl RecordDraft {
    /// A record of `body` about the run `run`.
    pub fn new(run: Arc<RunMeta>, body: RecordBody) -> Self {
        Self { run, body }
    }

    /// Gives the draft its place in the chain. Appends its journal line (canonical JSON with
    /// `hash` spliced in, newline-terminated) to `out` and returns the record and the line's
    /// length.
    pub(crate) fn seal(
        self,
        seq: u64,
        time: jiff::Timestamp,
        prev_hash: &str,
        out: &mut Vec<u8>,
    ) -> (Record, usize) {
        let RecordDraft { run, body } = self;
        let mut record = Record {
            seq,
            time,
            run_id: run.run_id.clone(),
            runbook: run.runbook.clone(),
            team: run.team.clone(),
            actor: run.actor.clone(),
            event_id: run.event_id.clone(),
            body,
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        let start = out.len();
        write_canonical_record(&record, out);
        record.hash = chain_hash(prev_hash, &out[start..]);
        // The line is the hashed canonical form with the hash spliced in before the final `}`.
        out.pop();
        out.extend_from_slice(b",\"hash\":\"");
        out.extend_from_slice(record.hash.as_bytes());
        out.extend_from_slice(b"\"}\n");
        (record, out.len() - start)
    }
}

/// The canonical JSON of a record without its `hash`: the same bytes as
/// `canonical_json(&to_value(record) minus "hash")`, written directly (this runs once per
/// record on the journal's writer thread).
fn write_canonical_record(record: &Record, out: &mut Vec<u8>) {
    fn text(out: &mut Vec<u8>, key: &str, value: &str) {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        json::write_str(out, value);
    }
    // Keys in sorted order.
    out.extend_from_slice(b"{\"actor\":");
    json::write_str(out, &record.actor);
    out.extend_from_slice(b",\"body\":");
    write_canonical_body(&record.body, out);
    text(out, "event_id", &record.event_id);
    text(out, "prev_hash", &record.prev_hash);
    text(out, "run_id", &record.run_id);
    text(out, "runbook", &record.runbook);
    // A number, then RFC 3339 (digits and punctuation: nothing to escape), as serde writes them.
    write!(out, ",\"seq\":{}", record.seq).expect("writing to a Vec cannot fail");
    text(out, "team", &record.team);
    write!(out, ",\"time\":\"{}\"}}", record.time).expect("writing to a Vec cannot fail");
}

/// An object written key by key; the caller gives the keys in sorted order.
struct CanonicalObject<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> CanonicalObject<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        CanonicalObject { out, first: true }
    }

    fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    /// A scalar, string, enum or flat struct whose own keys are already sorted.
    fn plain(&mut self, key: &str, value: &impl Serialize) -> &mut Self {
        let out = self.key(key);
        serde_json::to_writer(out, value).expect("writing to a Vec cannot fail");
        self
    }

    fn plain_opt(&mut self, key: &str, value: Option<&impl Serialize>) -> &mut Self {
        if let Some(value) = value {
            self.plain(key, value);
        }
        self
    }

    fn json(&mut self, key: &str, value: &Value) -> &mut Self {
        let out = self.key(key);
        write_canonical(value, out);
        self
    }

    /// Text that is canonical JSON already.
    fn raw(&mut self, key: &str, canonical: &str) -> &mut Self {
        self.key(key).extend_from_slice(canonical.as_bytes());
        self
    }

    fn json_opt(&mut self, key: &str, value: Option<&Value>) -> &mut Self {
        if let Some(value) = value {
            self.json(key, value);
        }
        self
    }

    fn end(&mut self) {
        self.out.push(b'}');
    }
}

/// The canonical JSON of a record body: the same bytes as `canonical_json(&to_value(body))`,
/// written without building a JSON tree (the body holds the whole triggering event). Each arm
/// lists its keys in sorted order, `type` included; a test holds every variant to the
/// generic form.
fn write_canonical_body(body: &RecordBody, out: &mut Vec<u8>) {
    let mut o = CanonicalObject::new(out);
    let kind = body.kind();
    match body {
        RecordBody::RunStarted {
            event,
            params,
            dry_run,
            namespaces,
            cluster_actions,
            timeout_ms,
            lock_key,
            cooldown_ms,
            interactive,
            approval,
            trace_id,
        } => o
            .plain_opt("approval", approval.as_ref())
            .plain_opt("cluster_actions", cluster_actions.as_ref())
            .plain_opt("cooldown_ms", cooldown_ms.as_ref())
            .plain("dry_run", dry_run)
            .raw("event", event.as_str())
            .plain_opt("interactive", interactive.then_some(&true))
            .plain_opt("lock_key", lock_key.as_ref())
            .plain("namespaces", namespaces)
            .json("params", params)
            .plain_opt("timeout_ms", timeout_ms.as_ref())
            .plain_opt("trace_id", trace_id.as_ref()),
        RecordBody::RunResumed { replayable_steps } => {
            o.plain("replayable_steps", replayable_steps)
        }
        RecordBody::RunTakenOver {
            by_replica,
            from_replica,
            last_hash,
            last_seq,
            records,
        } => o
            .plain("by_replica", by_replica)
            .plain("from_replica", from_replica)
            .plain("last_hash", last_hash)
            .plain("last_seq", last_seq)
            .plain("records", records),
        RecordBody::StepStarted {
            step,
            name,
            inputs,
            intent,
        } => o
            .json("inputs", inputs)
            .json_opt("intent", intent.as_ref())
            .plain("name", name)
            .plain("step", step),
        RecordBody::StepFinished {
            step,
            name,
            inputs,
            status,
            outputs,
            error,
            duration_ms,
            attempts,
        } => o
            .plain("attempts", attempts)
            .plain("duration_ms", duration_ms)
            // StepError's keys, `kind` and `message`, are in sorted order already.
            .plain_opt("error", error.as_ref())
            .json_opt("inputs", inputs.as_ref())
            .plain("name", name)
            .json("outputs", outputs)
            .plain("status", status)
            .plain("step", step),
        RecordBody::Evidence { step, name, data } => {
            o.json("data", data).plain("name", name).plain("step", step)
        }
        RecordBody::Progress { step, message } => o.plain("message", message).plain("step", step),
        RecordBody::Refusal {
            step,
            action,
            reason,
        } => o
            .plain("action", action)
            .plain("reason", reason)
            .plain_opt("step", step.as_ref()),
        RecordBody::ApprovalRequested {
            step,
            action,
            reason,
            plan,
            expires_at,
        } => o
            .plain("action", action)
            .plain("expires_at", expires_at)
            .json("plan", plan)
            .plain_opt("reason", reason.as_ref())
            .plain_opt("step", step.as_ref()),
        RecordBody::Approval {
            step,
            approver,
            approved,
            comment,
            channel,
            seen,
        } => o
            .plain("approved", approved)
            .plain("approver", approver)
            .plain_opt("channel", channel.as_ref())
            .plain_opt("comment", comment.as_ref())
            .plain_opt("seen", seen.as_ref())
            .plain_opt("step", step.as_ref()),
        RecordBody::RunFinished { status, error } => {
            o.plain_opt("error", error.as_ref()).plain("status", status)
        }
        RecordBody::EventJoined {
            event_id,
            status,
            summary,
        } => o
            .plain("event_id", event_id)
            .plain("status", status)
            .plain("summary", summary),
        RecordBody::Skipped { reason, active_run } => o
            .plain_opt("active_run", active_run.as_ref())
            .plain("reason", reason),
        RecordBody::Parked {
            origin,
            reason,
            payload,
        } => o
            .plain("origin", origin)
            .plain("payload", payload)
            .plain("reason", reason),
        RecordBody::Checkpoint {
            covers,
            head,
            key,
            signature,
            last,
        } => o
            .plain("covers", covers)
            .plain("head", head)
            .plain("key", key)
            .plain_opt("last", last.then_some(&true))
            .plain("signature", signature),
        RecordBody::Relinked { set_aside, problem } => {
            o.plain("problem", problem).plain("set_aside", set_aside)
        }
    }
    .plain("type", &kind)
    .end();
}

/// `hex(sha256(prev_hash || canonical))`, where `prev_hash` is taken as its hex text.
pub fn chain_hash(prev_hash: &str, canonical: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(canonical);
    crate::checkpoint::to_hex(&hasher.finalize())
}

/// Canonical JSON: object keys sorted bytewise, no whitespace, serde_json's escaping and
/// number formatting. Independent of serde_json's `preserve_order` feature.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_canonical(value, &mut out);
    out
}

/// A JSON value journaled as its canonical text ([`canonical_json`]), redacted: the
/// triggering event of a `run_started` record. A run renders it once from its event
/// ([`CanonicalJson::of_sorted`]) instead of building a tree of it that is redacted, written
/// and dropped; readers parse it ([`CanonicalJson::value`]). Two are equal when their texts
/// are, which for canonical texts is when their values are.
#[derive(Clone)]
pub struct CanonicalJson {
    text: String,
    /// Nothing is left for [`redact`] to do: made from a value (redacted then) or from a
    /// checked serialization. Not so when read back (it is what was journaled; appended
    /// again, it is redacted again).
    redacted: bool,
}

impl CanonicalJson {
    /// `value`, redacted ([`redact_value`]), as canonical text.
    pub fn from_value(mut value: Value) -> Self {
        redact_value(&mut value);
        CanonicalJson {
            text: canonical_text(&value),
            redacted: true,
        }
    }

    /// `value` as serde_json writes it, which must be its canonical form: every struct's
    /// fields declared in the byte order of their names, every map sorted (serde_json's
    /// `Map` is, without `preserve_order`); `written`: that JSON, if it was written already.
    /// `scan` shows [`SecretScan`] every string and every nested value `value` holds under
    /// keys that name no secret; when it finds something to redact, the value takes
    /// [`CanonicalJson::from_value`]'s way. Debug builds (the tests) check these promises
    /// against that way for every value.
    pub fn of_sorted<T: Serialize>(
        value: &T,
        written: Option<&[u8]>,
        scan: impl FnOnce(&mut SecretScan),
    ) -> Self {
        let mut secrets = SecretScan::default();
        scan(&mut secrets);
        if secrets.found() {
            return Self::from_value(serde_json::to_value(value).expect("a value serializes"));
        }
        let text = match written {
            Some(json) => json.to_vec(),
            None => serde_json::to_vec(value).expect("a value serializes"),
        };
        let text = String::from_utf8(text).expect("serde_json writes UTF-8");
        let made = CanonicalJson {
            text,
            redacted: true,
        };
        #[cfg(debug_assertions)]
        {
            let slow = Self::from_value(serde_json::to_value(value).expect("a value serializes"));
            assert_eq!(
                made.text, slow.text,
                "of_sorted: not canonical, or the scan missed a secret"
            );
        }
        made
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value, parsed from the text.
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.text).expect("canonical JSON parses")
    }

    /// Redacts a value read back from a journal (see the `redacted` field).
    fn redact(&mut self) {
        if !self.redacted {
            *self = Self::from_value(self.value());
        }
    }
}

impl From<Value> for CanonicalJson {
    fn from(value: Value) -> Self {
        Self::from_value(value)
    }
}

impl PartialEq for CanonicalJson {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl std::fmt::Debug for CanonicalJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl Serialize for CanonicalJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CanonicalJson {
    /// As journaled: made canonical, not redacted again (a journal's hashes cover what it
    /// holds, and redaction's rules may have grown since it was written).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Ok(CanonicalJson {
            text: canonical_text(&value),
            redacted: false,
        })
    }
}

fn canonical_text(value: &Value) -> String {
    String::from_utf8(canonical_json(value)).expect("serde_json writes UTF-8")
}

/// What [`redact_value`] looks for, gathered piece by piece (also from something that is not
/// a [`Value`], see [`CanonicalJson::of_sorted`]): whether a key names a secret, and the
/// strings to search for [`SECRET_SHAPES`], one per line. One search of them all stands for
/// one per string (an event holds about forty): a shape found in a string is found in the
/// lines too, as a line break is neither a word character (`\b` holds at each end) nor one
/// any shape's own characters include, and the private key's "up to the end" reaches the
/// last line's. A match across lines only costs the search string by string. Conversely,
/// when the lines hold no shape, none of them does: each is then known clean ([`Clean`]).
#[derive(Default)]
pub struct SecretScan {
    strings: String,
    /// Where in `strings` the values' strings not known clean are.
    fresh: Vec<std::ops::Range<usize>>,
    secret_key: bool,
}

impl SecretScan {
    /// A string the value holds.
    pub fn text(&mut self, text: &str) {
        self.strings.push_str(text);
        self.strings.push('\n');
    }

    /// A value the value holds under a key that names no secret.
    pub fn value(&mut self, value: &Value) {
        if !self.secret_key {
            self.secret_key = CLEAN.with_borrow_mut(|clean| self.walk(value, clean));
        }
    }

    /// Whether `value` has a key [`redact_each`] would redact the value of; meanwhile
    /// gathers its strings that are not known clean.
    fn walk(&mut self, value: &Value, clean: &mut Clean) -> bool {
        match value {
            Value::Object(map) => {
                let named_secret = map
                    .get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|name| clean.is_secret_key(name));
                (named_secret && map.contains_key("value"))
                    || map
                        .iter()
                        .any(|(key, item)| clean.is_secret_key(key) || self.walk(item, clean))
            }
            Value::Array(items) => items.iter().any(|item| self.walk(item, clean)),
            Value::String(text) if !clean.texts.contains(text.as_str()) => {
                let start = self.strings.len();
                self.strings.push_str(text);
                self.fresh.push(start..self.strings.len());
                self.strings.push('\n');
                false
            }
            _ => false,
        }
    }

    fn found(&self) -> bool {
        if self.secret_key || SECRET_SHAPES.is_match(&self.strings) {
            return true;
        }
        CLEAN.with_borrow_mut(|clean| {
            for range in &self.fresh {
                clean.keep_text(&self.strings[range.clone()]);
            }
        });
        false
    }
}

/// Most keys and most strings [`Clean`] keeps; past that it forgets them all at once.
const CLEAN_KEPT: usize = 4096;

/// Most bytes of keys and strings together [`Clean`] keeps (each thread that journals has
/// one); past that it forgets them all at once.
const CLEAN_BYTES: usize = 128 << 10;

/// Longest key or string [`Clean`] keeps.
const CLEAN_LONGEST: usize = 512;

thread_local! {
    static CLEAN: std::cell::RefCell<Clean> = std::cell::RefCell::default();
}

/// Keys known to name no secret and strings known to hold no secret's shape, met before on
/// this thread. An event's keys and most of its strings (label values, annotations, URLs)
/// come again with every alert; checking each again was a tenth of an alert's instructions
/// (callgrind, `docs/BENCHMARKS.md`). A string is kept only after a search found no shape
/// in it ([`SecretScan::found`]), a key only after [`is_secret_key`] said no.
#[derive(Default)]
struct Clean {
    keys: foldhash::HashSet<Box<str>>,
    texts: foldhash::HashSet<Box<str>>,
    /// The bytes of both sets' entries.
    bytes: usize,
}

impl Clean {
    fn is_secret_key(&mut self, key: &str) -> bool {
        if self.keys.contains(key) {
            return false;
        }
        let secret = is_secret_key(key);
        if !secret && self.room_for(key) {
            self.keys.insert(key.into());
        }
        secret
    }

    fn keep_text(&mut self, text: &str) {
        if !self.texts.contains(text) && self.room_for(text) {
            self.texts.insert(text.into());
        }
    }

    /// Whether `entry` may be kept: not too long; when either set or the bytes are full,
    /// everything is forgotten first.
    fn room_for(&mut self, entry: &str) -> bool {
        if entry.len() > CLEAN_LONGEST {
            return false;
        }
        if self.keys.len() >= CLEAN_KEPT
            || self.texts.len() >= CLEAN_KEPT
            || self.bytes + entry.len() > CLEAN_BYTES
        {
            *self = Clean::default();
        }
        self.bytes += entry.len();
        true
    }
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    json::write_sorted(out, value);
}

/// Words (or runs of up to three words, joined) that make a key name a secret. Keys are split
/// into words at `_`, `-`, `.`, spaces and camelCase humps, so `tokenizer` and `max_tokens` are
/// not secrets while `accessToken`, `DB_PASSWORD` and `private-key` are.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "apikey",
    "authorization",
    "credential",
    "credentials",
    "privatekey",
    "cookie",
    "sessionid",
];

/// A last word that makes the key a reference to a secret, not its value (`secretKeyRef`,
/// `secretName`, `password_file`).
const REFERENCE_WORDS: &[&str] = &["ref", "name", "file", "path"];

/// Whether a map key names something that must not be journaled.
pub fn is_secret_key(key: &str) -> bool {
    // Most keys are one lower-case word (`alertname`, `namespace`, `summary`): nothing to fold.
    if key
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return SECRET_WORDS.contains(&key);
    }
    // Other short ASCII keys are folded on the stack (this runs for every key journaled).
    if key.len() <= 64 && key.is_ascii() {
        let mut folded = [0u8; 64];
        let mut starts = [0usize; 65];
        let (mut len, mut words) = (0, 0);
        let bytes = key.as_bytes();
        let mut new_word = true;
        for (i, &b) in bytes.iter().enumerate() {
            if !b.is_ascii_alphanumeric() {
                new_word = true;
                continue;
            }
            let hump = b.is_ascii_uppercase()
                && i > 0
                && (bytes[i - 1].is_ascii_lowercase()
                    || bytes[i - 1].is_ascii_digit()
                    || (bytes[i - 1].is_ascii_uppercase()
                        && bytes.get(i + 1).is_some_and(u8::is_ascii_lowercase)));
            if new_word || hump {
                starts[words] = len;
                words += 1;
                new_word = false;
            }
            folded[len] = b.to_ascii_lowercase();
            len += 1;
        }
        let text = std::str::from_utf8(&folded[..len]).expect("ASCII");
        return secret_words(text, &starts[..words]);
    }
    let chars: Vec<char> = key.chars().collect();
    let mut text = String::new();
    let mut starts = Vec::new();
    let mut new_word = true;
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_alphanumeric() {
            new_word = true;
            continue;
        }
        let hump = c.is_uppercase()
            && i > 0
            && (chars[i - 1].is_lowercase()
                || chars[i - 1].is_numeric()
                || (chars[i - 1].is_uppercase()
                    && chars.get(i + 1).is_some_and(|n| n.is_lowercase())));
        if new_word || hump {
            starts.push(text.len());
            new_word = false;
        }
        text.extend(c.to_lowercase());
    }
    secret_words(&text, &starts)
}

/// `text`: the key's words lowercased and joined; `starts`: where each word begins.
fn secret_words(text: &str, starts: &[usize]) -> bool {
    let n = starts.len();
    let end = |i: usize| starts.get(i + 1).copied().unwrap_or(text.len());
    if n > 1 && REFERENCE_WORDS.contains(&&text[starts[n - 1]..]) {
        return false;
    }
    (0..n).any(|i| (i..n.min(i + 3)).any(|j| SECRET_WORDS.contains(&&text[starts[i]..end(j)])))
}

/// Secrets recognisable by their shape wherever they appear: bearer and basic credentials,
/// JWTs, PEM private keys, AWS access key ids, GitHub and Slack tokens, NATS seeds, and the
/// password in a URL.
static SECRET_SHAPES: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r"(?x)
          (?P<scheme>\b(?:Bearer|Basic|Token)\ +)[A-Za-z0-9._~+/=-]{8,}
        | \beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}
        | -----BEGIN[A-Z\ ]*PRIVATE\ KEY-----(?s:.*?)(?:-----END[A-Z\ ]*PRIVATE\ KEY-----|\z)
        | \b(?:AKIA|ASIA)[0-9A-Z]{16}\b
        | \bgh[pousr]_[A-Za-z0-9]{30,}
        | \bxox[abposr]-[A-Za-z0-9-]{10,}
        | \bS[UAOCN][A-Z2-7]{55,}
        | (?P<url>\b[a-z][a-z0-9+.-]*://[^/\s:@]+:)[^/\s@]+@
        ",
    )
    .expect("the secret shapes compile")
});

/// `text` with every secret-shaped part replaced by `[redacted]` (`None` when it has none).
pub fn redact_text(text: &str) -> Option<String> {
    if !SECRET_SHAPES.is_match(text) {
        return None;
    }
    let redacted = SECRET_SHAPES.replace_all(text, |caps: &regex::Captures<'_>| {
        if let Some(scheme) = caps.name("scheme") {
            format!("{}{REDACTED}", scheme.as_str())
        } else if let Some(url) = caps.name("url") {
            format!("{}{REDACTED}@", url.as_str())
        } else {
            REDACTED.to_owned()
        }
    });
    Some(redacted.into_owned())
}

fn redact_string(text: &mut String) {
    if let Some(redacted) = redact_text(text) {
        *text = redacted;
    }
}

/// Replaces, at any depth, the value of every secret-looking key with `"[redacted]"`, the
/// `value` of a `{name, value}` entry whose name looks secret (a container's `env`, a list of
/// headers), and every secret-shaped part of a string ([`redact_text`]).
pub fn redact_value(value: &mut Value) {
    let mut scan = SecretScan::default();
    scan.value(value);
    if scan.found() {
        redact_each(value);
    }
}

/// Whether `map` is a `{name, value}` entry whose name looks secret (its `value` is redacted).
fn names_a_secret(map: &serde_json::Map<String, Value>) -> bool {
    map.get("name")
        .and_then(Value::as_str)
        .is_some_and(is_secret_key)
}

/// [`redact_value`], string by string.
fn redact_each(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let named_secret = names_a_secret(map);
            for (key, item) in map.iter_mut() {
                if is_secret_key(key) || (named_secret && key == "value") {
                    *item = Value::String(REDACTED.to_owned());
                } else {
                    redact_each(item);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_each),
        Value::String(text) => redact_string(text),
        _ => {}
    }
}

/// Redacts every free-form JSON payload of a record body (event, params, inputs, outputs,
/// evidence).
pub fn redact(body: &mut RecordBody) {
    match body {
        RecordBody::RunStarted { event, params, .. } => {
            event.redact();
            redact_value(params);
        }
        RecordBody::StepStarted { inputs, intent, .. } => {
            redact_value(inputs);
            if let Some(intent) = intent {
                redact_value(intent);
            }
        }
        RecordBody::StepFinished {
            inputs,
            outputs,
            error,
            ..
        } => {
            if let Some(inputs) = inputs {
                redact_value(inputs);
            }
            redact_value(outputs);
            if let Some(error) = error {
                redact_string(&mut error.message);
            }
        }
        RecordBody::Evidence { data, .. } => redact_value(data),
        RecordBody::Progress { message, .. } => redact_string(message),
        RecordBody::Refusal { reason, .. } | RecordBody::Skipped { reason, .. } => {
            redact_string(reason)
        }
        RecordBody::ApprovalRequested { reason, plan, .. } => {
            redact_value(plan);
            if let Some(reason) = reason {
                redact_string(reason);
            }
        }
        RecordBody::Approval { comment, seen, .. } => {
            for text in [comment, seen].into_iter().flatten() {
                redact_string(text);
            }
        }
        RecordBody::RunFinished { error, .. } => {
            if let Some(error) = error {
                redact_string(error);
            }
        }
        RecordBody::EventJoined { summary, .. } => redact_string(summary),
        RecordBody::Parked { payload, .. } => redact_string(payload),
        RecordBody::RunResumed { .. }
        | RecordBody::RunTakenOver { .. }
        | RecordBody::Checkpoint { .. }
        | RecordBody::Relinked { .. } => {}
    }
}

/// A `run_started` body with nothing in it, for tests.
#[cfg(test)]
pub(crate) fn bare_run_started() -> RecordBody {
    RecordBody::RunStarted {
        event: serde_json::json!({}).into(),
        params: Value::Null,
        dry_run: false,
        namespaces: vec![],
        cluster_actions: None,
        timeout_ms: None,
        lock_key: None,
        cooldown_ms: None,
        interactive: false,
        approval: None,
        trace_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta() -> Arc<RunMeta> {
        Arc::new(RunMeta {
            run_id: "r1".into(),
            runbook: "rb".into(),
            team: "t".into(),
            actor: "a".into(),
            event_id: "e".into(),
        })
    }

    #[test]
    fn canonical_sorts_keys_at_every_depth_and_has_no_whitespace() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": true, "x": null}], "c": "é\n"}});
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":{"c":"é\n","z":[1,{"x":null,"y":true}]},"b":1}"#
        );
    }

    #[test]
    fn sealed_line_round_trips_and_rehashes_to_the_same_hash() {
        let draft = RecordDraft::new(
            meta(),
            RecordBody::StepFinished {
                step: 1,
                name: "x".into(),
                inputs: None,
                status: StepStatus::Ok,
                outputs: json!({"f": 1.5, "n": -3, "big": u64::MAX}),
                error: None,
                duration_ms: 3,
                attempts: 1,
            },
        );
        let mut line = b"previous line\n".to_vec();
        let (record, len) = draft.seal(1, jiff::Timestamp::UNIX_EPOCH, GENESIS_HASH, &mut line);
        let line = line.split_off(14);
        assert_eq!(len, line.len());
        let parsed: Record = serde_json::from_slice(&line).unwrap();
        assert_eq!(parsed, record);
        let mut value: Value = serde_json::from_slice(&line).unwrap();
        value.as_object_mut().unwrap().remove("hash");
        assert_eq!(
            chain_hash(GENESIS_HASH, &canonical_json(&value)),
            record.hash
        );
        assert_eq!(record.hash.len(), 64);
    }

    #[test]
    fn the_direct_body_writer_matches_the_generic_canonical_form_for_every_variant() {
        let v =
            json!({"z": [1, {"b": "\u{e9}\"\n", "a": null}], "a": 1.5, "m": {"y": true, "x": -3}});
        let error = StepError {
            kind: "permanent".into(),
            message: "no \"such\" thing".into(),
        };
        let bodies = vec![
            RecordBody::RunStarted {
                event: v.clone().into(),
                params: json!({"replicas": 3}),
                dry_run: true,
                namespaces: vec!["shop".into(), "b\u{f6}rse".into()],
                cluster_actions: Some(vec!["k8s::cordon".into()]),
                timeout_ms: Some(60_000),
                lock_key: Some("rb/shop/web".into()),
                cooldown_ms: Some(600_000),
                interactive: true,
                approval: Some(ApprovalPolicy {
                    approvers: vec!["sre".into()],
                    required: 2,
                    expires_ms: 1_800_000,
                    self_approval: true,
                }),
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            },
            bare_run_started(),
            RecordBody::RunResumed {
                replayable_steps: 2,
            },
            RecordBody::RunTakenOver {
                by_replica: "b".into(),
                from_replica: "a".into(),
                last_hash: "ab".repeat(32),
                last_seq: 7,
                records: 5,
            },
            RecordBody::StepStarted {
                step: 1,
                name: "k8s::rollback".into(),
                inputs: v.clone(),
                intent: None,
            },
            RecordBody::StepStarted {
                step: 2,
                name: "k8s::scale".into(),
                inputs: json!({}),
                intent: Some(v.clone()),
            },
            RecordBody::StepFinished {
                step: 1,
                name: "log".into(),
                inputs: None,
                status: StepStatus::Ok,
                outputs: v.clone(),
                error: None,
                duration_ms: 12,
                attempts: 1,
            },
            RecordBody::StepFinished {
                step: 2,
                name: "log".into(),
                inputs: Some(v.clone()),
                status: StepStatus::Ok,
                outputs: Value::Null,
                error: None,
                duration_ms: 0,
                attempts: 1,
            },
            RecordBody::StepFinished {
                step: 2,
                name: "x".into(),
                inputs: None,
                status: StepStatus::Error,
                outputs: Value::Null,
                error: Some(error),
                duration_ms: 0,
                attempts: 3,
            },
            RecordBody::Evidence {
                step: 3,
                name: "p99".into(),
                data: v.clone(),
            },
            RecordBody::Progress {
                step: 4,
                message: "2/3 ready".into(),
            },
            RecordBody::Refusal {
                step: Some(5),
                action: "k8s::scale".into(),
                reason: "outside".into(),
            },
            RecordBody::Refusal {
                step: None,
                action: "trigger".into(),
                reason: "not a member".into(),
            },
            RecordBody::ApprovalRequested {
                step: Some(6),
                action: "k8s::rollback".into(),
                reason: Some("bad model".into()),
                plan: serde_json::json!({"intent": {"revision": 2}, "would": "roll back"}),
                expires_at: "2026-12-03T06:00:00Z".parse().unwrap(),
            },
            RecordBody::ApprovalRequested {
                step: None,
                action: "approve".into(),
                reason: None,
                plan: Value::Null,
                expires_at: "2026-12-03T06:00:00Z".parse().unwrap(),
            },
            RecordBody::Approval {
                step: Some(6),
                approver: "ana".into(),
                approved: true,
                comment: Some("ok".into()),
                channel: Some("slack".into()),
                seen: Some("roll back shop/model to revision 2".into()),
            },
            RecordBody::Approval {
                step: None,
                approver: "bo".into(),
                approved: false,
                comment: None,
                channel: None,
                seen: None,
            },
            RecordBody::RunFinished {
                status: RunStatus::Failed,
                error: Some("boom".into()),
            },
            RecordBody::RunFinished {
                status: RunStatus::Succeeded,
                error: None,
            },
            RecordBody::EventJoined {
                event_id: "e2".into(),
                status: "resolved".into(),
                summary: "alertmanager/resolved X".into(),
            },
            RecordBody::Skipped {
                reason: "cooldown".into(),
                active_run: None,
            },
            RecordBody::Skipped {
                reason: "busy".into(),
                active_run: Some("r9".into()),
            },
            RecordBody::Parked {
                origin: "firebreak.events.x.y".into(),
                reason: "not json".into(),
                payload: "\u{0}garbage".into(),
            },
            RecordBody::Checkpoint {
                covers: 7,
                head: "ab".into(),
                key: "cd".into(),
                signature: "ef".into(),
                last: false,
            },
            RecordBody::Checkpoint {
                covers: 8,
                head: "ab".into(),
                key: "cd".into(),
                signature: "ef".into(),
                last: true,
            },
            RecordBody::Relinked {
                set_aside: "audit.broken-1.jsonl".into(),
                problem: "line 3: hash mismatch".into(),
            },
        ];
        for body in bodies {
            let mut direct = Vec::new();
            write_canonical_body(&body, &mut direct);
            let generic = canonical_json(&serde_json::to_value(&body).unwrap());
            assert_eq!(
                String::from_utf8(direct).unwrap(),
                String::from_utf8(generic).unwrap(),
                "{body:?}"
            );
        }
    }

    #[test]
    fn secret_key_detection_is_the_same_for_short_long_and_non_ascii_keys() {
        let long = format!("{}_Session-Id", "x".repeat(70));
        for (key, secret) in [
            ("x-Auth.TOKEN", true),
            ("PRIVATE_KEY", true),
            ("private_key_id", true),
            ("tok_en", true),
            ("DB_PASSWORD", true),
            ("DBPassword", true),
            ("accessToken", true),
            ("client-secret", true),
            ("tokenizer", false),
            ("max_tokens", false),
            ("secretKeyRef", false),
            ("secretName", false),
            ("password_file", false),
            ("name", false),
            // One lower-case word (the common case, checked without folding).
            ("password", true),
            ("apikey", true),
            ("credentials", true),
            ("sessionid", true),
            ("tokens", false),
            ("token2", false),
            ("alertname", false),
            ("", false),
            (long.as_str(), true),
            ("x".repeat(80).as_str(), false),
            // U+212A KELVIN SIGN lowercases to an ASCII `k`.
            ("api\u{212A}ey", true),
            ("pässwort", false),
        ] {
            assert_eq!(is_secret_key(key), secret, "{key:?}");
        }
    }

    /// The issue's cases: an env entry named like a secret, secrets inside free text (errors,
    /// messages, URLs), and the harmless keys that were redacted before.
    #[test]
    fn secrets_are_redacted_by_value_and_harmless_keys_are_kept() {
        let mut v = json!({
            "spec": {"containers": [{"env": [
                {"name": "DB_PASSWORD", "value": "hunter2"},
                {"name": "MODEL_NAME", "value": "fraud-v2"},
                {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}
            ]}]},
            "tokenizer": "bpe", "max_tokens": 512,
            "url": "postgres://svc:s3cr3t-pw@db:5432/models",
            "note": "sent Authorization: Bearer abcdefghijklmnop1234 to the API",
            "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVl",
            "aws": "key AKIAIOSFODNN7EXAMPLE leaked",
            "pem": "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
            "seed": "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTAY",
        });
        redact_value(&mut v);
        assert_eq!(
            v["spec"]["containers"][0]["env"],
            json!([
                {"name": "DB_PASSWORD", "value": REDACTED},
                {"name": "MODEL_NAME", "value": "fraud-v2"},
                {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}
            ])
        );
        assert_eq!(
            (v["tokenizer"].as_str(), v["max_tokens"].as_i64()),
            (Some("bpe"), Some(512))
        );
        assert_eq!(v["url"], "postgres://svc:[redacted]@db:5432/models");
        assert_eq!(
            v["note"],
            "sent Authorization: Bearer [redacted] to the API"
        );
        assert_eq!(v["jwt"], REDACTED);
        assert_eq!(v["aws"], "key [redacted] leaked");
        assert_eq!(v["pem"], REDACTED);
        assert_eq!(v["seed"], REDACTED);

        let mut body = RecordBody::RunFinished {
            status: RunStatus::Failed,
            error: Some("GET https://admin:pa55word@registry.example/v2 failed: 401".into()),
        };
        redact(&mut body);
        assert_eq!(
            body,
            RecordBody::RunFinished {
                status: RunStatus::Failed,
                error: Some("GET https://admin:[redacted]@registry.example/v2 failed: 401".into()),
            }
        );
        assert_eq!(
            redact_text("nothing to see at https://example.com/a:b"),
            None
        );
    }

    /// An event read back from a journal is what was journaled; appended again, it is
    /// redacted again (a value made here is redacted as it is made).
    #[test]
    fn a_journaled_event_read_back_is_kept_as_written_and_redacted_when_appended_again() {
        let secret = json!({"data": {"labels": {"api_token": "abcdefghij"}}, "id": "e"});
        let made = CanonicalJson::from_value(secret.clone());
        assert_eq!(
            made.value(),
            json!({"data": {"labels": {"api_token": REDACTED}}, "id": "e"})
        );
        let read: CanonicalJson = serde_json::from_value(secret.clone()).unwrap();
        assert_eq!(read.value(), secret);
        assert_eq!(
            read.as_str(),
            String::from_utf8(canonical_json(&secret)).unwrap()
        );
        let mut body = bare_run_started();
        if let RecordBody::RunStarted { event, .. } = &mut body {
            *event = read;
        }
        redact(&mut body);
        let RecordBody::RunStarted { event, .. } = body else {
            unreachable!()
        };
        assert_eq!(event, made);
    }

    /// Each of the secret shapes, alone in a string, is redacted; an event's ordinary text
    /// is not.
    #[test]
    fn every_secret_shape_is_redacted() {
        let shapes = [
            "Authorization: Bearer abcdefghijklmnop1234",
            "Basic dXNlcjpwYXNzd29yZA==",
            "Token 0123456789abcdef",
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVl",
            "-----BEGIN EC PRIVATE KEY-----\nMHcC",
            "AKIAIOSFODNN7EXAMPLE",
            "ASIAIOSFODNN7EXAMPLE",
            "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
            "gho_0123456789abcdefghijklmnopqrstuvwxyz",
            "xoxb-1234567890-abcdefghij",
            "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTAY",
            "SNAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTAY",
            "postgres://svc:s3cr3t-pw@db:5432/models",
        ];
        for text in shapes {
            let redacted = redact_text(text).unwrap_or_else(|| panic!("kept: {text}"));
            assert!(redacted.contains(REDACTED), "{text} -> {redacted}");
        }
        for text in [
            "p99 latency of team-a/fraud-model version v2 is above 250ms over the last 10s.",
            "http://127.0.0.1:9090/graph?g0.expr=up",
            "2026-11-26T22:01:43.277Z",
            "ModelLatencyHigh",
            "",
        ] {
            assert_eq!(redact_text(text), None, "{text}");
        }
    }

    /// Strings and keys met before are not checked again, and knowing them never hides a
    /// secret: a shape or a secret key beside known strings is found, a string is known clean
    /// only after a search that found nothing, and what is kept stays bounded.
    #[test]
    fn strings_known_clean_are_not_searched_again_and_hide_no_secret() {
        let clean = json!({"labels": {"alertname": "ModelLatencyHigh", "namespace": "team-a"},
                           "summary": "p99 latency of fraud-model v2 is 412ms"});
        let mut value = clean.clone();
        redact_value(&mut value);
        assert_eq!(value, clean);
        CLEAN.with_borrow(|known| {
            assert!(
                known
                    .texts
                    .contains("p99 latency of fraud-model v2 is 412ms")
            );
            assert!(known.keys.contains("alertname"));
        });
        // The same strings beside a secret's shape, and under a secret key.
        let token = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";
        let mut value =
            json!({"labels": clean["labels"], "summary": clean["summary"], "note": token});
        redact_value(&mut value);
        assert_eq!(value["note"], REDACTED);
        assert_eq!(value["labels"], clean["labels"]);
        let mut value = json!({"labels": clean["labels"], "password": "ModelLatencyHigh"});
        redact_value(&mut value);
        assert_eq!(value["password"], REDACTED);
        // A value with a secret teaches nothing: its clean strings are not kept either.
        let mut value = json!({"note": token, "other": "fresh words"});
        redact_value(&mut value);
        CLEAN.with_borrow(|known| {
            assert!(!known.texts.contains(token));
            assert!(!known.texts.contains("fresh words"));
        });
        let mut value = json!({"only": token});
        redact_value(&mut value);
        assert_eq!(value["only"], REDACTED);
        // Bounded: many distinct strings and keys later, at most CLEAN_KEPT of each.
        for i in 0..CLEAN_KEPT + 10 {
            let mut value = json!({ format!("key{i}"): format!("text {i}") });
            redact_value(&mut value);
        }
        CLEAN.with_borrow(|known| {
            assert!(known.texts.len() <= CLEAN_KEPT && known.keys.len() <= CLEAN_KEPT);
            assert!(known.texts.contains(&*format!("text {}", CLEAN_KEPT + 9)));
        });
        // And in bytes: long strings fill the budget before the count.
        for i in 0..1_000 {
            let mut value = json!({ "k": format!("{i:0>500}") });
            redact_value(&mut value);
            CLEAN.with_borrow(|known| {
                let held: usize = known.keys.iter().chain(&known.texts).map(|e| e.len()).sum();
                assert!(held == known.bytes && held <= CLEAN_BYTES, "{held} bytes");
            });
        }
        CLEAN.with_borrow(|known| assert!(known.texts.contains(&*format!("{:0>500}", 999))));
    }

    /// The one search over all of a value's strings decides as the search string by string
    /// would: random values of shape pieces, plain text, secret and ordinary keys and
    /// `{name, value}` entries come out of both the same, and many of them need redacting.
    #[test]
    fn one_search_over_all_strings_redacts_what_one_per_string_does() {
        let texts = [
            "Bearer ",
            "abcdefgh12",
            "eyJhbGciOiJ",
            ".",
            "-----BEGIN RSA PRIVATE KEY-----",
            "AKIA",
            "IOSFODNN7EXAMPLE",
            "ghp_",
            "0123456789abcdefghijklmnopqrstuvwxyz",
            "xoxb-",
            "https://",
            "svc:",
            "pw@db",
            "SUAIBDPBAUTWCWBKIO6XHQNINK5FWJW4OHLXC3HQ2KFE4PEJUA44CNHTAY",
            " ",
            "\n",
            "team-a",
            "p99 above 250ms",
            "é",
            "",
        ];
        let keys = [
            "alertname",
            "summary",
            "password",
            "apiKey",
            "name",
            "value",
            "x-token",
            "env",
        ];
        let mut state: u64 = 0x853c_49e6_748f_ea9b;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        fn build(
            next: &mut impl FnMut(usize) -> usize,
            depth: u32,
            texts: &[&str],
            keys: &[&str],
        ) -> Value {
            match next(if depth == 0 { 2 } else { 4 }) {
                0 => Value::String((0..next(4)).map(|_| texts[next(texts.len())]).collect()),
                1 => Value::from(next(100)),
                2 => Value::Array(
                    (0..next(4))
                        .map(|_| build(next, depth - 1, texts, keys))
                        .collect(),
                ),
                _ => Value::Object(
                    (0..next(5))
                        .map(|_| {
                            let key = keys[next(keys.len())].to_owned();
                            (key, build(next, depth - 1, texts, keys))
                        })
                        .collect(),
                ),
            }
        }
        let mut redacted = 0;
        for _ in 0..20_000 {
            let value = build(&mut next, 3, &texts, &keys);
            let (mut fast, mut slow) = (value.clone(), value.clone());
            redact_value(&mut fast);
            redact_each(&mut slow);
            assert_eq!(fast, slow, "{value}");
            redacted += usize::from(slow != value);
        }
        assert!(redacted > 2_000, "only {redacted} values needed redacting");
    }

    #[test]
    fn secret_keys_are_redacted_at_any_depth_case_insensitively() {
        let mut v = json!({
            "Password": "p", "nested": [{"API_KEY": "k", "ok": 1}], "headers": {"Authorization": "Bearer x"},
            "db_token": {"deep": 1}, "name": "visible", "client-secret": "s"
        });
        redact_value(&mut v);
        assert_eq!(
            v,
            json!({
                "Password": REDACTED, "nested": [{"API_KEY": REDACTED, "ok": 1}],
                "headers": {"Authorization": REDACTED}, "db_token": REDACTED, "name": "visible",
                "client-secret": REDACTED
            })
        );
    }
}
