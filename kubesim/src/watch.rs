//! Watch streams: `GET …?watch=true`, one JSON event per line (KUBESIM-NOTES §5).
//!
//! Start at [`start`]. Under the state lock it decides the start point — synthetic ADDED events
//! for `resourceVersion` unset/`0` or `sendInitialEvents=true` (then the
//! `k8s.io/initial-events-end` BOOKMARK), replay of the change log after a given
//! resourceVersion, or an in-stream `ERROR 410 Expired` for one older than the log — and
//! subscribes to live changes in the same critical section, so nothing is missed or repeated.
//! A task then forwards matching changes (selector changes become ADDED/DELETED), bookmarks and
//! the deadline (`timeoutSeconds`) into the response body.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::api::{Filter, Req, Target, stream_response};
use crate::convert;
use crate::resources::ResourceType;
use crate::sim::Sim;
use crate::status::ApiError;
use crate::store::{Change, ChangeKind};
use crate::table::{self, IncludeObject, TABLE_CONTENT_TYPE};

/// How one watch renders events.
struct View {
    rt: &'static ResourceType,
    ns: Option<String>,
    filter: Filter,
    table: Option<IncludeObject>,
}

impl View {
    fn line(&self, kind: &str, obj: &Value, now: jiff::Timestamp) -> Bytes {
        let object = match self.table {
            Some(include) => {
                let rv = obj
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(json!(""));
                table::to_table(
                    self.rt,
                    std::slice::from_ref(obj),
                    now,
                    include,
                    json!({"resourceVersion": rv}),
                )
            }
            None => obj.clone(),
        };
        let mut text =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        text.push(b'\n');
        Bytes::from(text)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj =
            json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(), "metadata": meta});
        let mut text =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        text.push(b'\n');
        Bytes::from(text)
    }

    fn selects(&self, obj: &Value) -> bool {
        self.filter.matches(obj)
    }

    /// The event this watch sees for a change, if any.
    fn render(&self, change: &Change, now: jiff::Timestamp) -> Option<Bytes> {
        if change.storage != self.rt.storage {
            return None;
        }
        if let Some(ns) = &self.ns
            && self.rt.namespaced
            && &change.namespace != ns
        {
            return None;
        }
        let new = convert::from_storage(self.rt, &change.object);
        let matches_new = self.selects(&new);
        let kind = match change.kind {
            ChangeKind::Added | ChangeKind::Deleted if !matches_new => return None,
            ChangeKind::Added | ChangeKind::Deleted => change.kind.as_str(),
            ChangeKind::Modified => {
                let matches_old = change
                    .old
                    .as_ref()
                    .is_some_and(|o| self.selects(&convert::from_storage(self.rt, o)));
                match (matches_old, matches_new) {
                    (true, true) => "MODIFIED",
                    (false, true) => "ADDED",
                    (true, false) => "DELETED",
                    (false, false) => return None,
                }
            }
        };
        Some(self.line(kind, &new, now))
    }
}

fn expired_line(rv: u64, oldest: u64) -> Bytes {
    let status =
        ApiError::expired(format!("too old resource version: {rv} ({oldest})")).to_status();
    let mut text =
        serde_json::to_vec(&json!({"type": "ERROR", "object": status})).unwrap_or_default();
    text.push(b'\n');
    Bytes::from(text)
}

/// Starts a watch; answers 200 with a chunked JSON-lines body (errors in-stream, like the
/// apiserver), or a `Status` for a bad request.
pub(crate) fn start(sim: &Sim, req: &Req, t: &Target) -> Response {
    let filter = match Filter::from_req(t.rt, req) {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let table = req
        .wants_table()
        .then(|| IncludeObject::parse(req.q("includeObject")));
    let view = View {
        rt: t.rt,
        ns: t.ns.clone(),
        filter,
        table,
    };
    let bookmarks = req.q("allowWatchBookmarks") == Some("true") && table.is_none();
    let send_initial = req.q("sendInitialEvents") == Some("true");
    let rv_param = req.q("resourceVersion").filter(|v| !v.is_empty());
    let timeout = match req.q("timeoutSeconds").map(str::parse::<u64>) {
        Some(Ok(s)) => Duration::from_secs(s),
        Some(Err(_)) => return ApiError::bad_request("invalid timeoutSeconds").into_response(),
        None => Duration::from_secs(1800),
    };
    let from_rv = match rv_param.map(str::parse::<u64>) {
        Some(Ok(rv)) => Some(rv),
        Some(Err(_)) => {
            return ApiError::bad_request(format!(
                "invalid resource version: {}",
                rv_param.unwrap_or_default()
            ))
            .into_response();
        }
        None => None,
    };

    let mut first: Vec<Bytes> = Vec::new();
    let (rx, stop) = {
        let inner = sim.lock();
        let now = inner.store.clock.now();
        let current = inner.store.current_rv();
        let synthetic = send_initial || from_rv.is_none_or(|rv| rv == 0);
        if synthetic {
            let selected = inner
                .store
                .list_resource_where(view.rt, view.ns.as_deref(), |o| view.selects(o));
            for obj in selected {
                first.push(view.line("ADDED", &obj, now));
            }
            if send_initial {
                first.push(view.bookmark(current, true));
            }
        } else if let Some(rv) = from_rv {
            let oldest = inner.store.oldest_watchable();
            if rv < oldest {
                first.push(expired_line(rv, oldest));
                let body = Body::from_stream(futures::stream::iter(
                    first.into_iter().map(Ok::<_, Infallible>),
                ));
                return stream_response(content_type(&view), body);
            }
            for change in inner.store.changes_since(rv) {
                if let Some(line) = view.render(&change, now) {
                    first.push(line);
                }
            }
        }
        (
            inner.store.subscribe(),
            (sim.shared.cancel.clone(), inner.watch_reset.clone()),
        )
    };

    let (tx, out) = mpsc::channel::<Bytes>(256);
    let ct = content_type(&view);
    let sim = sim.clone();
    let bookmark_every = sim.shared.bookmark_interval;
    tokio::spawn(async move {
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        forward(
            sim,
            view,
            rx,
            tx,
            stop,
            timeout,
            bookmarks.then_some(bookmark_every),
        )
        .await;
    });
    let stream = futures::stream::unfold(out, |mut out| async move {
        out.recv().await.map(|b| (Ok::<_, Infallible>(b), out))
    });
    stream_response(ct, Body::from_stream(stream))
}

fn content_type(view: &View) -> &'static str {
    if view.table.is_some() {
        TABLE_CONTENT_TYPE
    } else {
        "application/json"
    }
}

/// The live part of a watch; ends at the deadline, on shutdown, when the client goes away, or
/// (with an in-stream 410) when this watch fell too far behind.
async fn forward(
    sim: Sim,
    view: View,
    mut rx: broadcast::Receiver<Arc<Change>>,
    tx: mpsc::Sender<Bytes>,
    (stop, reset): (
        tokio_util::sync::CancellationToken,
        tokio_util::sync::CancellationToken,
    ),
    timeout: Duration,
    bookmark_every: Option<Duration>,
) {
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut bookmark = tokio::time::interval(bookmark_every.unwrap_or(Duration::from_secs(3600)));
    bookmark.tick().await;
    let mut last_rv = 0u64;
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return,
            _ = reset.cancelled() => return,
            _ = &mut deadline => return,
            _ = tx.closed() => return,
            _ = bookmark.tick(), if bookmark_every.is_some() => {
                let rv = sim.lock().store.current_rv();
                view.bookmark(rv.max(last_rv), false)
            }
            change = rx.recv() => match change {
                Ok(change) => {
                    last_rv = change.rv;
                    let now = sim.lock().store.clock.now();
                    match view.render(&change, now) {
                        Some(line) => line,
                        None => continue,
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let oldest = sim.lock().store.oldest_watchable();
                    let _ = tx.send(expired_line(last_rv, oldest)).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(line).await.is_err() {
            return;
        }
    }
}
