//! Micro benchmark: decode Alertmanager webhooks and match them against 50 runbooks of which
//! one matches (the shape of the project's load test). Prints one summary line.
//!
//! `cargo bench -p firebreak-matcher` (release) or `cargo run`-style in debug with
//! `cargo bench -p firebreak-matcher --profile dev`.

use std::hint::black_box;
use std::time::Instant;

use firebreak_matcher::RunbookSet;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/alertmanager/webhook-firing.json"
);

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    for i in 0..50 {
        // 49 decoys on other alert names (half of them regex-only, so not indexed by name),
        // and one runbook that matches the fixture.
        let matchers = match i {
            0 => r#"['alertname="ModelErrorRateHigh"', 'severity=~"critical|page"']"#.to_owned(),
            i if i % 2 == 0 => format!(r#"['alertname="Decoy{i}"', 'severity="critical"']"#),
            i => format!(r#"['alertname=~"Decoy{i}|Other{i}"', 'team!="nobody"']"#),
        };
        let yaml = format!(
            "name: rb{i}\nteam: ml-platform\ndescription: bench\nnamespaces: [team-a]\n\
             triggers:\n  - source: alertmanager\n    match: {matchers}\n\
             params:\n  namespace: {{ from: label, type: string, required: true }}\n  \
             deployment: {{ from: label, type: string, required: true }}\n\
             concurrency: \"{{{{params.namespace}}}}/{{{{params.deployment}}}}\"\n"
        );
        std::fs::write(dir.path().join(format!("rb{i}.yaml")), yaml).expect("write manifest");
        std::fs::write(dir.path().join(format!("rb{i}.rhai")), "1").expect("write script");
    }
    let set = RunbookSet::load_dir(dir.path()).expect("bench runbooks load");
    let body = std::fs::read(FIXTURE).expect("fixture");

    let n = 200_000;
    let start = Instant::now();
    let mut events = Vec::with_capacity(1);
    for _ in 0..n {
        events = firebreak_event::alertmanager::decode(black_box(&body)).expect("decodes");
    }
    let decode = start.elapsed();

    let event = &events[0];
    let start = Instant::now();
    let mut matched = 0;
    for _ in 0..n {
        matched += set.matches(black_box(event)).len();
    }
    let matching = start.elapsed();
    assert_eq!(matched, n, "exactly one runbook matches each alert");

    let mut miss = event.clone();
    miss.data["labels"]["alertname"] = "NothingMatchesThis".into();
    let start = Instant::now();
    for _ in 0..n {
        assert!(set.matches(black_box(&miss)).is_empty());
    }
    let missing = start.elapsed();

    let rate = |d: std::time::Duration| n as f64 / d.as_secs_f64();
    println!(
        "matcher bench: decode {:.0} webhooks/s, match (1 of 50 runbooks) {:.0} events/s, no match {:.0} events/s",
        rate(decode),
        rate(matching),
        rate(missing)
    );
}
