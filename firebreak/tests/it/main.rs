//! End-to-end tests of the `firebreak` binary, driven as a user would: the real binary, the real
//! Alertmanager, nats-server and kubectl, kubesim in process. Start at `harness`.

mod alertmanager;
mod bad_input;
mod cli;
mod demo;
mod golden;
mod harness;
mod nats_outage;
mod restart;
mod runaway;
mod runbooks;
mod scenario1;
mod tenancy;
mod watcher;
