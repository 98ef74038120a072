//! firebreak matcher: runbook manifests, Alertmanager-style label matchers, event to runbook matching (pure, sync)
