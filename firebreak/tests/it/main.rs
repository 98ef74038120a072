//! End-to-end tests of the `firebreak` binary, driven as a user would: the real binary, the real
//! Alertmanager, nats-server and kubectl, kubesim in process. Start at `harness`.

mod alertmanager;
mod bad_input;
mod cli;
mod demo;
mod full_disk;
mod golden;
mod harness;
mod interactive;
mod nats_outage;
mod restart;
mod runaway;
mod runbooks;
mod safe_runs;
mod scenario1;
mod tenancy;
mod watcher;
