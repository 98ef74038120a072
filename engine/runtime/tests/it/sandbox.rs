//! Every limit of the sandbox trips, with a clear error, and the engine keeps serving.

use std::path::Path;
use std::time::Duration;

use firebreak_connector::Registry;
use firebreak_runtime::{Limits, RunStatus, RunnerConfig, compile};

use crate::{config, harness, plan, run, wait_for};

fn small_limits() -> RunnerConfig {
    RunnerConfig {
        limits: Limits {
            max_operations: 200_000,
            max_call_levels: 16,
            max_string_size: 10_000,
            max_array_size: 1_000,
            max_map_size: 1_000,
            max_variables: 20,
            ..Limits::default()
        },
        ..config()
    }
}

async fn failure_of(source: &str) -> String {
    let h = harness(Registry::new(), small_limits());
    let (outcome, _) = run(&h, plan("r1", source)).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{source}: {outcome:?}");
    outcome.error.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runtime_limit_trips_with_a_clear_error() {
    let cases = [
        ("loop {}", "Too many operations"),
        ("fn down(x) { down(x + 1) } down(0)", "Stack overflow"),
        (
            r#"let s = "x"; loop { s += s; }"#,
            "Length of string too large",
        ),
        (
            "let a = []; loop { a.push(1); }",
            "Size of array/BLOB too large",
        ),
        (
            "let m = #{}; let i = 0; loop { let n = #{}; n[`k${i}`] = i; m.mixin(n); i += 1; }",
            "Size of object map too large",
        ),
        (
            &(0..30)
                .map(|i| format!("let v{i} = {i};"))
                .collect::<String>(),
            "Too many variables",
        ),
    ];
    for (source, expected) in cases {
        let error = failure_of(source).await;
        assert!(
            error.contains(expected),
            "{source}: expected {expected:?} in {error:?}"
        );
    }
}

#[test]
fn eval_import_and_parse_time_limits_are_refused_at_compile_with_file_line_col() {
    let path = Path::new("runbooks/x.rhai");
    let err = compile(path, "let a = 1;\n  eval(\"a\")").unwrap_err();
    assert_eq!(
        err.to_string(),
        "runbooks/x.rhai:2:3: reserved keyword 'eval' is disabled".to_owned(),
        "{err}"
    );

    let deep = format!("let x = {}1{};", "(".repeat(200), ")".repeat(200));
    let err = compile(path, &deep).unwrap_err();
    assert!(err.to_string().starts_with("runbooks/x.rhai:1:"), "{err}");
    assert!(err.message.contains("complex"), "{err}");

    let many_fns: String = (0..101).map(|i| format!("fn f{i}() {{ {i} }}\n")).collect();
    let err = compile(path, &many_fns).unwrap_err();
    assert!(err.message.contains("function"), "{err}");

    let err = compile(path, "let x = ;").unwrap_err();
    assert_eq!((err.line, err.column), (1, 9), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_the_clock_are_not_available() {
    let error = failure_of(r#"import "os" as os; 1"#).await;
    assert!(error.to_lowercase().contains("module"), "{error}");
    let error = failure_of("timestamp()").await;
    assert!(error.contains("Function not found: timestamp"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runaway_loop_times_out_while_other_runs_finish() {
    let h = harness(Registry::new(), config());
    let mut runaway = plan("loop", "let x = 0; loop { x += 1; }");
    runaway.timeout = Duration::from_millis(300);
    let runaway = h.runner.start(runaway).await.unwrap();
    let (normal, _) = run(&h, plan("normal", r#"log("still serving"); 42"#)).await;
    assert_eq!(normal.status, RunStatus::Succeeded);
    let outcome = runaway.join().await;
    assert_eq!(outcome.status, RunStatus::TimedOut, "{outcome:?}");
    let runs = h.journal.runs();
    let finished: Vec<_> = runs.iter().map(|r| (r.run_id.as_str(), r.status)).collect();
    assert!(
        finished.contains(&("loop", Some(RunStatus::TimedOut))),
        "{finished:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_loop_and_a_sleep() {
    let h = harness(Registry::new(), config());
    for (source, running) in [
        (r#"log("in"); loop { }"#, "finished 1 log ok"),
        ("sleep(60000);", "started 1 sleep"),
    ] {
        let handle = h.runner.start(plan(source, source)).await.unwrap();
        wait_for(&h, source, running).await;
        handle.cancel();
        let outcome = tokio::time::timeout(Duration::from_secs(5), handle.join())
            .await
            .unwrap();
        assert_eq!(
            outcome.status,
            RunStatus::Cancelled,
            "{source}: {outcome:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_is_bounded() {
    let error = failure_of("sleep(400000)").await;
    assert!(
        error.contains("sleep(400000): the wait must be between 0 and 300000 ms"),
        "{error}"
    );
    let error = failure_of("sleep(-1)").await;
    assert!(error.contains("invalid_argument"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_growth_by_index_assignment_is_bounded_by_the_operation_limit() {
    // Rhai checks the size of the assigned item, not of the map, on `m[k] = v`; the operation
    // limit is the backstop that ends such a script.
    let error = failure_of("let m = #{}; let i = 0; loop { m[`k${i}`] = i; i += 1; }").await;
    assert!(error.contains("Too many operations"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_and_debug_go_to_tracing_and_ctx_is_read_only() {
    let h = harness(Registry::new(), config());
    let (outcome, _) = run(&h, plan("r1", r#"print("hello"); debug(ctx.run_id); 1"#)).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let (outcome, _) = run(&h, plan("r2", "ctx.params.replicas = 0;")).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(outcome.error.unwrap().to_lowercase().contains("constant"));
}
