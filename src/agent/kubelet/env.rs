//! A container's environment as the kubelet builds it: `env` (values, `$(VAR)`
//! references to earlier variables, `valueFrom` fieldRef / resourceFieldRef /
//! configMapKeyRef / secretKeyRef) after `envFrom`, and `$(VAR)` expansion of command
//! and args.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::ResourceExt;
use kube::api::Api;

/// A problem that keeps the container from being created
/// (`CreateContainerConfigError`, as the kubelet reports it).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Expands `$(NAME)` with `vars`; `$$` escapes; unknown references stay as written
/// (Kubernetes `expansion.Expand`).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&s[i..i + 3 + end]),
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\0');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The value of a pod field (`fieldRef.fieldPath`).
pub fn pod_field(pod: &Pod, path: &str, node_name: &str, host_ip: &str) -> Option<String> {
    let st = pod.status.as_ref();
    let spec = pod.spec.as_ref();
    let from_map =
        |m: Option<&BTreeMap<String, String>>, key: &str| m.and_then(|m| m.get(key)).cloned().or(Some(String::new()));
    if let Some(rest) = path.strip_prefix("metadata.labels['").and_then(|r| r.strip_suffix("']")) {
        return from_map(pod.metadata.labels.as_ref(), rest);
    }
    if let Some(rest) = path.strip_prefix("metadata.annotations['").and_then(|r| r.strip_suffix("']")) {
        return from_map(pod.metadata.annotations.as_ref(), rest);
    }
    Some(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| node_name.to_string()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()).unwrap_or_default(),
        "status.hostIP" => host_ip.to_string(),
        "status.hostIPs" => host_ip.to_string(),
        "status.podIP" => st.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        "status.podIPs" => st
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|p| p.ip.clone()).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
        _ => return None,
    })
}

/// The value of a resource field (`resourceFieldRef`), in the divisor's unit, rounded up.
fn resource_field(
    c: &Container,
    resource: &str,
    divisor: Option<&str>,
    node_alloc: &BTreeMap<String, f64>,
) -> Option<String> {
    let res = c.resources.as_ref();
    let (kind, name) = resource.split_once('.')?;
    let map = match kind {
        "limits" => res.and_then(|r| r.limits.as_ref()),
        "requests" => res.and_then(|r| r.requests.as_ref()),
        _ => return None,
    };
    let value = map
        .and_then(|m| m.get(name))
        .and_then(|q| crate::server::scheduler::parse_quantity(&q.0))
        .or_else(|| if kind == "limits" { node_alloc.get(name).copied() } else { Some(0.0) })?;
    let div = divisor.and_then(crate::server::scheduler::parse_quantity).filter(|d| *d > 0.0).unwrap_or(1.0);
    Some(format!("{}", (value / div).ceil() as i64))
}

/// A ConfigMap or Secret by name: `Ok(None)` when it does not exist and the reference
/// is optional, else the kubelet's message (`configmap "x" not found`).
pub async fn fetch<K>(api: &Api<K>, what: &str, name: &str, optional: bool) -> Result<Option<K>, String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await {
        Ok(Some(o)) => Ok(Some(o)),
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(format!("{what} \"{name}\" not found")),
        Err(e) => Err(format!("reading {what} \"{name}\": {e}")),
    }
}

/// The environment of `c` in `pod`, in order, with values resolved.
pub async fn container_env(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    node_name: &str,
    host_ip: &str,
    node_alloc: &BTreeMap<String, f64>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let ns = pod.namespace().unwrap_or_default();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut out: Vec<(String, String)> = Vec::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let set = |out: &mut Vec<(String, String)>, vars: &mut BTreeMap<String, String>, k: String, v: String| {
        out.retain(|(x, _)| *x != k);
        vars.insert(k.clone(), v.clone());
        out.push((k, v));
    };
    // The API server's Service, as every pod sees it (what in-cluster clients use).
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "default");
    if let Ok(Some(k)) = svcs.get_opt("kubernetes").await
        && let Some(ip) = k.spec.as_ref().and_then(|s| s.cluster_ip.clone()).filter(|ip| !ip.is_empty() && ip != "None")
    {
        let port =
            k.spec.as_ref().and_then(|s| s.ports.as_ref()).and_then(|p| p.first()).map(|p| p.port).unwrap_or(443);
        for (key, v) in [
            ("KUBERNETES_SERVICE_HOST", ip.clone()),
            ("KUBERNETES_SERVICE_PORT", port.to_string()),
            ("KUBERNETES_SERVICE_PORT_HTTPS", port.to_string()),
            ("KUBERNETES_PORT", format!("tcp://{ip}:{port}")),
            (&format!("KUBERNETES_PORT_{port}_TCP"), format!("tcp://{ip}:{port}")),
            (&format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".to_string()),
            (&format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
            (&format!("KUBERNETES_PORT_{port}_TCP_ADDR"), ip.clone()),
        ] {
            set(&mut out, &mut vars, key.to_string(), v);
        }
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref {
            let cm = fetch(&cms, "configmap", &r.name, r.optional == Some(true)).await.map_err(ConfigError)?;
            for (k, v) in cm.and_then(|cm| cm.data).unwrap_or_default() {
                set(&mut out, &mut vars, format!("{prefix}{k}"), v);
            }
        }
        if let Some(r) = &from.secret_ref {
            let secret = fetch(&secrets, "secret", &r.name, r.optional == Some(true)).await.map_err(ConfigError)?;
            for (k, v) in secret.and_then(|s| s.data).unwrap_or_default() {
                set(&mut out, &mut vars, format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).to_string());
            }
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or(""), &vars)),
            Some(vf) => {
                if let Some(f) = &vf.field_ref {
                    Some(pod_field(pod, &f.field_path, node_name, host_ip).ok_or_else(|| {
                        ConfigError(format!("unsupported fieldPath {:?} for env {}", f.field_path, e.name))
                    })?)
                } else if let Some(r) = &vf.resource_field_ref {
                    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
                        Some(n) => {
                            pod.spec.as_ref().and_then(|s| s.containers.iter().find(|x| x.name == n)).unwrap_or(c)
                        }
                        None => c,
                    };
                    Some(
                        resource_field(target, &r.resource, r.divisor.as_ref().map(|d| d.0.as_str()), node_alloc)
                            .ok_or_else(|| {
                                ConfigError(format!("unsupported resource {:?} for env {}", r.resource, e.name))
                            })?,
                    )
                } else if let Some(r) = &vf.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match fetch(&cms, "configmap", &r.name, optional).await.map_err(ConfigError)? {
                        None => None,
                        Some(cm) => match cm.data.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => {
                                let msg = format!("couldn't find key {} in ConfigMap {}/{}", r.key, ns, r.name);
                                return Err(ConfigError(msg));
                            }
                        },
                    }
                } else if let Some(r) = &vf.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match fetch(&secrets, "secret", &r.name, optional).await.map_err(ConfigError)? {
                        None => None,
                        Some(s) => match s.data.and_then(|d| d.get(&r.key).cloned()) {
                            Some(v) => Some(String::from_utf8_lossy(&v.0).to_string()),
                            None if optional => None,
                            None => {
                                let msg = format!("couldn't find key {} in Secret {}/{}", r.key, ns, r.name);
                                return Err(ConfigError(msg));
                            }
                        },
                    }
                } else {
                    None
                }
            }
        };
        if let Some(v) = value {
            set(&mut out, &mut vars, e.name.clone(), v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_matches_kubernetes() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string()), ("B".to_string(), "two".to_string())]);
        assert_eq!(expand("$(A)-$(B)", &vars), "1-two");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(MISSING)", &vars), "$(MISSING)");
        assert_eq!(expand("cost: $5 (é)", &vars), "cost: $5 (é)");
        assert_eq!(expand("$(A", &vars), "$(A");
    }
}
