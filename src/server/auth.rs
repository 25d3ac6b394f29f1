//! Who is asking, and may they: the user a request authenticates as (client
//! certificate or service-account token), the attributes Kubernetes's authorizers
//! judge (verb, group, resource, subresource, namespace, name, or a path), and the
//! authorizers themselves: `system:masters`, the Node authorizer and RBAC, in
//! Kubernetes's order.

pub mod bootstrap;
pub mod node;
pub mod policy;
pub mod rbac;
pub mod token;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::api::status::{ApiError, Target};

/// The group whose members may do anything (Kubernetes's privileged group).
pub const MASTERS: &str = "system:masters";
/// Every authenticated user is in this group.
pub const AUTHENTICATED: &str = "system:authenticated";
/// Nodes (`system:node:<name>`) are in this group.
pub const NODES: &str = "system:nodes";
/// Service accounts are in this group (and `system:serviceaccounts:<namespace>`).
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";

/// An authenticated user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// `system:admin`, `system:node:n1`, `system:serviceaccount:default:builder`.
    pub name: String,
    /// The UID (service accounts have one; certificate users do not).
    pub uid: String,
    /// The groups, `system:authenticated` included.
    pub groups: Vec<String>,
    /// Extra attributes (the pod a service-account token is bound to, ...).
    pub extra: BTreeMap<String, Vec<String>>,
}

impl User {
    /// A user in `groups` (plus `system:authenticated`).
    pub fn new(name: impl Into<String>, groups: &[&str]) -> User {
        let mut groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        if !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_string());
        }
        User { name: name.into(), groups, ..Default::default() }
    }

    /// The service account `ns`/`name`, in `system:serviceaccounts` and
    /// `system:serviceaccounts:<ns>`.
    pub fn service_account_user(ns: &str, name: &str) -> User {
        User::new(
            format!("system:serviceaccount:{ns}:{name}"),
            &[SERVICE_ACCOUNTS, &format!("{SERVICE_ACCOUNTS}:{ns}")],
        )
    }

    /// Whether the user is in `group`.
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }

    /// Whether the user may do anything.
    pub fn is_master(&self) -> bool {
        self.in_group(MASTERS)
    }

    /// The node this user is, for `system:node:<name>` in `system:nodes`.
    pub fn node(&self) -> Option<&str> {
        if !self.in_group(NODES) {
            return None;
        }
        self.name.strip_prefix("system:node:").filter(|n| !n.is_empty())
    }

    /// The namespace and name of the service account this user is.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.name.strip_prefix("system:serviceaccount:")?.split_once(':')
    }

    /// The user as `authentication.k8s.io/v1` `UserInfo`.
    pub fn user_info(&self) -> Value {
        let mut v = json!({"username": self.name, "groups": self.groups});
        if !self.uid.is_empty() {
            v["uid"] = json!(self.uid);
        }
        if !self.extra.is_empty() {
            v["extra"] = json!(self.extra);
        }
        v
    }

    /// A user from `UserInfo`-shaped fields (`user`/`username`, `groups`, `uid`, `extra`),
    /// as SubjectAccessReview and TokenReview carry them; no group is added.
    pub fn from_fields(name: &str, uid: &str, groups: &[String], extra: BTreeMap<String, Vec<String>>) -> User {
        User { name: name.to_string(), uid: uid.to_string(), groups: groups.to_vec(), extra }
    }
}

/// The resource part of a request's attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceAttrs {
    /// The API group, "" for core.
    pub group: String,
    /// The plural resource, `pods`.
    pub resource: String,
    /// The subresource, `log`, or "".
    pub subresource: String,
    /// The namespace, or "" for cluster-scoped requests.
    pub namespace: String,
    /// The object name, or "" for collections.
    pub name: String,
}

/// What a request asks to do, as Kubernetes's authorizers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attrs {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or for paths the lower-case HTTP method (`get`, `post`, ...).
    pub verb: String,
    /// The resource, or None for a non-resource path.
    pub resource: Option<ResourceAttrs>,
    /// The request path.
    pub path: String,
}

impl Attrs {
    /// A resource request.
    pub fn resource(verb: &str, group: &str, resource: &str, sub: &str, ns: &str, name: &str) -> Attrs {
        Attrs {
            verb: verb.to_string(),
            resource: Some(ResourceAttrs {
                group: group.to_string(),
                resource: resource.to_string(),
                subresource: sub.to_string(),
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            path: String::new(),
        }
    }

    /// A request for a path that is not a resource.
    pub fn path(verb: &str, path: &str) -> Attrs {
        Attrs { verb: verb.to_string(), resource: None, path: path.to_string() }
    }

    /// Ok for an allowed request, else the 403 below.
    pub fn outcome(&self, user: &User, d: Decision) -> Result<(), ApiError> {
        match d {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(self.forbidden(user, &why)),
            Decision::NoOpinion => Err(self.forbidden(user, "")),
        }
    }

    /// The 403 Kubernetes answers when `user` may not do this, word for word.
    pub fn forbidden(&self, user: &User, reason: &str) -> ApiError {
        let why = if reason.is_empty() { String::new() } else { format!(": {reason}") };
        let Some(r) = &self.resource else {
            let msg = format!("forbidden: User {:?} cannot {} path {:?}{why}", user.name, self.verb, self.path);
            return ApiError::forbidden(Target { group: "", resource: "", name: "" }, msg);
        };
        let res =
            if r.subresource.is_empty() { r.resource.clone() } else { format!("{}/{}", r.resource, r.subresource) };
        let scope = if r.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace {:?}", r.namespace)
        };
        let t = Target { group: &r.group, resource: &r.resource, name: &r.name };
        let what = if r.name.is_empty() { t.qualified() } else { format!("{} {:?}", t.qualified(), r.name) };
        let msg = format!(
            "{what} is forbidden: User {:?} cannot {} resource {res:?} in API group {:?} {scope}{why}",
            user.name, self.verb, r.group
        );
        ApiError::forbidden(t, msg)
    }
}

/// An authorizer's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Refused, with a reason (may be empty); no later authorizer is asked.
    Deny(String),
    /// This authorizer has no say; the next one decides.
    NoOpinion,
}

/// The verb Kubernetes authorizes a resource request under.
pub fn resource_verb(method: &http::Method, named: bool, watch: bool, sub: &str) -> &'static str {
    use http::Method;
    // Connecting to a pod (exec, attach, port-forward) needs `create`, whether it comes
    // as a POST (SPDY) or a GET (WebSocket), as Kubernetes 1.31+ requires.
    if matches!(sub, "exec" | "attach" | "portforward") {
        return "create";
    }
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

/// The verb of a request for a non-resource path: the method, lower-cased.
pub fn path_verb(method: &http::Method) -> String {
    method.as_str().to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages_read_as_kubernetes_writes_them() {
        let u = User::new("jane", &[]);
        let a = Attrs::resource("list", "", "pods", "", "default", "");
        assert_eq!(
            a.forbidden(&u, "").message,
            r#"pods is forbidden: User "jane" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        let a = Attrs::resource("get", "apps", "deployments", "scale", "", "web");
        assert_eq!(
            a.forbidden(&u, "").message,
            r#"deployments.apps "web" is forbidden: User "jane" cannot get resource "deployments/scale" in API group "apps" at the cluster scope"#
        );
        assert_eq!(
            Attrs::path("get", "/metrics").forbidden(&u, "").message,
            r#"forbidden: User "jane" cannot get path "/metrics""#
        );
    }

    #[test]
    fn users_know_what_they_are() {
        let n = User::new("system:node:n1", &[NODES]);
        assert_eq!(n.node(), Some("n1"));
        assert!(n.in_group(AUTHENTICATED));
        assert_eq!(User::new("system:node:n1", &[]).node(), None, "a node is also in system:nodes");
        let sa = User::new("system:serviceaccount:ns1:builder", &[]);
        assert_eq!(sa.service_account(), Some(("ns1", "builder")));
        assert_eq!(resource_verb(&http::Method::GET, false, true, ""), "watch");
        assert_eq!(resource_verb(&http::Method::GET, true, false, "exec"), "create");
        assert_eq!(resource_verb(&http::Method::DELETE, false, false, ""), "deletecollection");
    }
}
