//! Integration tests of firebreak-bus: one suite of behaviours ([`suite`]) run against the
//! embedded bus ([`embedded`]) and against JetStream on a real nats-server ([`nats`]).

mod embedded;
mod nats;
mod suite;
