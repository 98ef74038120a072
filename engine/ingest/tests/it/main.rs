//! Integration tests of firebreak-ingest: a real server on 127.0.0.1:0 in front of a real bus
//! (embedded in a temp dir, or JetStream on a real nats-server), driven over HTTP by reqwest.

mod alertmanager;
mod harness;
mod health;
mod nats;
mod real_alertmanager;
mod trigger;
