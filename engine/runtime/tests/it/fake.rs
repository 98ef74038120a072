//! A fake connector that counts calls and can fail, hang, report progress or cancel a run.

use std::collections::HashMap;
use std::sync::Mutex;

use firebreak_connector::{
    ActionContext, ActionError, ActionSpec, Connector, Effect, ErrorKind, ParamSpec, ParamType,
};
use firebreak_runtime::CancellationToken;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};

#[derive(Default)]
pub struct Fake {
    pub calls: Mutex<HashMap<String, usize>>,
    /// Cancelled when `two` is called (simulates the engine stopping mid-run).
    pub cancel_on_two: Mutex<Option<CancellationToken>>,
    /// Transient failures `flaky` still has to give.
    pub flaky_failures: Mutex<u32>,
}

impl Fake {
    pub fn count(&self, action: &str) -> usize {
        self.calls.lock().unwrap().get(action).copied().unwrap_or(0)
    }
}

fn param(name: &'static str, ty: ParamType, required: bool) -> ParamSpec {
    ParamSpec {
        name,
        ty,
        required,
        doc: "",
    }
}

fn action(
    name: &'static str,
    effect: Effect,
    params: Vec<ParamSpec>,
    ns: Option<&'static str>,
) -> ActionSpec {
    ActionSpec {
        name,
        doc: "",
        effect,
        params,
        namespace_param: ns,
        rbac: vec![],
        example: "",
    }
}

impl Connector for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn actions(&self) -> Vec<ActionSpec> {
        use Effect::{Mutate, Observe};
        use ParamType::{Int, String};
        vec![
            action("one", Observe, vec![], None),
            action("two", Mutate, vec![param("x", Int, true)], None),
            action("three", Mutate, vec![param("x", Int, true)], None),
            action(
                "scale",
                Mutate,
                vec![
                    param("namespace", String, true),
                    param("name", String, true),
                    param("replicas", Int, false),
                ],
                Some("namespace"),
            ),
            action(
                "pods",
                Observe,
                vec![param("namespace", String, true)],
                Some("namespace"),
            ),
            action("flaky", Observe, vec![], None),
            action("broken", Mutate, vec![], None),
            action("hang", Observe, vec![], None),
        ]
    }

    fn call<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(action.to_owned())
            .or_default() += 1;
        Box::pin(async move {
            let x = args.get("x").and_then(Value::as_i64).unwrap_or(0);
            match action {
                "one" => Ok(json!({"n": 1})),
                "two" => {
                    if let Some(token) = self.cancel_on_two.lock().unwrap().as_ref() {
                        token.cancel();
                    }
                    Ok(json!({"n": x + 10}))
                }
                "three" => Ok(json!({"n": x + 100})),
                "scale" => Ok(
                    json!({"scaled": args["name"], "replicas": args.get("replicas"), "dry_run": cx.dry_run}),
                ),
                "pods" => {
                    (cx.progress)("listing pods");
                    (cx.progress)("found 2 pods");
                    Ok(json!([{"name": "api-1"}, {"name": "api-2"}]))
                }
                "flaky" => {
                    let mut left = self.flaky_failures.lock().unwrap();
                    if *left > 0 {
                        *left -= 1;
                        return Err(ActionError::new(ErrorKind::Transient, "connection reset"));
                    }
                    Ok(json!("finally"))
                }
                "broken" => Err(ActionError::new(
                    ErrorKind::Permanent,
                    "nothing to roll back to",
                )),
                "hang" => std::future::pending().await,
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("no action {other}"),
                )),
            }
        })
    }
}
