//! Post alerts to a real Alertmanager, receive its webhook on a loopback listener, and
//! decode what it actually sent: a group mixing a firing and a resolved alert, then the
//! resolved notification. Only `std` networking, so the crate keeps no I/O dependencies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use firebreak_event::alertmanager::{self, label_set_fingerprint};
use serde_json::{Value, json};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(20);

/// The binary: `$ALERTMANAGER_BIN`, else Debian's `/usr/bin/prometheus-alertmanager`.
fn binary() -> String {
    std::env::var("ALERTMANAGER_BIN")
        .unwrap_or_else(|_| "/usr/bin/prometheus-alertmanager".to_owned())
}

fn free_port() -> u16 {
    firebreak_bus::port::free_loopback_port().expect("a free loopback port")
}

/// A running Alertmanager with its own temp dir; killed and cleaned up on drop.
struct Alertmanager {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Alertmanager {
    fn start(webhook_port: u16) -> Alertmanager {
        let dir = std::env::temp_dir().join(format!(
            "firebreak-event-am-{}-{}",
            std::process::id(),
            webhook_port
        ));
        std::fs::create_dir_all(dir.join("data")).expect("alertmanager temp dir");
        let config = format!(
            "route:\n  receiver: runbook-engine\n  group_by: [alertname]\n  group_wait: 2s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: runbook-engine\n    \
             webhook_configs:\n      - url: http://127.0.0.1:{webhook_port}/alerts\n        \
             send_resolved: true\n"
        );
        std::fs::write(dir.join("alertmanager.yml"), config).expect("write config");
        let port = free_port();
        let child = Command::new(binary())
            .arg(format!(
                "--config.file={}",
                dir.join("alertmanager.yml").display()
            ))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary()));
        let mut am = Alertmanager { child, port, dir };
        am.wait_ready();
        am
    }

    /// Bounded poll of `/-/ready`; fails naming what it waited for.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/-/ready", "") {
                return;
            }
            if let Ok(Some(exit)) = self.child.try_wait() {
                panic!(
                    "alertmanager on port {} exited before ready: {exit}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "alertmanager on 127.0.0.1:{} was not ready within {READY_TIMEOUT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn post_alerts(&self, alerts: &Value) {
        let (status, body) = http(self.port, "POST", "/api/v2/alerts", &alerts.to_string())
            .expect("POST /api/v2/alerts");
        assert_eq!(status, 200, "alertmanager refused the alerts: {body}");
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns the status and body.
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Accepts webhook requests on a thread and hands each body over a channel.
fn webhook_receiver() -> (u16, mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook listener");
    let port = listener.local_addr().expect("listener address").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            match read_request(stream) {
                Ok(body) => {
                    if tx.send(body).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("webhook receiver: {e}"),
            }
        }
    });
    (port, rx)
}

fn read_request(stream: TcpStream) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    reader
        .into_inner()
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    Ok(body)
}

fn next_webhook(rx: &mpsc::Receiver<Vec<u8>>, waiting_for: &str) -> Vec<u8> {
    rx.recv_timeout(WEBHOOK_TIMEOUT).unwrap_or_else(|_| {
        panic!("no alertmanager webhook ({waiting_for}) within {WEBHOOK_TIMEOUT:?}")
    })
}

#[test]
fn decodes_what_a_real_alertmanager_sends() {
    let (webhook_port, rx) = webhook_receiver();
    let am = Alertmanager::start(webhook_port);
    let now = jiff::Timestamp::now();
    // Recent start times: Alertmanager flushes a group at once when its alerts started more
    // than group_wait ago, which could split the two alerts into two notifications.
    let started = (now - jiff::SignedDuration::from_millis(100)).to_string();
    let ended = (now - jiff::SignedDuration::from_millis(50)).to_string();
    let labels = |version: &str| {
        json!({"alertname": "ModelErrorRateHigh", "namespace": "team-a",
               "deployment": "fraud-model", "severity": "critical", "version": version})
    };
    // One group (same alertname): v1 still firing, v2 already over. group_wait (2s) makes
    // Alertmanager collect both before its first notification.
    am.post_alerts(&json!([
        {"labels": labels("v1"), "annotations": {"summary": "v1 fails"}, "startsAt": started,
         "generatorURL": "http://prometheus.invalid/graph"},
        {"labels": labels("v2"), "annotations": {"summary": "v2 failed"}, "startsAt": started,
         "endsAt": ended},
    ]));
    let body = next_webhook(&rx, "the mixed firing/resolved group");
    let raw: Value = serde_json::from_slice(&body).expect("webhook is JSON");
    assert_eq!(raw["version"], "4");
    let mut events = alertmanager::decode(&body).expect("a real webhook decodes");
    events.sort_by(|a, b| {
        a.data["labels"]["version"]
            .as_str()
            .cmp(&b.data["labels"]["version"].as_str())
    });
    assert_eq!(events.len(), 2, "{raw}");
    let (firing, resolved) = (&events[0], &events[1]);
    assert_eq!(
        (firing.kind.as_str(), resolved.kind.as_str()),
        ("firing", "resolved")
    );
    assert_eq!(firing.subject, "ModelErrorRateHigh");
    assert_eq!(firing.namespace.as_deref(), Some("team-a"));
    assert_eq!(firing.data["endsAt"], alertmanager::ZERO_TIME);
    assert_eq!(firing.data["annotations"]["summary"], "v1 fails");
    assert_eq!(firing.data["receiver"], "runbook-engine");
    assert_eq!(firing.time, started.parse::<jiff::Timestamp>().unwrap());
    assert_eq!(resolved.time, ended.parse::<jiff::Timestamp>().unwrap());
    for event in &events {
        let labels = serde_json::from_value(event.data["labels"].clone()).unwrap();
        assert_eq!(
            event.fingerprint.as_deref(),
            Some(label_set_fingerprint(&labels).as_str())
        );
    }

    // Resolve v1 too: the next notification carries it as resolved, with a new id, while
    // a repeat of the same state would keep the id (the bus dedupes on it).
    am.post_alerts(&json!([
        {"labels": labels("v1"), "annotations": {"summary": "v1 fails"}, "startsAt": started,
         "endsAt": ended, "generatorURL": "http://prometheus.invalid/graph"},
    ]));
    let deadline = Instant::now() + WEBHOOK_TIMEOUT;
    let v1_resolved = loop {
        assert!(
            Instant::now() < deadline,
            "v1 was not notified as resolved in time"
        );
        let events = alertmanager::decode(&next_webhook(&rx, "v1 resolved")).unwrap();
        if let Some(e) = events
            .into_iter()
            .find(|e| e.data["labels"]["version"] == "v1" && e.kind == "resolved")
        {
            break e;
        }
    };
    assert_eq!(v1_resolved.fingerprint, firing.fingerprint);
    assert_ne!(v1_resolved.id, firing.id);
    assert_eq!(
        v1_resolved.id,
        alertmanager::event_id(
            firing.fingerprint.as_deref().unwrap(),
            "resolved",
            &started_as_sent(firing)
        )
    );
}

/// `startsAt` exactly as Alertmanager sent it (the id hashes the text, not the instant).
fn started_as_sent(event: &firebreak_event::Event) -> String {
    event.data["startsAt"].as_str().unwrap().to_owned()
}
