//! Who is asking, and whether RBAC lets them: kubesim as an apiserver with service-account
//! tokens. Start at [`check`].
//!
//! kubesim's own kubeconfig carries no credentials: such a caller is the cluster admin, as it
//! always was (tests, kubectl, the controllers' writes). A bearer token issued by the
//! TokenRequest API (`kubectl create token SA`, `POST …/serviceaccounts/NAME/token`) is that
//! ServiceAccount, `system:serviceaccount:NS:NAME`, and each of its requests is authorized the
//! way the real apiserver's RBAC authorizer does it (`authz.rs`): resource requests by verb,
//! API group, resource, subresource, namespace and name; other paths by non-resource URL. The
//! bootstrap ClusterRoles every cluster has are built in: discovery, `/version` and the
//! OpenAPI documents for anyone authenticated (`system:discovery`,
//! `system:public-info-viewer`), and asking about oneself (`system:basic-user`). A token that
//! was never issued, has expired, or whose ServiceAccount is gone is `401 Unauthorized`; a
//! refused request is `403 Forbidden` with the apiserver's message.
//!
//! Tokens are JWT-shaped (kubectl and client libraries treat them as opaque), live in memory
//! and expire on the simulated clock (`spec.expirationSeconds`, default one hour).

use std::collections::HashMap;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use crate::api::Req;
use crate::authz::{self, Attributes, Subject};
use crate::sim::Inner;
use crate::status::ApiError;

const AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// One issued token.
#[derive(Debug, Clone)]
struct Issued {
    namespace: String,
    name: String,
    uid: String,
    expires: Timestamp,
}

/// The tokens kubesim has issued.
#[derive(Debug, Default)]
pub struct Tokens {
    by_token: HashMap<String, Issued>,
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: a TokenRequest answered with a new
/// token for that ServiceAccount.
pub(crate) fn issue(
    inner: &mut Inner,
    namespace: &str,
    name: &str,
    mut request: Value,
) -> Result<Value, ApiError> {
    let sa_type = crate::resources::RESOURCES
        .iter()
        .find(|r| r.kind == "ServiceAccount")
        .expect("kubesim serves ServiceAccounts");
    let sa = inner.store.get_resource(sa_type, Some(namespace), name)?;
    let uid = sa["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let seconds = match request["spec"]["expirationSeconds"].as_i64() {
        None => 3600,
        Some(s) if s >= 600 => s,
        Some(s) => {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "TokenRequest.authentication.k8s.io {name:?} is invalid: \
                     spec.expirationSeconds: Invalid value: {s}: may not specify a duration \
                     less than 10 minutes"
                ),
            ));
        }
    };
    let now = inner.store.clock.now();
    let expires = now + SignedDuration::from_secs(seconds);
    let audiences = request["spec"]["audiences"]
        .as_array()
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(AUDIENCE)]);
    let claims = json!({
        "aud": audiences,
        "exp": expires.as_second(),
        "iat": now.as_second(),
        "nbf": now.as_second(),
        "iss": AUDIENCE,
        "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
    });
    let mut secret = uuid::Uuid::new_v4().into_bytes().to_vec();
    secret.extend(uuid::Uuid::new_v4().into_bytes());
    let token = [
        base64url(br#"{"alg":"RS256","kid":"kubesim"}"#),
        base64url(claims.to_string().as_bytes()),
        base64url(&secret),
    ]
    .join(".");
    inner.tokens.by_token.insert(
        token.clone(),
        Issued {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            expires,
        },
    );
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": null});
    request["spec"]["audiences"] = Value::Array(audiences);
    request["spec"]["expirationSeconds"] = json!(seconds);
    request["status"] = json!({"token": token, "expirationTimestamp": format!("{expires:.0}")});
    Ok(request)
}

fn base64url(bytes: &[u8]) -> String {
    crate::protobuf::base64_encode(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// Authenticates the request and, for a ServiceAccount, authorizes it. `Ok(None)`: kubesim's
/// own admin; `Ok(Some(who))`: an allowed ServiceAccount.
pub(crate) fn check(inner: &Inner, req: &Req, segs: &[&str]) -> Result<Option<Subject>, ApiError> {
    let Some(who) = authenticate(inner, req)? else {
        return Ok(None);
    };
    if req.headers.contains_key("impersonate-user") {
        return Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "users \"{}\" is forbidden: User \"{}\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope",
                header(req, "impersonate-user"),
                who.user
            ),
        ));
    }
    let a = attributes(req, segs);
    if authz::bootstrap_allows(&a) || authz::allowed(&inner.store, &who, &a).is_some() {
        Ok(Some(who))
    } else {
        Err(forbidden(&who, &a))
    }
}

fn header<'a>(req: &'a Req, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

fn authenticate(inner: &Inner, req: &Req) -> Result<Option<Subject>, ApiError> {
    let auth = header(req, "authorization");
    if auth.is_empty() {
        return Ok(None);
    }
    let unauthorized = || ApiError::new(401, "Unauthorized", "Unauthorized");
    let token = auth
        .strip_prefix("Bearer ")
        .ok_or_else(unauthorized)?
        .trim();
    let issued = inner.tokens.by_token.get(token).ok_or_else(unauthorized)?;
    if issued.expires <= inner.store.clock.now() {
        return Err(unauthorized());
    }
    // Bound to the ServiceAccount object: deleted (or re-created) means the token is dead.
    let sa_type = crate::resources::RESOURCES
        .iter()
        .find(|r| r.kind == "ServiceAccount")
        .expect("kubesim serves ServiceAccounts");
    let alive = inner
        .store
        .get_resource(sa_type, Some(&issued.namespace), &issued.name)
        .is_ok_and(|sa| sa["metadata"]["uid"] == issued.uid.as_str());
    if !alive {
        return Err(unauthorized());
    }
    Ok(Some(Subject {
        user: format!("system:serviceaccount:{}:{}", issued.namespace, issued.name),
        groups: Vec::new(),
    }))
}

/// The request as RBAC sees it, the way the apiserver's `RequestInfoFactory` reads a URL:
/// `/api/v1/…` and `/apis/GROUP/VERSION/…` with something after the group-version are
/// resource requests; everything else is a path.
fn attributes(req: &Req, segs: &[&str]) -> Attributes {
    let (group, rest) = match segs {
        ["api", _, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", g, _, rest @ ..] if !rest.is_empty() => (*g, rest),
        _ => {
            return Attributes {
                verb: req.method.as_str().to_ascii_lowercase(),
                path: Some(req.path.clone()),
                ..Attributes::default()
            };
        }
    };
    let (namespace, parts) = if rest.len() >= 3
        && rest[0] == "namespaces"
        && !matches!(rest[2], "status" | "finalize")
    {
        (rest[1].to_owned(), &rest[2..])
    } else {
        (String::new(), rest)
    };
    // `namespaces/NAME` is the namespace itself, in its own namespace.
    let namespace = if parts[0] == "namespaces" && namespace.is_empty() {
        parts.get(1).map(|s| (*s).to_owned()).unwrap_or_default()
    } else {
        namespace
    };
    let name = parts.get(1).map(|s| (*s).to_owned()).unwrap_or_default();
    let watch = matches!(
        req.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    let verb = match (req.method.as_str(), name.is_empty()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "list",
        ("GET", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        (other, _) => {
            return Attributes {
                verb: other.to_ascii_lowercase(),
                path: Some(req.path.clone()),
                ..Attributes::default()
            };
        }
    };
    Attributes {
        namespace,
        verb: verb.to_owned(),
        group: group.to_owned(),
        resource: parts[0].to_owned(),
        subresource: parts.get(2).map(|s| (*s).to_owned()).unwrap_or_default(),
        name,
        path: None,
    }
}

/// The apiserver's 403: `deployments.apps "web" is forbidden: User "…" cannot patch resource
/// "deployments" in API group "apps" in the namespace "ml-serving"`.
fn forbidden(who: &Subject, a: &Attributes) -> ApiError {
    let Some(path) = &a.path else {
        let qualified = if a.group.is_empty() {
            a.resource.clone()
        } else {
            format!("{}.{}", a.resource, a.group)
        };
        let named = if a.name.is_empty() {
            qualified
        } else {
            format!("{qualified} {:?}", a.name)
        };
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let scope = if a.namespace.is_empty() {
            "at the cluster scope".to_owned()
        } else {
            format!("in the namespace {:?}", a.namespace)
        };
        return ApiError::new(
            403,
            "Forbidden",
            format!(
                "{named} is forbidden: User {:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                who.user, a.verb, a.group
            ),
        )
        .with_details(json!({"name": a.name, "group": a.group, "kind": a.resource}));
    };
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "forbidden: User {:?} cannot {} path {path:?}",
            who.user, a.verb
        ),
    )
}
