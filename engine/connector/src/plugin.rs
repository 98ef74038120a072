//! How a connector plugs into the engine: one value per connector crate ([`Plugin`]) says
//! what it is called in scripts, which configuration section it reads, which settings it has,
//! what its actions are (for `firebreak check`, listings and RBAC) and how to build it. The
//! binary lists the plugins, one line each; nothing else in the binary names a connector.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

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

/// A shared client made on first use.
type Lazy<T> = LazyLock<T, Box<dyn FnOnce() -> T + Send + Sync>>;

impl Shared {
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.items.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// Shares the value `make` makes when a connector first asks for it: a client no
    /// configured connector uses costs nothing (an HTTP client reads and parses every system
    /// root certificate when it is made).
    pub fn insert_with<T: Any + Send + Sync>(
        &mut self,
        make: impl FnOnce() -> T + Send + Sync + 'static,
    ) {
        let lazy: Lazy<T> = LazyLock::new(Box::new(make));
        self.items.insert(TypeId::of::<T>(), Box::new(lazy));
    }

    pub fn get<T: Any + Send + Sync>(&self) -> Option<&T> {
        let item = self.items.get(&TypeId::of::<T>())?;
        item.downcast_ref()
            .or_else(|| item.downcast_ref::<Lazy<T>>().map(|lazy| &**lazy))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_lazy_shared_value_is_made_once_on_first_use() {
        static MADE: AtomicUsize = AtomicUsize::new(0);
        let mut shared = Shared::default();
        shared.insert(7u32);
        shared.insert_with(|| {
            MADE.fetch_add(1, Ordering::SeqCst);
            String::from("client")
        });
        assert_eq!(shared.get::<u32>(), Some(&7));
        assert_eq!(
            MADE.load(Ordering::SeqCst),
            0,
            "made before it was asked for"
        );
        assert_eq!(shared.get::<String>().map(String::as_str), Some("client"));
        assert_eq!(shared.get::<String>().map(String::as_str), Some("client"));
        assert_eq!(MADE.load(Ordering::SeqCst), 1);
        assert_eq!(shared.get::<u64>(), None);
    }
}
