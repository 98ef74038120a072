//! The objects that split traffic, read and rewritten as untyped JSON: a Gateway API
//! `HTTPRoute` (`spec.rules[].backendRefs[].weight`), an Istio `VirtualService`
//! (`spec.http[].route[].weight`, `networking.istio.io/v1`, else `v1beta1`), or a `Service`
//! whose backends are the Deployments it selects (the replica-ratio canary, see
//! [`crate::replicas`]).
//!
//! Start at [`RouteRef::parse`] and [`Route::read`]. Weights are percentages: every write sums
//! to 100 (what older Istio control planes require), a backend left out of a shift gets 0.

use std::collections::BTreeMap;

use firebreak_connector::{ActionError, ErrorKind};
use firebreak_kubernetes::error::classify;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::{Value, json};

/// What the script named: `httproute/NAME`, `virtualservice/NAME` (`vs/NAME`),
/// `service/NAME` (`svc/NAME`), or a bare name looked up in that order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRef {
    pub kind: Option<RouteKind>,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RouteKind {
    HTTPRoute,
    VirtualService,
    Service,
}

impl RouteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::HTTPRoute => "HTTPRoute",
            RouteKind::VirtualService => "VirtualService",
            RouteKind::Service => "Service",
        }
    }
}

impl RouteRef {
    pub fn parse(text: &str) -> Result<RouteRef, ActionError> {
        let text = text.trim();
        let (kind, name) = match text.split_once('/') {
            None => (None, text),
            Some((kind, name)) => {
                let kind = match kind.to_ascii_lowercase().as_str() {
                    "httproute" | "httproutes" => RouteKind::HTTPRoute,
                    "virtualservice" | "virtualservices" | "vs" => RouteKind::VirtualService,
                    "service" | "services" | "svc" => RouteKind::Service,
                    other => {
                        return Err(ActionError::new(
                            ErrorKind::Permanent,
                            format!(
                                "route {text:?}: unknown kind {other:?} (use httproute/, virtualservice/ or service/)"
                            ),
                        ));
                    }
                };
                (Some(kind), name)
            }
        };
        if name.is_empty() {
            return Err(ActionError::new(
                ErrorKind::Permanent,
                format!("route {text:?} names nothing"),
            ));
        }
        Ok(RouteRef {
            kind,
            name: name.to_owned(),
        })
    }
}

/// Wraps a kube error with what was being done.
pub fn api_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ActionError {
    let what = what.into();
    move |e| {
        let message = match &e {
            kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
            other => other.to_string(),
        };
        ActionError::new(classify(&e), format!("{what}: {message}"))
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

/// The resources a route may live in, in the order they are tried.
fn candidates(kind: Option<RouteKind>) -> Vec<(RouteKind, ApiResource)> {
    let http = (
        RouteKind::HTTPRoute,
        resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
    );
    let vs = |v: &str| {
        (
            RouteKind::VirtualService,
            resource(
                "networking.istio.io",
                v,
                "VirtualService",
                "virtualservices",
            ),
        )
    };
    let svc = (
        RouteKind::Service,
        resource("", "v1", "Service", "services"),
    );
    match kind {
        Some(RouteKind::HTTPRoute) => vec![http],
        Some(RouteKind::VirtualService) => vec![vs("v1"), vs("v1beta1")],
        Some(RouteKind::Service) => vec![svc],
        None => vec![http, vs("v1"), vs("v1beta1"), svc],
    }
}

/// A route as read, with the resource it lives in.
#[derive(Debug, Clone)]
pub struct Route {
    pub kind: RouteKind,
    pub resource: ApiResource,
    pub object: DynamicObject,
}

impl Route {
    /// Finds the route `r` in namespace `ns`.
    pub async fn read(client: &kube::Client, ns: &str, r: &RouteRef) -> Result<Route, ActionError> {
        let mut tried = Vec::new();
        for (kind, resource) in candidates(r.kind) {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
            match api.get_opt(&r.name).await {
                Ok(Some(object)) => {
                    return Ok(Route {
                        kind,
                        resource,
                        object,
                    });
                }
                Ok(None) => tried.push(format!("{}/{}", resource.api_version, kind.as_str())),
                // The resource type itself is not served (no Istio, no Gateway API here).
                Err(kube::Error::Api(s)) if s.code == 404 => tried.push(format!(
                    "{}/{} (not served)",
                    resource.api_version,
                    kind.as_str()
                )),
                Err(e) => {
                    return Err(api_error(format!(
                        "reading {} {ns}/{}",
                        kind.as_str(),
                        r.name
                    ))(e));
                }
            }
        }
        Err(ActionError::new(
            ErrorKind::NotFound,
            format!("no route {ns}/{} (looked for {})", r.name, tried.join(", ")),
        ))
    }

    pub fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        Api::namespaced_with(
            client.clone(),
            self.object
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default(),
            &self.resource,
        )
    }

    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn reference(&self) -> String {
        format!(
            "{}/{}",
            self.kind.as_str().to_ascii_lowercase(),
            self.name()
        )
    }

    pub fn generation(&self) -> i64 {
        self.object.metadata.generation.unwrap_or(0)
    }

    /// The weight of each backend, by name (the first occurrence across rules / http routes).
    /// Not for Services: see [`crate::replicas`].
    pub fn weights(&self) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        for (name, weight) in self.backends() {
            out.entry(name).or_insert(weight);
        }
        out
    }

    /// Every (backend, weight) in the route's rules, in order.
    fn backends(&self) -> Vec<(String, i64)> {
        let spec = &self.object.data["spec"];
        match self.kind {
            RouteKind::HTTPRoute => spec["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|rule| rule["backendRefs"].as_array().cloned().unwrap_or_default())
                .filter_map(|b| {
                    let name = b["name"].as_str()?.to_owned();
                    Some((name, b["weight"].as_i64().unwrap_or(1)))
                })
                .collect(),
            RouteKind::VirtualService => spec["http"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|h| {
                    let dests = h["route"].as_array().cloned().unwrap_or_default();
                    let lone = dests.len() == 1;
                    dests
                        .into_iter()
                        .filter_map(move |d| {
                            let host = d["destination"]["host"].as_str()?;
                            let weight = d["weight"].as_i64().unwrap_or(if lone { 100 } else { 0 });
                            Some((short_host(host).to_owned(), weight))
                        })
                        .collect::<Vec<_>>()
                })
                .collect(),
            RouteKind::Service => Vec::new(),
        }
    }

    /// Writes `weights` (by backend) into every rule holding those backends; other backends
    /// of those rules get 0. The caller sends the result.
    pub fn with_weights(&self, weights: &BTreeMap<String, i64>) -> DynamicObject {
        let mut object = self.object.clone();
        let spec = &mut object.data["spec"];
        let (list_key, entries_key) = match self.kind {
            RouteKind::HTTPRoute => ("rules", "backendRefs"),
            _ => ("http", "route"),
        };
        for rule in spec[list_key].as_array_mut().into_iter().flatten() {
            let Some(entries) = rule[entries_key].as_array_mut() else {
                continue;
            };
            let names: Vec<String> = entries.iter().map(|e| self.entry_name(e)).collect();
            if !names.iter().any(|n| weights.contains_key(n)) {
                continue;
            }
            for (entry, name) in entries.iter_mut().zip(names) {
                entry["weight"] = json!(weights.get(&name).copied().unwrap_or(0));
            }
        }
        object
    }

    fn entry_name(&self, entry: &Value) -> String {
        match self.kind {
            RouteKind::HTTPRoute => entry["name"].as_str().unwrap_or_default().to_owned(),
            _ => short_host(entry["destination"]["host"].as_str().unwrap_or_default()).to_owned(),
        }
    }

    /// For an HTTPRoute: whether every parent accepted it and resolved its backends at its
    /// current generation. `None` when nothing reports on it (no parents, or not an
    /// HTTPRoute).
    pub fn status(&self) -> Option<RouteStatus> {
        if self.kind != RouteKind::HTTPRoute {
            return None;
        }
        let parents = self.object.data["status"]["parents"].as_array()?;
        if parents.is_empty() {
            return None;
        }
        let generation = self.generation();
        let mut status = RouteStatus {
            accepted: true,
            resolved: true,
            current: true,
            problems: Vec::new(),
        };
        for parent in parents {
            for kind in ["Accepted", "ResolvedRefs"] {
                let c = parent["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
                let ok = c.is_some_and(|c| c["status"] == "True");
                let current =
                    c.is_some_and(|c| c["observedGeneration"].as_i64() == Some(generation));
                status.current &= current;
                if !ok {
                    if kind == "Accepted" {
                        status.accepted = false;
                    } else {
                        status.resolved = false;
                    }
                    if let Some(c) = c {
                        status.problems.push(format!(
                            "{kind}={} ({}): {}",
                            c["status"].as_str().unwrap_or("?"),
                            c["reason"].as_str().unwrap_or("?"),
                            c["message"].as_str().unwrap_or("")
                        ));
                    }
                }
            }
        }
        Some(status)
    }

    /// Replaces the route with `object` (which carries the resourceVersion it was read at).
    /// `Ok(None)` on 409.
    pub async fn replace(
        &self,
        client: &kube::Client,
        object: &DynamicObject,
    ) -> Result<Option<DynamicObject>, ActionError> {
        let pp = PostParams {
            field_manager: Some(firebreak_kubernetes::FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        match self.api(client).replace(self.name(), &pp, object).await {
            Ok(written) => Ok(Some(written)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(api_error(format!("writing {}", self.reference()))(e)),
        }
    }
}

/// What an HTTPRoute's parents say about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteStatus {
    pub accepted: bool,
    pub resolved: bool,
    /// Every condition was written for the route's current generation.
    pub current: bool,
    pub problems: Vec<String>,
}

/// `reviews.prod.svc.cluster.local` → `reviews`.
pub fn short_host(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

/// Percentages summing to exactly 100, in proportion to `weights` (largest remainder; ties
/// to the name that sorts first). Refused: a negative weight, or all zero.
pub fn normalize(weights: &BTreeMap<String, i64>) -> Result<BTreeMap<String, i64>, ActionError> {
    if let Some((name, w)) = weights.iter().find(|(_, w)| **w < 0) {
        return Err(ActionError::new(
            ErrorKind::Permanent,
            format!("weight {w} for {name:?} is negative"),
        ));
    }
    let total: i64 = weights.values().sum();
    if total <= 0 {
        return Err(ActionError::new(
            ErrorKind::Permanent,
            "the weights are all zero: no backend would get traffic",
        ));
    }
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    let mut remainders: Vec<(i64, String)> = Vec::new();
    for (name, w) in weights {
        let scaled = w * 100;
        out.insert(name.clone(), scaled / total);
        remainders.push((scaled % total, name.clone()));
    }
    let mut left = 100 - out.values().sum::<i64>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, name) in remainders {
        if left == 0 {
            break;
        }
        *out.get_mut(&name).expect("named above") += 1;
        left -= 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn weights_normalize_to_percentages_that_sum_to_100() {
        assert_eq!(
            normalize(&weights(&[("a", 90), ("b", 10)])).unwrap(),
            weights(&[("a", 90), ("b", 10)])
        );
        assert_eq!(
            normalize(&weights(&[("a", 1), ("b", 1), ("c", 1)])).unwrap(),
            weights(&[("a", 34), ("b", 33), ("c", 33)])
        );
        assert_eq!(
            normalize(&weights(&[("a", 9), ("b", 1)])).unwrap(),
            weights(&[("a", 90), ("b", 10)])
        );
        assert!(normalize(&weights(&[("a", 0), ("b", 0)])).is_err());
        assert!(normalize(&weights(&[("a", -1), ("b", 5)])).is_err());
    }

    #[test]
    fn route_references_parse() {
        assert_eq!(
            RouteRef::parse("httproute/web").unwrap(),
            RouteRef {
                kind: Some(RouteKind::HTTPRoute),
                name: "web".into()
            }
        );
        assert_eq!(
            RouteRef::parse("vs/web").unwrap().kind,
            Some(RouteKind::VirtualService)
        );
        assert_eq!(RouteRef::parse("web").unwrap().kind, None);
        assert!(RouteRef::parse("ingress/web").is_err());
        assert!(RouteRef::parse("httproute/").is_err());
    }
}
