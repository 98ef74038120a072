//! The `kubesim` binary: `--load`, `--kubeconfig`, `--state` saved on SIGTERM and loaded again,
//! `--no-crds`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Starts the binary and returns it with the URL it printed (bounded wait).
async fn start(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("kubesim binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("kubesim printed its URL within 10s")
        .expect("stdout readable")
        .expect("a URL line");
    (child, url)
}

/// Sends SIGTERM and waits (bounded) for a clean exit.
async fn terminate(mut child: Child) {
    let pid = child.id().expect("still running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("kubesim exited within 10s of SIGTERM")
        .expect("wait works");
    assert!(exit.success(), "kubesim exit status {exit:?}");
}

async fn kubectl(
    kubeconfig: &std::path::Path,
    cache: &std::path::Path,
    args: &[&str],
) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("KUBECACHEDIR", cache)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("kubectl finished within 60s")
    .expect("kubectl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_loads_manifests_and_keeps_state_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: loaded\ndata: {a: \"1\"}\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let state = dir.path().join("state.json");
    let args = |load: bool| {
        let mut a = vec![
            "--port".to_string(),
            "0".to_string(),
            "--kubeconfig".to_string(),
            kubeconfig.display().to_string(),
            "--state".to_string(),
            state.display().to_string(),
            "--version".to_string(),
            "v1.32.4".to_string(),
        ];
        if load {
            a.extend(["--load".to_string(), manifests.display().to_string()]);
        }
        a
    };

    let first_args = args(true);
    let (child, url) = start(&first_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (code, out) = kubectl(
        &kubeconfig,
        &dir.path().join("c1"),
        &["get", "cm", "loaded", "-o", "jsonpath={.data.a}"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "1"));
    let (code, _) = kubectl(
        &kubeconfig,
        &dir.path().join("c3"),
        &["label", "cm", "loaded", "kept=yes"],
    )
    .await;
    assert_eq!(code, 0);
    terminate(child).await;
    let saved = std::fs::read_to_string(&state).expect("state saved on SIGTERM");
    assert!(saved.contains("\"kept\": \"yes\""), "state has the label");

    let second_args = args(false);
    let (child, _) = start(&second_args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let (code, out) = kubectl(
        &kubeconfig,
        &dir.path().join("c4"),
        &[
            "get",
            "cm",
            "loaded",
            "-o",
            "jsonpath={.metadata.labels.kept}",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "yes"));
    let (code, out) = kubectl(
        &kubeconfig,
        &dir.path().join("c5"),
        &["get", "ns", "team-a", "-o", "name"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "namespace/team-a"));
    terminate(child).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_rejects_a_bad_manifest_folder_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Widget\nmetadata:\n  name: w\n",
    )
    .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(env!("CARGO_BIN_EXE_kubesim"))
            .args(["--port", "0", "--load"])
            .arg(dir.path())
            .output(),
    )
    .await
    .expect("kubesim exits within 10s")
    .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no resource for apiVersion \"v1\" kind \"Widget\""),
        "{err}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_kubesim"))
        .args(["--load", "/nonexistent/kubesim"])
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/kubesim"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_without_crds_serves_loaded_crds_and_keeps_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    // `apples.example.com` sorts before `customresourcedefinitions`, so the state file lists
    // the Apple before its CRD: loading must still read the CRD first.
    std::fs::write(
        manifests.join("a-crd.yaml"),
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: apples.example.com\n\
         spec:\n  group: example.com\n  names: {kind: Apple, plural: apples}\n  scope: Cluster\n  versions:\n  \
         - name: v1\n    served: true\n    storage: true\n    schema:\n      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}\n",
    )
    .unwrap();
    std::fs::write(
        manifests.join("b-apple.yaml"),
        "apiVersion: example.com/v1\nkind: Apple\nmetadata:\n  name: gala\nspec: {sweet: true}\n",
    )
    .unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let state = dir.path().join("state.json");
    let (kc, st, load) = (
        kubeconfig.display().to_string(),
        state.display().to_string(),
        manifests.display().to_string(),
    );
    let (child, _) = start(&[
        "--port",
        "0",
        "--kubeconfig",
        &kc,
        "--state",
        &st,
        "--load",
        &load,
        "--no-crds",
    ])
    .await;
    let (code, _) = kubectl(&kubeconfig, &dir.path().join("c1"), &["get", "httproutes"]).await;
    assert_ne!(code, 0, "no HTTPRoute kind without its CRD");
    let (code, out) = kubectl(
        &kubeconfig,
        &dir.path().join("c2"),
        &["get", "apples", "-o", "name"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "apple.example.com/gala"));
    terminate(child).await;

    let (child, _) = start(&["--port", "0", "--kubeconfig", &kc, "--state", &st]).await;
    let (code, out) = kubectl(
        &kubeconfig,
        &dir.path().join("c3"),
        &["get", "apple", "gala", "-o", "jsonpath={.spec.sweet}"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "true"));
    let (code, _) = kubectl(&kubeconfig, &dir.path().join("c4"), &["get", "httproutes"]).await;
    assert_eq!(code, 0, "the bundled CRDs are back without --no-crds");
    terminate(child).await;
}
