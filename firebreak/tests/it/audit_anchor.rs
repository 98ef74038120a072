//! The journal's signed checkpoints from the outside: `serve` on NATS publishes them on the
//! audit stream, and `firebreak audit verify` holds the local journal against the newest one,
//! so a tail cut off together with the local head file is still caught.

use firebreak_bus::testutil::NatsServer;
use serde_json::json;

use crate::harness::{Serve, ServeOpts, write_note_runbook};

#[tokio::test(flavor = "multi_thread")]
async fn verify_catches_a_cut_tail_against_the_checkpoints_published_on_nats() {
    let nats = NatsServer::start().expect("nats-server -js");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_note_runbook(&dir);
    let mut serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_NATS_URL", nats.url())],
            ..ServeOpts::default()
        },
    )
    .await;
    let (status, answer) = serve
        .post("/v1/trigger", None, json!({"runbook": "note"}).to_string())
        .await;
    assert_eq!(status, 202, "{answer}");
    serve
        .wait_journal("the run", std::time::Duration::from_secs(30), |j| {
            j.finished("note").len() == 1
        })
        .await;
    assert_eq!(serve.terminate().await, Some(0), "{}", serve.log_tail());

    let verified = serve.cli(&["audit", "verify"]).await.ok("audit verify");
    assert!(
        verified.stdout.contains("closed by the engine's stop")
            && verified.stdout.contains("anchored: the NATS audit stream"),
        "{}",
        verified.stdout
    );

    // Someone with the disk cuts the last records and removes the head file with them.
    let path = serve.journal_path();
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&path, lines[..lines.len() - 4].join("\n") + "\n").unwrap();
    std::fs::remove_file(path.with_extension("head")).unwrap();

    let out = serve.cli(&["audit", "verify"]).await;
    assert!(!out.success(), "{}", out.stdout);
    assert!(
        out.stderr.contains("the NATS audit stream")
            && out
                .stderr
                .contains("vouches for a signed checkpoint at seq")
            && out
                .stderr
                .contains("records were removed or the tail was cut off"),
        "{}",
        out.stderr
    );
    // Without the published checkpoints the cut would pass unseen.
    let offline: Vec<(&str, String)> = vec![(
        "FIREBREAK_DATA_DIR",
        path.parent().unwrap().display().to_string(),
    )];
    let out = crate::harness::firebreak(&["audit", "verify"], &offline).await;
    assert!(out.success(), "{}{}", out.stdout, out.stderr);
}
