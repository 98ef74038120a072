//! `firebreak approve RUN`, `firebreak deny RUN --reason …` and `firebreak approvals`: a person
//! decides on a run waiting for approval, through a running `firebreak serve`'s API with their
//! own token (the decision is audited with the channel `cli`).

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// The run (as `firebreak approvals` or chat shows it).
    pub run: String,
    /// Why (required to deny).
    #[arg(long, alias = "comment")]
    pub reason: Option<String>,
    /// The server's URL.
    #[arg(
        long,
        env = "FIREBREAK_SERVER",
        default_value = "http://127.0.0.1:9095"
    )]
    pub server: String,
    /// Your API token (a member's token from the teams file).
    #[arg(long, env = "FIREBREAK_TOKEN")]
    pub token: Option<String>,
    /// Without a teams file: who you are.
    #[arg(long, env = "USER")]
    pub approver: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(
        long,
        env = "FIREBREAK_SERVER",
        default_value = "http://127.0.0.1:9095"
    )]
    pub server: String,
    #[arg(long, env = "FIREBREAK_TOKEN")]
    pub token: Option<String>,
}

/// Approves (`approved`) or denies the run.
pub async fn decide(args: DecideArgs, approved: bool) -> Result<()> {
    if !approved && args.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        bail!("a deny needs a reason: firebreak deny RUN --reason \"why\"");
    }
    let server = args.server.trim_end_matches('/');
    let verb = if approved { "approve" } else { "deny" };
    let req = reqwest::Client::new()
        .post(format!("{server}/v1/runs/{}/{verb}", args.run))
        .json(&json!({"comment": args.reason, "approver": args.approver, "channel": "cli"}));
    let body = call(
        server,
        req,
        args.token.as_deref(),
        "did not take the decision",
    )
    .await?;
    let by = body["approved_by"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    match body["state"].as_str() {
        Some("denied") => println!("denied: run {} stops", args.run),
        Some("approved") => println!("approved by {by}: run {} goes on", args.run),
        _ => println!(
            "counted: {} of {} approval(s) for run {} ({by})",
            body["approved_by"].as_array().map_or(0, Vec::len),
            body["required"],
            args.run
        ),
    }
    Ok(())
}

/// Prints the approval requests the caller can see.
pub async fn list(args: ListArgs) -> Result<()> {
    let server = args.server.trim_end_matches('/');
    let req = reqwest::Client::new().get(format!("{server}/v1/approvals"));
    let body = call(server, req, args.token.as_deref(), "did not answer").await?;
    let pending = body["approvals"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        println!("no run is waiting for approval");
    }
    for p in pending {
        println!(
            "{}  {} (team {}, by {})  {} of {} approval(s) from {}  expires {}\n    {}: {}",
            p["run_id"].as_str().unwrap_or(""),
            p["runbook"].as_str().unwrap_or(""),
            p["team"].as_str().unwrap_or(""),
            p["requester"].as_str().unwrap_or(""),
            p["approved_by"].as_array().map_or(0, Vec::len),
            p["required"],
            p["approvers"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
            p["expires_at"].as_str().unwrap_or(""),
            p["action"].as_str().unwrap_or(""),
            what_it_will_do(&p),
        );
    }
    Ok(())
}

/// A request's plan for people: the dry-run answer, else the script's reason.
fn what_it_will_do(pending: &Value) -> String {
    let plan = &pending["plan"];
    match (&plan["would"], pending["reason"].as_str()) {
        (Value::String(s), _) => s.clone(),
        (Value::Object(o), _) if o.contains_key("would") => {
            o["would"].as_str().unwrap_or_default().to_owned()
        }
        (Value::Null, Some(reason)) => reason.to_owned(),
        (other, _) => other.to_string(),
    }
}

/// Sends `req` with the bearer `token`; the JSON answer, or an error with the server's reason.
async fn call(
    server: &str,
    mut req: reqwest::RequestBuilder,
    token: Option<&str>,
    failed: &str,
) -> Result<Value> {
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("asking {server}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!(
            "{server} {failed} ({status}): {}",
            body["error"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body)
}
