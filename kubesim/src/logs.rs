//! The `pods/log` subresource: query parsing (`container`, `tailLines`, `limitBytes`,
//! `previous`, `timestamps`, `sinceSeconds`) and the text served.
//!
//! Start at [`LogQuery::parse`] and [`render`]; [`follow`] streams (`follow=true`). The lines themselves come from the simulated
//! kubelet (`controller::kubelet::pod_logs`).

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::Value;

use crate::status::ApiError;

/// What a `GET …/pods/NAME/log` asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    pub container: Option<String>,
    pub tail_lines: Option<usize>,
    /// Stop after this many bytes (the kubelet may cut a line in the middle).
    pub limit_bytes: Option<usize>,
    pub previous: bool,
    pub timestamps: bool,
    pub since_seconds: Option<i64>,
}

impl LogQuery {
    /// Parses the query parameters; bad numbers are `400 BadRequest`.
    pub fn parse(q: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        let num = |k: &str| -> Result<Option<i64>, ApiError> {
            q.get(k)
                .map(|v| {
                    v.parse::<i64>()
                        .map_err(|_| ApiError::bad_request(format!("invalid {k}: {v:?}")))
                })
                .transpose()
        };
        Ok(LogQuery {
            container: q.get("container").cloned(),
            tail_lines: num("tailLines")?.map(|n| n.max(0) as usize),
            limit_bytes: match num("limitBytes")? {
                Some(n) if n < 1 => {
                    return Err(ApiError::bad_request(format!(
                        "limitBytes: Invalid value: {n}: must be greater than 0"
                    )));
                }
                n => n.map(|n| n as usize),
            },
            previous: q.get("previous").is_some_and(|v| v == "true"),
            timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
            since_seconds: num("sinceSeconds")?,
        })
    }
}

/// The lines of a container's current (or, in crash back-off, last) run, with the time each
/// line starts with, from the simulated kubelet.
fn pod_lines(pod: &Value, tail: Option<usize>, now: Timestamp) -> Vec<(Option<Timestamp>, String)> {
    crate::controller::kubelet::pod_logs(pod, now, tail)
        .into_iter()
        .map(|line| {
            let at = line
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<Timestamp>().ok());
            (at, line)
        })
        .collect()
}

/// Why logs cannot be read yet: the container is waiting to start (as the kubelet answers).
fn waiting_reason(pod: &Value, container: &str) -> Option<String> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array);
    let Some(status) = statuses.and_then(|cs| cs.iter().find(|c| c["name"] == container)) else {
        return Some("ContainerCreating".to_string());
    };
    if status.pointer("/state/running").is_some()
        || status.pointer("/lastState/terminated").is_some()
    {
        return None;
    }
    let reason = status
        .pointer("/state/waiting/reason")
        .and_then(Value::as_str)?;
    Some(match reason {
        "ErrImagePull" | "ImagePullBackOff" => "trying and failing to pull image".to_string(),
        other => other.to_string(),
    })
}

/// The text of the log answer, or an error naming what is wrong with the request.
pub fn render(pod: &Value, q: &LogQuery, now: Timestamp) -> Result<String, ApiError> {
    let containers: Vec<&str> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let pod_name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let container = match (&q.container, containers.as_slice()) {
        (Some(c), _) if containers.contains(&c.as_str()) => c.clone(),
        (Some(c), _) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {pod_name}"
            )));
        }
        (None, [only]) => (*only).to_string(),
        (None, _) => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if q.previous {
        let restarted = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["name"] == container.as_str()))
            .and_then(|c| c["restartCount"].as_i64())
            .unwrap_or(0);
        if restarted == 0 {
            return Err(ApiError::bad_request(format!(
                "previous terminated container \"{container}\" in pod \"{pod_name}\" not found"
            )));
        }
    }
    if let Some(reason) = waiting_reason(pod, &container) {
        return Err(ApiError::bad_request(format!(
            "container {container:?} in pod {pod_name:?} is waiting to start: {reason}"
        )));
    }
    let mut lines = pod_lines(pod, None, now);
    if let Some(since) = q.since_seconds {
        lines.retain(|(t, _)| t.is_none_or(|t| now.as_second() - t.as_second() <= since));
    }
    if let Some(tail) = q.tail_lines {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut out = String::new();
    for (t, line) in lines {
        if q.timestamps {
            let t = t.unwrap_or(now);
            out.push_str(&t.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string());
            out.push(' ');
        }
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(limit) = q.limit_bytes
        && out.len() > limit
    {
        let mut cut = limit;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    Ok(out)
}

/// How often a followed log is checked for new lines.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Streams a log for `follow=true`: the text rendered so far, then new lines as the simulated
/// container writes them, until the pod is gone, the server shuts down or the client leaves.
pub(crate) fn follow(
    sim: &crate::sim::Sim,
    rt: &'static crate::resources::ResourceType,
    ns: Option<String>,
    name: String,
    q: LogQuery,
    first: String,
) -> axum::response::Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let sim = sim.clone();
    let stop = sim.shared.cancel.clone();
    tokio::spawn(async move {
        let mut sent: Vec<String> = first.lines().map(str::to_string).collect();
        if tx.send(bytes::Bytes::from(first)).await.is_err() {
            return;
        }
        let mut every = tokio::time::interval(FOLLOW_EVERY);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                _ = every.tick() => {}
            }
            let text = {
                let inner = sim.lock();
                let Ok(pod) = inner.store.get_resource(rt, ns.as_deref(), &name) else {
                    return;
                };
                let all = LogQuery {
                    tail_lines: None,
                    since_seconds: None,
                    ..q.clone()
                };
                match render(&pod, &all, inner.store.clock.now()) {
                    Ok(text) => text,
                    Err(_) => return,
                }
            };
            let lines: Vec<&str> = text.lines().collect();
            // New lines are those after the last line already sent.
            let start = match sent.last() {
                Some(last) => lines.iter().rposition(|l| l == last).map_or(0, |i| i + 1),
                None => 0,
            };
            let fresh: Vec<&str> = lines[start..].to_vec();
            if fresh.is_empty() {
                continue;
            }
            let mut chunk = fresh.join("\n");
            chunk.push('\n');
            sent.extend(fresh.iter().map(|l| l.to_string()));
            if tx.send(bytes::Bytes::from(chunk)).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    crate::api::stream_response("text/plain", axum::body::Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(state: Value) -> Value {
        json!({"metadata": {"name": "web-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"containers": [{"name": "app", "image": "nginx:1.0"}, {"name": "side", "image": "busybox"}]},
               "status": {"containerStatuses": [{"name": "app", "restartCount": 0, "state": state}, {"name": "side", "restartCount": 0, "state": state}]}})
    }

    fn running() -> Value {
        pod(json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}}))
    }

    #[test]
    fn tail_and_container_choice() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let all = render(
            &running(),
            &LogQuery {
                container: Some("app".into()),
                ..Default::default()
            },
            now,
        )
        .unwrap();
        assert!(all.lines().count() > 2, "{all}");
        let q = LogQuery {
            container: Some("app".into()),
            tail_lines: Some(2),
            ..Default::default()
        };
        let text = render(&running(), &q, now).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            all.lines()
                .skip(all.lines().count() - 2)
                .collect::<Vec<_>>()
        );
        let cut = LogQuery {
            container: Some("app".into()),
            limit_bytes: Some(10),
            ..Default::default()
        };
        assert_eq!(render(&running(), &cut, now).unwrap(), all[..10]);
        let err = render(&running(), &LogQuery::default(), now).unwrap_err();
        assert!(err.message.contains("choose one of: [app side]"));
        let bad = LogQuery {
            container: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(render(&running(), &bad, now).unwrap_err().code, 400);
        let prev = LogQuery {
            container: Some("app".into()),
            previous: true,
            ..Default::default()
        };
        assert!(render(&running(), &prev, now).is_err());
    }

    #[test]
    fn waiting_containers_have_no_logs_yet() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let q = LogQuery {
            container: Some("app".into()),
            ..Default::default()
        };
        let pulling = pod(json!({"waiting": {"reason": "ImagePullBackOff"}}));
        assert_eq!(
            render(&pulling, &q, now).unwrap_err().message,
            "container \"app\" in pod \"web-1\" is waiting to start: trying and failing to pull image"
        );
        let creating =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}});
        assert!(
            render(&creating, &q, now)
                .unwrap_err()
                .message
                .ends_with("ContainerCreating")
        );
    }

    #[test]
    fn bad_numbers_are_rejected() {
        let mut q = BTreeMap::new();
        q.insert("tailLines".to_string(), "ten".to_string());
        assert_eq!(LogQuery::parse(&q).unwrap_err().code, 400);
    }
}
