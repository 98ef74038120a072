//! firebreak bus: one trait, NATS JetStream and embedded implementations, plus run state KV
