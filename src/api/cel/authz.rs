//! Kubernetes's CEL authorizer library (k8s.io/apiserver/pkg/cel/library/authz.go), the
//! `authorizer` and `authorizer.requestResource` variables of ValidatingAdmissionPolicy:
//!
//! ```text
//! authorizer.group('apps').resource('deployments').namespace('ns').name('x').check('update').allowed()
//! authorizer.path('/healthz').check('get').reason()
//! authorizer.serviceAccount('ns', 'builder').group('').resource('pods').check('list').errored()
//! authorizer.requestResource.subresource('scale').check('update').allowed()
//! ```
//!
//! Each step is an opaque value carrying the check built so far and the function that
//! answers it (the API server's authorizers, for the request's user).

use std::sync::Arc;

use cel::common::types::{STRING_TYPE, Type};
use cel::common::value::CowVal;
use cel::objects::Opaque;
use cel::{DeclarationError, Env, ExecutionError};

/// What a CEL authorization check asks: a verb on a resource or a path, for the
/// request's user or a service account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// The verb, `get`, `create`, ...
    pub verb: String,
    /// For a path check, the path; else None.
    pub path: Option<String>,
    /// The API group ("" for core).
    pub group: String,
    /// The plural resource.
    pub resource: String,
    /// The subresource, or "".
    pub subresource: String,
    /// The namespace, or "" for the cluster scope.
    pub namespace: String,
    /// The object name, or "".
    pub name: String,
    /// `fieldSelector(...)`, as written.
    pub field_selector: String,
    /// `labelSelector(...)`, as written.
    pub label_selector: String,
    /// `serviceAccount(namespace, name)`: who is asked about instead of the user.
    pub service_account: Option<(String, String)>,
}

/// An authorizer's answer to a [`Check`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Whether it is allowed.
    pub allowed: bool,
    /// The authorizer's reason, may be "".
    pub reason: String,
    /// Why the authorizer could not decide, or "".
    pub error: String,
}

/// Answers checks for one request.
pub type Authorizer = Arc<dyn Fn(&Check) -> Decision + Send + Sync>;

/// The step a value stands for; its CEL type name is upstream's.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Authorizer,
    Path,
    Group,
    Resource,
    Decision(Decision),
}

/// One value of the library.
#[derive(Clone)]
struct Authz {
    answer: Authorizer,
    check: Check,
    step: Step,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?}", self.step, self.check)
    }
}

impl PartialEq for Authz {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.answer, &other.answer) && self.check == other.check && self.step == other.step
    }
}

impl Eq for Authz {}

const AUTHORIZER: &str = "kubernetes.authorization.Authorizer";
const PATH_CHECK: &str = "kubernetes.authorization.PathCheck";
const GROUP_CHECK: &str = "kubernetes.authorization.GroupCheck";
const RESOURCE_CHECK: &str = "kubernetes.authorization.ResourceCheck";
const DECISION: &str = "kubernetes.authorization.Decision";

impl Opaque for Authz {
    fn runtime_type_name(&self) -> &str {
        match self.step {
            Step::Authorizer => AUTHORIZER,
            Step::Path => PATH_CHECK,
            Step::Group => GROUP_CHECK,
            Step::Resource => RESOURCE_CHECK,
            Step::Decision(_) => DECISION,
        }
    }
}

/// The `authorizer` variable: checks for the request's user, answered by `answer`.
pub fn authorizer(answer: Authorizer) -> cel::Value {
    cel::Value::Opaque(Arc::new(Authz { answer, check: Check::default(), step: Step::Authorizer }))
}

/// The `authorizer.requestResource` variable: a resource check preset to the
/// request's group, resource, subresource, namespace and name.
pub fn request_resource(answer: Authorizer, request: Check) -> cel::Value {
    cel::Value::Opaque(Arc::new(Authz { answer, check: request, step: Step::Resource }))
}

fn this(function: &str, args: &[CowVal<'_, '_>]) -> Result<Authz, ExecutionError> {
    let v = args.first().ok_or_else(|| ExecutionError::function_error(function, "no receiver"))?;
    match cel::Value::try_from(v.as_ref())? {
        cel::Value::Opaque(o) => match o.downcast_ref::<Authz>() {
            Some(a) => Ok(a.clone()),
            None => Err(ExecutionError::function_error(function, "not an authorizer value")),
        },
        _ => Err(ExecutionError::function_error(function, "not an authorizer value")),
    }
}

fn string(function: &str, args: &[CowVal<'_, '_>], i: usize) -> Result<String, ExecutionError> {
    let v = args.get(i).ok_or_else(|| ExecutionError::function_error(function, "missing argument"))?;
    match cel::Value::try_from(v.as_ref())? {
        cel::Value::String(s) => Ok(s.to_string()),
        other => Err(ExecutionError::function_error(function, format!("not a string: {other:?}"))),
    }
}

fn answer<'b, 'v>(v: cel::Value) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::Owned(Box::<dyn cel::common::value::Val>::try_from(v)?))
}

fn step<'b, 'v>(a: Authz, step: Step) -> Result<CowVal<'b, 'v>, ExecutionError> {
    answer(cel::Value::Opaque(Arc::new(Authz { step, ..a })))
}

fn group<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut a = this("group", &args)?;
    a.check.group = string("group", &args, 1)?;
    step(a, Step::Group)
}

fn path<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut a = this("path", &args)?;
    a.check.path = Some(string("path", &args, 1)?);
    step(a, Step::Path)
}

fn service_account<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut a = this("serviceAccount", &args)?;
    a.check.service_account = Some((string("serviceAccount", &args, 1)?, string("serviceAccount", &args, 2)?));
    step(a, Step::Authorizer)
}

/// A ResourceCheck step that sets one field: `resource`, `subresource`, ...
fn setter<'b, 'v>(
    function: &str,
    args: Vec<CowVal<'b, 'v>>,
    set: fn(&mut Check, String),
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut a = this(function, &args)?;
    set(&mut a.check, string(function, &args, 1)?);
    step(a, Step::Resource)
}

fn check<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut a = this("check", &args)?;
    a.check.verb = string("check", &args, 1)?;
    let d = (a.answer)(&a.check);
    step(a, Step::Decision(d))
}

fn decision(function: &str, args: &[CowVal<'_, '_>]) -> Result<Decision, ExecutionError> {
    match this(function, args)?.step {
        Step::Decision(d) => Ok(d),
        _ => Err(ExecutionError::function_error(function, "not a decision")),
    }
}

fn allowed<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    answer(cel::Value::Bool(decision("allowed", &args)?.allowed))
}

fn reason<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    answer(cel::Value::String(Arc::new(decision("reason", &args)?.reason)))
}

fn errored<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    answer(cel::Value::Bool(!decision("errored", &args)?.error.is_empty()))
}

fn error<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    answer(cel::Value::String(Arc::new(decision("error", &args)?.error)))
}

/// Declares the library's functions in `env`.
pub fn library(env: &mut Env) -> Result<(), DeclarationError> {
    let t = Type::new_opaque_type;
    let s = || STRING_TYPE;
    env.add_member_overload("group", "authorizer_group", t(AUTHORIZER), vec![s()], group)?;
    env.add_member_overload("path", "authorizer_path", t(AUTHORIZER), vec![s()], path)?;
    env.add_member_overload(
        "serviceAccount",
        "authorizer_serviceaccount",
        t(AUTHORIZER),
        vec![s(), s()],
        service_account,
    )?;
    // The steps that set one field of a check: upstream's name, overload id, receiver.
    let setters: [(&str, &str, &str, cel::common::functions::Function); 6] = [
        ("resource", "groupcheck_resource", GROUP_CHECK, |a| setter("resource", a, |c, v| c.resource = v)),
        ("subresource", "resourcecheck_subresource", RESOURCE_CHECK, |a| {
            setter("subresource", a, |c, v| c.subresource = v)
        }),
        ("namespace", "resourcecheck_namespace", RESOURCE_CHECK, |a| setter("namespace", a, |c, v| c.namespace = v)),
        ("name", "resourcecheck_name", RESOURCE_CHECK, |a| setter("name", a, |c, v| c.name = v)),
        ("fieldSelector", "resourcecheck_fieldselector", RESOURCE_CHECK, |a| {
            setter("fieldSelector", a, |c, v| c.field_selector = v)
        }),
        ("labelSelector", "resourcecheck_labelselector", RESOURCE_CHECK, |a| {
            setter("labelSelector", a, |c, v| c.label_selector = v)
        }),
    ];
    for (name, id, target, f) in setters {
        env.add_member_overload(name, id, t(target), vec![s()], f)?;
    }
    env.add_member_overload("check", "resourcecheck_check", t(RESOURCE_CHECK), vec![s()], check)?;
    env.add_member_overload("check", "pathcheck_check", t(PATH_CHECK), vec![s()], check)?;
    env.add_member_overload("allowed", "decision_allowed", t(DECISION), vec![], allowed)?;
    env.add_member_overload("reason", "decision_reason", t(DECISION), vec![], reason)?;
    env.add_member_overload("errored", "decision_errored", t(DECISION), vec![], errored)?;
    env.add_member_overload("error", "decision_error", t(DECISION), vec![], error)?;
    for name in [AUTHORIZER, PATH_CHECK, GROUP_CHECK, RESOURCE_CHECK, DECISION] {
        env.add_type(t(name))?;
    }
    Ok(())
}
