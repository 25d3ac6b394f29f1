//! The CEL environment Kubernetes gives CRD validation rules
//! (`x-kubernetes-validations`) and ValidatingAdmissionPolicies: the standard
//! library with optional values (`a.?b`, `optional.of`), cel-go's strings, lists and
//! math extensions (`lowerAscii`, `split`, `join`, `sort`, `math.greatest`, ...), and
//! of Kubernetes's own libraries the list functions (`sum`, `min`, `max`,
//! `isSorted`, `indexOf`, `lastIndexOf`), regular expressions (`find`, `findAll`)
//! and the checks `isURL`, `isIP`, `isCIDR` and `isQuantity`. Compiled once, shared
//! by every evaluation.

use std::sync::{Arc, LazyLock};

use cel::common::types::{CelBool, CelInt, CelList, CelString, DYN_TYPE, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{Context, DeclarationError, Env, ExecutionError, Program};
use serde_json::Value;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    let added = env
        .add_extension(cel::extensions::strings)
        .and_then(|_| env.add_extension(cel::extensions::lists))
        .and_then(|_| env.add_extension(cel::extensions::math))
        .and_then(|_| env.add_extension(kubernetes));
    if let Err(e) = added {
        tracing::error!(error = ?e, "a CEL library could not be added");
    }
    Arc::new(env)
});

/// Compiles a CEL expression in the Kubernetes environment.
pub fn compile(expr: &str) -> Result<Program, String> {
    ENV.compile(expr).map_err(|e| e.to_string())
}

/// A context of the Kubernetes environment, to bind variables in.
pub fn context() -> Context<'static, 'static> {
    Context::with_env(ENV.clone())
}

/// Compiles and runs `expr` with `vars` bound; the result as JSON, or the error text.
pub fn eval(expr: &str, vars: &[(&str, &Value)]) -> Result<Value, String> {
    eval_with_optional(expr, vars, None)
}

/// [`eval`], plus one variable of optional type (`optional.of(v)` or
/// `optional.none()`), as `oldSelf` is to a rule with `optionalOldSelf`.
pub fn eval_with_optional(
    expr: &str,
    vars: &[(&str, &Value)],
    optional: Option<(&str, Option<&Value>)>,
) -> Result<Value, String> {
    let program = compile(expr).map_err(|e| format!("compilation failed: {e}"))?;
    let mut ctx = context();
    for (k, v) in vars {
        ctx.add_variable_from_value(*k, value(v));
    }
    if let Some((name, v)) = optional {
        let inner = match v {
            Some(v) => Some(Box::<dyn Val>::try_from(value(v)).map_err(|e| e.to_string())?),
            None => None,
        };
        ctx.add_variable_as_val(name, Box::new(cel::common::types::CelOptional::from(inner)));
    }
    program.execute(&ctx).map_err(|e| e.to_string())?.json().map_err(|e| e.to_string())
}

/// A JSON value as CEL sees it in Kubernetes: whole numbers are `int` (not `uint`, as
/// a plain serde conversion would make non-negative ones, so that `x * 2` works).
pub fn value(v: &Value) -> cel::Value {
    match v {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(a) => cel::Value::List(Arc::new(a.iter().map(value).collect())),
        Value::Object(m) => {
            let map: std::collections::HashMap<cel::objects::Key, cel::Value> =
                m.iter().map(|(k, v)| (cel::objects::Key::from(k.clone()), value(v))).collect();
            cel::Value::Map(cel::objects::Map { map: Arc::new(map) })
        }
    }
}

fn kubernetes(env: &mut Env) -> Result<(), DeclarationError> {
    cel::add_member_overload!(env, fn find: (CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn find_all: (CelString, CelString) -> Result<CelList>)?;
    cel::add_member_overload!(env, fn find_all_n: (CelString, CelString, CelInt) -> Result<CelList>, name = "findAll")?;
    cel::add_overload!(env, fn is_url: (CelString) -> CelBool, name = "isURL")?;
    cel::add_overload!(env, fn is_ip: (CelString) -> CelBool, name = "isIP")?;
    cel::add_overload!(env, fn is_cidr: (CelString) -> CelBool, name = "isCIDR")?;
    cel::add_overload!(env, fn is_quantity: (CelString) -> CelBool, name = "isQuantity")?;
    env.add_member_overload("sum", "list.sum()", LIST_TYPE, vec![], sum)?;
    env.add_member_overload("min", "list.min()", LIST_TYPE, vec![], min)?;
    env.add_member_overload("max", "list.max()", LIST_TYPE, vec![], max)?;
    env.add_member_overload("isSorted", "list.isSorted()", LIST_TYPE, vec![], is_sorted)?;
    env.add_member_overload("indexOf", "list.indexOf(dyn)", LIST_TYPE, vec![DYN_TYPE], index_of)?;
    env.add_member_overload("lastIndexOf", "list.lastIndexOf(dyn)", LIST_TYPE, vec![DYN_TYPE], last_index_of)?;
    Ok(())
}

fn regex(function: &str, re: &str) -> Result<regex::Regex, ExecutionError> {
    regex::Regex::new(re).map_err(|e| ExecutionError::function_error(function, e))
}

/// `s.find(re)`: the first match, or "".
fn find(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    let found = regex("find", re.inner())?.find(this.inner()).map(|m| m.as_str().to_string());
    Ok(found.unwrap_or_default().into())
}

fn matches_list(this: &str, re: &str, limit: i64) -> Result<CelList<'static>, ExecutionError> {
    let re = regex("findAll", re)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    Ok(re
        .find_iter(this)
        .take(limit)
        .map(|m| Box::new(CelString::from(m.as_str().to_string())) as Box<dyn Val>)
        .collect::<Vec<_>>()
        .into())
}

/// `s.findAll(re)`: every match.
fn find_all(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelList<'static>, ExecutionError> {
    matches_list(this.inner(), re.inner(), -1)
}

/// `s.findAll(re, n)`: at most n matches (all when n is negative).
fn find_all_n(this: &CelString<'_>, re: &CelString<'_>, n: &CelInt) -> Result<CelList<'static>, ExecutionError> {
    matches_list(this.inner(), re.inner(), *n.inner())
}

/// Go's `url.Parse` of an absolute URI or an absolute path, as `isURL` takes it.
fn is_url(s: &CelString<'_>) -> CelBool {
    let s = s.inner();
    let ok = !s.is_empty()
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
        && (s.starts_with('/')
            || s.split_once(':').is_some_and(|(scheme, _)| {
                let mut cs = scheme.chars();
                cs.next().is_some_and(|c| c.is_ascii_alphabetic())
                    && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            }));
    ok.into()
}

/// An IP address in canonical form (no IPv4-mapped IPv6, no zone), as `isIP` wants.
fn is_ip(s: &CelString<'_>) -> CelBool {
    let s = s.inner();
    (!s.contains('%') && s.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_string() == s.to_lowercase())).into()
}

fn is_cidr(s: &CelString<'_>) -> CelBool {
    s.inner().parse::<ipnet::IpNet>().is_ok().into()
}

fn is_quantity(s: &CelString<'_>) -> CelBool {
    crate::server::scheduler::parse_quantity(s.inner()).is_some().into()
}

/// The receiver of a list member function, as values.
fn list_arg(function: &str, args: &[CowVal<'_, '_>]) -> Result<Vec<cel::Value>, ExecutionError> {
    let this = args.first().ok_or_else(|| ExecutionError::function_error(function, "no list"))?;
    match cel::Value::try_from(this.as_ref())? {
        cel::Value::List(l) => Ok(Arc::unwrap_or_clone(l)),
        other => Err(ExecutionError::function_error(function, format!("not a list: {other:?}"))),
    }
}

fn answer<'b, 'v>(v: cel::Value) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let boxed: Box<dyn Val> = Box::<dyn Val>::try_from(v)?;
    Ok(CowVal::Owned(boxed))
}

/// `list.sum()`: the sum of ints, uints, doubles or durations (0 for none).
fn sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut items = list_arg("sum", &args)?.into_iter();
    let Some(mut total) = items.next() else { return answer(cel::Value::Int(0)) };
    for x in items {
        total = (total + x)?;
    }
    answer(total)
}

fn extreme<'b, 'v>(
    function: &str,
    args: Vec<CowVal<'b, 'v>>,
    keep: std::cmp::Ordering,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let mut best: Option<cel::Value> = None;
    for x in list_arg(function, &args)? {
        best = match best {
            None => Some(x),
            Some(b) => match x.partial_cmp(&b) {
                Some(o) if o == keep => Some(x),
                Some(_) => Some(b),
                None => return Err(ExecutionError::function_error(function, "list elements must be comparable")),
            },
        };
    }
    match best {
        Some(b) => answer(b),
        None => Err(ExecutionError::function_error(function, format!("{function} called on empty list"))),
    }
}

fn min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("min", args, std::cmp::Ordering::Less)
}

fn max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    extreme("max", args, std::cmp::Ordering::Greater)
}

/// `list.isSorted()`: each element no greater than the next.
fn is_sorted<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let items = list_arg("isSorted", &args)?;
    let mut sorted = true;
    for w in items.windows(2) {
        match w[0].partial_cmp(&w[1]) {
            Some(std::cmp::Ordering::Greater) => sorted = false,
            Some(_) => {}
            None => return Err(ExecutionError::function_error("isSorted", "list elements must be comparable")),
        }
    }
    answer(cel::Value::Bool(sorted))
}

fn position<'b, 'v>(function: &str, args: Vec<CowVal<'b, 'v>>, last: bool) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let items = list_arg(function, &args)?;
    let want = args.get(1).ok_or_else(|| ExecutionError::function_error(function, "no element"))?;
    let want = cel::Value::try_from(want.as_ref())?;
    let found = if last { items.iter().rposition(|x| *x == want) } else { items.iter().position(|x| *x == want) };
    answer(cel::Value::Int(found.map_or(-1, |i| i as i64)))
}

fn index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position("indexOf", args, false)
}

fn last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position("lastIndexOf", args, true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn the_libraries_kubernetes_rules_use() {
        let v = json!({"name": "Abc-def", "list": [3, 1, 2], "url": "https://x.example.com/p",
                       "ip": "10.0.0.1", "cidr": "10.0.0.0/8", "q": "500m", "opt": 1});
        for e in [
            "self.name.lowerAscii() == 'abc-def'",
            "self.name.split('-') == ['Abc', 'def']",
            "self.name.replace('-', '_') == 'Abc_def'",
            "self.name.substring(1, 3) == 'bc'",
            "['a', 'b'].join(',') == 'a,b'",
            "self.list.sum() == 6 && self.list.min() == 1 && self.list.max() == 3",
            "!self.list.isSorted() && [1, 2, 2].isSorted()",
            "self.list.indexOf(1) == 1 && [1, 2, 1].lastIndexOf(1) == 2 && self.list.indexOf(9) == -1",
            "self.name.indexOf('c') == 2",
            "self.name.find('[a-z]+') == 'bc' && self.name.findAll('[a-z]+') == ['bc', 'def']",
            "isURL(self.url) && !isURL('not a url')",
            "isIP(self.ip) && !isIP('10.0.0.256') && isCIDR(self.cidr) && !isCIDR(self.ip)",
            "isQuantity(self.q) && !isQuantity('lots')",
            "self.?opt.orValue(0) == 1 && self.?missing.orValue(7) == 7",
            "self.list.sort() == [1, 2, 3] && math.greatest(1, 5) == 5",
            "[].sum() == 0",
        ] {
            assert_eq!(super::eval(e, &[("self", &v)]), Ok(json!(true)), "{e}");
        }
        assert!(super::eval("[].min()", &[]).unwrap_err().contains("min called on empty list"));
    }
}
