//! `metav1.Status` errors: every API failure becomes one of these, in one place.

use serde_json::{Value, json};

/// An API error, rendered as a `metav1.Status` with its HTTP code.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason} ({code}): {message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// The Kubernetes `reason` (NotFound, Conflict, Invalid, ...).
    pub reason: &'static str,
    /// The human message kubectl prints.
    pub message: String,
    /// `details`, when Kubernetes gives them.
    pub details: Option<Value>,
    /// Seconds to suggest in `Retry-After`.
    pub retry_after: Option<u64>,
}

/// What an error is about: the resource (plural), its group and the object's name.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The group ("" for core).
    pub group: &'a str,
    /// The plural resource name, as Kubernetes puts it in `details.kind` for most errors.
    pub resource: &'a str,
    /// The object name.
    pub name: &'a str,
}

impl Target<'_> {
    /// `configmaps` or `deployments.apps`, as in Kubernetes messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() { self.resource.to_string() } else { format!("{}.{}", self.resource, self.group) }
    }

    fn details(&self) -> Value {
        json!({"name": self.name, "group": self.group, "kind": self.resource})
    }
}

/// One field problem of an Invalid (422) error.
#[derive(Clone, Debug)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, ...
    pub reason: &'static str,
    /// The field path, `metadata.name`.
    pub field: String,
    /// What is wrong, as Kubernetes words it (`Invalid value: "x": ...`).
    pub message: String,
}

impl Cause {
    /// An invalid value.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl std::fmt::Display) -> Cause {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            v => v.to_string(),
        };
        Cause { reason: "FieldValueInvalid", field: field.into(), message: format!("Invalid value: {shown}: {detail}") }
    }

    /// A missing required value.
    pub fn required(field: impl Into<String>, detail: &str) -> Cause {
        let message =
            if detail.is_empty() { "Required value".to_string() } else { format!("Required value: {detail}") };
        Cause { reason: "FieldValueRequired", field: field.into(), message }
    }

    /// A forbidden value or change.
    pub fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        Cause { reason: "FieldValueForbidden", field: field.into(), message: format!("Forbidden: {detail}") }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { code, reason, message: message.into(), details: None, retry_after: None }
    }

    /// An error with the reason Kubernetes gives `code` (403 Forbidden, 422 Invalid,
    /// 401 Unauthorized, 413 RequestEntityTooLarge, else 400 BadRequest).
    pub fn with_code(code: u16, message: impl Into<String>) -> ApiError {
        let reason = match code {
            401 => "Unauthorized",
            403 => "Forbidden",
            413 => "RequestEntityTooLarge",
            422 => "Invalid",
            _ => "BadRequest",
        };
        ApiError::new(if reason == "BadRequest" { 400 } else { code }, reason, message)
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> ApiError {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(t: Target<'_>, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(403, "Forbidden", message);
        e.details = Some(t.details());
        e
    }

    /// 404 NotFound for an object.
    pub fn not_found(t: Target<'_>) -> ApiError {
        let mut e = ApiError::new(404, "NotFound", format!("{} {:?} not found", t.qualified(), t.name));
        e.details = Some(t.details());
        e
    }

    /// 404 NotFound for a path that names nothing.
    pub fn no_route() -> ApiError {
        ApiError::new(404, "NotFound", "the server could not find the requested resource")
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(method: &str, what: &str) -> ApiError {
        ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported on {what}"))
    }

    /// 409 AlreadyExists.
    pub fn already_exists(t: Target<'_>) -> ApiError {
        let mut e = ApiError::new(409, "AlreadyExists", format!("{} {:?} already exists", t.qualified(), t.name));
        e.details = Some(t.details());
        e
    }

    /// 409 Conflict: a stale resourceVersion.
    pub fn conflict(t: Target<'_>, why: &str) -> ApiError {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {} {:?}: {why}", t.qualified(), t.name),
        );
        e.details = Some(t.details());
        e
    }

    /// The usual Conflict for an object modified since it was read.
    pub fn stale(t: Target<'_>) -> ApiError {
        ApiError::conflict(
            t,
            "the object has been modified; please apply your changes to the latest version and try again",
        )
    }

    /// 410 Expired: a compacted resourceVersion.
    pub fn expired(message: impl Into<String>) -> ApiError {
        ApiError::new(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn object_too_large(size: usize, limit: usize) -> ApiError {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("request entity too large: the object is {size} bytes, the store's limit is {limit} bytes"),
        )
    }

    /// 413 for a request body over the limit.
    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(413, "RequestEntityTooLarge", format!("request entity too large: limit is {limit} bytes"))
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(ct: &str, accepted: &[&str]) -> ApiError {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {}",
                accepted.join(", ")
            ) + &if ct.is_empty() { String::new() } else { format!(" (got {ct:?})") },
        )
    }

    /// 422 Invalid, with field causes. `kind` is the object's Kind.
    pub fn invalid(group: &str, kind: &str, name: &str, causes: Vec<Cause>) -> ApiError {
        let list: Vec<String> = causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect();
        let body = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let mut e = ApiError::new(422, "Invalid", format!("{kind} {name:?} is invalid: {body}"));
        e.details = Some(json!({
            "name": name, "group": group, "kind": kind,
            "causes": causes.iter().map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field})).collect::<Vec<_>>(),
        }));
        e
    }

    /// 500 InternalError.
    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        ApiError::new(500, "InternalError", format!("Internal error occurred: {message}"))
    }

    /// 429 TooManyRequests (an eviction a disruption budget refuses).
    pub fn too_many_requests(message: impl Into<String>) -> ApiError {
        ApiError::new(429, "TooManyRequests", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(503, "ServiceUnavailable", message)
    }

    /// 408 Timeout: the client did not send its request in time.
    pub fn request_timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(408, "Timeout", message)
    }

    /// 504 Timeout, with a retry hint.
    pub fn timeout(message: impl Into<String>, retry_after: u64) -> ApiError {
        let mut e = ApiError::new(504, "Timeout", message);
        e.details = Some(json!({"retryAfterSeconds": retry_after}));
        e.retry_after = Some(retry_after);
        e
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

/// A `Status` of success, as some deletes answer.
pub fn success_status(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}
