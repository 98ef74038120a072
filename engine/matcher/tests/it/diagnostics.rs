//! Every kind of load problem, each pointing at its file, line and column.

use firebreak_matcher::{Diagnostic, RunbookSet, Teams};

use crate::folder;

const HEAD: &str = "name: a\nteam: t\ndescription: d\nnamespaces: [x]\n";

/// Loads a folder that must fail; returns the diagnostics with the folder path removed.
fn problems(files: &[(&str, &str)]) -> Vec<String> {
    problems_with(files, None)
}

fn problems_with(files: &[(&str, &str)], teams: Option<&Teams>) -> Vec<String> {
    let dir = folder(files);
    let diags: Vec<Diagnostic> = match RunbookSet::load_dir_with_teams(dir.path(), teams) {
        Ok(set) => panic!("expected problems, loaded {} runbooks", set.len()),
        Err(diags) => diags,
    };
    let prefix = format!("{}/", dir.path().display());
    diags
        .iter()
        .map(|d| d.to_string().replacen(&prefix, "", 1))
        .collect()
}

fn with_head(rest: &str) -> String {
    format!("{HEAD}{rest}")
}

#[test]
fn yaml_syntax_error() {
    let got = problems(&[("a.yaml", "name: a\nteam: t: x\n"), ("a.rhai", "")]);
    assert_eq!(
        got,
        ["a.yaml:2:8: mapping values are not allowed in this context"]
    );
    let got = problems(&[("a.yaml", "name: a\nteam: \"t\n"), ("a.rhai", "")]);
    assert_eq!(got, ["a.yaml:2:7: unclosed quote"]);
    let got = problems(&[("a.yaml", &with_head("name: b\n")), ("a.rhai", "")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("a.yaml:5:1: duplicate mapping key: name"),
        "{got:?}"
    );
}

#[test]
fn unknown_field_at_top_level_and_nested() {
    let got = problems(&[("a.yaml", &with_head("cooldow: 5m\n")), ("a.rhai", "")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("a.yaml:5:1: unknown field `cooldow`"),
        "{got:?}"
    );
    let got = problems(&[
        (
            "a.yaml",
            &with_head("triggers:\n  - source: alertmanager\n    matches: [a=b]\n"),
        ),
        ("a.rhai", ""),
    ]);
    assert!(
        got[0].starts_with("a.yaml:7:5: unknown field `matches`"),
        "{got:?}"
    );
    let got = problems(&[
        (
            "a.yaml",
            &with_head("params:\n  p: { from: label, kind: string }\n"),
        ),
        ("a.rhai", ""),
    ]);
    assert!(
        got[0].starts_with("a.yaml:6:21: unknown field `kind`"),
        "{got:?}"
    );
}

#[test]
fn missing_required_field() {
    let got = problems(&[
        ("a.yaml", "name: a\ndescription: d\nnamespaces: [x]\n"),
        ("a.rhai", ""),
    ]);
    // Reported at the end of the mapping that lacks it.
    assert_eq!(got, ["a.yaml:3:1: missing field `team`"]);
}

#[test]
fn unknown_enum_values() {
    let got = problems(&[
        ("a.yaml", &with_head("triggers:\n  - source: pagerduty\n")),
        ("a.rhai", ""),
    ]);
    assert!(
        got[0].starts_with("a.yaml:6:13: unknown variant `pagerduty`"),
        "{got:?}"
    );
    let got = problems(&[
        ("a.yaml", &with_head("params:\n  p: { type: text }\n")),
        ("a.rhai", ""),
    ]);
    assert!(
        got[0].starts_with("a.yaml:6:14: unknown variant `text`"),
        "{got:?}"
    );
}

#[test]
fn bad_regex_points_inside_the_matcher() {
    let got = problems(&[
        (
            "a.yaml",
            &with_head(
                "triggers:\n  - source: alertmanager\n    match: ['a=\"x\"', 'severity=~\"(crit\"']\n",
            ),
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        [
            "a.yaml:7:33: bad matcher \"severity=~\\\"(crit\\\"\": invalid regex for label `severity`: unclosed group"
        ]
    );
}

#[test]
fn bad_durations() {
    let got = problems(&[
        (
            "a.yaml",
            &with_head("cooldown: 10 minutes\ntimeout: 0\nbudget: { max_runs: 0, per: 1y }\n"),
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        [
            "a.yaml:5:11: cooldown: invalid duration \"10 minutes\": missing unit (ms, s, m, h, d or w)",
            "a.yaml:6:10: timeout must be more than zero",
            "a.yaml:7:21: budget.max_runs must be at least 1",
            "a.yaml:7:29: budget.per: invalid duration \"1y\": unknown unit; use ms, s, m, h, d or w",
        ]
    );
}

#[test]
fn duplicate_runbook_name() {
    let got = problems(&[
        ("a.yaml", HEAD),
        ("a.rhai", ""),
        ("b.yaml", HEAD),
        ("b.rhai", ""),
    ]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("b.yaml:1:7: duplicate runbook name \"a\", also defined in "),
        "{got:?}"
    );
    assert!(got[0].ends_with("a.yaml"), "{got:?}");
}

#[test]
fn missing_script_default_and_explicit() {
    let got = problems(&[("a.yaml", HEAD)]);
    assert_eq!(got.len(), 1);
    assert!(got[0].starts_with("a.yaml:1:1: script file "), "{got:?}");
    assert!(got[0].contains("a.rhai not found"), "{got:?}");
    let got = problems(&[
        ("a.yaml", &with_head("script: other.rhai\n")),
        ("a.rhai", ""),
    ]);
    assert!(got[0].starts_with("a.yaml:5:9: script file "), "{got:?}");
    let got = problems(&[
        ("a.yaml", &with_head("script: ../etc/passwd\n")),
        ("a.rhai", ""),
    ]);
    assert!(
        got[0].starts_with("a.yaml:5:9: script \"../etc/passwd\" must be a file name"),
        "{got:?}"
    );
}

#[test]
fn namespaces_empty_or_invalid() {
    let got = problems(&[
        (
            "a.yaml",
            "name: a\nteam: t\ndescription: d\nnamespaces: []\n",
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        ["a.yaml:4:13: namespaces must list at least one namespace"]
    );
    let got = problems(&[
        (
            "a.yaml",
            "name: a\nteam: t\ndescription: d\nnamespaces: [ok, Not_OK]\n",
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        ["a.yaml:4:18: \"Not_OK\" is not a valid Kubernetes namespace name"]
    );
}

#[test]
fn template_referencing_an_unknown_param() {
    let got = problems(&[
        (
            "a.yaml",
            &with_head(
                "params:\n  ns: { from: label, key: namespace }\nconcurrency: \"{{params.ns}}/{{params.deployment}}\"\n",
            ),
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        ["a.yaml:7:29: concurrency: template references unknown param `deployment`"]
    );
}

#[test]
fn param_problems() {
    let got = problems(&[
        (
            "a.yaml",
            &with_head(concat!(
                "triggers:\n  - source: alertmanager\n    match: [alertname=X]\n",
                "params:\n",
                "  wait: { type: duration, default: soon }\n",
                "  n: { type: int, required: true }\n",
                "  f: { from: event, key: colour }\n",
                "  k: { key: x }\n",
            )),
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        [
            "a.yaml:9:36: param `wait`: default does not fit type duration: invalid duration \"soon\": expected a number and a unit, e.g. 30s or 1h30m",
            "a.yaml:10:6: param `n` is required but has no `from` and no default, so triggers can never fill it",
            "a.yaml:11:26: param `f`: unknown event field `colour`; use one of id, source, type, subject, time, namespace, fingerprint or data.<path>",
            "a.yaml:12:13: param `k`: `key` needs `from: label | annotation | event`",
        ]
        .map(String::from)
        .into_iter()
        .collect::<Vec<_>>()
    );
}

#[test]
fn status_only_any_for_k8s() {
    let got = problems(&[
        (
            "a.yaml",
            &with_head("triggers:\n  - source: k8s\n    status: firing\n"),
        ),
        ("a.rhai", ""),
    ]);
    assert_eq!(
        got,
        ["a.yaml:7:13: status firing/resolved applies to alertmanager triggers; use `any` for k8s"]
    );
}

#[test]
fn all_problems_of_all_files_are_collected_in_order() {
    let got = problems(&[
        ("a.yaml", &with_head("cooldown: x\ntimeout: y\n")),
        ("a.rhai", ""),
        ("b.yaml", "name: b\n  bad: [\n"),
        (
            "c.yaml",
            "name: c\nteam: t\ndescription: d\nnamespaces: []\n",
        ),
        ("c.rhai", ""),
        ("teams.yaml", "this is skipped: by load_dir\n"),
        (".a.yaml", "editor backup: skipped too\n"),
        ("notes.txt", "not yaml"),
    ]);
    let files: Vec<&str> = got.iter().map(|d| d.split(':').next().unwrap()).collect();
    assert_eq!(files, ["a.yaml", "a.yaml", "b.yaml", "c.yaml"], "{got:?}");
}

#[test]
fn teams_check_team_and_namespaces() {
    let teams = Teams::from_str(
        "teams:\n  - name: t\n    namespaces: [x]\n  - name: u\n    namespaces: [y]\n",
    )
    .unwrap();
    let got = problems_with(
        &[
            (
                "a.yaml",
                "name: a\nteam: nobody\ndescription: d\nnamespaces: [x]\n",
            ),
            ("a.rhai", ""),
            (
                "b.yaml",
                "name: b\nteam: t\ndescription: d\nnamespaces: [x, y]\n",
            ),
            ("b.rhai", ""),
        ],
        Some(&teams),
    );
    assert_eq!(
        got,
        [
            "a.yaml:2:7: unknown team \"nobody\" (not in the teams file)",
            "b.yaml:4:17: namespace \"y\" is not one of team t's namespaces (x)",
        ]
    );
}

#[test]
fn alias_bomb_and_size_caps() {
    // 10^5 list items through five anchors: refused by the alias replay budget.
    let bomb = with_head(concat!(
        "params:\n  p:\n    type: list\n    default: [\n",
        "      &a [x, x, x, x, x, x, x, x, x, x],\n",
        "      &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a],\n",
        "      &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b],\n",
        "      &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c],\n",
        "      [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]]\n",
    ));
    let got = problems(&[("a.yaml", &bomb), ("a.rhai", "")]);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("a.yaml:12:39: alias replay limit exceeded"),
        "{got:?}"
    );
    let deep = with_head(&format!(
        "params:\n  p:\n    default: {}{}\n",
        "[".repeat(100),
        "]".repeat(100)
    ));
    let got = problems(&[("a.yaml", &deep), ("a.rhai", "")]);
    // Root, params and p are three levels, so the 30th bracket is depth 33.
    assert_eq!(got, ["a.yaml:7:43: budget breached: Depth { depth: 33 }"]);
    let huge = format!("{HEAD}description2: \"{}\"\n", "x".repeat(300 * 1024));
    let got = problems(&[("a.yaml", &huge), ("a.rhai", "")]);
    assert_eq!(
        got,
        ["a.yaml:1:1: file is larger than the 262144 byte limit"]
    );
}

#[test]
fn unreadable_folder() {
    let err = RunbookSet::load_dir(std::path::Path::new("/nonexistent/runbooks")).unwrap_err();
    assert_eq!(err.len(), 1);
    assert!(
        err[0]
            .to_string()
            .starts_with("/nonexistent/runbooks:1:1: cannot read runbook folder"),
        "{}",
        err[0]
    );
}
