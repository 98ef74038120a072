//! firebreak Kubernetes connector: rollback, scale, snapshot, evidence and isolation through kube-rs, plus the event watcher
