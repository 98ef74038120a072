//! Defaulting, as the apiserver applies it on create and update (SetDefaults_* functions).
//!
//! Start at [`apply`]. Defaults matter for `kubectl get -o yaml` fidelity and so that pod
//! templates compare equal however they were written (KUBESIM-NOTES §0.8, §2).

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

/// Fills in the defaults of `obj` (a full object of resource `rt`).
pub fn apply(rt: &ResourceType, obj: &mut Value) {
    match (rt.group, rt.kind) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "ReplicaSet") => replicaset(obj),
        ("", "Pod") => pod(obj),
        ("", "Service") => service(obj),
        ("", "Namespace") => namespace(obj),
        ("networking.k8s.io", "NetworkPolicy") => network_policy(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crate::crd::default(obj),
        _ => {}
    }
}

fn obj_mut<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let map = v.as_object_mut().expect("defaulting works on objects");
    let entry = map.entry(key.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("just made an object")
}

fn default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

fn deployment(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "replicas", json!(1));
    default(spec, "revisionHistoryLimit", json!(10));
    default(spec, "progressDeadlineSeconds", json!(600));
    let strategy = spec.entry("strategy").or_insert_with(|| json!({}));
    if !strategy.is_object() {
        *strategy = json!({});
    }
    let strategy = strategy.as_object_mut().expect("object");
    default(strategy, "type", json!("RollingUpdate"));
    if strategy.get("type") == Some(&json!("RollingUpdate")) {
        let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
        if let Some(ru) = ru.as_object_mut() {
            default(ru, "maxSurge", json!("25%"));
            default(ru, "maxUnavailable", json!("25%"));
        }
    }
    if let Some(template) = obj.pointer_mut("/spec/template") {
        pod_template(template);
    }
}

fn replicaset(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "replicas", json!(1));
    if let Some(template) = obj.pointer_mut("/spec/template") {
        pod_template(template);
    }
}

/// Defaults of a pod template (Deployment/ReplicaSet `spec.template`).
pub fn pod_template(template: &mut Value) {
    if !template.is_object() {
        return;
    }
    let meta = obj_mut(template, "metadata");
    // The 1.32 apiserver serialises the zero creationTimestamp of templates as null.
    if !meta.contains_key("creationTimestamp") {
        meta.insert("creationTimestamp".into(), Value::Null);
    }
    pod_spec(obj_mut(template, "spec"));
}

fn pod_spec(spec: &mut Map<String, Value>) {
    default(spec, "restartPolicy", json!("Always"));
    default(spec, "terminationGracePeriodSeconds", json!(30));
    default(spec, "dnsPolicy", json!("ClusterFirst"));
    default(spec, "schedulerName", json!("default-scheduler"));
    default(spec, "securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in containers.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    default(c, "terminationMessagePath", json!("/dev/termination-log"));
    default(c, "terminationMessagePolicy", json!("File"));
    default(c, "resources", json!({}));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    default(c, "imagePullPolicy", json!(pull_policy(image)));
    for kind in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if let Some(probe) = c.get_mut(kind).and_then(Value::as_object_mut) {
            probe_defaults(probe);
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
        }
    }
}

/// `Always` for `:latest` or untagged images, else `IfNotPresent`.
/// What the apiserver fills in on a probe (`SetDefaults_Probe`, `SetDefaults_HTTPGetAction`).
fn probe_defaults(p: &mut Map<String, Value>) {
    default(p, "timeoutSeconds", json!(1));
    default(p, "periodSeconds", json!(10));
    default(p, "successThreshold", json!(1));
    default(p, "failureThreshold", json!(3));
    if let Some(get) = p.get_mut("httpGet").and_then(Value::as_object_mut) {
        default(get, "path", json!("/"));
        default(get, "scheme", json!("HTTP"));
    }
}

fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn pod(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    pod_spec(spec);
    default(spec, "serviceAccountName", json!("default"));
    default(spec, "serviceAccount", json!("default"));
    default(spec, "enableServiceLinks", json!(true));
    default(spec, "priority", json!(0));
    default(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    default(
        spec,
        "tolerations",
        json!([
            {"effect": "NoExecute", "key": "node.kubernetes.io/not-ready", "operator": "Exists", "tolerationSeconds": 300},
            {"effect": "NoExecute", "key": "node.kubernetes.io/unreachable", "operator": "Exists", "tolerationSeconds": 300}
        ]),
    );
}

fn service(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "type", json!("ClusterIP"));
    default(spec, "sessionAffinity", json!("None"));
    default(spec, "internalTrafficPolicy", json!("Cluster"));
    default(spec, "ipFamilies", json!(["IPv4"]));
    default(spec, "ipFamilyPolicy", json!("SingleStack"));
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            default(p, "protocol", json!("TCP"));
            if let Some(port) = p.get("port").cloned() {
                default(p, "targetPort", port);
            }
        }
    }
    let status = obj_mut(obj, "status");
    default(status, "loadBalancer", json!({}));
}

fn namespace(obj: &mut Value) {
    let name = obj
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let meta = obj_mut(obj, "metadata");
    let labels = meta.entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    if let Some(labels) = labels.as_object_mut() {
        default(labels, "kubernetes.io/metadata.name", name);
    }
    let spec = obj_mut(obj, "spec");
    default(spec, "finalizers", json!(["kubernetes"]));
    let status = obj_mut(obj, "status");
    default(status, "phase", json!("Active"));
}

fn network_policy(obj: &mut Value) {
    let spec = obj_mut(obj, "spec");
    default(spec, "podSelector", json!({}));
    if spec.get("policyTypes").is_none() {
        let mut types = vec![json!("Ingress")];
        if spec.get("egress").is_some() {
            types.push(json!("Egress"));
        }
        spec.insert("policyTypes".into(), Value::Array(types));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources;

    #[test]
    fn deployment_defaults_match_the_apiserver() {
        let rt = resources::by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"spec": {"selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "nginx:1.0", "ports": [{"containerPort": 80}]}, {"name": "side", "image": "busybox"}]}}}});
        apply(rt, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(
            d["spec"]["template"]["metadata"]["creationTimestamp"],
            Value::Null
        );
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c[1]["imagePullPolicy"], "Always");
        assert_eq!(c[0]["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["dnsPolicy"], "ClusterFirst");
    }

    #[test]
    fn probes_get_the_apiservers_defaults() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "m", "image": "x:1",
            "readinessProbe": {"httpGet": {"port": 8080}}, "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5}}]}}}});
        apply(resources::by_kind("apps/v1", "Deployment").unwrap(), &mut d);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 8080, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(
            c["livenessProbe"]["periodSeconds"], 5,
            "a given value stays"
        );
        assert_eq!(c["livenessProbe"]["failureThreshold"], 3);
    }

    #[test]
    fn recreate_gets_no_rolling_update_block() {
        let rt = resources::by_kind("apps/v1", "Deployment").unwrap();
        let mut d = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply(rt, &mut d);
        assert!(d["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn namespace_gets_its_name_label() {
        let rt = resources::by_kind("v1", "Namespace").unwrap();
        let mut ns = json!({"metadata": {"name": "team-a"}});
        apply(rt, &mut ns);
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "team-a"
        );
        assert_eq!(ns["status"]["phase"], "Active");
    }
}
