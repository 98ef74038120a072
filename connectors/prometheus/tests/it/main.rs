//! Integration tests of the Prometheus connector against a real `prometheus` that scrapes a
//! tiny exporter the test controls. One binary; start at `harness`.

mod alerts;
mod canary;
mod checks;
mod errors;
mod harness;
mod queries;
