//! firebreak ingest: HTTP endpoints that turn webhooks and triggers into events on the bus
