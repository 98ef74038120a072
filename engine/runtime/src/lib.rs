//! firebreak runtime: the hardened Rhai sandbox, journaled steps and the connector registry
