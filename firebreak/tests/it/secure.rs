//! Secure by default, from the outside: `serve` will not listen beyond loopback without
//! authentication; with an API token every trigger needs it (before any runbook lookup); the
//! actor is who authenticated, never what the body says.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Serve, ServeOpts, firebreak, write_runbooks};

fn note_runbook(dir: &std::path::Path) {
    write_runbooks(
        dir,
        &[
            (
                "note.yaml",
                "name: note\nteam: sre\ndescription: logs a line\nnamespaces: [shop]\ntimeout: 30s\n",
            ),
            ("note.rhai", "log(\"noted\");\n"),
        ],
    );
}

/// Like Redis' protected mode: no authentication configured and a non-loopback address is a
/// refusal to start that says what to configure; with both tokens it starts.
#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_a_public_address_without_authentication() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    note_runbook(&dir);
    let base = vec![
        ("FIREBREAK_RUNBOOKS", dir.display().to_string()),
        (
            "FIREBREAK_DATA_DIR",
            tmp.path().join("data").display().to_string(),
        ),
        ("FIREBREAK_KUBERNETES_DISABLED", "1".to_owned()),
        ("FIREBREAK_LISTEN", "0.0.0.0:0".to_owned()),
    ];
    for (extra, missing) in [
        (vec![], vec!["auth.alertmanager_token", "auth.api_token"]),
        (
            vec![("FIREBREAK_ALERTMANAGER_TOKEN", "am-secret".to_owned())],
            vec!["auth.api_token"],
        ),
        (
            vec![("FIREBREAK_API_TOKEN", "api-secret".to_owned())],
            vec!["auth.alertmanager_token"],
        ),
    ] {
        let mut env = base.clone();
        env.extend(extra.clone());
        let out = firebreak(&["serve"], &env).await;
        assert!(!out.success(), "{extra:?}: {out}");
        assert!(
            out.stderr
                .contains("refusing to listen on 0.0.0.0:0 without authentication"),
            "{extra:?}: {out}"
        );
        for setting in missing {
            assert!(
                out.stderr.contains(setting),
                "{extra:?}: the refusal names {setting}: {out}"
            );
        }
    }
    // Both configured: it serves (on every interface; probed through loopback).
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![
                ("FIREBREAK_LISTEN", "0.0.0.0:0".to_owned()),
                ("FIREBREAK_ALERTMANAGER_TOKEN", "am-secret".to_owned()),
                ("FIREBREAK_API_TOKEN", "api-secret".to_owned()),
            ],
            ..ServeOpts::default()
        },
    )
    .await;
    let (status, _) = serve
        .post(
            "/v1/trigger",
            Some("api-secret"),
            json!({"runbook": "note", "params": {}}).to_string(),
        )
        .await;
    assert_eq!(status, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_api_token_every_trigger_needs_it_and_the_actor_is_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    note_runbook(&dir);
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_API_TOKEN", "api-secret".to_owned())],
            ..ServeOpts::default()
        },
    )
    .await;
    let forged = json!({"runbook": "note", "params": {}, "actor": "mallory"}).to_string();
    for token in [None, Some("wrong")] {
        let (status, body) = serve.post("/v1/trigger", token, forged.clone()).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        // Runbook names cannot be probed without the token.
        let (status, body) = serve
            .post(
                "/v1/trigger",
                token,
                json!({"runbook": "no-such", "params": {}}).to_string(),
            )
            .await;
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("api-secret"),
            json!({"runbook": "no-such", "params": {}}).to_string(),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = serve.post("/v1/trigger", Some("api-secret"), forged).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["actor"], "api", "{body}");
    // The CLI sends its token.
    serve
        .cli(&[
            "run",
            "--server",
            &serve.base,
            "note",
            "--token",
            "api-secret",
        ])
        .await
        .ok("run --server --token");
    let journal = serve
        .wait_journal("two runs", Duration::from_secs(20), |j| {
            j.finished("note").len() == 2
        })
        .await;
    for run in journal.finished("note") {
        assert_eq!(run.records[0]["actor"], "api", "{}", journal.summary());
    }
}

/// On loopback with nothing configured, triggers are taken (only this machine can reach
/// them) and recorded as `local`, whatever the body claims.
#[tokio::test(flavor = "multi_thread")]
async fn without_authentication_the_actor_is_local_not_the_body() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    note_runbook(&dir);
    let serve = Serve::start(&dir, ServeOpts::default()).await;
    let (status, body) = serve
        .post(
            "/v1/trigger",
            None,
            json!({"runbook": "note", "params": {}, "actor": "the-ceo"}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["actor"], "local");
    let journal = serve
        .wait_journal("the run", Duration::from_secs(20), |j| {
            j.finished("note").len() == 1
        })
        .await;
    assert_eq!(journal.finished("note")[0].records[0]["actor"], "local");
}

/// A trigger whose namespace param is outside the runbook's namespaces is refused before it
/// is accepted (403), and the refusal is in the audit with who asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_for_a_namespace_outside_the_runbook_is_403_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("runbooks");
    write_runbooks(
        &dir,
        &[
            (
                "scale.yaml",
                "name: scale\nteam: sre\ndescription: scales\nnamespaces: [shop]\n\
                 params:\n  namespace: { type: string, required: true }\ntimeout: 30s\n",
            ),
            ("scale.rhai", "log(ctx.params.namespace);\n"),
        ],
    );
    let serve = Serve::start(
        &dir,
        ServeOpts {
            env: vec![("FIREBREAK_API_TOKEN", "api-secret".to_owned())],
            ..ServeOpts::default()
        },
    )
    .await;
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("api-secret"),
            json!({"runbook": "scale", "params": {"namespace": "kube-system"}}).to_string(),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace `kube-system` is outside"),
        "{body}"
    );
    let journal = serve
        .wait_journal("the refusal", Duration::from_secs(10), |j| {
            !j.refusals().is_empty()
        })
        .await;
    let refusal = journal.refusals()[0];
    assert_eq!(refusal["actor"], "api");
    assert_eq!(refusal["runbook"], "scale");
    assert!(
        journal
            .runs_of("scale")
            .iter()
            .all(|r| r.status() != Some("succeeded"))
    );
    let (status, body) = serve
        .post(
            "/v1/trigger",
            Some("api-secret"),
            json!({"runbook": "scale", "params": {"namespace": "shop"}}).to_string(),
        )
        .await;
    assert_eq!(status, 202, "{body}");
}
