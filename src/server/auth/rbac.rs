//! RBAC: Roles, ClusterRoles and their bindings, read from caches kept by
//! reflectors (the API server's own privileged in-process client), judged as
//! Kubernetes's RBAC authorizer does: a request is allowed when a rule of a role
//! bound to the user (cluster-wide, or in the request's namespace) matches it.
//! Also what the escalation check needs: whether one set of rules covers another.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;

use super::{Attrs, User};

/// The RBAC objects, as of the reflectors' last event.
#[derive(Clone)]
pub struct Rbac {
    roles: Store<Role>,
    cluster_roles: Store<ClusterRole>,
    bindings: Store<RoleBinding>,
    cluster_bindings: Store<ClusterRoleBinding>,
}

fn reflect<K>(client: &Client, shutdown: &CancellationToken) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default())).default_backoff();
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = s.next() => match ev {
                    None => return,
                    Some(Err(e)) => tracing::debug!(error = %e, "RBAC watch error"),
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    reader
}

impl Rbac {
    /// Starts the reflectors over `client` (which must not itself need RBAC).
    pub fn start(client: &Client, shutdown: &CancellationToken) -> Rbac {
        Rbac {
            roles: reflect(client, shutdown),
            cluster_roles: reflect(client, shutdown),
            bindings: reflect(client, shutdown),
            cluster_bindings: reflect(client, shutdown),
        }
    }

    /// Waits until every cache has its first list.
    pub async fn ready(&self) {
        let _ = self.roles.wait_until_ready().await;
        let _ = self.cluster_roles.wait_until_ready().await;
        let _ = self.bindings.wait_until_ready().await;
        let _ = self.cluster_bindings.wait_until_ready().await;
    }

    fn role_rules(&self, r: &RoleRef, ns: &str) -> Option<Vec<PolicyRule>> {
        match r.kind.as_str() {
            "ClusterRole" => {
                self.cluster_roles.get(&ObjectRef::new(&r.name)).map(|c| c.rules.clone().unwrap_or_default())
            }
            "Role" if !ns.is_empty() => {
                self.roles.get(&ObjectRef::new(&r.name).within(ns)).map(|c| c.rules.clone().unwrap_or_default())
            }
            _ => None,
        }
    }

    /// Whether the role a binding in `ns` refers to has a rule allowing `a`, read in
    /// place (no copies: this is on every request's path).
    fn role_allows(&self, r: &RoleRef, ns: &str, a: &Attrs) -> bool {
        let any = |rules: &Option<Vec<PolicyRule>>| rules.iter().flatten().any(|rule| rule_allows(rule, a));
        match r.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&ObjectRef::new(&r.name)).is_some_and(|c| any(&c.rules)),
            "Role" if !ns.is_empty() => {
                self.roles.get(&ObjectRef::new(&r.name).within(ns)).is_some_and(|c| any(&c.rules))
            }
            _ => false,
        }
    }

    /// Whether RBAC allows `attrs` for `user`: some binding of the user's, cluster-wide
    /// or in the request's namespace, refers to a role with a rule that matches.
    pub fn allows(&self, user: &User, attrs: &Attrs) -> bool {
        let ns = attrs.resource.as_ref().map(|r| r.namespace.as_str()).unwrap_or("");
        let cluster = self
            .cluster_bindings
            .find(|b| applies(b.subjects.as_deref(), "", user) && self.role_allows(&b.role_ref, "", attrs));
        if cluster.is_some() {
            return true;
        }
        !ns.is_empty()
            && self
                .bindings
                .find(|b| {
                    b.metadata.namespace.as_deref() == Some(ns)
                        && applies(b.subjects.as_deref(), ns, user)
                        && self.role_allows(&b.role_ref, ns, attrs)
                })
                .is_some()
    }

    /// Every rule that applies to `user` in `ns`, as SelfSubjectRulesReview lists them.
    pub fn rules_for(&self, user: &User, ns: &str) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        for b in self.cluster_bindings.state() {
            if applies(b.subjects.as_deref(), "", user) {
                out.extend(self.role_rules(&b.role_ref, "").unwrap_or_default());
            }
        }
        for b in self.bindings.state() {
            if !ns.is_empty() && b.metadata.namespace.as_deref() == Some(ns) && applies(b.subjects.as_deref(), ns, user)
            {
                out.extend(self.role_rules(&b.role_ref, ns).unwrap_or_default());
            }
        }
        out
    }

    /// The ClusterRoles, for aggregation.
    pub fn cluster_roles(&self) -> Vec<Arc<ClusterRole>> {
        self.cluster_roles.state()
    }

    /// The rules of the role a binding in `ns` ("" for a ClusterRoleBinding) refers to,
    /// or None when it does not exist.
    pub fn rules_of(&self, r: &RoleRef, ns: &str) -> Option<Vec<PolicyRule>> {
        self.role_rules(r, ns)
    }
}

/// Whether one of `subjects` (of a binding in `ns`, "" for cluster bindings) is `user`.
pub fn applies(subjects: Option<&[Subject]>, ns: &str, user: &User) -> bool {
    subjects.unwrap_or_default().iter().any(|s| match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.in_group(&s.name),
        "ServiceAccount" => {
            let sns = s.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(ns);
            !sns.is_empty() && user.name == format!("system:serviceaccount:{sns}:{}", s.name)
        }
        _ => false,
    })
}

fn has(list: Option<&Vec<String>>, want: &str) -> bool {
    list.is_some_and(|l| l.iter().any(|x| x == "*" || x == want))
}

fn resource_matches(list: Option<&Vec<String>>, resource: &str, sub: &str) -> bool {
    let Some(l) = list else { return false };
    l.iter().any(|x| {
        if x == "*" {
            return true;
        }
        if sub.is_empty() {
            return x == resource;
        }
        match x.split_once('/') {
            Some((r, s)) => (r == resource || r == "*") && (s == sub || s == "*"),
            None => false,
        }
    })
}

fn path_matches(list: Option<&Vec<String>>, path: &str) -> bool {
    list.is_some_and(|l| {
        l.iter().any(|p| p == "*" || p == path || (p.ends_with('*') && path.starts_with(&p[..p.len() - 1])))
    })
}

/// Whether `rule` allows `a`, by Kubernetes's matching rules (`*`, `resource/*`,
/// `*/subresource`, resourceNames only for named requests, trailing `*` in paths).
pub fn rule_allows(rule: &PolicyRule, a: &Attrs) -> bool {
    if !has(Some(&rule.verbs), &a.verb) {
        return false;
    }
    match &a.resource {
        Some(r) => {
            has(rule.api_groups.as_ref(), &r.group)
                && resource_matches(rule.resources.as_ref(), &r.resource, &r.subresource)
                && match rule.resource_names.as_deref() {
                    None | Some([]) => true,
                    Some(names) => !r.name.is_empty() && names.contains(&r.name),
                }
        }
        None => path_matches(rule.non_resource_urls.as_ref(), &a.path),
    }
}

/// The rules of `wanted` that `held` does not cover (empty when it covers them all):
/// each wanted rule is split into its single verb/group/resource/name (or path)
/// combinations and each must be allowed by a held rule, as Kubernetes's escalation
/// check does.
pub fn uncovered(held: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<PolicyRule> {
    let mut missing = Vec::new();
    for w in wanted {
        let one =
            |v: &str, f: &dyn Fn(&PolicyRule) -> bool| -> bool { held.iter().any(|h| has(Some(&h.verbs), v) && f(h)) };
        let names: Vec<Option<&String>> = match w.resource_names.as_deref() {
            None | Some([]) => vec![None],
            Some(n) => n.iter().map(Some).collect(),
        };
        for v in &w.verbs {
            for g in w.api_groups.iter().flatten() {
                for r in w.resources.iter().flatten() {
                    for n in &names {
                        let covered = one(v, &|h: &PolicyRule| {
                            let (res, sub) = r.split_once('/').unwrap_or((r, ""));
                            has(h.api_groups.as_ref(), g)
                                && (h.resources.as_ref().is_some_and(|l| l.iter().any(|x| x == "*" || x == r))
                                    || (!sub.is_empty() && resource_matches(h.resources.as_ref(), res, sub)))
                                && match (h.resource_names.as_deref(), n) {
                                    (None | Some([]), _) => true,
                                    (Some(hn), Some(n)) => hn.contains(n),
                                    (Some(_), None) => false,
                                }
                        });
                        if !covered {
                            missing.push(PolicyRule {
                                verbs: vec![v.clone()],
                                api_groups: Some(vec![g.clone()]),
                                resources: Some(vec![r.clone()]),
                                resource_names: n.map(|n| vec![n.clone()]),
                                ..Default::default()
                            });
                        }
                    }
                }
            }
            for p in w.non_resource_urls.iter().flatten() {
                let covered = one(v, &|h: &PolicyRule| {
                    h.non_resource_urls.as_ref().is_some_and(|l| {
                        l.iter().any(|x| x == "*" || x == p || (x.ends_with('*') && p.starts_with(&x[..x.len() - 1])))
                    })
                });
                if !covered {
                    missing.push(PolicyRule {
                        verbs: vec![v.clone()],
                        non_resource_urls: Some(vec![p.clone()]),
                        ..Default::default()
                    });
                }
            }
        }
    }
    missing
}

/// A rule as Kubernetes prints it in escalation errors:
/// `{APIGroups:["apps"], Resources:["deployments"], Verbs:["get"]}`.
pub fn rule_string(r: &PolicyRule) -> String {
    let q = |l: &Vec<String>| l.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(" ");
    let mut parts = Vec::new();
    if let Some(g) = r.api_groups.as_ref().filter(|g| !g.is_empty()) {
        parts.push(format!("APIGroups:[{}]", q(g)));
    }
    if let Some(x) = r.resources.as_ref().filter(|g| !g.is_empty()) {
        parts.push(format!("Resources:[{}]", q(x)));
    }
    if let Some(x) = r.resource_names.as_ref().filter(|g| !g.is_empty()) {
        parts.push(format!("ResourceNames:[{}]", q(x)));
    }
    if let Some(x) = r.non_resource_urls.as_ref().filter(|g| !g.is_empty()) {
        parts.push(format!("NonResourceURLs:[{}]", q(x)));
    }
    parts.push(format!("Verbs:[{}]", q(&r.verbs)));
    format!("{{{}}}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verbs: &[&str], groups: &[&str], res: &[&str]) -> PolicyRule {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PolicyRule { verbs: v(verbs), api_groups: Some(v(groups)), resources: Some(v(res)), ..Default::default() }
    }

    #[test]
    fn rules_match_as_kubernetes_matches_them() {
        let r = rule(&["get", "list"], &[""], &["pods", "pods/log"]);
        assert!(rule_allows(&r, &Attrs::resource("get", "", "pods", "", "d", "x")));
        assert!(rule_allows(&r, &Attrs::resource("get", "", "pods", "log", "d", "x")));
        assert!(!rule_allows(&r, &Attrs::resource("get", "", "pods", "exec", "d", "x")));
        assert!(!rule_allows(&r, &Attrs::resource("delete", "", "pods", "", "d", "x")));
        assert!(!rule_allows(&r, &Attrs::resource("get", "apps", "pods", "", "d", "x")));
        let star = rule(&["*"], &["*"], &["*"]);
        assert!(rule_allows(&star, &Attrs::resource("escalate", "x.io", "things", "status", "", "")));
        let subs = rule(&["get"], &["apps"], &["*/scale"]);
        assert!(rule_allows(&subs, &Attrs::resource("get", "apps", "deployments", "scale", "d", "w")));
        assert!(!rule_allows(&subs, &Attrs::resource("get", "apps", "deployments", "", "d", "w")));
        let mut named = rule(&["get"], &[""], &["configmaps"]);
        named.resource_names = Some(vec!["a".into()]);
        assert!(rule_allows(&named, &Attrs::resource("get", "", "configmaps", "", "d", "a")));
        assert!(!rule_allows(&named, &Attrs::resource("get", "", "configmaps", "", "d", "b")));
        assert!(!rule_allows(&named, &Attrs::resource("list", "", "configmaps", "", "d", "")));
        let paths = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/apis/*".into()]),
            ..Default::default()
        };
        assert!(rule_allows(&paths, &Attrs::path("get", "/healthz")));
        assert!(rule_allows(&paths, &Attrs::path("get", "/apis/apps/v1")));
        assert!(!rule_allows(&paths, &Attrs::path("get", "/metrics")));
        assert!(!rule_allows(&paths, &Attrs::resource("get", "", "healthz", "", "", "")));
    }

    #[test]
    fn subjects_match_users_groups_and_service_accounts() {
        let s = |kind: &str, name: &str, ns: Option<&str>| Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(String::from),
            ..Default::default()
        };
        let jane = User::new("jane", &["devs"]);
        assert!(applies(Some(&[s("User", "jane", None)]), "", &jane));
        assert!(applies(Some(&[s("Group", "devs", None)]), "", &jane));
        assert!(applies(Some(&[s("Group", "system:authenticated", None)]), "", &jane));
        assert!(!applies(Some(&[s("User", "bob", None)]), "", &jane));
        let sa = User::new("system:serviceaccount:ci:builder", &[]);
        assert!(applies(Some(&[s("ServiceAccount", "builder", Some("ci"))]), "", &sa));
        assert!(applies(Some(&[s("ServiceAccount", "builder", None)]), "ci", &sa), "the binding's namespace");
        assert!(!applies(Some(&[s("ServiceAccount", "builder", None)]), "other", &sa));
    }

    #[test]
    fn coverage_splits_rules_into_single_permissions() {
        let held =
            vec![rule(&["get", "list"], &["", "apps"], &["pods", "deployments"]), rule(&["*"], &[""], &["configmaps"])];
        assert!(uncovered(&held, &[rule(&["get"], &["apps"], &["deployments"])]).is_empty());
        assert!(uncovered(&held, &[rule(&["delete", "get"], &[""], &["configmaps"])]).is_empty());
        let miss = uncovered(&held, &[rule(&["get", "delete"], &[""], &["pods"])]);
        assert_eq!(miss.len(), 1);
        assert_eq!(rule_string(&miss[0]), r#"{APIGroups:[""], Resources:["pods"], Verbs:["delete"]}"#);
        assert_eq!(uncovered(&held, &[rule(&["get"], &["*"], &["pods"])]).len(), 1, "a wildcard wants a wildcard");
    }
}
