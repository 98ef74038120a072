//! firebreak Prometheus connector.
