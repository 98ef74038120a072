//! A fake connector that counts calls and can fail, hang, be slow, wait by design, report
//! progress or cancel a run.
//! Its mutations plan and apply like a real connector's: `scale` keeps a replica count per
//! name in [`Fake::world`], and applying an intent that already holds writes nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use firebreak_connector::{
    ActionContext, ActionError, ActionSpec, Connector, Effect, ErrorKind, Intent, ParamSpec,
    ParamType, WaitSpec,
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
    /// Replicas per name, as `scale` leaves them.
    pub world: Mutex<HashMap<String, i64>>,
    /// Writes `scale` made to the world.
    pub writes: Mutex<usize>,
    /// Times `scale`'s apply still has to fail transiently *after* writing (a lost answer).
    pub lose_answers: Mutex<u32>,
}

impl Fake {
    /// Calls of `action` (for mutations: of its `apply`; `plan:<action>` counts its plans).
    pub fn count(&self, action: &str) -> usize {
        self.calls.lock().unwrap().get(action).copied().unwrap_or(0)
    }

    fn counted(&self, key: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += 1;
    }

    pub fn writes(&self) -> usize {
        *self.writes.lock().unwrap()
    }
}

/// How long `wait_ready` waits.
const WAIT_READY: WaitSpec = WaitSpec::by_param("timeout", Duration::from_secs(1));

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
        waits: None,
        rbac: vec![],
        errors: vec![],
        example: "",
    }
}

impl Connector for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn actions(&self) -> Vec<ActionSpec> {
        use Effect::{Mutate, Observe};
        use ParamType::{Any, Int, String};
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
            // Reports one line of progress, then hangs.
            action("report_then_hang", Observe, vec![], None),
            // Ready after `after_ms`; waits up to `timeout` (default 1 s) for it, by design.
            ActionSpec {
                waits: Some(WAIT_READY),
                ..action(
                    "wait_ready",
                    Observe,
                    vec![param("after_ms", Int, true), param("timeout", Any, false)],
                    None,
                )
            },
            // Answers after `ms`; does not declare a wait.
            action("slow", Observe, vec![param("ms", Int, true)], None),
        ]
    }

    fn plan<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        _cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Intent, ActionError>> {
        self.counted(&format!("plan:{action}"));
        Box::pin(async move {
            match action {
                "scale" => {
                    let name = args["name"].as_str().unwrap_or_default().to_owned();
                    let to = args.get("replicas").and_then(Value::as_i64).unwrap_or(1);
                    let from = self.world.lock().unwrap().get(&name).copied().unwrap_or(1);
                    let intent = Intent::new(
                        format!("scale {name} from {from} to {to}"),
                        json!({"scaled": name, "replicas": to, "from": from}),
                    );
                    Ok(if from == to { intent.noop() } else { intent })
                }
                "broken" => Err(ActionError::new(
                    ErrorKind::Permanent,
                    "nothing to roll back to",
                )),
                _ => Ok(Intent::new(format!("{action} it"), Value::Object(args))),
            }
        })
    }

    fn apply<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        intent: &'a Intent,
        _cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        self.counted(action);
        Box::pin(async move {
            let x = args.get("x").and_then(Value::as_i64).unwrap_or(0);
            match action {
                "two" => {
                    if let Some(token) = self.cancel_on_two.lock().unwrap().as_ref() {
                        token.cancel();
                    }
                    Ok(json!({"n": x + 10}))
                }
                "three" => Ok(json!({"n": x + 100})),
                "scale" => {
                    let name: String = intent.field("scaled")?;
                    let to: i64 = intent.field("replicas")?;
                    let already = self.world.lock().unwrap().get(&name) == Some(&to);
                    if !already {
                        self.world.lock().unwrap().insert(name.clone(), to);
                        *self.writes.lock().unwrap() += 1;
                        let mut lose = self.lose_answers.lock().unwrap();
                        if *lose > 0 {
                            *lose -= 1;
                            return Err(ActionError::new(
                                ErrorKind::Transient,
                                "connection reset after the write",
                            ));
                        }
                    }
                    Ok(json!({"scaled": name, "replicas": to, "changed": !already}))
                }
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("no mutation {other}"),
                )),
            }
        })
    }

    fn call<'a>(
        &'a self,
        action: &'a str,
        args: Map<String, Value>,
        cx: &'a ActionContext,
    ) -> BoxFuture<'a, Result<Value, ActionError>> {
        self.counted(action);
        Box::pin(async move {
            match action {
                "one" => Ok(json!({"n": 1})),
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
                "hang" => std::future::pending().await,
                "report_then_hang" => {
                    (cx.progress)("waiting for ever");
                    std::future::pending().await
                }
                "wait_ready" => {
                    // Like a real connector: reads its `timeout` as its spec declares it.
                    let timeout = WAIT_READY
                        .wait(&args)
                        .map_err(|e| ActionError::new(ErrorKind::Permanent, e))?;
                    let after = Duration::from_millis(args["after_ms"].as_u64().unwrap_or(0));
                    if after > timeout {
                        tokio::time::sleep(timeout).await;
                        return Err(ActionError::new(
                            ErrorKind::Timeout,
                            format!("not ready within {} ms", timeout.as_millis()),
                        ));
                    }
                    tokio::time::sleep(after).await;
                    Ok(json!({"ready": true, "waited_ms": after.as_millis() as u64}))
                }
                "slow" => {
                    let ms = args["ms"].as_u64().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(json!({"slept_ms": ms}))
                }
                other => Err(ActionError::new(
                    ErrorKind::Permanent,
                    format!("no action {other}"),
                )),
            }
        })
    }
}
