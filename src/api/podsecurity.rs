//! The Pod Security Standards (baseline and restricted), checked as Kubernetes's
//! PodSecurity admission checks them, with its wording: each failed check is
//! `reason (detail)`, and the checks come in the order of their IDs.

use serde_json::Value;

/// A Pod Security level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Anything goes.
    Privileged,
    /// Known privilege escalations are refused.
    Baseline,
    /// Current hardening practice.
    Restricted,
}

impl Level {
    /// The level a namespace label names.
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "privileged" => Some(Level::Privileged),
            "baseline" => Some(Level::Baseline),
            "restricted" => Some(Level::Restricted),
            _ => None,
        }
    }

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }
}

const BASELINE_CAPS: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ping_group_range",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_syncookies",
];

const RESTRICTED_VOLUMES: &[&str] =
    &["configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"];

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
}

/// `container "a"` or `containers "a", "b"`.
fn containers(names: &[String]) -> String {
    if names.len() == 1 { format!("container {}", quoted(names)) } else { format!("containers {}", quoted(names)) }
}

fn arr(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// The violations of `level` by a pod spec (with its metadata), as
/// `reason (detail)` strings in Kubernetes's order; empty when it passes.
pub fn check(level: Level, spec: &Value) -> Vec<String> {
    if level == Level::Privileged {
        return vec![];
    }
    let restricted = level == Level::Restricted;
    let psc = &spec["securityContext"];
    let all: Vec<&Value> =
        ["initContainers", "containers", "ephemeralContainers"].iter().flat_map(|k| arr(&spec[*k]).iter()).collect();
    let name = |c: &Value| c["name"].as_str().unwrap_or_default().to_string();
    let mut out: Vec<String> = Vec::new();
    let mut add = |reason: &str, details: Vec<String>| {
        if !details.is_empty() {
            out.push(format!("{reason} ({})", details.join("; ")));
        }
    };

    // allowPrivilegeEscalation (restricted)
    if restricted {
        let bad: Vec<String> = all
            .iter()
            .filter(|c| c["securityContext"]["allowPrivilegeEscalation"] != Value::Bool(false))
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            add(
                "allowPrivilegeEscalation != false",
                vec![format!("{} must set securityContext.allowPrivilegeEscalation=false", containers(&bad))],
            );
        }
    }
    // Per container: the capabilities it adds beyond `allowed`.
    let adds_beyond = |allowed: &[&str]| -> Vec<String> {
        all.iter()
            .filter_map(|c| {
                let added: Vec<String> = arr(&c["securityContext"]["capabilities"]["add"])
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|cap| !allowed.contains(cap))
                    .map(String::from)
                    .collect();
                (!added.is_empty()).then(|| {
                    format!(
                        "{} must not include {} in securityContext.capabilities.add",
                        containers(&[name(c)]),
                        quoted(&added)
                    )
                })
            })
            .collect()
    };
    // capabilities (baseline: only the default set may be added)
    add("non-default capabilities", adds_beyond(BASELINE_CAPS));
    // capabilities (restricted: drop ALL, add at most NET_BIND_SERVICE)
    if restricted {
        let no_drop: Vec<String> = all
            .iter()
            .filter(|c| !arr(&c["securityContext"]["capabilities"]["drop"]).iter().any(|d| d == "ALL"))
            .map(|c| name(c))
            .collect();
        let mut details = Vec::new();
        if !no_drop.is_empty() {
            details.push(format!("{} must set securityContext.capabilities.drop=[\"ALL\"]", containers(&no_drop)));
        }
        details.extend(adds_beyond(&["NET_BIND_SERVICE"]));
        add("unrestricted capabilities", details);
    }
    // hostNamespaces
    let hosts: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|k| spec[**k] == Value::Bool(true))
        .map(|k| format!("{k}=true"))
        .collect();
    if !hosts.is_empty() {
        add("host namespaces", vec![hosts.join(", ")]);
    }
    // hostPathVolumes
    let host_paths: Vec<String> = arr(&spec["volumes"])
        .iter()
        .filter(|v| v.get("hostPath").is_some_and(|h| !h.is_null()))
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect();
    if !host_paths.is_empty() {
        let what = if host_paths.len() == 1 { "volume" } else { "volumes" };
        add("hostPath volumes", vec![format!("{what} {}", quoted(&host_paths))]);
    }
    // hostPorts
    let mut port_details = Vec::new();
    for c in &all {
        let ports: Vec<String> = arr(&c["ports"])
            .iter()
            .filter_map(|p| p["hostPort"].as_i64().filter(|h| *h != 0))
            .map(|h| h.to_string())
            .collect();
        if !ports.is_empty() {
            let what = if ports.len() == 1 { "hostPort" } else { "hostPorts" };
            port_details.push(format!("{} uses {what} {}", containers(&[name(c)]), ports.join(", ")));
        }
    }
    add("hostPort", port_details);
    // privileged
    let privileged: Vec<String> =
        all.iter().filter(|c| c["securityContext"]["privileged"] == Value::Bool(true)).map(|c| name(c)).collect();
    if !privileged.is_empty() {
        add("privileged", vec![format!("{} must not set securityContext.privileged=true", containers(&privileged))]);
    }
    // procMount
    let unmasked: Vec<String> = all
        .iter()
        .filter(|c| c["securityContext"]["procMount"].as_str().is_some_and(|p| p != "Default"))
        .map(|c| name(c))
        .collect();
    if !unmasked.is_empty() {
        add(
            "procMount",
            vec![format!("{} must not set securityContext.procMount to \"Unmasked\"", containers(&unmasked))],
        );
    }
    // restrictedVolumes
    if restricted {
        let mut details = Vec::new();
        for v in arr(&spec["volumes"]) {
            let vname = v["name"].as_str().unwrap_or_default();
            if let Some(t) =
                v.as_object().and_then(|o| o.keys().find(|k| *k != "name" && !RESTRICTED_VOLUMES.contains(&k.as_str())))
            {
                details.push(format!("volume {vname:?} uses restricted volume type {t:?}"));
            }
        }
        add("restricted volume types", details);
    }
    // runAsNonRoot
    if restricted {
        let pod_set = psc["runAsNonRoot"] == Value::Bool(true);
        let explicit_false: Vec<String> = all
            .iter()
            .filter(|c| c["securityContext"]["runAsNonRoot"] == Value::Bool(false))
            .map(|c| name(c))
            .collect();
        let unset: Vec<String> = all
            .iter()
            .filter(|c| c["securityContext"]["runAsNonRoot"] != Value::Bool(true) && !pod_set)
            .filter(|c| c["securityContext"]["runAsNonRoot"] != Value::Bool(false))
            .map(|c| name(c))
            .collect();
        let mut details = Vec::new();
        if psc["runAsNonRoot"] == Value::Bool(false) {
            details.push("pod must not set securityContext.runAsNonRoot=false".to_string());
        }
        if !explicit_false.is_empty() {
            details.push(format!("{} must not set securityContext.runAsNonRoot=false", containers(&explicit_false)));
        }
        if !unset.is_empty() && psc["runAsNonRoot"] != Value::Bool(false) {
            let who = if unset.len() == 1 { "container" } else { "containers" };
            details.push(format!("pod or {who} {} must set securityContext.runAsNonRoot=true", quoted(&unset)));
        }
        add("runAsNonRoot != true", details);
        // runAsUser
        let mut details = Vec::new();
        if psc["runAsUser"] == 0 {
            details.push("pod must not set runAsUser=0".to_string());
        }
        let root: Vec<String> =
            all.iter().filter(|c| c["securityContext"]["runAsUser"] == 0).map(|c| name(c)).collect();
        if !root.is_empty() {
            details.push(format!("{} must not set runAsUser=0", containers(&root)));
        }
        add("runAsUser=0", details);
    }
    // seLinuxOptions
    let selinux_bad = |o: &Value| {
        let t = o["type"].as_str().unwrap_or_default();
        !["", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"].contains(&t)
            || !o["user"].as_str().unwrap_or_default().is_empty()
            || !o["role"].as_str().unwrap_or_default().is_empty()
    };
    let mut se = Vec::new();
    if selinux_bad(&psc["seLinuxOptions"]) {
        se.push("pod has forbidden seLinuxOptions".to_string());
    }
    let bad: Vec<String> =
        all.iter().filter(|c| selinux_bad(&c["securityContext"]["seLinuxOptions"])).map(|c| name(c)).collect();
    if !bad.is_empty() {
        se.push(format!("{} set forbidden securityContext.seLinuxOptions", containers(&bad)));
    }
    add("seLinuxOptions", se);
    // seccompProfile
    let pod_type = psc["seccompProfile"]["type"].as_str();
    if restricted {
        let ok = |t: Option<&str>| matches!(t, Some("RuntimeDefault" | "Localhost"));
        let mut details = Vec::new();
        if pod_type.is_some() && !ok(pod_type) {
            details.push(format!(
                "pod must not set securityContext.seccompProfile.type to {:?}",
                pod_type.unwrap_or_default()
            ));
        }
        let explicit: Vec<String> = all
            .iter()
            .filter(|c| c["securityContext"]["seccompProfile"]["type"].as_str().is_some_and(|t| !ok(Some(t))))
            .map(|c| name(c))
            .collect();
        if !explicit.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers(&explicit)
            ));
        }
        if !ok(pod_type) {
            let unset: Vec<String> = all
                .iter()
                .filter(|c| c["securityContext"]["seccompProfile"]["type"].is_null())
                .map(|c| name(c))
                .collect();
            if !unset.is_empty() && pod_type.is_none() {
                let who = if unset.len() == 1 { "container" } else { "containers" };
                details.push(format!(
                    "pod or {who} {} must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"",
                    quoted(&unset)
                ));
            }
        }
        add("seccompProfile", details);
    } else {
        let mut details = Vec::new();
        if pod_type == Some("Unconfined") {
            details.push("pod must not set securityContext.seccompProfile.type to \"Unconfined\"".to_string());
        }
        let bad: Vec<String> = all
            .iter()
            .filter(|c| c["securityContext"]["seccompProfile"]["type"] == "Unconfined")
            .map(|c| name(c))
            .collect();
        if !bad.is_empty() {
            details.push(format!(
                "{} must not set securityContext.seccompProfile.type to \"Unconfined\"",
                containers(&bad)
            ));
        }
        add("seccompProfile", details);
    }
    // sysctls
    let bad: Vec<String> = arr(&psc["sysctls"])
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| !SAFE_SYSCTLS.contains(n))
        .map(String::from)
        .collect();
    if !bad.is_empty() {
        add("forbidden sysctls", vec![bad.join(", ")]);
    }
    out
}

/// The whole message for a violating pod: `violates PodSecurity "restricted:latest": ...`.
pub fn message(level: Level, version: &str, violations: &[String]) -> String {
    format!("violates PodSecurity \"{}:{version}\": {}", level.as_str(), violations.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn restricted_reads_as_kubernetes_says_it() {
        let spec = json!({"containers": [{"name": "c", "image": "x"}]});
        assert!(check(Level::Baseline, &spec).is_empty());
        assert_eq!(
            message(Level::Restricted, "latest", &check(Level::Restricted, &spec)),
            "violates PodSecurity \"restricted:latest\": allowPrivilegeEscalation != false (container \"c\" must set \
             securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container \"c\" must set \
             securityContext.capabilities.drop=[\"ALL\"]), runAsNonRoot != true (pod or container \"c\" must set \
             securityContext.runAsNonRoot=true), seccompProfile (pod or container \"c\" must set \
             securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")"
        );
        let good = json!({"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                          "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": false,
                                                                           "capabilities": {"drop": ["ALL"]}}}]});
        assert!(check(Level::Restricted, &good).is_empty(), "{:?}", check(Level::Restricted, &good));
    }

    #[test]
    fn baseline_refuses_privilege() {
        let spec = json!({"hostNetwork": true, "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
                          "containers": [{"name": "a", "securityContext": {"privileged": true,
                                                                           "capabilities": {"add": ["NET_ADMIN", "CHOWN"]}},
                                          "ports": [{"containerPort": 80, "hostPort": 80}]},
                                         {"name": "b", "securityContext": {"privileged": true}}]});
        assert_eq!(
            check(Level::Baseline, &spec),
            vec![
                "non-default capabilities (container \"a\" must not include \"NET_ADMIN\" in securityContext.capabilities.add)",
                "host namespaces (hostNetwork=true)",
                "hostPath volumes (volume \"root\")",
                "hostPort (container \"a\" uses hostPort 80)",
                "privileged (containers \"a\", \"b\" must not set securityContext.privileged=true)",
            ]
        );
    }
}
