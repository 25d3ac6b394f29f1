//! ValidatingAdmissionPolicy, as Kubernetes evaluates it
//! (staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating): a policy's
//! `matchConstraints` and a binding's `matchResources` pick the requests;
//! `matchConditions` narrow them; each of `validations` is a CEL expression over
//! `object`, `oldObject`, `request`, `namespaceObject` and `variables` that must be
//! true. A false one is refused (binding action `Deny`), warned about (`Warn`) or
//! recorded in the audit log (`Audit`) with the upstream wording, and
//! `auditAnnotations` add to the audit event; an expression that fails follows the policy's
//! `failurePolicy`. A policy with a `paramKind` is judged once per object its
//! binding's `paramRef` picks (bound as `params`); none found is allowed or denied as
//! the binding's `parameterNotFoundAction` says. CEL is [`super::cel`].

use serde_json::{Value, json};

use crate::api::selectors::LabelSelector;

/// The request a policy is judged against.
pub struct Request<'a> {
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub operation: &'a str,
    /// API group, version, plural and subresource.
    pub group: &'a str,
    /// API version.
    pub version: &'a str,
    /// Kind.
    pub kind: &'a str,
    /// The plural resource.
    pub resource: &'a str,
    /// The subresource, "" for none.
    pub subresource: &'a str,
    /// The namespace ("" for cluster-scoped objects).
    pub namespace: &'a str,
    /// The object name.
    pub name: &'a str,
    /// The new object (None for DELETE).
    pub object: Option<&'a Value>,
    /// The old object (None for CREATE).
    pub old_object: Option<&'a Value>,
    /// The namespace object, for namespaced requests.
    pub namespace_object: Option<&'a Value>,
    /// The user, as `UserInfo`.
    pub user_info: Value,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// Answers the `authorizer` variable's checks for the request's user; without one,
    /// `authorizer` is undeclared.
    pub authorizer: Option<super::cel::authz::Authorizer>,
}

/// What the policies say about one request.
#[derive(Debug, Default, PartialEq)]
pub struct Verdict {
    /// The first denial: its HTTP code and message.
    pub denied: Option<(u16, String)>,
    /// Warnings (`Warn` actions).
    pub warnings: Vec<String>,
    /// Audit annotations: the policies' `auditAnnotations` (`<policy>/<key>`).
    pub audit: Vec<(String, String)>,
    /// Failures of bindings with the `Audit` action, as upstream records them under
    /// `validation.policy.admission.k8s.io/validation_failure`.
    pub audit_failures: Vec<Value>,
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn any_or(list: &[&str], want: &str) -> bool {
    list.iter().any(|x| *x == "*" || *x == want)
}

/// Whether one rule (`apiGroups`, `apiVersions`, `operations`, `resources`,
/// `resourceNames`, `scope`) covers the request.
fn rule_matches(rule: &Value, r: &Request) -> bool {
    if !any_or(&strs(&rule["apiGroups"]), r.group) || !any_or(&strs(&rule["apiVersions"]), r.version) {
        return false;
    }
    if !any_or(&strs(&rule["operations"]), r.operation) {
        return false;
    }
    let names = strs(&rule["resourceNames"]);
    if !names.is_empty() && !names.contains(&r.name) {
        return false;
    }
    match rule["scope"].as_str().unwrap_or("*") {
        "Namespaced" if r.namespace.is_empty() => return false,
        "Cluster" if !r.namespace.is_empty() => return false,
        _ => {}
    }
    let full =
        if r.subresource.is_empty() { r.resource.to_string() } else { format!("{}/{}", r.resource, r.subresource) };
    strs(&rule["resources"]).iter().any(|res| {
        *res == full
            || (r.subresource.is_empty() && *res == "*")
            || *res == "*/*"
            || res.strip_suffix("/*") == Some(r.resource) && !r.subresource.is_empty()
            || res.strip_prefix("*/") == Some(r.subresource) && !r.subresource.is_empty()
    })
}

fn selector_matches(sel: &Value, labels: &Value) -> bool {
    if sel.is_null() {
        return true;
    }
    match LabelSelector::from_label_selector(sel) {
        Ok(s) => s.matches_object(&json!({"metadata": {"labels": labels}})),
        Err(_) => false,
    }
}

/// Whether `matchConstraints` / `matchResources` cover the request.
fn resources_match(m: &Value, r: &Request, require_rules: bool) -> bool {
    if m.is_null() {
        return !require_rules;
    }
    let rules = m["resourceRules"].as_array().cloned().unwrap_or_default();
    if (require_rules || !rules.is_empty()) && !rules.iter().any(|rule| rule_matches(rule, r)) {
        return false;
    }
    if m["excludeResourceRules"].as_array().is_some_and(|x| x.iter().any(|rule| rule_matches(rule, r))) {
        return false;
    }
    let obj = r.object.or(r.old_object);
    if !selector_matches(&m["objectSelector"], &obj.map(|o| o["metadata"]["labels"].clone()).unwrap_or(Value::Null)) {
        return false;
    }
    // The namespace selector applies to namespaced objects (and Namespaces themselves).
    let ns_labels = if r.group.is_empty() && r.resource == "namespaces" {
        obj.map(|o| o["metadata"]["labels"].clone())
    } else if r.namespace.is_empty() {
        return true;
    } else {
        r.namespace_object.map(|n| n["metadata"]["labels"].clone())
    };
    selector_matches(&m["namespaceSelector"], &ns_labels.unwrap_or(Value::Null))
}

/// The variables of a policy's expressions: JSON ones, and the authorizer's.
struct Vars<'a> {
    json: &'a [(&'a str, &'a Value)],
    values: &'a [(&'a str, cel::Value)],
}

/// Evaluates one CEL expression; Ok(value) or the error text.
fn eval(expr: &str, vars: &Vars, variables: &serde_json::Map<String, Value>) -> Result<Value, String> {
    let variables = Value::Object(variables.clone());
    let mut all = vars.json.to_vec();
    all.push(("variables", &variables));
    super::cel::eval_with_values(expr, &all, vars.values)
}

/// The params each binding's `paramRef` found (by binding name), for the bindings
/// of policies with a `paramKind`; an error says why the binding could not be set up.
pub type Params = std::collections::HashMap<String, Result<Vec<Value>, String>>;

/// Judges a request against the policies and bindings there are.
pub fn judge(policies: &[Value], bindings: &[Value], params: &Params, r: &Request) -> Verdict {
    let mut v = Verdict::default();
    let null = Value::Null;
    let request = json!({
        "operation": r.operation, "name": r.name, "namespace": r.namespace, "dryRun": r.dry_run,
        "kind": {"group": r.group, "version": r.version, "kind": r.kind},
        "resource": {"group": r.group, "version": r.version, "resource": r.resource},
        "subResource": r.subresource, "userInfo": r.user_info,
    });
    let (object, old) = (r.object.unwrap_or(&null), r.old_object.unwrap_or(&null));
    let ns_obj = r.namespace_object.unwrap_or(&null);
    let mut values = Vec::new();
    if let Some(a) = &r.authorizer {
        use super::cel::authz;
        let this = authz::Check {
            group: r.group.to_string(),
            resource: r.resource.to_string(),
            subresource: r.subresource.to_string(),
            namespace: r.namespace.to_string(),
            name: r.name.to_string(),
            ..Default::default()
        };
        values.push(("authorizer", authz::authorizer(a.clone())));
        values.push(("authorizer.requestResource", authz::request_resource(a.clone(), this)));
    }
    for b in bindings {
        let pname = b["spec"]["policyName"].as_str().unwrap_or("");
        let Some(p) = policies.iter().find(|p| p["metadata"]["name"] == pname) else { continue };
        let (pspec, bname) = (&p["spec"], b["metadata"]["name"].as_str().unwrap_or(""));
        if !resources_match(&pspec["matchConstraints"], r, true)
            || !resources_match(&b["spec"]["matchResources"], r, false)
        {
            continue;
        }
        let fail_open = pspec["failurePolicy"] == "Ignore";
        let actions = strs(&b["spec"]["validationActions"]);
        let prefix = format!("ValidatingAdmissionPolicy '{pname}' with binding '{bname}' denied request");
        let found = if pspec["paramKind"].is_null() {
            Ok(vec![null.clone()])
        } else {
            match params.get(bname) {
                Some(Ok(list)) if list.is_empty() => {
                    if b["spec"]["paramRef"]["parameterNotFoundAction"] == "Deny" {
                        Err("failed to configure binding: no params found for policy binding with `Deny` parameterNotFoundAction".to_string())
                    } else {
                        continue;
                    }
                }
                Some(Ok(list)) => Ok(list.clone()),
                Some(Err(e)) => Err(e.clone()),
                None => Err("failed to configure binding: no params found".to_string()),
            }
        };
        let param_list = match found {
            Ok(list) => list,
            Err(e) => {
                if !fail_open {
                    deny(&mut v, &actions, (pname, bname, &prefix), (403, e, None));
                }
                continue;
            }
        };
        for param in &param_list {
            let vars: [(&str, &Value); 5] = [
                ("object", object),
                ("oldObject", old),
                ("request", &request),
                ("namespaceObject", ns_obj),
                ("params", param),
            ];
            let vars = Vars { json: &vars, values: &values };
            judge_one(&mut v, pspec, &vars, fail_open, &actions, (pname, bname, &prefix));
        }
    }
    v
}

/// Records a problem (code, message, the validation's index) as the binding's
/// actions say: a warning, a denial, an audit record, or several.
fn deny(v: &mut Verdict, actions: &[&str], (pname, bname, prefix): (&str, &str, &str), problem: Problem) {
    let (code, msg, index) = problem;
    if actions.contains(&"Audit") {
        let mut failure = json!({"message": msg, "policy": pname, "binding": bname,
                                 "validationActions": actions});
        if let Some(i) = index {
            failure["expressionIndex"] = json!(i);
        }
        v.audit_failures.push(failure);
    }
    if actions.contains(&"Warn") {
        v.warnings
            .push(format!("Validation failed for ValidatingAdmissionPolicy '{pname}' with binding '{bname}': {msg}"));
    }
    if actions.contains(&"Deny") && v.denied.is_none() {
        v.denied = Some((code, format!("{prefix}: {msg}")));
    }
}

/// A problem: HTTP code, message, and the index of the validation that failed.
type Problem = (u16, String, Option<usize>);

/// One policy, with one set of params, against one request; `who` is the policy,
/// the binding and the denial's prefix.
fn judge_one(v: &mut Verdict, pspec: &Value, vars: &Vars, fail_open: bool, actions: &[&str], who: (&str, &str, &str)) {
    // Variables, in order; each may use the ones before.
    let mut variables = serde_json::Map::new();
    let mut failed: Option<String> = None;
    for var in pspec["variables"].as_array().into_iter().flatten() {
        let (name, expr) = (var["name"].as_str().unwrap_or(""), var["expression"].as_str().unwrap_or(""));
        match eval(expr, vars, &variables) {
            Ok(val) => {
                variables.insert(name.to_string(), val);
            }
            Err(e) => failed = Some(format!("variable '{name}' resulted in error: {e}")),
        }
    }
    // matchConditions: all true, or the policy does not apply.
    let mut applies = true;
    for c in pspec["matchConditions"].as_array().into_iter().flatten() {
        let expr = c["expression"].as_str().unwrap_or("");
        match eval(expr, vars, &variables) {
            Ok(Value::Bool(true)) => {}
            Ok(_) => applies = false,
            Err(e) => {
                failed = Some(format!("failed to evaluate match condition '{}': {e}", c["name"].as_str().unwrap_or("")))
            }
        }
    }
    if !applies {
        return;
    }
    let mut problems: Vec<Problem> = Vec::new();
    if let Some(f) = failed {
        if !fail_open {
            problems.push((422, f, None));
        }
    } else {
        for (index, val) in pspec["validations"].as_array().into_iter().flatten().enumerate() {
            let expr = val["expression"].as_str().unwrap_or("");
            // Upstream answers with the validation's reason, Invalid when it has none.
            let code = match val["reason"].as_str().unwrap_or("Invalid") {
                "Forbidden" => 403,
                "Unauthorized" => 401,
                "RequestEntityTooLarge" => 413,
                _ => 422,
            };
            match eval(expr, vars, &variables) {
                Ok(Value::Bool(true)) => {}
                Ok(Value::Bool(false)) => {
                    let message = val["messageExpression"]
                        .as_str()
                        .and_then(|m| eval(m, vars, &variables).ok())
                        .and_then(|m| m.as_str().map(String::from))
                        .or_else(|| val["message"].as_str().filter(|m| !m.is_empty()).map(String::from))
                        .unwrap_or_else(|| format!("failed expression: {expr}"));
                    problems.push((code, message, Some(index)));
                }
                Ok(other) => {
                    if !fail_open {
                        problems.push((
                            422,
                            format!("expression '{expr}' resulted in error: no such overload: {other} is not a bool"),
                            Some(index),
                        ));
                    }
                }
                Err(e) => {
                    if !fail_open {
                        problems.push((422, format!("expression '{expr}' resulted in error: {e}"), Some(index)));
                    }
                }
            }
        }
        // auditAnnotations: a string value is recorded as `<policy>/<key>`; null
        // records nothing.
        for a in pspec["auditAnnotations"].as_array().into_iter().flatten() {
            let (key, expr) = (a["key"].as_str().unwrap_or(""), a["valueExpression"].as_str().unwrap_or(""));
            match eval(expr, vars, &variables) {
                Ok(Value::String(value)) => v.audit.push((format!("{}/{key}", who.0), value)),
                Ok(Value::Null) => {}
                Ok(other) => problems.push((
                    422,
                    format!("valueExpression '{expr}' resulted in error: {other} is not a string"),
                    None,
                )),
                Err(e) if !fail_open => {
                    problems.push((422, format!("valueExpression '{expr}' resulted in error: {e}"), None))
                }
                Err(_) => {}
            }
        }
    }
    for problem in problems {
        deny(v, actions, who, problem);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(validations: Value, extra: Value) -> Value {
        let mut p = json!({"metadata": {"name": "demo"}, "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["apps"], "apiVersions": ["v1"],
                                                    "operations": ["CREATE", "UPDATE"], "resources": ["deployments"]}]},
            "validations": validations}});
        if let Some(m) = extra.as_object() {
            for (k, v) in m {
                p["spec"][k] = v.clone();
            }
        }
        p
    }

    fn binding(actions: Value) -> Value {
        json!({"metadata": {"name": "demo-binding"}, "spec": {"policyName": "demo", "validationActions": actions}})
    }

    fn deploy(replicas: i64) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "d", "labels": {"env": "prod"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "c", "image": "nginx:latest"}]}}}})
    }

    fn req<'a>(op: &'a str, obj: &'a Value) -> Request<'a> {
        Request {
            operation: op,
            group: "apps",
            version: "v1",
            kind: "Deployment",
            resource: "deployments",
            subresource: "",
            namespace: "d",
            name: "web",
            object: Some(obj),
            old_object: None,
            namespace_object: None,
            user_info: json!({"username": "jane", "groups": ["system:authenticated"]}),
            dry_run: false,
            authorizer: None,
        }
    }

    #[test]
    fn the_authorizer_variable() {
        use crate::api::cel::authz::{Check, Decision};
        // jane may scale deployments in d, and list pods as the builder service account.
        let answer: crate::api::cel::authz::Authorizer = std::sync::Arc::new(|c: &Check| {
            let allowed = match &c.service_account {
                Some((ns, n)) => {
                    (ns.as_str(), n.as_str(), c.resource.as_str(), c.verb.as_str()) == ("d", "builder", "pods", "list")
                }
                None => {
                    (
                        c.group.as_str(),
                        c.resource.as_str(),
                        c.subresource.as_str(),
                        c.namespace.as_str(),
                        c.verb.as_str(),
                    ) == ("apps", "deployments", "scale", "d", "update")
                        || c.path.as_deref() == Some("/healthz")
                }
            };
            Decision { allowed, reason: if allowed { "ok".into() } else { String::new() }, error: String::new() }
        });
        let obj = deploy(3);
        let mut r = req("CREATE", &obj);
        r.authorizer = Some(answer);
        let checks = [
            ("authorizer.requestResource.subresource('scale').check('update').allowed()", true),
            ("authorizer.requestResource.check('update').allowed()", false),
            (
                "authorizer.group('apps').resource('deployments').subresource('scale').namespace('d').name('web').check('update').allowed()",
                true,
            ),
            (
                "authorizer.group('apps').resource('deployments').subresource('scale').namespace('e').check('update').allowed()",
                false,
            ),
            (
                "authorizer.path('/healthz').check('get').allowed() && authorizer.path('/healthz').check('get').reason() == 'ok'",
                true,
            ),
            (
                "authorizer.serviceAccount('d', 'builder').group('').resource('pods').namespace('d').check('list').allowed()",
                true,
            ),
            (
                "authorizer.serviceAccount('d', 'other').group('').resource('pods').namespace('d').check('list').allowed()",
                false,
            ),
            (
                "!authorizer.group('').resource('pods').check('get').errored() && authorizer.group('').resource('pods').check('get').error() == ''",
                true,
            ),
            (
                "authorizer.group('').resource('pods').fieldSelector('spec.nodeName=n').labelSelector('a=b').check('list').reason() == ''",
                true,
            ),
        ];
        for (expr, want) in checks {
            let p = policy(json!([{"expression": expr}]), json!({}));
            let v = judge_no_params(&[p], &[binding(json!(["Deny"]))], &r);
            match &v.denied {
                None => assert!(want, "{expr} was true"),
                Some((_, m)) => assert!(!want && m.contains("failed expression"), "{expr}: {m}"),
            }
        }
        // Without an authorizer (as in CRD rules) the variable does not exist.
        r.authorizer = None;
        let p = policy(json!([{"expression": "authorizer.path('/healthz').check('get').allowed()"}]), json!({}));
        let v = judge_no_params(&[p], &[binding(json!(["Deny"]))], &r);
        assert!(v.denied.as_ref().is_some_and(|(_, m)| m.contains("Undeclared reference")), "{v:?}");
    }

    fn judge_no_params(policies: &[Value], bindings: &[Value], r: &Request) -> Verdict {
        judge(policies, bindings, &Params::new(), r)
    }

    #[test]
    fn audit_annotations_and_the_audit_action() {
        let p = policy(
            json!([{"expression": "object.spec.replicas <= 5"}]),
            json!({"auditAnnotations": [
                {"key": "replicas", "valueExpression": "'replicas: ' + string(object.spec.replicas)"},
                {"key": "nothing", "valueExpression": "null"}]}),
        );
        let v = judge_no_params(&[p], &[binding(json!(["Audit"]))], &req("CREATE", &deploy(7)));
        assert_eq!(v.denied, None);
        assert_eq!(v.audit, [("demo/replicas".to_string(), "replicas: 7".to_string())]);
        assert_eq!(
            v.audit_failures,
            [json!({"message": "failed expression: object.spec.replicas <= 5", "policy": "demo",
                    "binding": "demo-binding", "validationActions": ["Audit"], "expressionIndex": 0})]
        );
    }

    #[test]
    fn validations_deny_and_warn_as_upstream_words_it() {
        let p = policy(json!([{"expression": "object.spec.replicas <= 5"}]), json!({}));
        let small = deploy(3);
        assert_eq!(
            judge_no_params(&[p.clone()], &[binding(json!(["Deny"]))], &req("CREATE", &small)),
            Verdict::default()
        );
        let big = deploy(7);
        let v = judge_no_params(&[p.clone()], &[binding(json!(["Deny"]))], &req("CREATE", &big));
        assert_eq!(
            v.denied,
            Some((422, "ValidatingAdmissionPolicy 'demo' with binding 'demo-binding' denied request: failed expression: object.spec.replicas <= 5".into()))
        );
        let v = judge_no_params(&[p], &[binding(json!(["Warn"]))], &req("CREATE", &big));
        assert_eq!(v.denied, None);
        assert_eq!(
            v.warnings,
            vec![
                "Validation failed for ValidatingAdmissionPolicy 'demo' with binding 'demo-binding': failed expression: object.spec.replicas <= 5"
            ]
        );
    }

    #[test]
    fn messages_variables_conditions_and_failures() {
        let p = policy(
            json!([{"expression": "variables.images.all(i, !i.endsWith(':latest'))", "reason": "Forbidden",
                    "messageExpression": "'no latest tags in ' + object.metadata.name"}]),
            json!({"variables": [{"name": "images", "expression": "object.spec.template.spec.containers.map(c, c.image)"}],
                   "matchConditions": [{"name": "prod", "expression": "has(object.metadata.labels) && object.metadata.labels.env == 'prod'"}]}),
        );
        let d = deploy(1);
        let v = judge_no_params(&[p.clone()], &[binding(json!(["Deny"]))], &req("CREATE", &d));
        assert_eq!(
            v.denied.unwrap(),
            (
                403,
                "ValidatingAdmissionPolicy 'demo' with binding 'demo-binding' denied request: no latest tags in web"
                    .to_string()
            )
        );
        let mut dev = deploy(1);
        dev["metadata"]["labels"]["env"] = json!("dev");
        assert_eq!(
            judge_no_params(&[p], &[binding(json!(["Deny"]))], &req("CREATE", &dev)).denied,
            None,
            "the match condition is false"
        );
        // An expression that fails: denied under Fail, let through under Ignore.
        let broken = policy(json!([{"expression": "object.spec.nosuch > 1"}]), json!({}));
        let v = judge_no_params(&[broken.clone()], &[binding(json!(["Deny"]))], &req("CREATE", &d));
        assert!(v.denied.unwrap().1.contains("expression 'object.spec.nosuch > 1' resulted in error"));
        let mut lenient = broken;
        lenient["spec"]["failurePolicy"] = json!("Ignore");
        assert_eq!(judge_no_params(&[lenient], &[binding(json!(["Deny"]))], &req("CREATE", &d)).denied, None);
        // Other resources and operations are not matched.
        let p = policy(json!([{"expression": "false"}]), json!({}));
        let mut r = req("DELETE", &d);
        assert_eq!(judge_no_params(&[p.clone()], &[binding(json!(["Deny"]))], &r).denied, None);
        r.operation = "CREATE";
        r.resource = "replicasets";
        assert_eq!(judge_no_params(&[p], &[binding(json!(["Deny"]))], &r).denied, None);
    }
}
