//! A full disk under the audit journal, for real: the journal lives on a small tmpfs that the
//! test fills up. The engine stops taking work (503 on `/readyz` and the ingest) while it
//! cannot journal, keeps every alert it already accepted on the bus, and recovers by itself
//! once there is room again: every alert answered 202 gets its run, none is lost.
//!
//! Mounting a tmpfs needs root (as CI and the project's machines run); the test says so
//! plainly when it cannot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Serve, ServeOpts, http, wait_for, write_runbooks};

/// A tmpfs of `size` mounted on `dir` for the test's life.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it up, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Writes `path` until the filesystem has no room left.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).and_then(|()| f.sync_all()).is_ok() {}
}

fn alert(n: u32) -> String {
    json!({
        "version": "4", "status": "firing", "receiver": "firebreak", "groupKey": "g",
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "",
        "alerts": [{"status": "firing",
            "labels": {"alertname": "Disk", "namespace": "shop", "n": n.to_string()},
            "annotations": {}, "startsAt": "2026-11-27T03:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "", "fingerprint": format!("{n:016x}")}],
    })
    .to_string()
}

async fn readyz(serve: &Serve) -> u16 {
    http()
        .get(serve.url("/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_intake_loses_nothing_and_recovers_by_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("audit-disk");
    let _tmpfs = Tmpfs::mount(&disk, "256k");
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "disk.yaml",
                "name: disk\nteam: sre\ndescription: one run per alert\nnamespaces: [shop]\n\
                 triggers:\n  - source: alertmanager\n    status: firing\n    match: ['alertname=\"Disk\"']\n\
                 params:\n  n: { from: label, key: n, type: string, required: true }\n\
                 concurrency: \"{{params.n}}\"\ntimeout: 30s\n",
            ),
            ("disk.rhai", "log(`alert ${ctx.params.n}`);\n"),
        ],
    );
    let journal_path = disk.join("audit.jsonl");
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_AUDIT_PATH", journal_path.display().to_string())],
            ..ServeOpts::default()
        },
    )
    .await;
    let mut accepted = Vec::new();
    let (status, body) = serve.post("/v1/alertmanager", None, alert(0)).await;
    assert_eq!(status, 202, "{body}");
    accepted.push(0);
    let runs_of = |path: &Path| {
        crate::harness::Journal::read(path)
            .runs_of("disk")
            .iter()
            .map(|r| {
                r.started().unwrap()["body"]["params"]["n"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect::<std::collections::BTreeSet<String>>()
    };
    wait_for(
        "the first run",
        Duration::from_secs(20),
        || serve.log_tail(),
        || std::future::ready(runs_of(&journal_path).contains("0").then_some(())),
    )
    .await;

    // The disk fills up: alerts are still taken (the bus has room) until the first run cannot
    // be journaled; from then on the engine says it is not ready and refuses work.
    fill(&disk.join("filler"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for n in 1.. {
        let (status, body) = serve.post("/v1/alertmanager", None, alert(n)).await;
        match status {
            202 => accepted.push(n),
            503 => break,
            other => panic!("alert {n}: unexpected {other} {body}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never refused work\n{}",
            serve.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(readyz(&serve).await, 503, "/readyz says not ready");
    let (status, body) = serve.post("/v1/alertmanager", None, alert(9999)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("not_ready")),
        "{body}"
    );
    assert!(
        accepted.len() >= 2,
        "an alert was accepted after the disk filled: {accepted:?}"
    );

    // Room again: the engine notices by itself, takes work again, and runs every alert it
    // accepted before.
    std::fs::remove_file(disk.join("filler")).unwrap();
    wait_for(
        "/readyz to say ready",
        Duration::from_secs(30),
        || serve.log_tail(),
        || async { (readyz(&serve).await == 200).then_some(()) },
    )
    .await;
    let want: std::collections::BTreeSet<String> = accepted.iter().map(u32::to_string).collect();
    wait_for(
        "a run for every accepted alert",
        Duration::from_secs(60),
        || {
            format!(
                "accepted {want:?}, ran {:?}\n{}",
                runs_of(&journal_path),
                serve.log_tail()
            )
        },
        || std::future::ready(want.is_subset(&runs_of(&journal_path)).then_some(())),
    )
    .await;
    let (status, body) = serve.post("/v1/alertmanager", None, alert(10_000)).await;
    assert_eq!(status, 202, "{body}");
    let verify = serve
        .cli(&["audit", "verify", journal_path.to_str().unwrap()])
        .await
        .ok("audit verify");
    assert!(verify.stdout.starts_with("ok: "), "{verify}");
}
