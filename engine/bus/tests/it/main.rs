//! Integration tests of firebreak-bus: one suite of behaviours ([`suite`]) run against the
//! embedded bus ([`embedded`]) and against JetStream on a real nats-server ([`nats`]); and the
//! NATS security settings against a nats-server with accounts, permissions and TLS ([`secure`]).

mod embedded;
mod nats;
mod secure;
mod suite;
