//! Approvals: people decide before a run changes anything.
//!
//! A run whose runbook has an approval policy ([`ApprovalPolicy`], journaled in its
//! `run_started`) pauses before its first mutating action, or at an explicit
//! `approve("why")` step, and journals an `approval_requested` record with what it will do
//! (the action's resolved intent and its dry-run answer). Decisions come from outside through
//! [`crate::RunLink::decide`] (the API, the CLI, chat buttons); each is journaled, in the run's
//! trail, with who, through which channel and what they saw. The run goes on when `required`
//! distinct people approved; any deny ends it `denied`; no decision by the request's expiry
//! ends it `expired`. The wait is a step boundary like any other: a shutdown suspends it and the
//! next start waits again until the same expiry, with the decisions already journaled.

use std::collections::BTreeSet;

use firebreak_audit::{ApprovalPolicy, RecordBody};
use serde_json::Value;

use crate::step::{RunContext, ScriptError, Stop};

/// One person's decision on a paused run, as the caller authenticated it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The member's name (the audit's actor).
    pub approver: String,
    /// The teams the approver belongs to; `None` without a teams file (single tenant: any
    /// authenticated caller may decide).
    pub teams: Option<Vec<String>>,
    pub approved: bool,
    /// Why (a deny's reason).
    pub comment: Option<String>,
    /// `api`, `cli`, `slack`, `mattermost`.
    pub channel: String,
    /// What the approver was shown (the chat message, the page).
    pub seen: Option<String>,
}

/// Where a run's approval stands after a decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Standing {
    pub run_id: String,
    /// `waiting`, `approved` or `denied`.
    pub state: &'static str,
    /// Distinct people who approved so far.
    pub approved_by: Vec<String>,
    pub required: u32,
}

/// Why a decision was not taken. Nothing is journaled for these: the run did not change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("run {0} is not waiting for an approval")]
    NotWaiting(String),
    #[error("{who} may not decide on run {run_id}: approvers are members of {teams}")]
    NotApprover {
        who: String,
        run_id: String,
        teams: String,
    },
    #[error("{0} started this run and may not approve it (the policy's self_approval is false)")]
    SelfApproval(String),
    #[error("{0} has already approved this run; approvers must be distinct people")]
    AlreadyDecided(String),
    #[error("the approval request of run {0} has expired")]
    Expired(String),
    #[error("cannot journal the decision: {0}")]
    Journal(String),
}

impl DecisionError {
    /// The HTTP status an API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            DecisionError::NotApprover { .. } | DecisionError::SelfApproval(_) => 403,
            DecisionError::NotWaiting(_)
            | DecisionError::AlreadyDecided(_)
            | DecisionError::Expired(_) => 409,
            DecisionError::Journal(_) => 503,
        }
    }
}

/// A request people are deciding on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Pending {
    pub run_id: String,
    pub runbook: String,
    pub team: String,
    /// Who started the run.
    pub requester: String,
    pub step: Option<u32>,
    pub action: String,
    pub reason: Option<String>,
    /// The intent and the dry-run answer.
    pub plan: Value,
    pub expires_at: jiff::Timestamp,
    pub approved_by: Vec<String>,
    pub required: u32,
    /// Teams whose members may decide.
    pub approvers: Vec<String>,
    /// Whether the requester may be one of them.
    pub self_approval: bool,
}

/// A run's approval state: granted once and for all, or one request at a time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gate {
    granted: bool,
    request: Option<Request>,
    /// `denied by ana: reason`.
    denied: Option<String>,
    expired: bool,
}

#[derive(Debug, Clone)]
struct Request {
    step: Option<u32>,
    action: String,
    reason: Option<String>,
    plan: Value,
    expires_at: jiff::Timestamp,
    approved_by: BTreeSet<String>,
    /// Journaled by this attempt or an earlier one.
    journaled: bool,
}

impl Gate {
    /// The gate as an earlier attempt's records left it.
    pub(crate) fn replay<'a>(
        records: impl IntoIterator<Item = &'a firebreak_audit::Record>,
    ) -> Gate {
        let mut gate = Gate::default();
        for record in records {
            match &record.body {
                RecordBody::ApprovalRequested {
                    step,
                    action,
                    reason,
                    plan,
                    expires_at,
                } => {
                    gate.request = Some(Request {
                        step: *step,
                        action: action.clone(),
                        reason: reason.clone(),
                        plan: plan.clone(),
                        expires_at: *expires_at,
                        approved_by: BTreeSet::new(),
                        journaled: true,
                    });
                }
                RecordBody::Approval {
                    approver,
                    approved,
                    comment,
                    ..
                } => {
                    if *approved {
                        if let Some(request) = &mut gate.request {
                            request.approved_by.insert(approver.clone());
                        }
                    } else {
                        gate.denied = Some(denial(approver, comment.as_deref()));
                    }
                }
                // A mutation began: the gate was passed.
                RecordBody::StepStarted {
                    intent: Some(_), ..
                } => {
                    gate.granted = true;
                    gate.request = None;
                }
                _ => {}
            }
        }
        gate
    }
}

fn denial(approver: &str, comment: Option<&str>) -> String {
    match comment {
        Some(c) if !c.is_empty() => format!("denied by {approver}: {c}"),
        _ => format!("denied by {approver}"),
    }
}

/// Counts a run in `firebreak_approvals_pending` while it waits.
struct Waiting;

impl Waiting {
    fn begin() -> Waiting {
        metrics::gauge!("firebreak_approvals_pending").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("firebreak_approvals_pending").decrement(1.0);
    }
}

/// The policy `approve("why")` uses in a runbook without one: a member of the owner team.
pub(crate) fn default_policy(team: &str) -> ApprovalPolicy {
    ApprovalPolicy {
        approvers: vec![team.to_owned()],
        required: 1,
        expires_ms: 30 * 60 * 1000,
        self_approval: false,
    }
}

impl RunContext {
    /// Whether people approved this run (its runbook asks for approval and they gave it).
    pub(crate) fn approved(&self) -> bool {
        self.approval.is_some() && self.gate.lock().expect("gate lock").granted
    }

    /// Whether a mutating action must wait for people first.
    pub(crate) fn needs_approval(&self) -> bool {
        !self.dry_run && self.approval.is_some() && !self.gate.lock().expect("gate lock").granted
    }

    /// Pauses the run until its policy is met (`Ok` with who approved; empty if it already
    /// was), denied or expired (the run ends so), or the run is stopped. `plan` is what people
    /// are shown.
    pub(crate) fn await_approval(
        &self,
        step: Option<u32>,
        action: &str,
        reason: Option<String>,
        plan: Value,
    ) -> Result<Vec<String>, ScriptError> {
        let policy = self
            .approval
            .clone()
            .unwrap_or_else(|| default_policy(&self.meta.team));
        let journal = {
            let mut gate = self.gate.lock().expect("gate lock");
            if gate.granted {
                return Ok(Vec::new());
            }
            let request = gate.request.get_or_insert_with(|| Request {
                step,
                action: action.to_owned(),
                reason: reason.clone(),
                plan: plan.clone(),
                expires_at: jiff::Timestamp::now()
                    + jiff::SignedDuration::from_millis(policy.expires_ms as i64),
                approved_by: BTreeSet::new(),
                journaled: false,
            });
            (!request.journaled).then(|| {
                request.journaled = true;
                RecordBody::ApprovalRequested {
                    step: request.step,
                    action: request.action.clone(),
                    reason: request.reason.clone(),
                    plan: request.plan.clone(),
                    expires_at: request.expires_at,
                }
            })
        };
        if let Some(record) = journal {
            self.journal(vec![record])?;
        }
        let _waiting = Waiting::begin();
        self.forward(&format!(
            "⏸ waiting for {} approval(s) from {} before {action}",
            policy.required,
            policy.approvers.join(", ")
        ));
        loop {
            let changed = self.gate_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let expires_at = {
                let mut gate = self.gate.lock().expect("gate lock");
                if let Some(denied) = gate.denied.clone() {
                    return Err(self.end_with(Stop::Denied, denied));
                }
                let request = gate.request.clone().expect("a request is open");
                if request.approved_by.len() as u64 >= u64::from(policy.required) {
                    let by = request.approved_by.iter().cloned().collect::<Vec<_>>();
                    gate.granted = true;
                    gate.request = None;
                    drop(gate);
                    self.forward(&format!("✔ approved by {}", by.join(", ")));
                    return Ok(by);
                }
                if jiff::Timestamp::now() >= request.expires_at {
                    gate.expired = true;
                    let message = format!(
                        "approval of {} expired at {} with {} of {} approval(s){}",
                        request.action,
                        request.expires_at,
                        request.approved_by.len(),
                        policy.required,
                        if request.approved_by.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " ({})",
                                request
                                    .approved_by
                                    .iter()
                                    .cloned()
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    );
                    return Err(self.end_with(Stop::Expired, message));
                }
                request.expires_at
            };
            let left =
                std::time::Duration::try_from(expires_at.duration_since(jiff::Timestamp::now()))
                    .unwrap_or_default();
            let waited = self.block_on(self.until_stopped(async {
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep(left) => {}
                }
            }));
            if let Err(stop) = waited {
                return Err(stop.error());
            }
        }
    }

    /// Ends the run with `stop` and `reason` in its end record.
    fn end_with(&self, stop: Stop, reason: String) -> ScriptError {
        self.cancel_reason
            .lock()
            .expect("cancel reason lock")
            .get_or_insert(reason);
        self.set_stop(stop);
        stop.error()
    }

    /// The open request, if the run is waiting.
    pub(crate) fn pending(&self) -> Option<Pending> {
        let gate = self.gate.lock().expect("gate lock");
        let request = gate.request.as_ref().filter(|r| r.journaled)?;
        if gate.denied.is_some() || gate.expired {
            return None;
        }
        let policy = self
            .approval
            .clone()
            .unwrap_or_else(|| default_policy(&self.meta.team));
        Some(Pending {
            run_id: self.meta.run_id.clone(),
            runbook: self.meta.runbook.clone(),
            team: self.meta.team.clone(),
            requester: self.meta.actor.clone(),
            step: request.step,
            action: request.action.clone(),
            reason: request.reason.clone(),
            plan: request.plan.clone(),
            expires_at: request.expires_at,
            approved_by: request.approved_by.iter().cloned().collect(),
            required: policy.required,
            approvers: policy.approvers,
            self_approval: policy.self_approval,
        })
    }

    /// Takes one person's decision: checks it against the policy, journals it in the run's
    /// trail (durable before this returns), then lets the run see it. Decisions on one run
    /// are taken one at a time, so a double click counts once.
    pub(crate) async fn decide(&self, decision: Decision) -> Result<Standing, DecisionError> {
        let run_id = self.meta.run_id.clone();
        let policy = self
            .approval
            .clone()
            .unwrap_or_else(|| default_policy(&self.meta.team));
        let _one_at_a_time = self.deciding.lock().await;
        let record = {
            let gate = self.gate.lock().expect("gate lock");
            let request = match gate.request.as_ref() {
                Some(r) if r.journaled && gate.denied.is_none() && !self.finished() => r,
                _ => return Err(DecisionError::NotWaiting(run_id)),
            };
            if gate.expired || jiff::Timestamp::now() >= request.expires_at {
                return Err(DecisionError::Expired(run_id));
            }
            if let Some(teams) = &decision.teams
                && !teams.iter().any(|t| policy.approvers.contains(t))
            {
                return Err(DecisionError::NotApprover {
                    who: decision.approver.clone(),
                    run_id,
                    teams: policy.approvers.join(", "),
                });
            }
            if decision.approver == self.meta.actor && !policy.self_approval {
                return Err(DecisionError::SelfApproval(decision.approver.clone()));
            }
            if request.approved_by.contains(&decision.approver) {
                return Err(DecisionError::AlreadyDecided(decision.approver.clone()));
            }
            RecordBody::Approval {
                step: request.step,
                approver: decision.approver.clone(),
                approved: decision.approved,
                comment: decision.comment.clone(),
                channel: Some(decision.channel.clone()),
                seen: decision.seen.clone(),
            }
        };
        self.flush(vec![record])
            .await
            .map_err(DecisionError::Journal)?;
        let standing = {
            let mut gate = self.gate.lock().expect("gate lock");
            if decision.approved {
                if let Some(request) = gate.request.as_mut() {
                    request.approved_by.insert(decision.approver.clone());
                }
            } else {
                gate.denied = Some(denial(&decision.approver, decision.comment.as_deref()));
            }
            let approved_by = gate
                .request
                .as_ref()
                .map(|r| r.approved_by.iter().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            let state = if gate.denied.is_some() {
                "denied"
            } else if approved_by.len() as u64 >= u64::from(policy.required) {
                "approved"
            } else {
                "waiting"
            };
            Standing {
                run_id,
                state,
                approved_by,
                required: policy.required,
            }
        };
        self.gate_changed.notify_waiters();
        Ok(standing)
    }
}
