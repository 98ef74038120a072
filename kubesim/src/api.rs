//! The HTTP surface: path parsing and the REST verbs on resources.
//!
//! Start at [`router`]: one fallback handler ([`handle`]) records the request, then
//! [`route`] maps the path to discovery, OpenAPI, admin or a resource, and the `*_resource`
//! functions below do get/list/create/update/patch/delete under the state lock. Watches are in
//! `watch.rs`. Every answer is JSON; bodies may be JSON, YAML or protobuf (`protobuf.rs`); errors are
//! `Status` objects.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::patch::{self, PatchType};
use crate::resources::{Registry, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector, supported_fields};
use crate::sim::{AuditEntry, Inner, Sim};
use crate::status::{self, ApiError};
use crate::store::Propagation;
use crate::table::{self, IncludeObject, TABLE_CONTENT_TYPE};
use crate::{admin, discovery, logs, openapi, watch};

const MAX_BODY: usize = 64 * 1024 * 1024;
const AUDIT_CAPACITY: usize = 10_000;

/// The router: every path goes through [`handle`].
pub fn router(sim: Sim) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(sim)
}

/// Parses a query string (`?&a=b` and `?` alone included), decoding `%XX` and `+`.
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request, parsed once.
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
}

impl Req {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn accept(&self) -> &str {
        self.header(header::ACCEPT)
    }

    pub fn content_type(&self) -> &str {
        self.header(header::CONTENT_TYPE)
    }

    pub fn q(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    pub fn wants_table(&self) -> bool {
        self.accept().contains("as=Table")
    }
}

async fn handle(State(sim): State<Sim>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => return ApiError::bad_request(format!("cannot read body: {e}")).into_response(),
    };
    let req = Req {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query().unwrap_or_default()),
        headers: parts.headers,
        body,
    };
    let response = route(&sim, &req);
    record(
        &sim,
        &req,
        parts.uri.query().unwrap_or_default(),
        response.status().as_u16(),
    );
    tracing::debug!(method = %req.method, path = %req.path, code = response.status().as_u16(), "request");
    if let Some(delay) = held_back(&sim, &req) {
        tracing::info!(method = %req.method, path = %req.path, delay_ms = delay.as_millis() as u64, "answer held back (fault injection)");
        tokio::time::sleep(delay).await;
    }
    response
}

/// How long to hold back the answer to `req` (an `/_sim/delay-answers` fault), if at all.
fn held_back(sim: &Sim, req: &Req) -> Option<std::time::Duration> {
    if req.path.starts_with("/_sim/") {
        return None;
    }
    let mut inner = sim.lock();
    let fault = inner.answer_delays.iter_mut().find(|d| {
        d.count > 0 && d.method == req.method.as_str() && req.path.contains(d.path.as_str())
    })?;
    fault.count -= 1;
    let delay = fault.delay;
    inner.answer_delays.retain(|d| d.count > 0);
    Some(delay)
}

fn record(sim: &Sim, req: &Req, query: &str, code: u16) {
    if req.path.starts_with("/_sim/") {
        return;
    }
    let entry = AuditEntry {
        method: req.method.to_string(),
        path: req.path.clone(),
        query: query.to_string(),
        content_type: req.content_type().to_string(),
        accept: req.accept().to_string(),
        kubectl_command: req
            .headers
            .get("kubectl-command")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
        code,
        at: jiff::Timestamp::now(),
    };
    let mut inner = sim.lock();
    inner.audit.push_back(entry);
    while inner.audit.len() > AUDIT_CAPACITY {
        inner.audit.pop_front();
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// A resource path: `/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]` (or `/apis/G/V/...`).
pub(crate) struct Target {
    pub rt: &'static ResourceType,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

fn parse_target(types: &Registry, group: &str, version: &str, rest: &[&str]) -> Option<Target> {
    let find = |plural: &str| types.by_plural(group, version, plural);
    let owned = |s: &&str| s.to_string();
    if rest.len() >= 3 && rest[0] == "namespaces" && !matches!(rest[2], "status" | "finalize") {
        let rt = find(rest[2]).filter(|r| r.namespaced)?;
        if rest.len() > 5 {
            return None;
        }
        return Some(Target {
            rt,
            ns: Some(rest[1].to_string()),
            name: rest.get(3).map(owned),
            sub: rest.get(4).map(owned),
        });
    }
    let rt = find(rest.first()?)?;
    if rest.len() > 3 {
        return None;
    }
    Some(Target {
        rt,
        ns: None,
        name: rest.get(1).map(owned),
        sub: rest.get(2).map(owned),
    })
}

fn route(sim: &Sim, req: &Req) -> Response {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    // A ServiceAccount's token: authenticated, then authorized by RBAC (`authn`).
    let who = match crate::authn::check(&sim.lock(), req, &segs) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    let get = req.method == Method::GET;
    match segs.as_slice() {
        ["version"] if get => {
            json_response(StatusCode::OK, &discovery::version(&sim.lock().version))
        }
        ["healthz" | "readyz" | "livez"] if get => (StatusCode::OK, "ok").into_response(),
        ["metrics"] if get => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            sim.lock().metrics(),
        )
            .into_response(),
        ["api" | "apis"] if get => {
            let legacy = segs[0] == "api";
            match discovery::negotiate(req.accept()) {
                discovery::Form::Legacy if legacy => {
                    let host = req
                        .headers
                        .get(header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("127.0.0.1");
                    json_response(StatusCode::OK, &discovery::api_versions(host))
                }
                discovery::Form::Legacy => json_response(
                    StatusCode::OK,
                    &discovery::api_group_list(sim.lock().store.types()),
                ),
                form @ discovery::Form::Aggregated(v) => typed_response(
                    StatusCode::OK,
                    &form.content_type(),
                    &discovery::aggregated(sim.lock().store.types(), legacy, v),
                ),
            }
        }
        ["api", v] if get => found(discovery::resource_list(sim.lock().store.types(), "", v)),
        ["apis", g] if get => found(discovery::api_group(sim.lock().store.types(), g)),
        ["apis", g, v] if get => found(discovery::resource_list(sim.lock().store.types(), g, v)),
        ["openapi", "v2"] if get => {
            let inner = sim.lock();
            let (types, version) = (inner.store.types(), &inner.version);
            if req.accept().contains("protobuf") {
                (
                    StatusCode::OK,
                    // As kube-openapi's handler answers it (the requested type has an `@`
                    // that mime parsers refuse).
                    [(http::header::CONTENT_TYPE, "application/octet-stream")],
                    openapi::v2_protobuf(types, version),
                )
                    .into_response()
            } else {
                json_response(StatusCode::OK, &openapi::v2_json(types, version))
            }
        }
        ["openapi", "v3"] if get => {
            let inner = sim.lock();
            json_response(
                StatusCode::OK,
                &openapi::index(inner.store.types(), &inner.version),
            )
        }
        ["openapi", "v3", "api", v] if get => {
            let inner = sim.lock();
            found(openapi::group_version(
                inner.store.types(),
                "",
                v,
                &inner.version,
            ))
        }
        ["openapi", "v3", "apis", g, v] if get => {
            let inner = sim.lock();
            found(openapi::group_version(
                inner.store.types(),
                g,
                v,
                &inner.version,
            ))
        }
        ["_sim", rest @ ..] => admin::handle(sim, req, rest),
        [
            "apis",
            "authorization.k8s.io",
            "v1",
            "selfsubjectaccessreviews" | "subjectaccessreviews",
        ] if req.method == Method::POST => access_review(sim, req, who),
        ["api", v, rest @ ..] => {
            let target = parse_target(sim.lock().store.types(), "", v, rest);
            resource(sim, req, target)
        }
        ["apis", g, v, rest @ ..] => {
            let target = parse_target(sim.lock().store.types(), g, v, rest);
            resource(sim, req, target)
        }
        _ => ApiError::no_route().into_response(),
    }
}

/// `kubectl auth can-i`: a (Self)SubjectAccessReview answered from the RBAC objects (see
/// `authz`); the caller is the token's ServiceAccount, else whoever `Impersonate-User` names,
/// else the admin.
fn access_review(sim: &Sim, req: &Req, who: Option<crate::authz::Subject>) -> Response {
    let body = match decode_body(req) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let caller = req
        .headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(|user| crate::authz::Subject {
            user: user.to_owned(),
            groups: req
                .headers
                .get_all("impersonate-group")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(str::to_owned)
                .collect(),
        });
    let answer = crate::authz::review(&sim.lock().store, body, who.or(caller));
    json_response(StatusCode::CREATED, &answer)
}

fn found(doc: Option<Value>) -> Response {
    match doc {
        Some(d) => json_response(StatusCode::OK, &d),
        None => ApiError::no_route().into_response(),
    }
}

fn resource(sim: &Sim, req: &Req, target: Option<Target>) -> Response {
    let Some(t) = target else {
        return ApiError::no_route().into_response();
    };
    if let Some(sub) = &t.sub
        && !t.rt.has_sub(sub)
    {
        return ApiError::no_route().into_response();
    }
    let result = match (&req.method, t.name.is_some()) {
        (&Method::GET, false) if matches!(req.q("watch"), Some("true" | "1")) => {
            return watch::start(sim, req, &t);
        }
        (&Method::GET, false) => list(sim, req, &t),
        (&Method::GET, true) => get(sim, req, &t),
        (&Method::POST, false) => create(sim, req, &t),
        (&Method::POST, true) if t.sub.as_deref() == Some("eviction") => evict(sim, req, &t),
        (&Method::POST, true) if t.sub.as_deref() == Some("token") => token(sim, req, &t),
        (&Method::PUT, true) => update(sim, req, &t),
        (&Method::PATCH, true) => patch_resource(sim, req, &t),
        (&Method::DELETE, true) => delete(sim, req, &t),
        (&Method::DELETE, false) => delete_collection(sim, req, &t),
        (m, _) => Err(ApiError::method_not_supported(
            t.rt,
            &m.to_string().to_lowercase(),
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

type Answer = Result<Response, ApiError>;

/// Selectors of a list or watch request, checked against what the resource supports.
pub(crate) struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Filter {
    pub fn from_req(rt: &ResourceType, req: &Req) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(req.q("labelSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(req.q("fieldSelector").unwrap_or_default())
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        for f in fields.fields() {
            if f != "metadata.name"
                && f != "metadata.namespace"
                && !supported_fields(rt.kind).contains(&f)
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {f}"
                )));
            }
        }
        Ok(Filter { labels, fields })
    }

    /// Whether a served-form object is selected.
    pub fn matches(&self, obj: &Value) -> bool {
        self.labels.matches_object(obj) && self.fields.matches(obj)
    }
}

fn list_kind(rt: &ResourceType) -> String {
    format!("{}List", rt.kind)
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn list(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let filter = Filter::from_req(t.rt, req)?;
    let limit: usize = match req.q("limit") {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    let start_after = match req.q("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            Some(unhex(token).ok_or_else(|| ApiError::bad_request("continue key is not valid"))?)
        }
        None => None,
    };
    let inner = sim.lock();
    let now = inner.store.clock.now();
    let mut items: Vec<Value> = inner
        .store
        .list_resource_where(t.rt, t.ns.as_deref(), |o| filter.matches(o));
    let key = |o: &Value| {
        format!(
            "{}/{}",
            o.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default(),
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
        )
    };
    if let Some(after) = &start_after {
        items.retain(|o| key(o).as_str() > after.as_str());
    }
    let mut meta = json!({"resourceVersion": inner.store.current_rv().to_string()});
    if limit > 0 && items.len() > limit {
        let remaining = items.len() - limit;
        items.truncate(limit);
        meta["continue"] = json!(hex(&key(items.last().expect("limit > 0"))));
        meta["remainingItemCount"] = json!(remaining);
    }
    drop(inner);
    if req.wants_table() {
        let include = IncludeObject::parse(req.q("includeObject"));
        let table = table::to_table(t.rt, &items, now, include, meta);
        return Ok(typed_response(StatusCode::OK, TABLE_CONTENT_TYPE, &table));
    }
    if req.accept().contains("as=PartialObjectMetadataList") {
        let items: Vec<Value> = items.iter().map(partial).collect();
        let body = json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items});
        return Ok(typed_response(
            StatusCode::OK,
            "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io",
            &body,
        ));
    }
    let body = json!({"kind": list_kind(t.rt), "apiVersion": t.rt.api_version(), "metadata": meta, "items": items});
    Ok(json_response(StatusCode::OK, &body))
}

fn partial(o: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
}

fn typed_response(code: StatusCode, ct: &str, body: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, ct.to_string())],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// An object answer: Table / PartialObjectMetadata when asked, else the object.
fn object_response(
    code: StatusCode,
    req: &Req,
    rt: &ResourceType,
    obj: &Value,
    now: jiff::Timestamp,
) -> Response {
    if req.wants_table() {
        let include = IncludeObject::parse(req.q("includeObject"));
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(json!(""));
        let table = table::to_table(
            rt,
            std::slice::from_ref(obj),
            now,
            include,
            json!({"resourceVersion": rv}),
        );
        return typed_response(code, TABLE_CONTENT_TYPE, &table);
    }
    if req.accept().contains("as=PartialObjectMetadata") {
        return typed_response(
            code,
            "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
            &partial(obj),
        );
    }
    json_response(code, obj)
}

fn name_of(t: &Target) -> &str {
    t.name.as_deref().unwrap_or_default()
}

fn get(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let inner = sim.lock();
    let obj = inner
        .store
        .get_resource(t.rt, t.ns.as_deref(), name_of(t))?;
    let now = inner.store.clock.now();
    drop(inner);
    match t.sub.as_deref() {
        Some("scale") => Ok(json_response(StatusCode::OK, &scale_of(t.rt, &obj))),
        Some("log") => {
            let q = logs::LogQuery::parse(&req.query)?;
            let text = logs::render(&obj, &q, now)?;
            if req.q("follow") == Some("true") {
                return Ok(logs::follow(
                    sim,
                    t.rt,
                    t.ns.clone(),
                    name_of(t).to_string(),
                    q,
                    text,
                ));
            }
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
        }
        _ => Ok(object_response(StatusCode::OK, req, t.rt, &obj, now)),
    }
}

/// `.spec.replicas` → `/spec/replicas` (a CRD's scale paths are simple dotted paths).
fn dotted_pointer(path: &str) -> String {
    path.split('.')
        .filter(|p| !p.is_empty())
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}

/// Sets the value at a JSON pointer, creating the objects on the way.
fn set_pointer(obj: &mut Value, pointer: &str, value: Value) {
    let mut at = obj;
    let parts: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        if !at.is_object() {
            *at = json!({});
        }
        if i + 1 == parts.len() {
            at[part.as_str()] = value;
            return;
        }
        at = &mut at[part.as_str()];
    }
}

/// The `autoscaling/v1 Scale` view of a Deployment, a ReplicaSet, or a custom resource whose
/// CRD has a scale subresource (read at its paths; the selector is then a string already).
fn scale_of(rt: &ResourceType, obj: &Value) -> Value {
    let meta = &obj["metadata"];
    let (spec_replicas, status_replicas, selector) = match rt.scale {
        Some(paths) => (
            dotted_pointer(paths.spec_replicas),
            dotted_pointer(paths.status_replicas),
            paths
                .label_selector
                .and_then(|p| obj.pointer(&dotted_pointer(p)))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        None => (
            "/spec/replicas".to_owned(),
            "/status/replicas".to_owned(),
            crate::selectors::format_label_selector(obj.pointer("/spec/selector")),
        ),
    };
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj.pointer(&spec_replicas).cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer(&status_replicas).cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// Decodes a POST/PUT body: JSON, YAML, or the protobuf kubectl's typed client sends.
fn decode_body(req: &Req) -> Result<Value, ApiError> {
    let ct = req.content_type();
    if ct.contains("protobuf") {
        return crate::protobuf::decode(&req.body).map_err(|e| match e {
            crate::protobuf::DecodeError::Unsupported(_) => {
                ApiError::new(415, "UnsupportedMediaType", e.to_string())
            }
            crate::protobuf::DecodeError::Malformed(_) => ApiError::bad_request(e.to_string()),
        });
    }
    if ct.contains("yaml") {
        let text =
            std::str::from_utf8(&req.body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        return serde_saphyr::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad_request(format!("error decoding JSON: {e}")))
}

fn dry_run(req: &Req) -> bool {
    req.q("dryRun").is_some_and(|v| v == "All")
}

/// Asks for the controllers to run after a committed write: the ticker coalesces a burst of
/// writes into one reconcile; without a ticker (a bare [`Sim::router`]) they run right here.
fn after_write(sim: &Sim, inner: &mut Inner, dry: bool) {
    if dry {
        return;
    }
    if sim
        .shared
        .ticker_running
        .load(std::sync::atomic::Ordering::SeqCst)
    {
        sim.shared.wake.notify_one();
    } else {
        inner.reconcile();
    }
}

/// Applies `fieldValidation=Strict` (kubectl's default for apply/create/replace).
fn strict(req: &Req, t: &Target, obj: &Value) -> Result<(), ApiError> {
    if req.q("fieldValidation") == Some("Strict") {
        crate::strict::check(t.rt, obj)?;
    }
    Ok(())
}

/// The field manager of a write: `?fieldManager=`, else the User-Agent's product, as the
/// apiserver derives it.
fn manager(req: &Req) -> String {
    match req.q("fieldManager").filter(|m| !m.is_empty()) {
        Some(m) => m.to_string(),
        None => {
            let ua = req
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let product = ua.split('/').next().unwrap_or_default().trim();
            if product.is_empty() {
                "unknown".to_string()
            } else {
                product.to_string()
            }
        }
    }
}

/// Records which fields this write changed in `metadata.managedFields` (keeping the live
/// entries when the request did not send any, as kubectl never shows them).
fn track(req: &Req, t: &Target, live: Option<&Value>, obj: &mut Value, now: jiff::Timestamp) {
    if !obj.is_object() {
        return;
    }
    if let Some(live_fields) = live.and_then(|l| l.pointer("/metadata/managedFields"))
        && obj.pointer("/metadata/managedFields").is_none()
        && obj.get("metadata").is_some_and(Value::is_object)
    {
        obj["metadata"]["managedFields"] = live_fields.clone();
    }
    let when = crate::store::format_time(now);
    crate::ssa::record_update(live, obj, &manager(req), &t.rt.api_version(), &when);
}

fn create(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let mut obj = decode_body(req)?;
    strict(req, t, &obj)?;
    let dry = dry_run(req);
    let mut inner = sim.lock();
    let now = inner.store.clock.now();
    track(req, t, None, &mut obj, now);
    let created = inner
        .store
        .create_resource(t.rt, t.ns.as_deref(), obj, dry)?;
    after_write(sim, &mut inner, dry);
    let now = inner.store.clock.now();
    Ok(object_response(
        StatusCode::CREATED,
        req,
        t.rt,
        &created,
        now,
    ))
}

/// `kubectl create token SA`: a TokenRequest for the ServiceAccount (`authn`).
fn token(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let request = decode_body(req)?;
    let mut inner = sim.lock();
    let answer = crate::authn::issue(
        &mut inner,
        t.ns.as_deref().unwrap_or_default(),
        name_of(t),
        request,
    )?;
    Ok(json_response(StatusCode::CREATED, &answer))
}

fn update(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let obj = decode_body(req)?;
    let dry = dry_run(req);
    let mut inner = sim.lock();
    let name = name_of(t);
    let out = match t.sub.as_deref() {
        Some("status") => {
            inner
                .store
                .update_resource_status(t.rt, t.ns.as_deref(), name, obj, dry)?
        }
        Some("scale") => {
            let live = inner.store.get_resource(t.rt, t.ns.as_deref(), name)?;
            let updated = set_scale(&mut inner, t, live, &obj, dry)?;
            after_write(sim, &mut inner, dry);
            return Ok(json_response(StatusCode::OK, &scale_of(t.rt, &updated)));
        }
        _ => {
            let mut obj = obj;
            strict(req, t, &obj)?;
            let live = inner.store.get_resource(t.rt, t.ns.as_deref(), name)?;
            let now = inner.store.clock.now();
            track(req, t, Some(&live), &mut obj, now);
            inner
                .store
                .update_resource(t.rt, t.ns.as_deref(), name, obj, dry)?
        }
    };
    after_write(sim, &mut inner, dry);
    let now = inner.store.clock.now();
    Ok(object_response(StatusCode::OK, req, t.rt, &out, now))
}

/// Applies a Scale object's `spec.replicas` (with its resourceVersion precondition).
fn set_scale(
    inner: &mut Inner,
    t: &Target,
    live: Value,
    scale: &Value,
    dry: bool,
) -> Result<Value, ApiError> {
    let want_rv = scale
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !want_rv.is_empty()
        && Some(want_rv)
            != live
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
    {
        return Err(ApiError::conflict(t.rt, name_of(t)));
    }
    let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
    if !replicas.is_i64() {
        return Err(ApiError::bad_request("spec.replicas must be an integer"));
    }
    let mut next = live;
    match t.rt.scale {
        Some(paths) => set_pointer(&mut next, &dotted_pointer(paths.spec_replicas), replicas),
        None => next["spec"]["replicas"] = replicas,
    }
    inner
        .store
        .update_resource(t.rt, t.ns.as_deref(), name_of(t), next, dry)
}

fn patch_resource(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let ct = req.content_type();
    let Some(ty) = PatchType::from_content_type(ct) else {
        return Err(ApiError::unsupported_media(
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json",
        ));
    };
    if ty == PatchType::Strategic && !t.rt.builtin {
        return Err(ApiError::unsupported_media(
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
        ));
    }
    if ty == PatchType::Apply && req.q("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    }
    let body = patch::parse_body(ty, &req.body)?;
    let dry = dry_run(req);
    let name = name_of(t);
    let mut inner = sim.lock();
    let live = match inner.store.get_resource(t.rt, t.ns.as_deref(), name) {
        Ok(live) => live,
        Err(e) if ty == PatchType::Apply && t.sub.is_none() => {
            let _ = e;
            let mut obj = body;
            if !obj.is_object() {
                return Err(ApiError::bad_request(
                    "the body of an apply patch must be an object",
                ));
            }
            if !obj.get("metadata").is_some_and(Value::is_object) {
                obj["metadata"] = json!({});
            }
            if obj.pointer("/metadata/name").is_none() {
                obj["metadata"]["name"] = json!(name);
            }
            let body_name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if body_name != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({name})"
                )));
            }
            let when = crate::store::format_time(inner.store.clock.now());
            let force = req.q("force") == Some("true");
            let obj = crate::ssa::apply(
                &json!({}),
                &obj,
                &manager(req),
                force,
                &t.rt.api_version(),
                &when,
            )
            .map_err(|c| crate::ssa::conflict_error(&c, &t.rt.api_version()))?;
            strict(req, t, &obj)?;
            let created = inner
                .store
                .create_resource(t.rt, t.ns.as_deref(), obj, dry)?;
            after_write(sim, &mut inner, dry);
            let now = inner.store.clock.now();
            return Ok(object_response(
                StatusCode::CREATED,
                req,
                t.rt,
                &created,
                now,
            ));
        }
        Err(e) => return Err(e),
    };
    let out = match t.sub.as_deref() {
        Some("scale") => {
            let patched = patch::apply_patch(ty, &scale_of(t.rt, &live), &body)?;
            let updated = set_scale(&mut inner, t, live, &patched, dry)?;
            after_write(sim, &mut inner, dry);
            return Ok(json_response(StatusCode::OK, &scale_of(t.rt, &updated)));
        }
        Some("status") => {
            let patched = patch::apply_patch(ty, &live, &body)?;
            inner
                .store
                .update_resource_status(t.rt, t.ns.as_deref(), name, patched, dry)?
        }
        _ if ty == PatchType::Apply => {
            let when = crate::store::format_time(inner.store.clock.now());
            let force = req.q("force") == Some("true");
            let applied = crate::ssa::apply(
                &live,
                &body,
                &manager(req),
                force,
                &t.rt.api_version(),
                &when,
            )
            .map_err(|c| crate::ssa::conflict_error(&c, &t.rt.api_version()))?;
            strict(req, t, &applied)?;
            inner
                .store
                .update_resource(t.rt, t.ns.as_deref(), name, applied, dry)?
        }
        _ => {
            let mut patched = patch::apply_patch(ty, &live, &body)?;
            strict(req, t, &patched)?;
            let now = inner.store.clock.now();
            track(req, t, Some(&live), &mut patched, now);
            inner
                .store
                .update_resource(t.rt, t.ns.as_deref(), name, patched, dry)?
        }
    };
    after_write(sim, &mut inner, dry);
    let now = inner.store.clock.now();
    Ok(object_response(StatusCode::OK, req, t.rt, &out, now))
}

/// `propagationPolicy` from the DeleteOptions body or the query (default Background).
fn propagation(req: &Req) -> Result<(Propagation, Option<String>), ApiError> {
    let opts: Value = if req.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding DeleteOptions: {e}")))?
    };
    let policy = opts
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| req.q("propagationPolicy").map(str::to_string))
        .or_else(|| {
            (opts.get("orphanDependents") == Some(&json!(true))).then(|| "Orphan".to_string())
        });
    let p = match policy.as_deref() {
        None | Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some("Orphan") => Propagation::Orphan,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
            )));
        }
    };
    let rv = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok((p, rv))
}

fn delete(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let (policy, rv) = propagation(req)?;
    let dry = dry_run(req);
    let mut inner = sim.lock();
    let name = name_of(t);
    if dry {
        let obj = inner.store.get_resource(t.rt, t.ns.as_deref(), name)?;
        return Ok(json_response(StatusCode::OK, &obj));
    }
    let deleted =
        inner
            .store
            .delete_resource(t.rt, t.ns.as_deref(), name, policy, rv.as_deref())?;
    after_write(sim, &mut inner, false);
    if matches!(t.rt.kind, "Pod" | "Namespace") {
        return Ok(json_response(StatusCode::OK, &deleted));
    }
    let uid = deleted
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Ok(json_response(
        StatusCode::OK,
        &status::delete_success(t.rt, name, uid),
    ))
}

/// `POST …/pods/NAME/eviction` (kubectl drain): deletes the pod (no PodDisruptionBudgets are
/// simulated, so every eviction is allowed) and answers `201` with a success Status.
fn evict(sim: &Sim, req: &Req, t: &Target) -> Answer {
    let body = decode_body(req)?;
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "Eviction" {
        return Err(ApiError::bad_request(format!(
            "expected an Eviction, got kind {kind:?}"
        )));
    }
    let mut inner = sim.lock();
    let name = name_of(t);
    if dry_run(req) {
        inner.store.get_resource(t.rt, t.ns.as_deref(), name)?;
    } else {
        inner
            .store
            .delete_resource(t.rt, t.ns.as_deref(), name, Propagation::Background, None)?;
        after_write(sim, &mut inner, false);
    }
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201});
    Ok(json_response(StatusCode::CREATED, &status))
}

fn delete_collection(sim: &Sim, req: &Req, t: &Target) -> Answer {
    if t.rt.kind == "Namespace" {
        return Err(ApiError::method_not_supported(t.rt, "deletecollection"));
    }
    let filter = Filter::from_req(t.rt, req)?;
    let (policy, _) = propagation(req)?;
    let mut inner = sim.lock();
    let victims: Vec<Value> = inner
        .store
        .list_resource_where(t.rt, t.ns.as_deref(), |o| filter.matches(o));
    let mut deleted = Vec::new();
    for v in victims {
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let name = v
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Ok(d) = inner
            .store
            .delete_resource(t.rt, ns.as_deref(), &name, policy, None)
        {
            deleted.push(d);
        }
    }
    after_write(sim, &mut inner, false);
    let rv = inner.store.current_rv().to_string();
    let body = json!({"kind": list_kind(t.rt), "apiVersion": t.rt.api_version(), "metadata": {"resourceVersion": rv}, "items": deleted});
    Ok(json_response(StatusCode::OK, &body))
}

/// An empty-bodied answer with a status (used by admin).
pub(crate) fn ok_json(body: &Value) -> Response {
    json_response(StatusCode::OK, body)
}

/// A body-less response for streaming (used by watch).
pub(crate) fn stream_response(content_type: &str, body: Body) -> Response {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_str(content_type)
            .unwrap_or(http::HeaderValue::from_static("application/json")),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_like_go() {
        let q = parse_query("&labelSelector=app+in+%28web%29&limit=500&");
        assert_eq!(q["labelSelector"], "app in (web)");
        assert_eq!(q["limit"], "500");
        assert!(parse_query("").is_empty());
        assert_eq!(parse_query("a=%zz")["a"], "%zz");
        assert_eq!(
            parse_query("fieldSelector=metadata.name%3Dweb")["fieldSelector"],
            "metadata.name=web"
        );
    }

    #[test]
    fn paths_resolve_to_targets() {
        let types = Registry::default();
        let t = parse_target(
            &types,
            "apps",
            "v1",
            &["namespaces", "default", "deployments", "web", "scale"],
        )
        .unwrap();
        assert_eq!(
            (
                t.rt.plural,
                t.ns.as_deref(),
                t.name.as_deref(),
                t.sub.as_deref()
            ),
            ("deployments", Some("default"), Some("web"), Some("scale"))
        );
        let t = parse_target(&types, "", "v1", &["namespaces", "team-a"]).unwrap();
        assert_eq!(
            (t.rt.plural, t.name.as_deref()),
            ("namespaces", Some("team-a"))
        );
        let t = parse_target(&types, "", "v1", &["namespaces", "team-a", "status"]).unwrap();
        assert_eq!(t.sub.as_deref(), Some("status"));
        let t = parse_target(&types, "", "v1", &["pods"]).unwrap();
        assert!(t.ns.is_none() && t.name.is_none());
        assert!(parse_target(&types, "", "v1", &["namespaces", "x", "nodes"]).is_none());
        assert!(parse_target(&types, "apps", "v1", &["widgets"]).is_none());
    }

    #[test]
    fn continue_tokens_round_trip() {
        assert_eq!(unhex(&hex("default/web")).as_deref(), Some("default/web"));
        assert!(unhex("zz").is_none());
    }
}
