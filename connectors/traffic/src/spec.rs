//! The self-description of every `traffic::` action. Start at [`actions`].

use firebreak_connector::ErrorKind::{Conflict, NotFound, Permanent, Timeout};
use firebreak_connector::{
    ActionSpec, Effect, ErrorDoc, ErrorKind, ParamSpec, ParamType, RbacRule, WaitSpec,
};

fn ns() -> ParamSpec {
    ParamSpec::required("ns", ParamType::String, "namespace of the route")
}

fn route() -> ParamSpec {
    ParamSpec::required(
        "route",
        ParamType::String,
        "httproute/NAME, virtualservice/NAME, service/NAME (two Deployments behind one \
         Service, split by replicas), or a bare NAME looked up in that order",
    )
}

const fn e(kind: ErrorKind, when: &'static str) -> ErrorDoc {
    ErrorDoc::new(kind, when)
}

/// Finding the route, for every action.
fn read_errors() -> Vec<ErrorDoc> {
    vec![
        e(
            Permanent,
            "`route` names an unknown kind (not httproute/, virtualservice/ or service/) or \
             nothing",
        ),
        e(
            NotFound,
            "no such route: no HTTPRoute, VirtualService (v1, then v1beta1) or Service by that \
             name (a kind the cluster does not serve counts as absent)",
        ),
        e(
            Permanent,
            "a Service route has no selector, or selects no Deployment",
        ),
    ]
}

/// Moving the weights, for `shift` and `reset` (see `TrafficConnector::apply_weights`).
fn write_errors() -> Vec<ErrorDoc> {
    vec![
        e(
            Permanent,
            "a Service route selects more than two Deployments (a replica-ratio canary splits \
             between two)",
        ),
        e(
            Conflict,
            "the route's backends changed between plan and write, or it kept changing (a 409 \
             on every write, up to the retry limit)",
        ),
        e(
            Permanent,
            "a parent of the HTTPRoute reports that a backend does not resolve (`ResolvedRefs` \
             false at the new generation); the message names it",
        ),
        e(
            Timeout,
            "the HTTPRoute's parents did not accept the new generation, or the Service's \
             Deployments did not have their replicas ready, within 60 s",
        ),
        e(Permanent, "the route was written but carries other weights"),
    ]
}

fn rule(
    api_groups: &'static [&'static str],
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
) -> RbacRule {
    RbacRule {
        api_groups,
        resources,
        verbs,
    }
}

fn read_rules() -> Vec<RbacRule> {
    vec![
        rule(&["gateway.networking.k8s.io"], &["httproutes"], &["get"]),
        rule(&["networking.istio.io"], &["virtualservices"], &["get"]),
        rule(&[""], &["services"], &["get"]),
        rule(&["apps"], &["deployments"], &["get", "list"]),
    ]
}

fn write_rules() -> Vec<RbacRule> {
    let mut rules = read_rules();
    rules.extend([
        rule(&["gateway.networking.k8s.io"], &["httproutes"], &["update"]),
        rule(&["networking.istio.io"], &["virtualservices"], &["update"]),
        rule(&["apps"], &["deployments/scale"], &["patch"]),
    ]);
    rules
}

/// Every action of the traffic connector.
pub fn actions() -> Vec<ActionSpec> {
    vec![
        ActionSpec {
            name: "split",
            doc: "The route's backends and their weights (percent), its generation, and whether \
                  its status accepts them (HTTPRoute: every parent Accepted and ResolvedRefs at \
                  the current generation). For a Service: each Deployment's replicas and ready \
                  pods, and its share of the ready pods.",
            effect: Effect::Observe,
            params: vec![ns(), route()],
            namespace_param: Some("ns"),
            waits: None,
            rbac: read_rules(),
            errors: read_errors(),
            example: r#"traffic::split("ml-serving", "httproute/fraud-model")"#,
        },
        ActionSpec {
            name: "shift",
            doc: "Sets the backends' weights (percentages; written summing to 100, backends not \
                  named get 0) with a resourceVersion precondition. An HTTPRoute is done once \
                  every parent accepts it at the new generation; a backend that does not resolve \
                  fails the step. A Service's two Deployments are scaled to the ratio (Argo \
                  Rollouts' rounding) and waited for.",
            effect: Effect::Mutate,
            params: vec![
                ns(),
                route(),
                ParamSpec::required(
                    "weights",
                    ParamType::Map,
                    "backend name → weight, e.g. #{\"model-v1\": 90, \"model-v2\": 10}",
                ),
            ],
            namespace_param: Some("ns"),
            // Applying waits for the route's status (or the replicas) to follow.
            waits: Some(WaitSpec::fixed(crate::SETTLE_WAIT)),
            rbac: write_rules(),
            errors: [
                read_errors(),
                vec![
                    e(
                        Permanent,
                        "`weights` is not a map of backend name to a whole number, a weight is \
                         negative, or all are zero",
                    ),
                    e(
                        Permanent,
                        "a weight names a backend the route does not have",
                    ),
                ],
                write_errors(),
            ]
            .concat(),
            example: r#"traffic::shift("ml-serving", "httproute/fraud-model", #{"fraud-model-v1": 90, "fraud-model-v2": 10})"#,
        },
        ActionSpec {
            name: "reset",
            doc: "All traffic back to the stable backend, in one write.",
            effect: Effect::Mutate,
            params: vec![
                ns(),
                route(),
                ParamSpec::required("stable", ParamType::String, "the backend that gets it all"),
            ],
            namespace_param: Some("ns"),
            waits: Some(WaitSpec::fixed(crate::SETTLE_WAIT)),
            rbac: write_rules(),
            errors: [
                read_errors(),
                vec![e(Permanent, "`stable` is not a backend of the route")],
                write_errors(),
            ]
            .concat(),
            example: r#"traffic::reset("ml-serving", "httproute/fraud-model", "fraud-model-v1")"#,
        },
    ]
}
