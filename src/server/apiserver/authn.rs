//! Authentication and authorization in the request path: the user a request is
//! from (client certificate, service-account bearer token, impersonation), whether
//! they may do what they ask (system:masters, the Node authorizer, RBAC), and the
//! APIs that expose both: TokenRequest (`serviceaccounts/<name>/token`), TokenReview,
//! SelfSubjectReview, SelfSubjectAccessReview, SubjectAccessReview,
//! LocalSubjectAccessReview and SelfSubjectRulesReview.

use std::collections::BTreeMap;

use http::HeaderMap;
use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::Call;
use super::request::{self, Resp};
use crate::api::registry::ResourceDef;
use crate::api::status::{ApiError, Cause, Target};
use crate::server::auth::node::{self, Need};
use crate::server::auth::token::{Claims, KubeClaims, ObjRef, looks_like_jwt};
use crate::server::auth::{Attrs, Decision, SERVICE_ACCOUNTS, User, bootstrap, rbac};

/// The review kind (TokenReview, SubjectAccessReview, ...) served at
/// `group/version/plural`, from the registry's table of them.
pub fn review_at(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    crate::api::registry::reviews().iter().find(|d| d.group == group && d.version == version && d.plural == plural)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
}

fn extra_of(v: &Value) -> BTreeMap<String, Vec<String>> {
    v.as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), str_list(v))).collect()).unwrap_or_default()
}

impl ApiServer {
    /// The user a request is from: the client certificate's, else the bearer token's;
    /// None without credentials. A bearer token that does not authenticate is a 401.
    pub(super) async fn authenticate(
        &self,
        cert: Option<&User>,
        headers: &HeaderMap,
    ) -> Result<Option<User>, ApiError> {
        if let Some(u) = cert {
            return Ok(Some(u.clone()));
        }
        let Some(token) = bearer(headers) else { return Ok(None) };
        match self.authenticate_token(token).await {
            Ok(u) => Ok(Some(u)),
            Err(why) => {
                tracing::debug!(%why, "bearer token refused");
                Err(ApiError::unauthorized())
            }
        }
    }

    /// A core/v1 object as stored, or None.
    pub(super) async fn stored(&self, plural: &str, ns: Option<&str>, name: &str) -> Result<Option<Value>, String> {
        let reg = self.reg();
        let def = reg.get("", "v1", plural).ok_or("no such kind")?;
        match self.store.get(&def.key(ns, name)).await.map_err(|e| e.to_string())? {
            Some(kv) => serde_json::from_slice(&kv.value).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// The service account a token was issued for, if the token is one of ours, not
    /// expired, for the API's audience, and the account and the object it is bound to
    /// still exist with the UIDs it names.
    pub(super) async fn authenticate_token(&self, token: &str) -> Result<User, String> {
        if let Some((id, secret)) = bootstrap::parse(token)
            && !token.contains("::")
        {
            return self.bootstrap_user(id, secret).await;
        }
        if !looks_like_jwt(token) {
            return Err("not a service-account token".into());
        }
        let signer = self.signer.get().ok_or("no signing key yet")?;
        let c = signer.verify(token, &self.api_audiences()).map_err(|e| e.to_string())?;
        self.token_user(&c).await
    }

    /// The user of a bootstrap token (`system:bootstrap:<id>`), if it is valid.
    pub(super) async fn bootstrap_user(&self, id: &str, secret: &str) -> Result<User, String> {
        let stored = self.stored("secrets", Some(bootstrap::NAMESPACE), &bootstrap::secret_name(id)).await?;
        let groups = bootstrap::check(stored.as_ref(), id, secret, chrono::Utc::now())?;
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        Ok(User::new(format!("system:bootstrap:{id}"), &groups))
    }

    fn api_audiences(&self) -> Vec<String> {
        self.signer.get().map(|s| vec![s.issuer.clone()]).unwrap_or_default()
    }

    async fn token_user(&self, c: &Claims) -> Result<User, String> {
        let k = &c.kubernetes;
        let (ns, sa) = (k.namespace.as_str(), &k.serviceaccount);
        if c.sub != format!("system:serviceaccount:{ns}:{}", sa.name) {
            return Err("the subject does not match the service account".into());
        }
        let uid_of = |v: &Value| v["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let live = self.stored("serviceaccounts", Some(ns), &sa.name).await?;
        if live.as_ref().map(uid_of).as_deref() != Some(sa.uid.as_str()) {
            return Err(format!("service account {ns}/{} has been deleted", sa.name));
        }
        let mut extra = BTreeMap::new();
        if let Some(p) = &k.pod {
            let pod = self.stored("pods", Some(ns), &p.name).await?;
            if pod.as_ref().map(uid_of).as_deref() != Some(p.uid.as_str()) {
                return Err(format!("pod {ns}/{} has been deleted", p.name));
            }
            extra.insert("authentication.kubernetes.io/pod-name".to_string(), vec![p.name.clone()]);
            extra.insert("authentication.kubernetes.io/pod-uid".to_string(), vec![p.uid.clone()]);
        }
        if let Some(s) = &k.secret {
            let secret = self.stored("secrets", Some(ns), &s.name).await?;
            if secret.as_ref().map(uid_of).as_deref() != Some(s.uid.as_str()) {
                return Err(format!("secret {ns}/{} has been deleted", s.name));
            }
        }
        if let Some(n) = &k.node {
            if k.pod.is_none() {
                let node = self.stored("nodes", None, &n.name).await?;
                if node.as_ref().map(uid_of).as_deref() != Some(n.uid.as_str()) {
                    return Err(format!("node {} has been deleted", n.name));
                }
            }
            extra.insert("authentication.kubernetes.io/node-name".to_string(), vec![n.name.clone()]);
            extra.insert("authentication.kubernetes.io/node-uid".to_string(), vec![n.uid.clone()]);
        }
        if !c.jti.is_empty() {
            extra.insert("authentication.kubernetes.io/credential-id".to_string(), vec![format!("JTI={}", c.jti)]);
        }
        let mut u = User::service_account_user(ns, &sa.name);
        u.uid = sa.uid.clone();
        u.extra = extra;
        Ok(u)
    }

    /// The user a request acts as when it carries `Impersonate-*` headers, if `user`
    /// may impersonate every part of it.
    pub(super) async fn impersonate(&self, user: User, headers: &HeaderMap) -> Result<User, ApiError> {
        let all = |name: &str| -> Vec<String> {
            headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).map(|s| s.trim().to_string()).collect()
        };
        let name = all("impersonate-user").into_iter().next();
        let groups = all("impersonate-group");
        let uid = all("impersonate-uid").into_iter().next();
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in headers {
            if let Some(key) = k.as_str().strip_prefix("impersonate-extra-") {
                let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy().into_owned();
                extra.entry(key).or_default().extend(v.to_str().ok().map(String::from));
            }
        }
        let Some(name) = name else {
            if groups.is_empty() && uid.is_none() && extra.is_empty() {
                return Ok(user);
            }
            return Err(ApiError::bad_request(
                "impersonating groups, a UID or extra fields requires impersonating a user",
            ));
        };
        let mut checks = Vec::new();
        match name.strip_prefix("system:serviceaccount:").and_then(|s| s.split_once(':')) {
            Some((ns, sa)) => checks.push(Attrs::resource("impersonate", "", "serviceaccounts", "", ns, sa)),
            None => checks.push(Attrs::resource("impersonate", "", "users", "", "", &name)),
        }
        for g in &groups {
            checks.push(Attrs::resource("impersonate", "", "groups", "", "", g));
        }
        if let Some(u) = &uid {
            checks.push(Attrs::resource("impersonate", "authentication.k8s.io", "uids", "", "", u));
        }
        for (k, vs) in &extra {
            for v in vs {
                checks.push(Attrs::resource("impersonate", "authentication.k8s.io", "userextras", k, "", v));
            }
        }
        for a in &checks {
            self.check(&user, a).await?;
        }
        let mut g: Vec<&str> = groups.iter().map(String::as_str).collect();
        let sa_groups;
        if let Some((ns, _)) = name.strip_prefix("system:serviceaccount:").and_then(|s| s.split_once(':')) {
            sa_groups = [SERVICE_ACCOUNTS.to_string(), format!("{SERVICE_ACCOUNTS}:{ns}")];
            g.extend(sa_groups.iter().map(String::as_str));
        }
        let mut out = if name == "system:anonymous" {
            User::from_fields(&name, "", &g.iter().map(|s| s.to_string()).collect::<Vec<_>>(), BTreeMap::new())
        } else {
            User::new(name, &g)
        };
        out.uid = uid.unwrap_or_default();
        out.extra = extra;
        Ok(out)
    }

    /// The `authorizer` of admission policies' CEL for `user`: the authorizers'
    /// answers without waiting on the store, so a node's check that needs a look at
    /// its pods (a Secret they mount) is answered by RBAC alone.
    pub(crate) fn cel_authorizer(&self, user: &User) -> crate::api::cel::authz::Authorizer {
        use crate::api::cel::authz::{Check, Decision as CelDecision};
        let (user, rbac) = (user.clone(), self.rbac.get().cloned());
        std::sync::Arc::new(move |c: &Check| {
            let account;
            let who = match &c.service_account {
                Some((ns, name)) => {
                    account = User::service_account_user(ns, name);
                    &account
                }
                None => &user,
            };
            let a = match &c.path {
                Some(p) => Attrs::path(&c.verb, p),
                None => Attrs::resource(&c.verb, &c.group, &c.resource, &c.subresource, &c.namespace, &c.name),
            };
            let judged = match who.node() {
                Some(n) => match node::judge(n, &a) {
                    Need::Decided(d) => d,
                    _ => Decision::NoOpinion,
                },
                None => Decision::NoOpinion,
            };
            let d = match judged {
                Decision::NoOpinion if who.is_master() => Decision::Allow,
                Decision::NoOpinion => match &rbac {
                    Some(r) if r.allows(who, &a) => Decision::Allow,
                    Some(_) => Decision::NoOpinion,
                    None => return CelDecision { error: "the authorizer is starting".into(), ..Default::default() },
                },
                d => d,
            };
            match d {
                Decision::Allow => CelDecision { allowed: true, ..Default::default() },
                Decision::Deny(reason) => CelDecision { reason, ..Default::default() },
                Decision::NoOpinion => CelDecision::default(),
            }
        })
    }

    /// What the authorizers say about `a` for `user`.
    pub(crate) async fn authorize(&self, user: &User, a: &Attrs) -> Decision {
        if user.is_master() {
            return Decision::Allow;
        }
        if let Some(n) = user.node() {
            match node::judge(n, a) {
                Need::Decided(Decision::NoOpinion) => {}
                Need::Decided(d) => return d,
                Need::Referenced { kind, ns, name } => {
                    return match self.node_refers(n, kind, &ns, &name).await {
                        Ok(true) => Decision::Allow,
                        Ok(false) => Decision::Deny(node::no_relationship(n)),
                        Err(e) => Decision::Deny(e),
                    };
                }
                Need::OwnPod { ns, name } => {
                    return match self.stored("pods", Some(&ns), &name).await {
                        Ok(Some(p)) if p["spec"]["nodeName"].as_str() == Some(n) => Decision::Allow,
                        Ok(None) => Decision::Allow, // not found is for the handler to say
                        Ok(Some(_)) => Decision::Deny(format!("node {n:?} can only modify pods bound to it")),
                        Err(e) => Decision::Deny(e),
                    };
                }
            }
        }
        match self.rbac.get() {
            Some(r) if r.allows(user, a) => Decision::Allow,
            Some(_) => Decision::NoOpinion,
            None => Decision::Deny("the authorizer is starting".into()),
        }
    }

    /// 403 unless `user` may do `a`.
    pub(crate) async fn check(&self, user: &User, a: &Attrs) -> Result<(), ApiError> {
        a.outcome(user, self.authorize(user, a).await)
    }

    /// Whether a pod bound to `node` refers to the object (see [`node::pod_refers`]).
    async fn node_refers(&self, node: &str, kind: &str, ns: &str, name: &str) -> Result<bool, String> {
        if kind == "pv" {
            // A volume is the node's when a claim of one of its pods is bound to it.
            let Some(pv) = self.stored("persistentvolumes", None, name).await? else { return Ok(false) };
            let claim = &pv["spec"]["claimRef"];
            let (Some(cns), Some(cname)) = (claim["namespace"].as_str(), claim["name"].as_str()) else {
                return Ok(false);
            };
            return Box::pin(self.node_refers(node, "pvc", cns, cname)).await;
        }
        let pods = self.objects_in("", "pods", ns).await.map_err(|e| e.message)?;
        Ok(pods.iter().any(|p| p["spec"]["nodeName"].as_str() == Some(node) && node::pod_refers(p, kind, name)))
    }

    /// `POST .../serviceaccounts/<name>/token`: a token for the account, bound to a
    /// pod, secret or node if asked, for the audiences asked (default: the API's).
    pub(super) async fn token_request(&self, call: &Call, body: bytes::Bytes) -> Result<Resp, ApiError> {
        let (ns, name) = (call.ns.clone().unwrap_or_default(), call.name.clone().unwrap_or_default());
        let req: Value = if body.is_empty() {
            json!({})
        } else {
            request::decode_object(&request::content_type(&call.headers), &body)?.0
        };
        let invalid = |c: Cause| ApiError::invalid("authentication.k8s.io", "TokenRequest", &name, vec![c]);
        let spec = &req["spec"];
        let secs = match &spec["expirationSeconds"] {
            Value::Null => 3600,
            v => {
                v.as_i64().ok_or_else(|| invalid(Cause::invalid("spec.expirationSeconds", v, "must be an integer")))?
            }
        };
        if secs < 600 {
            return Err(invalid(Cause::invalid(
                "spec.expirationSeconds",
                &json!(secs),
                "may not specify a duration less than 10 minutes",
            )));
        }
        if secs > 1 << 32 {
            return Err(invalid(Cause::invalid(
                "spec.expirationSeconds",
                &json!(secs),
                "may not specify a duration larger than 2^32 seconds",
            )));
        }
        let mut audiences = str_list(&spec["audiences"]);
        if audiences.is_empty() {
            audiences = self.api_audiences();
        }
        let sa = self
            .stored("serviceaccounts", Some(&ns), &name)
            .await
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::not_found(Target { group: "", resource: "serviceaccounts", name: &name }))?;
        let signer = self.signer.get().ok_or_else(|| ApiError::unavailable("the signing key is not ready"))?;
        let now = chrono::Utc::now();
        let mut claims = Claims {
            aud: audiences.clone(),
            exp: Some(now.timestamp() + secs),
            iat: now.timestamp(),
            nbf: now.timestamp(),
            iss: signer.issuer.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            sub: format!("system:serviceaccount:{ns}:{name}"),
            kubernetes: KubeClaims {
                namespace: ns.clone(),
                serviceaccount: ObjRef {
                    name: name.clone(),
                    uid: sa["metadata"]["uid"].as_str().unwrap_or_default().into(),
                },
                ..Default::default()
            },
        };
        let bound = &spec["boundObjectRef"];
        if bound.is_object() {
            let kind = bound["kind"].as_str().unwrap_or_default();
            let bname = bound["name"].as_str().unwrap_or_default();
            let (plural, in_ns) = match kind {
                "Pod" => ("pods", Some(ns.as_str())),
                "Secret" => ("secrets", Some(ns.as_str())),
                "Node" => ("nodes", None),
                k => {
                    return Err(invalid(Cause {
                        reason: "FieldValueNotSupported",
                        field: "spec.boundObjectRef.kind".into(),
                        message: format!("Unsupported value: {k:?}: supported values: \"Pod\", \"Secret\", \"Node\""),
                    }));
                }
            };
            let obj = self
                .stored(plural, in_ns, bname)
                .await
                .map_err(ApiError::internal)?
                .ok_or_else(|| ApiError::not_found(Target { group: "", resource: plural, name: bname }))?;
            let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
            if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
                && want != uid
            {
                return Err(ApiError::conflict(
                    Target { group: "", resource: plural, name: bname },
                    &format!(
                        "the UID in the bound object reference ({want}) does not match the UID in record. \
                         The object might have been deleted and then recreated"
                    ),
                ));
            }
            let r = ObjRef { name: bname.to_string(), uid };
            match kind {
                "Pod" => {
                    // NodeRestriction: a node asks only for tokens of its own pods.
                    if let Some(n) = call.user.as_deref().and_then(User::node)
                        && obj["spec"]["nodeName"].as_str() != Some(n)
                    {
                        return Err(ApiError::forbidden(
                            Target { group: "", resource: "serviceaccounts", name: &name },
                            format!("node {n:?} can only request tokens for pods bound to it"),
                        ));
                    }
                    if let Some(node) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty())
                        && let Ok(Some(nobj)) = self.stored("nodes", None, node).await
                    {
                        let nuid = nobj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
                        claims.kubernetes.node = Some(ObjRef { name: node.to_string(), uid: nuid });
                    }
                    claims.kubernetes.pod = Some(r);
                }
                "Secret" => claims.kubernetes.secret = Some(r),
                _ => claims.kubernetes.node = Some(r),
            }
        } else if call.user.as_deref().and_then(User::node).is_some() {
            return Err(ApiError::forbidden(
                Target { group: "", resource: "serviceaccounts", name: &name },
                "node requested token not bound to a pod",
            ));
        }
        let token = signer.sign(&claims);
        let exp = chrono::DateTime::from_timestamp(claims.exp.unwrap_or_default(), 0).unwrap_or(now);
        let mut out = json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": now.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
            "spec": {"audiences": audiences, "expirationSeconds": secs},
            "status": {"token": token, "expirationTimestamp": exp.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
        });
        if bound.is_object() {
            out["spec"]["boundObjectRef"] = bound.clone();
        }
        Ok(request::json(201, &out))
    }

    /// The review APIs: each answers its request with a status, stores nothing.
    pub(super) async fn review(
        &self,
        def: &'static ResourceDef,
        user: &User,
        ns: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Resp, ApiError> {
        let (group, kind) = (def.group, def.kind);
        let (mut obj, _) = request::decode_object(&request::content_type(headers), body)?;
        obj["apiVersion"] = json!(format!("{group}/v1"));
        obj["kind"] = json!(kind);
        let spec = obj["spec"].clone();
        let invalid = |c: Cause| ApiError::invalid(group, kind, "", vec![c]);
        let status = match kind {
            "SelfSubjectReview" => json!({"userInfo": user.user_info()}),
            "TokenReview" => {
                let token = spec["token"].as_str().unwrap_or_default();
                if token.is_empty() {
                    return Err(invalid(Cause::required("spec.token", "")));
                }
                let wanted = str_list(&spec["audiences"]);
                let audiences = if wanted.is_empty() { self.api_audiences() } else { wanted };
                let checked = match (self.signer.get(), looks_like_jwt(token)) {
                    (Some(s), true) => match s.verify(token, &audiences) {
                        Ok(c) => {
                            let hit: Vec<String> = c.aud.iter().filter(|a| audiences.contains(a)).cloned().collect();
                            self.token_user(&c).await.map(|u| (u, hit))
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    _ => Err("invalid bearer token".to_string()),
                };
                match checked {
                    Ok((u, hit)) => json!({"authenticated": true, "user": u.user_info(), "audiences": hit}),
                    Err(e) => json!({"authenticated": false, "user": {}, "error": e}),
                }
            }
            "SelfSubjectRulesReview" => {
                let ns = spec["namespace"].as_str().unwrap_or_default();
                if ns.is_empty() {
                    return Err(invalid(Cause::required("spec.namespace", "")));
                }
                self.rules_review(user, ns)
            }
            _ => {
                let subject = match kind {
                    "SelfSubjectAccessReview" => user.clone(),
                    _ => {
                        let name = spec["user"].as_str().unwrap_or_default();
                        let groups = str_list(&spec["groups"]);
                        if name.is_empty() && groups.is_empty() {
                            return Err(invalid(Cause::required(
                                "spec.user",
                                "at least one of user or group must be specified",
                            )));
                        }
                        User::from_fields(
                            name,
                            spec["uid"].as_str().unwrap_or_default(),
                            &groups,
                            extra_of(&spec["extra"]),
                        )
                    }
                };
                let a = if let Some(r) = spec["resourceAttributes"].as_object() {
                    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
                    let rns = s("namespace");
                    if def.namespaced && rns != ns.unwrap_or_default() {
                        return Err(invalid(Cause::invalid(
                            "spec.resourceAttributes.namespace",
                            &json!(rns),
                            "must match metadata.namespace",
                        )));
                    }
                    Attrs::resource(s("verb"), s("group"), s("resource"), s("subresource"), rns, s("name"))
                } else if let Some(p) = spec["nonResourceAttributes"].as_object() {
                    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or_default();
                    Attrs::path(s("verb"), s("path"))
                } else {
                    return Err(invalid(Cause::required(
                        "spec.resourceAttributes",
                        "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                    )));
                };
                match self.authorize(&subject, &a).await {
                    Decision::Allow => json!({"allowed": true}),
                    Decision::Deny(why) => json!({"allowed": false, "denied": true, "reason": why}),
                    Decision::NoOpinion => json!({"allowed": false}),
                }
            }
        };
        obj["status"] = status;
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.insert("creationTimestamp".into(), Value::Null);
        } else {
            obj["metadata"] = json!({"creationTimestamp": null});
        }
        Ok(request::json(201, &obj))
    }

    fn rules_review(&self, user: &User, ns: &str) -> Value {
        let rules = if user.is_master() {
            vec![
                k8s_openapi::api::rbac::v1::PolicyRule {
                    verbs: vec!["*".into()],
                    api_groups: Some(vec!["*".into()]),
                    resources: Some(vec!["*".into()]),
                    ..Default::default()
                },
                k8s_openapi::api::rbac::v1::PolicyRule {
                    verbs: vec!["*".into()],
                    non_resource_urls: Some(vec!["*".into()]),
                    ..Default::default()
                },
            ]
        } else {
            self.rbac.get().map(|r| r.rules_for(user, ns)).unwrap_or_default()
        };
        let mut res = Vec::new();
        let mut paths = Vec::new();
        for r in rules {
            if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
                paths.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
            }
            if r.resources.as_ref().is_some_and(|u| !u.is_empty()) {
                let mut e =
                    json!({"verbs": r.verbs, "apiGroups": r.api_groups.unwrap_or_default(), "resources": r.resources});
                if let Some(n) = r.resource_names.filter(|n| !n.is_empty()) {
                    e["resourceNames"] = json!(n);
                }
                res.push(e);
            }
        }
        // A node's rights come from the Node authorizer, which cannot list them.
        json!({"resourceRules": res, "nonResourceRules": paths, "incomplete": user.node().is_some()})
    }

    /// Refuses a Role, ClusterRole or binding that would give `user` more than they
    /// have, unless they may `escalate` (roles) or `bind` (bindings), as Kubernetes's
    /// RBAC storage does.
    pub(super) async fn check_escalation(&self, call: &Call, obj: &Value) -> Result<(), ApiError> {
        use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef};
        let Some(user) = call.user.as_deref() else { return Ok(()) };
        if user.is_master() || call.def.group != "rbac.authorization.k8s.io" {
            return Ok(());
        }
        let ns = call.ns.as_deref().unwrap_or_default();
        let name = crate::api::meta::name(obj).to_string();
        let rbac = self.rbac.get().ok_or_else(|| ApiError::unavailable("the authorizer is starting"))?;
        let (wanted, via): (Vec<PolicyRule>, Attrs) = match call.def.plural {
            "roles" | "clusterroles" => {
                let rules: Vec<PolicyRule> = serde_json::from_value(obj["rules"].clone()).unwrap_or_default();
                (rules, Attrs::resource("escalate", "rbac.authorization.k8s.io", call.def.plural, "", ns, &name))
            }
            "rolebindings" | "clusterrolebindings" => {
                let rr: RoleRef = serde_json::from_value(obj["roleRef"].clone())
                    .map_err(|e| ApiError::bad_request(format!("roleRef: {e}")))?;
                let rules = rbac.rules_of(&rr, ns).unwrap_or_default();
                let plural = if rr.kind == "ClusterRole" { "clusterroles" } else { "roles" };
                let rns = if rr.kind == "ClusterRole" { "" } else { ns };
                (rules, Attrs::resource("bind", "rbac.authorization.k8s.io", plural, "", rns, &rr.name))
            }
            _ => return Ok(()),
        };
        if self.authorize(user, &via).await == Decision::Allow {
            return Ok(());
        }
        let held = rbac.rules_for(user, ns);
        let missing = rbac::uncovered(&held, &wanted);
        if missing.is_empty() {
            return Ok(());
        }
        let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
        let list: Vec<String> = missing.iter().map(rbac::rule_string).collect();
        Err(ApiError::forbidden(
            call.target(&name),
            format!(
                "{} {name:?} is forbidden: user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
                call.target(&name).qualified(),
                user.name,
                groups.join(" "),
                list.join("\n")
            ),
        ))
    }
}

impl ApiServer {
    /// Writes the default ClusterRoles and ClusterRoleBindings (see
    /// [`crate::server::auth::policy`]): missing ones are created; existing ones
    /// with `rbac.authorization.kubernetes.io/autoupdate: "true"` are brought up to
    /// date (an aggregated role's rules are left to the aggregation controller).
    pub(super) async fn ensure_policy(self: &std::sync::Arc<Self>) -> Result<(), ApiError> {
        use crate::server::auth::policy;
        let mut roles = policy::cluster_roles();
        // Aggregated roles start with their rules, aggregated in dependency order
        // (admin takes edit's, which takes view's).
        for _ in 0..3 {
            let table: Vec<(String, Value, Vec<Value>)> = roles
                .iter()
                .map(|r| {
                    let name = r["metadata"]["name"].as_str().unwrap_or_default().to_string();
                    (name, r["metadata"]["labels"].clone(), r["rules"].as_array().cloned().unwrap_or_default())
                })
                .collect();
            for r in roles.iter_mut() {
                if let Some(sel) = r["aggregationRule"]["clusterRoleSelectors"].as_array() {
                    r["rules"] = json!(policy::aggregate(sel, &table));
                }
            }
        }
        for r in roles {
            self.reconcile_default("clusterroles", r, &["aggregationRule"]).await?;
        }
        for b in policy::cluster_role_bindings() {
            self.reconcile_default("clusterrolebindings", b, &["roleRef", "subjects"]).await?;
        }
        Ok(())
    }

    async fn reconcile_default(
        self: &std::sync::Arc<Self>,
        plural: &str,
        want: Value,
        fields: &[&str],
    ) -> Result<(), ApiError> {
        let def = self.reg().get("rbac.authorization.k8s.io", "v1", plural).ok_or_else(ApiError::no_route)?;
        let name = want["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let Some(kv) = self.store.get(&def.key(None, &name)).await.map_err(ApiError::internal)? else {
            return self.ensure("rbac.authorization.k8s.io", plural, None, want).await;
        };
        let mut cur = super::handlers::decode_kv(&kv)?;
        if cur["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"] == "false" {
            return Ok(());
        }
        let mut fields = fields.to_vec();
        let aggregated = want.get("aggregationRule").is_some();
        if !aggregated && plural == "clusterroles" {
            fields.push("rules");
        }
        if fields.iter().all(|f| cur.get(*f) == want.get(*f)) {
            return Ok(());
        }
        for f in fields {
            match want.get(f) {
                Some(v) => cur[f] = v.clone(),
                None => {
                    if let Some(o) = cur.as_object_mut() {
                        o.remove(f);
                    }
                }
            }
        }
        let mut call = super::propagation::internal_call(def, None);
        call.name = Some(name);
        self.update(&call, bytes::Bytes::from(serde_json::to_vec(&cur).expect("json"))).await.map(|_| ())
    }
}
