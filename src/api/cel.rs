//! The CEL environment Kubernetes gives CRD validation rules
//! (`x-kubernetes-validations`) and ValidatingAdmissionPolicies: the standard
//! library with optional values (`a.?b`, `optional.of`), cel-go's strings, lists and
//! math extensions (`lowerAscii`, `split`, `join`, `sort`, `math.greatest`, ...), and
//! of Kubernetes's own libraries the list functions (`sum`, `min`, `max`,
//! `isSorted`, `indexOf`, `lastIndexOf`), regular expressions (`find`, `findAll`),
//! and URLs, IPs, CIDRs and quantities (`url(s).getHost()`, `ip(s).family()`,
//! `cidr(s).containsIP(ip)`, `quantity(s).compareTo(quantity('1Gi'))`, `isURL`, ...),
//! and for admission policies the authorizer ([`authz`]).
//! Those four are carried as their (checked, canonical) strings, so `type()` of one
//! says `string` where Kubernetes names its own type. Compiled once, shared by every
//! evaluation.

use std::sync::{Arc, LazyLock};

use cel::common::types::{CelBool, CelDouble, CelInt, CelList, CelString, DYN_TYPE, LIST_TYPE};
use cel::common::value::{CowVal, Val};
use cel::{Context, DeclarationError, Env, ExecutionError, Program};
use serde_json::Value;

use super::crd::formats;

pub mod authz;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    let added = env
        .add_extension(cel::extensions::strings)
        .and_then(|_| env.add_extension(cel::extensions::lists))
        .and_then(|_| env.add_extension(cel::extensions::math))
        .and_then(|_| env.add_extension(kubernetes))
        .and_then(|_| env.add_extension(authz::library));
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
    run(expr, vars, |ctx| {
        if let Some((name, v)) = optional {
            let inner = match v {
                Some(v) => Some(Box::<dyn Val>::try_from(value(v)).map_err(|e| e.to_string())?),
                None => None,
            };
            ctx.add_variable_as_val(name, Box::new(cel::common::types::CelOptional::from(inner)));
        }
        Ok(())
    })
}

/// [`eval`], plus variables that are CEL values already (the [`authz`] library's).
pub fn eval_with_values(expr: &str, vars: &[(&str, &Value)], values: &[(&str, cel::Value)]) -> Result<Value, String> {
    run(expr, vars, |ctx| {
        for (k, v) in values {
            ctx.add_variable_from_value(*k, v.clone());
        }
        Ok(())
    })
}

fn run(
    expr: &str,
    vars: &[(&str, &Value)],
    bind: impl FnOnce(&mut Context<'static, 'static>) -> Result<(), String>,
) -> Result<Value, String> {
    let program = compile(expr).map_err(|e| format!("compilation failed: {e}"))?;
    let mut ctx = context();
    for (k, v) in vars {
        ctx.add_variable_from_value(*k, value(v));
    }
    bind(&mut ctx)?;
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
    cel::add_overload!(env, fn url: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn get_scheme: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn get_host: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn get_hostname: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn get_port: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn get_escaped_path: (CelString) -> Result<CelString>)?;
    cel::add_overload!(env, fn ip: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn family: (CelString) -> Result<CelInt>)?;
    cel::add_member_overload!(env, fn is_unspecified: (CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn is_loopback: (CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn is_link_local_multicast: (CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn is_link_local_unicast: (CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn is_global_unicast: (CelString) -> Result<CelBool>)?;
    cel::add_overload!(env, fn cidr: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn contains_ip: (CelString, CelString) -> Result<CelBool>, name = "containsIP")?;
    cel::add_member_overload!(env, fn contains_cidr: (CelString, CelString) -> Result<CelBool>, name = "containsCIDR")?;
    cel::add_member_overload!(env, fn cidr_ip: (CelString) -> Result<CelString>, name = "ip")?;
    cel::add_member_overload!(env, fn masked: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn prefix_length: (CelString) -> Result<CelInt>)?;
    cel::add_overload!(env, fn quantity: (CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn compare_to: (CelString, CelString) -> Result<CelInt>)?;
    cel::add_member_overload!(env, fn is_greater_than: (CelString, CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn is_less_than: (CelString, CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn is_integer: (CelString) -> Result<CelBool>)?;
    cel::add_member_overload!(env, fn as_integer: (CelString) -> Result<CelInt>)?;
    cel::add_member_overload!(env, fn as_approximate_float: (CelString) -> Result<CelDouble>)?;
    cel::add_member_overload!(env, fn sign: (CelString) -> Result<CelInt>)?;
    cel::add_member_overload!(env, fn add: (CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn add_int: (CelString, CelInt) -> Result<CelString>, name = "add")?;
    cel::add_member_overload!(env, fn sub: (CelString, CelString) -> Result<CelString>)?;
    cel::add_member_overload!(env, fn sub_int: (CelString, CelInt) -> Result<CelString>, name = "sub")?;
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

/// An absolute URI or an absolute path, as `isURL` (and the schema format `uri`)
/// takes it.
fn is_url(s: &CelString<'_>) -> CelBool {
    formats::check("uri", s.inner()).unwrap_or(false).into()
}

/// An IP address in canonical form (no IPv4-mapped IPv6, no zone), as `isIP` and
/// `ip()` want.
fn canonical_ip(s: &str) -> bool {
    !s.contains('%') && s.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.to_string() == s.to_lowercase())
}

fn is_ip(s: &CelString<'_>) -> CelBool {
    canonical_ip(s.inner()).into()
}

fn is_cidr(s: &CelString<'_>) -> CelBool {
    formats::check("cidr", s.inner()).unwrap_or(false).into()
}

fn is_quantity(s: &CelString<'_>) -> CelBool {
    crate::server::scheduler::parse_quantity(s.inner()).is_some().into()
}

fn fail<T>(function: &str, message: impl std::fmt::Display) -> Result<T, ExecutionError> {
    Err(ExecutionError::function_error(function, message))
}

/// A URL's parts: scheme, host (with port), path. Only absolute URLs and paths.
fn url_parts(function: &str, s: &str) -> Result<(String, String, String), ExecutionError> {
    if formats::check("uri", s) != Some(true) {
        return fail(function, format!("URL parse error during conversion from string: {s:?}"));
    }
    if s.starts_with('/') {
        return Ok((String::new(), String::new(), s.split(['?', '#']).next().unwrap_or("").to_string()));
    }
    let (scheme, rest) = s.split_once(':').unwrap_or(("", s));
    let rest = rest.split('#').next().unwrap_or("");
    let rest = rest.split('?').next().unwrap_or("");
    let (host, path) = match rest.strip_prefix("//") {
        Some(r) => match r.find('/') {
            Some(i) => (&r[..i], &r[i..]),
            None => (r, ""),
        },
        None => ("", rest),
    };
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    Ok((scheme.to_string(), host.to_string(), path.to_string()))
}

/// `url(s)`: `s`, once it is a URL.
fn url(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    url_parts("url", s.inner())?;
    Ok(s.inner().to_string().into())
}

fn get_scheme(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(url_parts("getScheme", s.inner())?.0.into())
}

fn get_host(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(url_parts("getHost", s.inner())?.1.into())
}

/// The host without its port (and IPv6 brackets).
fn split_host(host: &str) -> (&str, &str) {
    if let Some(r) = host.strip_prefix('[') {
        let (h, rest) = r.split_once(']').unwrap_or((r, ""));
        return (h, rest.strip_prefix(':').unwrap_or(""));
    }
    host.rsplit_once(':').unwrap_or((host, ""))
}

fn get_hostname(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    let host = url_parts("getHostname", s.inner())?.1;
    Ok(split_host(&host).0.to_string().into())
}

fn get_port(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    let host = url_parts("getPort", s.inner())?.1;
    Ok(split_host(&host).1.to_string().into())
}

fn get_escaped_path(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(url_parts("getEscapedPath", s.inner())?.2.into())
}

fn parse_ip(function: &str, s: &str) -> Result<std::net::IpAddr, ExecutionError> {
    if !canonical_ip(s) {
        return fail(function, format!("IP Address {s:?} parse error during conversion from string"));
    }
    s.parse().map_err(|e| ExecutionError::function_error(function, e))
}

/// `ip(s)`: `s`, once it is an IP address, in canonical form.
fn ip(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(parse_ip("ip", s.inner())?.to_string().into())
}

fn family(s: &CelString<'_>) -> Result<CelInt, ExecutionError> {
    Ok(CelInt::from(if parse_ip("family", s.inner())?.is_ipv4() { 4 } else { 6 }))
}

fn is_unspecified(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(parse_ip("isUnspecified", s.inner())?.is_unspecified().into())
}

fn is_loopback(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(parse_ip("isLoopback", s.inner())?.is_loopback().into())
}

fn is_link_local_multicast(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(match parse_ip("isLinkLocalMulticast", s.inner())? {
        std::net::IpAddr::V4(a) => a.octets()[..3] == [224, 0, 0],
        std::net::IpAddr::V6(a) => a.segments()[0] & 0xff0f == 0xff02,
    }
    .into())
}

fn is_link_local_unicast(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(match parse_ip("isLinkLocalUnicast", s.inner())? {
        std::net::IpAddr::V4(a) => a.is_link_local(),
        std::net::IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
    .into())
}

/// Go's `IsGlobalUnicast`: not unspecified, loopback, multicast, link-local or the
/// IPv4 broadcast address.
fn is_global_unicast(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let a = parse_ip("isGlobalUnicast", s.inner())?;
    let local = *is_link_local_unicast(s)?.inner();
    let broadcast = matches!(a, std::net::IpAddr::V4(v) if v.is_broadcast());
    Ok((!a.is_unspecified() && !a.is_loopback() && !a.is_multicast() && !local && !broadcast).into())
}

fn parse_cidr(function: &str, s: &str) -> Result<ipnet::IpNet, ExecutionError> {
    s.parse().map_err(|_| {
        ExecutionError::function_error(
            function,
            format!("network address parse error during conversion from string: {s:?}"),
        )
    })
}

/// `cidr(s)`: `s`, once it is a CIDR.
fn cidr(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(parse_cidr("cidr", s.inner())?.to_string().into())
}

fn contains_ip(s: &CelString<'_>, ip: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(parse_cidr("containsIP", s.inner())?.contains(&parse_ip("containsIP", ip.inner())?).into())
}

fn contains_cidr(s: &CelString<'_>, other: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok(parse_cidr("containsCIDR", s.inner())?.contains(&parse_cidr("containsCIDR", other.inner())?).into())
}

fn cidr_ip(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(parse_cidr("ip", s.inner())?.addr().to_string().into())
}

fn masked(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(parse_cidr("masked", s.inner())?.trunc().to_string().into())
}

fn prefix_length(s: &CelString<'_>) -> Result<CelInt, ExecutionError> {
    Ok(CelInt::from(parse_cidr("prefixLength", s.inner())?.prefix_len() as i64))
}

fn parse_quantity(function: &str, s: &str) -> Result<f64, ExecutionError> {
    match crate::server::scheduler::parse_quantity(s) {
        Some(q) => Ok(q),
        None => fail(function, format!("quantities must match the regular expression: {s:?}")),
    }
}

/// A number as a quantity's string (whole numbers without a fraction).
fn quantity_string(q: f64) -> CelString<'static> {
    if q.fract() == 0.0 && q.abs() < 9e15 { format!("{}", q as i64).into() } else { format!("{q}").into() }
}

/// `quantity(s)`: `s`, once it is a quantity.
fn quantity(s: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    parse_quantity("quantity", s.inner())?;
    Ok(s.inner().to_string().into())
}

fn compare_to(a: &CelString<'_>, b: &CelString<'_>) -> Result<CelInt, ExecutionError> {
    let (a, b) = (parse_quantity("compareTo", a.inner())?, parse_quantity("compareTo", b.inner())?);
    Ok(CelInt::from(match a.partial_cmp(&b) {
        Some(std::cmp::Ordering::Less) => -1,
        Some(std::cmp::Ordering::Greater) => 1,
        _ => 0,
    }))
}

fn is_greater_than(a: &CelString<'_>, b: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok((*compare_to(a, b)?.inner() > 0).into())
}

fn is_less_than(a: &CelString<'_>, b: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    Ok((*compare_to(a, b)?.inner() < 0).into())
}

fn is_integer(s: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let q = parse_quantity("isInteger", s.inner())?;
    Ok((q.fract() == 0.0 && q.abs() < 9.2e18).into())
}

fn as_integer(s: &CelString<'_>) -> Result<CelInt, ExecutionError> {
    if !*is_integer(s)?.inner() {
        return fail("asInteger", "cannot convert value to integer");
    }
    Ok(CelInt::from(parse_quantity("asInteger", s.inner())? as i64))
}

fn as_approximate_float(s: &CelString<'_>) -> Result<CelDouble, ExecutionError> {
    Ok(CelDouble::from(parse_quantity("asApproximateFloat", s.inner())?))
}

fn sign(s: &CelString<'_>) -> Result<CelInt, ExecutionError> {
    let q = parse_quantity("sign", s.inner())?;
    Ok(CelInt::from(if q > 0.0 {
        1
    } else if q < 0.0 {
        -1
    } else {
        0
    }))
}

fn add(a: &CelString<'_>, b: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(quantity_string(parse_quantity("add", a.inner())? + parse_quantity("add", b.inner())?))
}

fn add_int(a: &CelString<'_>, b: &CelInt) -> Result<CelString<'static>, ExecutionError> {
    Ok(quantity_string(parse_quantity("add", a.inner())? + *b.inner() as f64))
}

fn sub(a: &CelString<'_>, b: &CelString<'_>) -> Result<CelString<'static>, ExecutionError> {
    Ok(quantity_string(parse_quantity("sub", a.inner())? - parse_quantity("sub", b.inner())?))
}

fn sub_int(a: &CelString<'_>, b: &CelInt) -> Result<CelString<'static>, ExecutionError> {
    Ok(quantity_string(parse_quantity("sub", a.inner())? - *b.inner() as f64))
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
            "url(self.url).getScheme() == 'https' && url(self.url).getHost() == 'x.example.com'",
            "url('https://[::1]:8443/a/b?q=1').getHostname() == '::1' && url('https://[::1]:8443/a/b').getPort() == '8443'",
            "url('http://h/a/b?q=1#f').getEscapedPath() == '/a/b'",
            "ip(self.ip).family() == 4 && ip('fd00::1').family() == 6 && ip('127.0.0.1').isLoopback()",
            "ip('0.0.0.0').isUnspecified() && ip('169.254.1.1').isLinkLocalUnicast() && ip('10.0.0.1').isGlobalUnicast()",
            "cidr(self.cidr).containsIP(ip(self.ip)) && !cidr(self.cidr).containsIP('11.0.0.1')",
            "cidr(self.cidr).containsCIDR('10.1.0.0/16') && cidr('10.1.2.3/8').masked() == '10.0.0.0/8'",
            "cidr(self.cidr).prefixLength() == 8 && cidr('10.1.2.3/8').ip() == '10.1.2.3'",
            "quantity(self.q).isLessThan(quantity('1')) && quantity('1Gi').compareTo(quantity('1024Mi')) == 0",
            "quantity('1Gi').asInteger() == 1073741824 && !quantity(self.q).isInteger() && quantity('2').add(3) == '5'",
            "quantity(self.q).sign() == 1 && quantity('1').sub(quantity('500m')).asApproximateFloat() == 0.5",
        ] {
            assert_eq!(super::eval(e, &[("self", &v)]), Ok(json!(true)), "{e}");
        }
        assert!(super::eval("[].min()", &[]).unwrap_err().contains("min called on empty list"));
        assert!(super::eval("url('not a url')", &[]).is_err());
        assert!(super::eval("quantity('lots')", &[]).is_err());
        assert!(
            super::eval("quantity('1.5').asInteger()", &[]).unwrap_err().contains("cannot convert value to integer")
        );
    }
}
