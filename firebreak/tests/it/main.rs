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
mod interactive;
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
