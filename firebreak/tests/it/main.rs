//! End-to-end tests of the `firebreak` binary, driven as a user would: the real binary, the real
//! Alertmanager, nats-server and kubectl, kubesim in process. Start at `harness` (the
//! `firebreak-tests` crate, shared with the scenario tests in `tests/`).

use firebreak_tests as harness;

mod alertmanager;
mod approvals;
mod audit_anchor;
mod bad_input;
mod chat;
mod cli;
mod demo;
mod deploy;
mod full_disk;
mod golden;
mod guards;
mod history;
mod interactive;
mod layout;
mod monitoring;
mod nats_outage;
mod nats_secure;
mod otel;
mod restart;
mod runaway;
mod runbooks;
mod safe_runs;
mod secure;
mod takeover;
mod tenancy;
mod ui;
mod watcher;

/// Every line of every message in the audit stream, in stream order.
pub async fn audit_stream_lines(js: &async_nats::jetstream::Context) -> Vec<Vec<u8>> {
    let mut stream = js
        .get_stream("FIREBREAK_AUDIT")
        .await
        .expect("audit stream");
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut lines = Vec::new();
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.expect("audit message");
        lines.extend(
            message
                .payload
                .split_inclusive(|b| *b == b'\n')
                .map(<[u8]>::to_vec),
        );
    }
    lines
}
