//! firebreak audit: typed records, the SHA-256 hash chain, the durable journal and its verifier
