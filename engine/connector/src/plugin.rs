//! How a connector plugs into the engine: one value per connector crate ([`Plugin`]) says
//! what it is called in scripts, which configuration section it reads, which settings it has,
//! what its actions are (for `firebreak check`, listings and RBAC) and how to build it. The
//! binary lists the plugins, one line each; nothing else in the binary names a connector.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;

use crate::{ActionSpec, Connector};

/// One setting of a connector's section, for docs and environment overrides:
/// `FIREBREAK_<SECTION>_<KEY>` (upper case) sets `connectors.<section>.<key>`.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub doc: &'static str,
}

/// The environment variable that sets `connectors.<section>.<key>`:
/// `FIREBREAK_<SECTION>_<KEY>`, upper case.
pub fn env_var(section: &str, key: &str) -> String {
    format!("FIREBREAK_{section}_{key}").to_ascii_uppercase()
}

/// Clients the engine shares between connectors (a Kubernetes client, an HTTP client), by
/// type, so this crate needs to know none of them.
#[derive(Default)]
pub struct Shared {
    items: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Shared {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.items.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.items.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

/// What building a connector gets.
pub struct BuildContext<'a> {
    /// The connector's section (`connectors.<section>` with environment overrides applied);
    /// `Null` when it is absent.
    pub settings: &'a Value,
    pub shared: &'a Shared,
}

impl BuildContext<'_> {
    /// A string setting, when set and not empty.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.settings
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }
}

/// A connector crate's entry point (see the module docs).
pub trait Plugin: Send + Sync {
    /// The Rhai module, e.g. `k8s` in `k8s::rollback(...)`.
    fn module(&self) -> &'static str;
    /// Its configuration section, e.g. `prometheus` (`connectors.prometheus`).
    fn section(&self) -> &'static str;
    /// Its settings (none by default: a connector built from shared clients only).
    fn settings(&self) -> Vec<Setting> {
        Vec::new()
    }
    /// What it is for and what turns it on, in a sentence or two, for the runbook reference
    /// (`firebreak connectors --markdown`).
    fn doc(&self) -> &'static str {
        ""
    }
    /// Its actions, whether or not it is configured here.
    fn actions(&self) -> Vec<ActionSpec>;
    /// Builds it; `Ok(None)` when it is not configured (then scripts calling it fail with a
    /// clear error, and `firebreak connectors` says it is off); `Err` for a configuration
    /// that is wrong.
    fn build<'a>(
        &'a self,
        cx: BuildContext<'a>,
    ) -> BoxFuture<'a, Result<Option<Arc<dyn Connector>>, String>>;
}
