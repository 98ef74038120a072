//! The `pods/log` subresource: query parsing (`container`, `tailLines`, `previous`,
//! `timestamps`, `sinceSeconds`) and the text served.
//!
//! Start at [`LogQuery::parse`] and [`render`]. The lines themselves come from [`pod_lines`],
//! the simulated container's output.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde_json::Value;

use crate::status::ApiError;

/// What a `GET …/pods/NAME/log` asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogQuery {
    pub container: Option<String>,
    pub tail_lines: Option<usize>,
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
            previous: q.get("previous").is_some_and(|v| v == "true"),
            timestamps: q.get("timestamps").is_some_and(|v| v == "true"),
            since_seconds: num("sinceSeconds")?,
        })
    }
}

/// The simulated output of a pod's container: `(time, line)` pairs, oldest first.
pub fn pod_lines(pod: &Value, container: &str, now: Timestamp) -> Vec<(Timestamp, String)> {
    let started = pod
        .pointer("/status/startTime")
        .or_else(|| pod.pointer("/metadata/creationTimestamp"))
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(now);
    let image = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["name"] == container))
        .and_then(|c| c["image"].as_str())
        .unwrap_or("unknown");
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let mut lines = vec![
        (started, format!("starting {container} (image {image})")),
        (started, format!("{name}: listening on :8080")),
    ];
    let secs = (now.as_second() - started.as_second()).max(0);
    for i in (10..=secs).step_by(10).take(1000) {
        let at = Timestamp::from_second(started.as_second() + i).unwrap_or(now);
        lines.push((at, format!("GET /healthz 200 ({i}s uptime)")));
    }
    lines
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
    let mut lines = pod_lines(pod, &container, now);
    if let Some(since) = q.since_seconds {
        lines.retain(|(t, _)| now.as_second() - t.as_second() <= since);
    }
    if let Some(tail) = q.tail_lines {
        let skip = lines.len().saturating_sub(tail);
        lines.drain(..skip);
    }
    let mut out = String::new();
    for (t, line) in lines {
        if q.timestamps {
            out.push_str(&t.strftime("%Y-%m-%dT%H:%M:%S.%fZ").to_string());
            out.push(' ');
        }
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod() -> Value {
        json!({"metadata": {"name": "web-1", "creationTimestamp": "2026-01-01T00:00:00Z"},
               "spec": {"containers": [{"name": "app", "image": "nginx:1.0"}, {"name": "side", "image": "busybox"}]}})
    }

    #[test]
    fn tail_and_container_choice() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let q = LogQuery {
            container: Some("app".into()),
            tail_lines: Some(2),
            ..Default::default()
        };
        let text = render(&pod(), &q, now).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with("GET /healthz 200 (60s uptime)\n"));
        let err = render(&pod(), &LogQuery::default(), now).unwrap_err();
        assert!(err.message.contains("choose one of: [app side]"));
        let bad = LogQuery {
            container: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(render(&pod(), &bad, now).unwrap_err().code, 400);
        let prev = LogQuery {
            container: Some("app".into()),
            previous: true,
            ..Default::default()
        };
        assert!(render(&pod(), &prev, now).is_err());
    }

    #[test]
    fn bad_numbers_are_rejected() {
        let mut q = BTreeMap::new();
        q.insert("tailLines".to_string(), "ten".to_string());
        assert_eq!(LogQuery::parse(&q).unwrap_err().code, 400);
    }
}
