//! Service IP and NodePort allocation, done in the Service write path as the Kubernetes
//! API server's service registry does: a ClusterIP from `--service-cidr`, NodePorts from
//! 30000-32767, a taken or out-of-range value refused with 422.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use super::ApiServer;
use super::handlers::decode_kv;
use crate::api::meta;
use crate::api::status::{ApiError, Cause};

/// The NodePort range.
pub const NODE_PORTS: std::ops::RangeInclusive<i64> = 30000..=32767;

impl ApiServer {
    /// Fills and checks `spec.clusterIP(s)` and node ports of a Service being written.
    /// The caller holds `svc_lock` until the write is stored.
    pub(super) async fn allocate_service(&self, old: Option<&Value>, svc: &mut Value) -> Result<(), ApiError> {
        let name = meta::name(svc).to_string();
        let ns = meta::namespace(svc).unwrap_or("").to_string();
        let invalid = |c: Cause| ApiError::invalid("", "Service", &name, vec![c]);
        let page = self.store.list("/registry/services/", None, 0, 0).await.map_err(ApiError::internal)?;
        let mut used_ips = HashSet::new();
        let mut used_ports = HashSet::new();
        for kv in &page.kvs {
            let o = decode_kv(kv)?;
            if meta::name(&o) == name && meta::namespace(&o) == Some(ns.as_str()) {
                continue;
            }
            if let Some(ip) = o.pointer("/spec/clusterIP").and_then(Value::as_str) {
                used_ips.insert(ip.to_string());
            }
            for p in o.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                    used_ports.insert(np);
                }
            }
        }
        let ty = svc.pointer("/spec/type").and_then(Value::as_str).unwrap_or("ClusterIP").to_string();
        let old_ip = old.and_then(|o| o.pointer("/spec/clusterIP")).and_then(Value::as_str).map(str::to_string);
        let spec =
            svc.get_mut("spec").and_then(Value::as_object_mut).ok_or_else(|| invalid(Cause::required("spec", "")))?;
        if ty == "ExternalName" {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        } else {
            let want = spec.get("clusterIP").and_then(Value::as_str).unwrap_or("").to_string();
            let ip = match (want.as_str(), old_ip) {
                ("", Some(o)) => o,
                (w, Some(o)) if w != o => {
                    return Err(invalid(Cause::invalid("spec.clusterIPs[0]", &json!(w), "may not change once set")));
                }
                ("None", _) => "None".to_string(),
                ("", None) => self.pick_ip(&used_ips).ok_or_else(|| {
                    ApiError::internal(format!("failed to allocate a serviceIP: range {} is full", self.service_cidr))
                })?,
                (w, _) => {
                    let in_range = w.parse::<Ipv4Addr>().is_ok_and(|a| self.service_cidr.contains(&a));
                    if !in_range {
                        return Err(invalid(Cause::invalid(
                            "spec.clusterIPs",
                            &json!([w]),
                            format!(
                                "failed to allocate IP {w}: provided IP is not in the valid range. The range of valid IPs is {}",
                                self.service_cidr
                            ),
                        )));
                    }
                    if used_ips.contains(w) {
                        return Err(invalid(Cause::invalid(
                            "spec.clusterIPs",
                            &json!([w]),
                            format!("failed to allocate IP {w}: provided IP is already allocated"),
                        )));
                    }
                    w.to_string()
                }
            };
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            if ip != "None" || !spec.contains_key("ipFamilies") {
                spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
                spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
            }
        }
        let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
        let old_ports: Vec<Value> =
            old.and_then(|o| o.pointer("/spec/ports")).and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            let mut mine = HashSet::new();
            for (i, p) in ports.iter_mut().enumerate() {
                if !wants_node_ports {
                    if let Some(o) = p.as_object_mut() {
                        o.remove("nodePort");
                    }
                    continue;
                }
                let np = match p.get("nodePort").and_then(Value::as_i64).filter(|n| *n != 0) {
                    Some(n) => {
                        if !NODE_PORTS.contains(&n) {
                            return Err(invalid(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(n),
                                "provided port is not in the valid range. The range of valid ports is 30000-32767",
                            )));
                        }
                        if used_ports.contains(&n) || mine.contains(&n) {
                            return Err(invalid(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(n),
                                "provided port is already allocated",
                            )));
                        }
                        n
                    }
                    None => {
                        let prev = old_ports
                            .iter()
                            .find(|o| o.get("port") == p.get("port") && o.get("protocol") == p.get("protocol"))
                            .and_then(|o| o.get("nodePort").and_then(Value::as_i64));
                        match prev {
                            Some(n) if !mine.contains(&n) => n,
                            _ => pick_port(&used_ports, &mine).ok_or_else(|| {
                                ApiError::internal("failed to allocate a nodePort: range 30000-32767 is full")
                            })?,
                        }
                    }
                };
                mine.insert(np);
                p["nodePort"] = json!(np);
            }
        }
        if wants_node_ports {
            spec.entry("externalTrafficPolicy").or_insert(json!("Cluster"));
        }
        Ok(())
    }

    fn pick_ip(&self, used: &HashSet<String>) -> Option<String> {
        use rand::Rng;
        let base = u32::from(self.service_cidr.network());
        let size = 1u32 << (32 - self.service_cidr.prefix_len());
        // Skip the network address, .1 (the kubernetes Service) and the broadcast.
        let span = size.checked_sub(3)?;
        let start = rand::rng().random_range(0..span);
        (0..span).map(|i| Ipv4Addr::from(base + 2 + (start + i) % span).to_string()).find(|ip| !used.contains(ip))
    }
}

fn pick_port(used: &HashSet<i64>, mine: &HashSet<i64>) -> Option<i64> {
    use rand::Rng;
    let span = NODE_PORTS.end() - NODE_PORTS.start() + 1;
    let start = rand::rng().random_range(0..span);
    (0..span).map(|i| NODE_PORTS.start() + (start + i) % span).find(|p| !used.contains(p) && !mine.contains(p))
}
