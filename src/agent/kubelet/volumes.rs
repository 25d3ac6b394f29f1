//! Pod volumes on the node, under `<data-dir>/agent/pods/<uid>/volumes/`: emptyDir
//! (disk, or tmpfs for `medium: Memory`), hostPath (with its `type` checks),
//! configMap, secret, downwardAPI and projected (written with the kubelet's atomic
//! writer: files are links through `..data`, which is swapped in one rename, so a
//! reader never sees half an update), and persistentVolumeClaim bound to hostPath or
//! local PersistentVolumes. Contents are rewritten when the source object changes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::ResourceExt;
use kube::api::Api;

/// A volume problem, reported as the kubelet does (`FailedMount` events, the pod
/// stays in ContainerCreating).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MountError(pub String);

/// Where a pod's volumes live on the node.
pub fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join(uid)
}

fn plugin_dir(pod_dir: &Path, plugin: &str, name: &str) -> PathBuf {
    pod_dir.join("volumes").join(format!("kubernetes.io~{plugin}")).join(name)
}

/// Files to write: relative path → (content, mode).
type Files = BTreeMap<String, (Vec<u8>, u32)>;

fn items(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
    optional: bool,
) -> Result<Files, MountError> {
    let mut out = Files::new();
    match items {
        None => {
            for (k, v) in data {
                out.insert(k, (v, mode));
            }
        }
        Some(list) => {
            for it in list {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), (v.clone(), it.mode.map(|m| m as u32).unwrap_or(mode)));
                    }
                    None if optional => {}
                    None => return Err(MountError(format!("configuration key {:?} of {what} not found", it.key))),
                }
            }
        }
    }
    Ok(out)
}

/// Writes `files` into `dir` with the atomic writer's layout; a no-op if unchanged.
fn atomic_write(dir: &Path, files: &Files) -> Result<bool, MountError> {
    let io = |e: std::io::Error| MountError(format!("writing {}: {e}", dir.display()));
    std::fs::create_dir_all(dir).map_err(io)?;
    let data = dir.join("..data");
    let same = files.iter().all(|(p, (c, _))| std::fs::read(data.join(p)).ok().as_deref() == Some(c.as_slice()))
        && std::fs::read_link(&data).is_ok()
        && count_files(&data) == files.len();
    if same {
        return Ok(false);
    }
    let stamp = format!("..{}", chrono::Utc::now().format("%Y_%m_%d_%H_%M_%S.%9f"));
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(io)?;
    for (p, (content, mode)) in files {
        if p.starts_with('/') || p.split('/').any(|c| c == "..") {
            return Err(MountError(format!("invalid path {p:?} in a volume item")));
        }
        let path = fresh.join(p);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, content).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).map_err(io)?;
    }
    let old = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp).map_err(io)?;
    std::fs::rename(&tmp, &data).map_err(io)?;
    // The user-visible names: one link per top-level entry, through ..data.
    let tops: std::collections::BTreeSet<String> =
        files.keys().map(|p| p.split('/').next().unwrap_or(p).to_string()).collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{top}"), &link).map_err(io)?;
        }
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with("..") && !tops.contains(&name) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if let Some(old) = old.filter(|o| o.as_os_str() != stamp.as_str()) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

fn downward_files(
    pod: &Pod,
    list: &[DownwardAPIVolumeFile],
    mode: u32,
    node: &str,
    host_ip: &str,
) -> Result<Files, MountError> {
    let mut out = Files::new();
    for f in list {
        let value = if let Some(r) = &f.field_ref {
            match r.field_path.as_str() {
                "metadata.labels" => kv_lines(pod.metadata.labels.as_ref()),
                "metadata.annotations" => kv_lines(pod.metadata.annotations.as_ref()),
                p => super::env::pod_field(pod, p, node, host_ip)
                    .ok_or_else(|| MountError(format!("unsupported fieldPath {p:?} in a downwardAPI volume")))?,
            }
        } else if let Some(r) = &f.resource_field_ref {
            // Resource values for files: the container's value, else the node's.
            let c = pod
                .spec
                .as_ref()
                .and_then(|s| s.containers.iter().find(|c| Some(&c.name) == r.container_name.as_ref()));
            let res = c.and_then(|c| c.resources.as_ref());
            let (kind, name) = r.resource.split_once('.').unwrap_or(("", ""));
            let q = match kind {
                "limits" => res.and_then(|x| x.limits.as_ref()).and_then(|m| m.get(name)),
                _ => res.and_then(|x| x.requests.as_ref()).and_then(|m| m.get(name)),
            };
            let v = q.and_then(|q| crate::server::scheduler::parse_quantity(&q.0)).unwrap_or(0.0);
            let div = r
                .divisor
                .as_ref()
                .and_then(|d| crate::server::scheduler::parse_quantity(&d.0))
                .filter(|d| *d > 0.0)
                .unwrap_or(1.0);
            format!("{}", (v / div).ceil() as i64)
        } else {
            continue;
        };
        out.insert(f.path.clone(), (value.into_bytes(), f.mode.map(|m| m as u32).unwrap_or(mode)));
    }
    Ok(out)
}

fn kv_lines(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| m.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

fn cm_data(cm: ConfigMap) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> =
        cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    for (k, v) in cm.binary_data.unwrap_or_default() {
        d.insert(k, v.0);
    }
    d
}

fn secret_data(s: Secret) -> BTreeMap<String, Vec<u8>> {
    let mut d: BTreeMap<String, Vec<u8>> = s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        d.insert(k, v.into_bytes());
    }
    d
}

/// What the pod's volumes need from the node.
pub struct VolumeCtx<'a> {
    /// The API client (the node's identity).
    pub client: &'a kube::Client,
    /// `<data-dir>/agent/pods`.
    pub root: &'a Path,
    /// This node's name.
    pub node: &'a str,
    /// This node's IP.
    pub host_ip: &'a str,
}

/// Sets up (or refreshes) every volume of `pod`; returns the host path of each by name.
pub async fn setup(ctx: &VolumeCtx<'_>, pod: &Pod) -> Result<BTreeMap<String, PathBuf>, MountError> {
    let uid = pod.uid().unwrap_or_default();
    let ns = pod.namespace().unwrap_or_default();
    let dir = pod_dir(ctx.root, &uid);
    let mut out = BTreeMap::new();
    let vols: Vec<Volume> = pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let io = |p: &Path, e: std::io::Error| MountError(format!("{}: {e}", p.display()));
    for v in vols {
        let path = if let Some(ed) = &v.empty_dir {
            let p = plugin_dir(&dir, "empty-dir", &v.name);
            std::fs::create_dir_all(&p).map_err(|e| io(&p, e))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o777)).map_err(|e| io(&p, e))?;
            if ed.medium.as_deref() == Some("Memory") && !is_mountpoint(&p) {
                let size = ed.size_limit.as_ref().map(|q| format!("size={}", q.0.trim_end_matches('i')));
                nix::mount::mount(Some("tmpfs"), &p, Some("tmpfs"), nix::mount::MsFlags::empty(), size.as_deref())
                    .map_err(|e| MountError(format!("mounting tmpfs for emptyDir {}: {e}", v.name)))?;
            }
            p
        } else if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            host_path_check(&p, hp.type_.as_deref().unwrap_or(""))?;
            p
        } else if let Some(src) = &v.config_map {
            let p = plugin_dir(&dir, "configmap", &v.name);
            let mode = src.default_mode.map(|m| m as u32).unwrap_or(0o644);
            atomic_write(&p, &configmap_files(ctx, &ns, &src.name, src.optional, src.items.as_ref(), mode).await?)?;
            p
        } else if let Some(src) = &v.secret {
            let p = plugin_dir(&dir, "secret", &v.name);
            let name = src.secret_name.clone().unwrap_or_default();
            let mode = src.default_mode.map(|m| m as u32).unwrap_or(0o644);
            atomic_write(&p, &secret_files(ctx, &ns, &name, src.optional, src.items.as_ref(), mode).await?)?;
            p
        } else if let Some(src) = &v.downward_api {
            let p = plugin_dir(&dir, "downward-api", &v.name);
            let mode = src.default_mode.map(|m| m as u32).unwrap_or(0o644);
            atomic_write(
                &p,
                &downward_files(pod, src.items.as_deref().unwrap_or_default(), mode, ctx.node, ctx.host_ip)?,
            )?;
            p
        } else if let Some(src) = &v.projected {
            let p = plugin_dir(&dir, "projected", &v.name);
            let mode = src.default_mode.map(|m| m as u32).unwrap_or(0o644);
            let mut files = Files::new();
            for s in src.sources.iter().flatten() {
                if let Some(c) = &s.config_map {
                    files.extend(configmap_files(ctx, &ns, &c.name, c.optional, c.items.as_ref(), mode).await?);
                }
                if let Some(c) = &s.secret {
                    files.extend(secret_files(ctx, &ns, &c.name, c.optional, c.items.as_ref(), mode).await?);
                }
                if let Some(d) = &s.downward_api {
                    files.extend(downward_files(
                        pod,
                        d.items.as_deref().unwrap_or_default(),
                        mode,
                        ctx.node,
                        ctx.host_ip,
                    )?);
                }
                if let Some(t) = &s.service_account_token {
                    let file = p.join("..data").join(&t.path);
                    let token = sa_token(ctx, pod, t, &file).await?;
                    files.insert(t.path.clone(), (token.into_bytes(), mode));
                }
            }
            atomic_write(&p, &files)?;
            p
        } else if let Some(src) = &v.persistent_volume_claim {
            pvc_path(ctx, &ns, &src.claim_name).await?
        } else {
            // Volume types rk does not provide are left out; a container mounting one fails below.
            continue;
        };
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// A service-account token for the pod, bound to it (TokenRequest as the node): the
/// one already in the volume while it has more than a fifth of its life left, else a
/// new one, as the kubelet's token manager rotates them.
async fn sa_token(
    ctx: &VolumeCtx<'_>,
    pod: &Pod,
    src: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection,
    current: &Path,
) -> Result<String, MountError> {
    use base64::Engine;
    if let Ok(old) = std::fs::read_to_string(current) {
        let claims = old
            .split('.')
            .nth(1)
            .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(c) = claims
            && let (Some(iat), Some(exp)) = (c["iat"].as_i64(), c["exp"].as_i64())
        {
            let now = chrono::Utc::now().timestamp();
            if now < iat + (exp - iat) * 4 / 5 {
                return Ok(old);
            }
        }
    }
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    let mut spec = serde_json::json!({
        "expirationSeconds": src.expiration_seconds.unwrap_or(3600),
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod.metadata.name, "uid": pod.metadata.uid},
    });
    if let Some(a) = src.audience.as_ref().filter(|a| !a.is_empty()) {
        spec["audiences"] = serde_json::json!([a]);
    }
    let body = serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(serde_json::to_vec(&body).unwrap_or_default())
        .map_err(|e| MountError(e.to_string()))?;
    let out: serde_json::Value = ctx
        .client
        .request(req)
        .await
        .map_err(|e| MountError(format!("requesting a token for service account \"{sa}\": {e}")))?;
    out["status"]["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| MountError(format!("no token for service account \"{sa}\"")))
}

/// The files a configMap volume (or projected source) holds.
async fn configmap_files(
    ctx: &VolumeCtx<'_>,
    ns: &str,
    name: &str,
    optional: Option<bool>,
    list: Option<&Vec<KeyToPath>>,
    mode: u32,
) -> Result<Files, MountError> {
    let optional = optional == Some(true);
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let data = super::env::fetch(&api, "configmap", name, optional)
        .await
        .map_err(MountError)?
        .map(cm_data)
        .unwrap_or_default();
    items(data, list, mode, &format!("configmap {name}"), optional)
}

/// The files a secret volume (or projected source) holds.
async fn secret_files(
    ctx: &VolumeCtx<'_>,
    ns: &str,
    name: &str,
    optional: Option<bool>,
    list: Option<&Vec<KeyToPath>>,
    mode: u32,
) -> Result<Files, MountError> {
    let optional = optional == Some(true);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let data = super::env::fetch(&api, "secret", name, optional)
        .await
        .map_err(MountError)?
        .map(secret_data)
        .unwrap_or_default();
    items(data, list, mode, &format!("secret {name}"), optional)
}

async fn pvc_path(ctx: &VolumeCtx<'_>, ns: &str, claim: &str) -> Result<PathBuf, MountError> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let pvc = pvcs
        .get_opt(claim)
        .await
        .map_err(|e| MountError(format!("reading persistentvolumeclaim \"{claim}\": {e}")))?
        .ok_or_else(|| MountError(format!("persistentvolumeclaim \"{claim}\" not found")))?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| MountError(format!("persistentvolumeclaim \"{claim}\" is not bound")))?;
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get_opt(&pv_name)
        .await
        .map_err(|e| MountError(format!("reading persistentvolume \"{pv_name}\": {e}")))?
        .ok_or_else(|| MountError(format!("persistentvolume \"{pv_name}\" not found")))?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or(spec.local.map(|l| l.path))
        .ok_or_else(|| MountError(format!("persistentvolume \"{pv_name}\" is neither hostPath nor local")))?;
    let p = PathBuf::from(path);
    std::fs::create_dir_all(&p).map_err(|e| MountError(format!("{}: {e}", p.display())))?;
    Ok(p)
}

fn host_path_check(p: &Path, kind: &str) -> Result<(), MountError> {
    let md = std::fs::metadata(p);
    let fail = |what: &str| Err(MountError(format!("hostPath type check failed: {} is not a {what}", p.display())));
    use std::os::unix::fs::FileTypeExt;
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => {
            if md.is_err() {
                std::fs::create_dir_all(p).map_err(|e| MountError(format!("creating {}: {e}", p.display())))?;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            }
            Ok(())
        }
        "FileOrCreate" => {
            if md.is_err() {
                if let Some(parent) = p.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                std::fs::write(p, b"").map_err(|e| MountError(format!("creating {}: {e}", p.display())))?;
            }
            Ok(())
        }
        "Directory" if md.as_ref().is_ok_and(|m| m.is_dir()) => Ok(()),
        "Directory" => fail("directory"),
        "File" if md.as_ref().is_ok_and(|m| m.is_file()) => Ok(()),
        "File" => fail("file"),
        "Socket" if md.as_ref().is_ok_and(|m| m.file_type().is_socket()) => Ok(()),
        "Socket" => fail("socket"),
        "CharDevice" if md.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => Ok(()),
        "CharDevice" => fail("character device"),
        "BlockDevice" if md.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => Ok(()),
        "BlockDevice" => fail("block device"),
        other => Err(MountError(format!("unknown hostPath type {other:?}"))),
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = p.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// Removes a pod's volumes (unmounting tmpfs emptyDirs) once its containers are gone.
pub fn teardown(root: &Path, uid: &str) {
    let dir = pod_dir(root, uid);
    let ed = dir.join("volumes").join("kubernetes.io~empty-dir");
    if let Ok(rd) = std::fs::read_dir(&ed) {
        for e in rd.flatten() {
            if is_mountpoint(&e.path()) {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(pod = uid, error = %e, "removing the pod directory failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writer_swaps_contents() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("v");
        let mut f = Files::new();
        f.insert("a".into(), (b"1".to_vec(), 0o644));
        f.insert("sub/b".into(), (b"2".to_vec(), 0o600));
        assert!(atomic_write(&d, &f).unwrap());
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"1");
        assert_eq!(std::fs::read(d.join("sub/b")).unwrap(), b"2");
        assert!(!atomic_write(&d, &f).unwrap(), "unchanged contents are not rewritten");
        f.insert("a".into(), (b"changed".to_vec(), 0o644));
        f.remove("sub/b");
        assert!(atomic_write(&d, &f).unwrap());
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"changed");
        assert!(!d.join("sub").exists());
        let entries = std::fs::read_dir(&d).unwrap().count();
        assert_eq!(entries, 3, "a, ..data and one timestamped dir");
    }
}
