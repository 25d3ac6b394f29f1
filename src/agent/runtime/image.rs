//! Images without a registry: building small OCI images in memory (rk's pause image,
//! test images), reading OCI-layout and `docker save` archives, and importing them
//! into containerd through its native API (content store → snapshots unpacked with
//! the diff service → image record), as `ctr images import` does.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use containerd_client::services::v1::snapshots::{CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, GetImageRequest, Image, InfoRequest, UpdateImageRequest, WriteAction,
    WriteContentRequest,
};
use containerd_client::tonic::{self, Request, transport::Channel};
use containerd_client::types::Descriptor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The containerd namespace the CRI plugin (and so Kubernetes) uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The snapshotter rk configures containerd with.
pub const SNAPSHOTTER: &str = "overlayfs";

const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const MT_DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// Why an image could not be built, read or imported.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Reading the archive failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The archive.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The archive is neither an OCI layout nor a `docker save` archive, or is inconsistent.
    #[error("{path}: {reason}")]
    Format {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// containerd refused a step of the import.
    #[error("{what}: {source}")]
    Containerd {
        /// The step.
        what: String,
        /// containerd's answer.
        #[source]
        source: tonic::Status,
    },
}

/// One file of an image built in memory.
#[derive(Clone, Debug)]
pub struct FileEntry {
    /// Path inside the image, without a leading `/`.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// What it is.
    pub kind: FileKind,
}

/// The kinds of [`FileEntry`].
#[derive(Clone, Debug)]
pub enum FileKind {
    /// A regular file with this content.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A directory.
    Dir,
}

impl FileEntry {
    /// A regular file.
    pub fn file(path: &str, mode: u32, content: Vec<u8>) -> FileEntry {
        FileEntry { path: path.into(), mode, kind: FileKind::File(content) }
    }
    /// A symbolic link.
    pub fn symlink(path: &str, target: &str) -> FileEntry {
        FileEntry { path: path.into(), mode: 0o777, kind: FileKind::Symlink(target.into()) }
    }
    /// A directory.
    pub fn dir(path: &str, mode: u32) -> FileEntry {
        FileEntry { path: path.into(), mode, kind: FileKind::Dir }
    }
}

/// A one-layer image to build in memory.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// Its full name (`rk.local/pause:1`, `docker.io/library/busybox:latest`).
    pub name: String,
    /// The files of its single layer.
    pub files: Vec<FileEntry>,
    /// The image's ENTRYPOINT.
    pub entrypoint: Vec<String>,
    /// The image's CMD.
    pub cmd: Vec<String>,
    /// The image's environment (`KEY=value`).
    pub env: Vec<String>,
}

fn sha256_hex(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn tar_append(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, kind: &FileKind) -> std::io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    match kind {
        FileKind::File(data) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data.as_slice())
        }
        FileKind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target)
        }
        FileKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty())
        }
    }
}

/// The blobs of an image built from `spec`: (manifest, config, layer) with their digests.
fn build_blobs(spec: &ImageSpec) -> std::io::Result<[(String, Vec<u8>); 3]> {
    let mut layer = tar::Builder::new(Vec::new());
    for f in &spec.files {
        tar_append(&mut layer, &f.path, f.mode, &f.kind)?;
    }
    let layer = layer.into_inner()?;
    let layer_digest = sha256_hex(&layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut cfg = json!({"Env": spec.env});
    if !spec.entrypoint.is_empty() {
        cfg["Entrypoint"] = json!(spec.entrypoint);
    }
    if !spec.cmd.is_empty() {
        cfg["Cmd"] = json!(spec.cmd);
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config_digest = sha256_hex(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MT_OCI_LAYER, "digest": layer_digest, "size": layer.len()}],
    }))?;
    Ok([(sha256_hex(&manifest), manifest), (config_digest, config), (layer_digest, layer)])
}

/// An OCI image layout archive (`index.json`, `oci-layout`, `blobs/sha256/*`) of the
/// image `spec` describes, as `rk images import` and the images directory read it.
pub fn oci_archive(spec: &ImageSpec) -> std::io::Result<Vec<u8>> {
    let blobs = build_blobs(spec)?;
    let (manifest_digest, manifest) = (&blobs[0].0, &blobs[0].1);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": MT_OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
                       "annotations": {"io.containerd.image.name": spec.name,
                                       "org.opencontainers.image.ref.name": spec.name}}],
    }))?;
    let mut b = tar::Builder::new(Vec::new());
    tar_append(&mut b, "oci-layout", 0o644, &FileKind::File(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()))?;
    tar_append(&mut b, "index.json", 0o644, &FileKind::File(index))?;
    for (digest, data) in blobs {
        let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
        tar_append(&mut b, &path, 0o644, &FileKind::File(data))?;
    }
    b.into_inner()
}

/// Where a blob's bytes are.
#[derive(Clone, Debug)]
enum Source {
    /// A byte range of the archive file.
    Archive { offset: u64, size: u64 },
    /// Made during the import (a manifest written for a `docker save` image).
    Memory(Vec<u8>),
}

#[derive(Clone, Debug)]
struct Blob {
    media_type: String,
    digest: String,
    size: i64,
    source: Source,
}

/// One image found in an archive, ready to import.
#[derive(Debug)]
struct Found {
    name: String,
    manifest: Blob,
    config: Blob,
    layers: Vec<Blob>,
    diff_ids: Vec<String>,
}

/// A tar archive indexed by member path, read in place.
struct Archive {
    path: PathBuf,
    file: std::fs::File,
    members: HashMap<String, (u64, u64)>,
}

fn clean(p: &str) -> String {
    let p = p.trim_start_matches("./").trim_start_matches('/');
    p.to_string()
}

impl Archive {
    fn open(path: &Path) -> Result<Archive, ImageError> {
        let io = |source| ImageError::Io { path: path.to_path_buf(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut members = HashMap::new();
        let mut links = Vec::new();
        {
            let mut ar = tar::Archive::new(&file);
            for entry in ar.entries().map_err(io)? {
                let entry = entry.map_err(io)?;
                let name = clean(&entry.path().map_err(io)?.to_string_lossy());
                match entry.header().entry_type() {
                    tar::EntryType::Regular | tar::EntryType::Continuous => {
                        members.insert(name, (entry.raw_file_position(), entry.size()));
                    }
                    tar::EntryType::Symlink | tar::EntryType::Link => {
                        if let Ok(Some(t)) = entry.link_name() {
                            links.push((name, t.to_string_lossy().to_string(), entry.header().entry_type()));
                        }
                    }
                    _ => {}
                }
            }
        }
        // `docker save` may store a layer once and link to it from other paths.
        for (name, target, kind) in links {
            let target = if kind == tar::EntryType::Symlink {
                let base = Path::new(&name).parent().unwrap_or(Path::new(""));
                normalize(&base.join(target))
            } else {
                clean(&target)
            };
            if let Some(&m) = members.get(&target) {
                members.insert(name, m);
            }
        }
        Ok(Archive { path: path.to_path_buf(), file, members })
    }

    fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Format { path: self.path.clone(), reason: reason.into() }
    }

    fn read(&self, member: &str) -> Result<Vec<u8>, ImageError> {
        let &(offset, size) =
            self.members.get(member).ok_or_else(|| self.bad(format!("no {member} in the archive")))?;
        if size > 64 << 20 {
            return Err(self.bad(format!("{member} is too large for metadata")));
        }
        self.read_range(offset, size)
    }

    fn read_range(&self, offset: u64, size: u64) -> Result<Vec<u8>, ImageError> {
        let mut f = &self.file;
        let io = |source| ImageError::Io { path: self.path.clone(), source };
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0; size as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    fn json(&self, member: &str) -> Result<Value, ImageError> {
        serde_json::from_slice(&self.read(member)?).map_err(|e| self.bad(format!("{member}: {e}")))
    }

    /// The blob a descriptor names, checked to be in the archive.
    fn blob(&self, desc: &Value) -> Result<Blob, ImageError> {
        let digest = desc["digest"].as_str().ok_or_else(|| self.bad("a descriptor without a digest"))?;
        let member = format!("blobs/{}", digest.replacen(':', "/", 1));
        let &(offset, size) = self.members.get(&member).ok_or_else(|| self.bad(format!("blob {digest} is missing")))?;
        Ok(Blob {
            media_type: desc["mediaType"].as_str().unwrap_or(MT_OCI_LAYER).to_string(),
            digest: digest.to_string(),
            size: size as i64,
            source: Source::Archive { offset, size },
        })
    }

    /// Every image the archive holds, resolved to this platform's manifest.
    fn images(&self) -> Result<Vec<Found>, ImageError> {
        if self.members.contains_key("index.json") {
            self.oci_images()
        } else if self.members.contains_key("manifest.json") {
            self.docker_images()
        } else {
            Err(self.bad("neither an OCI image layout (index.json) nor a docker archive (manifest.json)"))
        }
    }

    fn oci_images(&self) -> Result<Vec<Found>, ImageError> {
        let index = self.json("index.json")?;
        let mut out = Vec::new();
        for desc in index["manifests"].as_array().into_iter().flatten() {
            let ann = &desc["annotations"];
            let name = ann["io.containerd.image.name"]
                .as_str()
                .or_else(|| ann["org.opencontainers.image.ref.name"].as_str().filter(|n| n.contains([':', '/'])))
                .ok_or_else(|| self.bad("an image without a name (io.containerd.image.name annotation)"))?;
            let manifest_desc = self.platform_manifest(desc)?;
            let manifest = self.blob(&manifest_desc)?;
            let mbody: Value = serde_json::from_slice(&self.source_bytes(&manifest)?)
                .map_err(|e| self.bad(format!("manifest {}: {e}", manifest.digest)))?;
            out.push(self.found(normalize_name(name), manifest, &mbody)?);
        }
        Ok(out)
    }

    /// `desc` itself if it is a manifest, or the manifest for this platform if an index.
    fn platform_manifest(&self, desc: &Value) -> Result<Value, ImageError> {
        let mt = desc["mediaType"].as_str().unwrap_or("");
        if mt != MT_OCI_INDEX && mt != MT_DOCKER_LIST {
            return Ok(desc.clone());
        }
        let blob = self.blob(desc)?;
        let index: Value =
            serde_json::from_slice(&self.source_bytes(&blob)?).map_err(|e| self.bad(format!("index: {e}")))?;
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["platform"]["os"] == "linux"
                    && m["platform"]["architecture"] == arch
                    && self
                        .members
                        .contains_key(&format!("blobs/{}", m["digest"].as_str().unwrap_or("").replacen(':', "/", 1)))
            })
            .cloned()
            .ok_or_else(|| self.bad(format!("no linux/{arch} image in the archive")))
    }

    fn found(&self, name: String, manifest: Blob, mbody: &Value) -> Result<Found, ImageError> {
        let config = self.blob(&mbody["config"])?;
        let cbody: Value = serde_json::from_slice(&self.source_bytes(&config)?)
            .map_err(|e| self.bad(format!("image config {}: {e}", config.digest)))?;
        let layers =
            mbody["layers"].as_array().into_iter().flatten().map(|l| self.blob(l)).collect::<Result<Vec<_>, _>>()?;
        let diff_ids: Vec<String> = cbody["rootfs"]["diff_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(String::from))
            .collect();
        if diff_ids.len() != layers.len() {
            return Err(self.bad(format!("{name}: {} layers but {} diff_ids", layers.len(), diff_ids.len())));
        }
        Ok(Found { name, manifest, config, layers, diff_ids })
    }

    fn docker_images(&self) -> Result<Vec<Found>, ImageError> {
        let list = self.json("manifest.json")?;
        let mut out = Vec::new();
        for m in list.as_array().into_iter().flatten() {
            let config_path = m["Config"].as_str().ok_or_else(|| self.bad("manifest.json: an entry without Config"))?;
            let config = self.hashed(config_path, MT_DOCKER_CONFIG)?;
            let layers = m["Layers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| self.hashed(l.as_str().unwrap_or(""), MT_DOCKER_LAYER))
                .collect::<Result<Vec<_>, _>>()?;
            let body = serde_json::to_vec(&json!({
                "schemaVersion": 2, "mediaType": MT_DOCKER_MANIFEST,
                "config": {"mediaType": config.media_type, "digest": config.digest, "size": config.size},
                "layers": layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect::<Vec<_>>(),
            }))
            .map_err(|e| self.bad(e.to_string()))?;
            let mbody: Value = serde_json::from_slice(&body).map_err(|e| self.bad(e.to_string()))?;
            let manifest = Blob {
                media_type: MT_DOCKER_MANIFEST.into(),
                digest: sha256_hex(&body),
                size: body.len() as i64,
                source: Source::Memory(body),
            };
            let tags: Vec<&str> = m["RepoTags"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            if tags.is_empty() {
                return Err(self.bad("an image without RepoTags"));
            }
            for tag in tags {
                let mut f = self.found(normalize_name(tag), manifest.clone(), &mbody)?;
                f.config = config.clone();
                f.layers = layers.clone();
                out.push(f);
            }
        }
        Ok(out)
    }

    /// A member as a blob, its digest computed (docker archives name files by path).
    fn hashed(&self, member: &str, media_type: &str) -> Result<Blob, ImageError> {
        let member = clean(member);
        let &(offset, size) =
            self.members.get(&member).ok_or_else(|| self.bad(format!("no {member} in the archive")))?;
        let io = |source| ImageError::Io { path: self.path.clone(), source };
        let mut f = &self.file;
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut h = Sha256::new();
        let mut left = size;
        let mut buf = vec![0; 1 << 20];
        while left > 0 {
            let n = (left as usize).min(buf.len());
            f.read_exact(&mut buf[..n]).map_err(io)?;
            h.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(Blob {
            media_type: media_type.into(),
            digest: format!("sha256:{}", hex(&h.finalize())),
            size: size as i64,
            source: Source::Archive { offset, size },
        })
    }

    fn source_bytes(&self, b: &Blob) -> Result<Vec<u8>, ImageError> {
        match &b.source {
            Source::Memory(v) => Ok(v.clone()),
            Source::Archive { offset, size } => self.read_range(*offset, *size),
        }
    }
}

fn normalize(p: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(s) => parts.push(s.to_string_lossy().to_string()),
            _ => {}
        }
    }
    parts.join("/")
}

/// A reference as containerd stores it: `busybox` → `docker.io/library/busybox:latest`.
pub fn normalize_name(name: &str) -> String {
    let (repo, suffix) = match name.find('@') {
        Some(i) => (&name[..i], &name[i..]),
        None => {
            let last = name.rsplit('/').next().unwrap_or(name);
            match last.rfind(':') {
                Some(i) => {
                    let cut = name.len() - last.len() + i;
                    (&name[..cut], &name[cut..])
                }
                None => (name, ":latest"),
            }
        }
    };
    let first = repo.split('/').next().unwrap_or("");
    let domain = repo.contains('/') && (first.contains(['.', ':']) || first == "localhost");
    let repo = if domain {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    };
    format!("{repo}{suffix}")
}

/// containerd's identity of a stack of layers (the snapshot names).
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => sha256_hex(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn req<T>(msg: T, lease: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(K8S_NAMESPACE));
    if let Some(l) = lease.and_then(|l| l.parse().ok()) {
        r.metadata_mut().insert("containerd-lease", l);
    }
    r
}

fn cd(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> ImageError {
    let what = what.into();
    move |source| ImageError::Containerd { what, source }
}

/// The importer: one containerd connection.
pub struct Importer {
    channel: Channel,
}

impl Importer {
    /// An importer on an open channel to containerd.
    pub fn new(channel: Channel) -> Importer {
        Importer { channel }
    }

    /// Imports every image of the archive at `path`; returns their names.
    pub async fn import_file(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let p = path.to_path_buf();
        let (archive, found) = tokio::task::spawn_blocking(move || {
            let a = Archive::open(&p)?;
            let f = a.images()?;
            Ok::<_, ImageError>((a, f))
        })
        .await
        .map_err(|e| ImageError::Format { path: path.to_path_buf(), reason: e.to_string() })??;
        let archive = std::sync::Arc::new(archive);
        let mut names = Vec::new();
        for f in found {
            self.import_one(&archive, &f).await?;
            names.push(f.name);
        }
        Ok(names)
    }

    /// Imports an image built in memory.
    pub async fn import_spec(&self, spec: &ImageSpec) -> Result<(), ImageError> {
        let bytes = oci_archive(spec).map_err(|source| ImageError::Io { path: PathBuf::from(&spec.name), source })?;
        let path = std::env::temp_dir().join(format!("rk-image-{}.tar", uuid::Uuid::new_v4()));
        std::fs::write(&path, bytes).map_err(|source| ImageError::Io { path: path.clone(), source })?;
        let res = self.import_file(&path).await;
        let _ = std::fs::remove_file(&path);
        res.map(|_| ())
    }

    async fn import_one(&self, archive: &std::sync::Arc<Archive>, f: &Found) -> Result<(), ImageError> {
        use containerd_client::services::v1::leases_client::LeasesClient;
        use containerd_client::services::v1::{CreateRequest as LeaseCreate, DeleteRequest as LeaseDelete};
        // A lease keeps the blobs and snapshots from containerd's garbage collector
        // until the image record refers to them.
        let lease_id = format!("rk-import-{}", uuid::Uuid::new_v4());
        let mut leases = LeasesClient::new(self.channel.clone());
        let expire =
            (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        leases
            .create(req(
                LeaseCreate {
                    id: lease_id.clone(),
                    labels: HashMap::from([("containerd.io/gc.expire".into(), expire)]),
                },
                None,
            ))
            .await
            .map_err(cd("creating an import lease"))?;
        let res = self.import_leased(archive, f, &lease_id).await;
        let _ = leases.delete(req(LeaseDelete { id: lease_id, sync: false }, None)).await;
        res
    }

    async fn import_leased(&self, archive: &std::sync::Arc<Archive>, f: &Found, lease: &str) -> Result<(), ImageError> {
        let chains = chain_ids(&f.diff_ids);
        for layer in &f.layers {
            self.write_blob(archive, layer, HashMap::new(), lease).await?;
        }
        let mut config_labels = HashMap::new();
        if let Some(top) = chains.last() {
            config_labels.insert(format!("containerd.io/gc.ref.snapshot.{SNAPSHOTTER}"), top.clone());
        }
        self.write_blob(archive, &f.config, config_labels, lease).await?;
        let mut manifest_labels =
            HashMap::from([("containerd.io/gc.ref.content.config".to_string(), f.config.digest.clone())]);
        for (i, l) in f.layers.iter().enumerate() {
            manifest_labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.clone());
        }
        self.write_blob(archive, &f.manifest, manifest_labels, lease).await?;
        self.unpack(f, &chains, lease).await?;
        self.put_image(f).await
    }

    /// Writes a blob to the content store unless it is there already.
    async fn write_blob(
        &self,
        archive: &std::sync::Arc<Archive>,
        b: &Blob,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), ImageError> {
        use containerd_client::services::v1::content_client::ContentClient;
        let mut content = ContentClient::new(self.channel.clone());
        if content.info(req(InfoRequest { digest: b.digest.clone() }, Some(lease))).await.is_ok() {
            if !labels.is_empty() {
                // Labels of existing content are set by an update of just those fields.
                use containerd_client::services::v1::{Info, UpdateRequest};
                let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
                let info = Info { digest: b.digest.clone(), labels, ..Default::default() };
                let mask = prost_types::FieldMask { paths };
                content
                    .update(req(UpdateRequest { info: Some(info), update_mask: Some(mask) }, Some(lease)))
                    .await
                    .map_err(cd(format!("labelling blob {}", b.digest)))?;
            }
            return Ok(());
        }
        const CHUNK: u64 = 1 << 20;
        let reference = format!("rk-{}-{}", b.digest, uuid::Uuid::new_v4());
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        let total = b.size;
        let expected = b.digest.clone();
        let source = b.source.clone();
        let archive = archive.clone();
        let feeder = tokio::spawn(async move {
            let base = WriteContentRequest { r#ref: reference, total, expected, ..Default::default() };
            let mut offset = 0u64;
            while (offset as i64) < total {
                let n = CHUNK.min(total as u64 - offset);
                let data = match &source {
                    Source::Memory(v) => v[offset as usize..(offset + n) as usize].to_vec(),
                    Source::Archive { offset: at, .. } => {
                        let (a, at) = (archive.clone(), *at + offset);
                        match tokio::task::spawn_blocking(move || a.read_range(at, n)).await {
                            Ok(Ok(d)) => d,
                            _ => return,
                        }
                    }
                };
                let msg = WriteContentRequest {
                    action: WriteAction::Write as i32,
                    offset: offset as i64,
                    data,
                    ..base.clone()
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
                offset += n;
            }
            let commit = WriteContentRequest {
                action: WriteAction::Commit as i32,
                offset: offset as i64,
                labels,
                ..base.clone()
            };
            let _ = tx.send(commit).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let what = format!("writing blob {}", b.digest);
        let mut r = Request::new(stream);
        r.metadata_mut().insert("containerd-namespace", tonic::metadata::MetadataValue::from_static(K8S_NAMESPACE));
        if let Ok(l) = lease.parse() {
            r.metadata_mut().insert("containerd-lease", l);
        }
        let res = async {
            let mut responses = content.write(r).await?.into_inner();
            while responses.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        }
        .await;
        feeder.abort();
        match res {
            Ok(()) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(cd(what)(s)),
        }
    }

    /// Unpacks the layers into committed snapshots named by chain ID.
    async fn unpack(&self, f: &Found, chains: &[String], lease: &str) -> Result<(), ImageError> {
        use containerd_client::services::v1::diff_client::DiffClient;
        use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
        let mut snaps = SnapshotsClient::new(self.channel.clone());
        let mut diff = DiffClient::new(self.channel.clone());
        let mut parent = String::new();
        for (layer, chain) in f.layers.iter().zip(chains) {
            let stat = snaps
                .stat(req(StatSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key: chain.clone() }, Some(lease)))
                .await;
            if stat.is_ok() {
                parent = chain.clone();
                continue;
            }
            let key = format!("extract-{}-{chain}", uuid::Uuid::new_v4());
            let mounts = snaps
                .prepare(req(
                    PrepareSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::from([("containerd.io/snapshot.ref".into(), chain.clone())]),
                    },
                    Some(lease),
                ))
                .await
                .map_err(cd(format!("preparing a snapshot for layer {}", layer.digest)))?
                .into_inner()
                .mounts;
            let desc = Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            };
            let applied = diff
                .apply(req(
                    ApplyRequest { diff: Some(desc), mounts, payloads: HashMap::new(), sync_fs: false },
                    Some(lease),
                ))
                .await;
            if let Err(e) = applied {
                use containerd_client::services::v1::snapshots::RemoveSnapshotRequest;
                let _ = snaps
                    .remove(req(RemoveSnapshotRequest { snapshotter: SNAPSHOTTER.into(), key }, Some(lease)))
                    .await;
                return Err(cd(format!("applying layer {}", layer.digest))(e));
            }
            let commit = snaps
                .commit(req(
                    CommitSnapshotRequest {
                        snapshotter: SNAPSHOTTER.into(),
                        name: chain.clone(),
                        key,
                        labels: HashMap::new(),
                    },
                    Some(lease),
                ))
                .await;
            match commit {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::AlreadyExists => {}
                Err(s) => return Err(cd(format!("committing layer {}", layer.digest))(s)),
            }
            parent = chain.clone();
        }
        Ok(())
    }

    /// Creates the image record, or points an existing one at this manifest.
    async fn put_image(&self, f: &Found) -> Result<(), ImageError> {
        use containerd_client::services::v1::images_client::ImagesClient;
        let mut images = ImagesClient::new(self.channel.clone());
        let target = Descriptor {
            media_type: f.manifest.media_type.clone(),
            digest: f.manifest.digest.clone(),
            size: f.manifest.size,
            annotations: HashMap::new(),
        };
        let image = Image { name: f.name.clone(), labels: HashMap::new(), target: Some(target), ..Default::default() };
        let existing = images.get(req(GetImageRequest { name: f.name.clone() }, None)).await;
        match existing {
            Ok(cur)
                if cur.get_ref().image.as_ref().and_then(|i| i.target.as_ref()).map(|t| &t.digest)
                    == Some(&f.manifest.digest) =>
            {
                Ok(())
            }
            Ok(_) => images
                .update(req(
                    UpdateImageRequest { image: Some(image), update_mask: None, source_date_epoch: None },
                    None,
                ))
                .await
                .map(|_| ())
                .map_err(cd(format!("updating image {}", f.name))),
            Err(_) => images
                .create(req(CreateImageRequest { image: Some(image), source_date_epoch: None }, None))
                .await
                .map(|_| ())
                .map_err(cd(format!("creating image {}", f.name))),
        }
    }
}

/// The images containerd holds in the Kubernetes namespace: (name, digest, size of the manifest's blobs).
pub async fn list(channel: Channel) -> Result<Vec<(String, String)>, ImageError> {
    use containerd_client::services::v1::ListImagesRequest;
    use containerd_client::services::v1::images_client::ImagesClient;
    let mut images = ImagesClient::new(channel);
    let list = images.list(req(ListImagesRequest { filters: vec![] }, None)).await.map_err(cd("listing images"))?;
    let mut out: Vec<(String, String)> = list
        .into_inner()
        .images
        .into_iter()
        .filter(|i| !i.name.starts_with("sha256:"))
        .map(|i| (i.name, i.target.map(|t| t.digest).unwrap_or_default()))
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_as_docker_does() {
        assert_eq!(normalize_name("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize_name("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize_name("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize_name("rk.local/pause:1"), "rk.local/pause:1");
        assert_eq!(normalize_name("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize_name("quay.io/x/y@sha256:ab"), "quay.io/x/y@sha256:ab");
    }

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let d = vec!["sha256:a".to_string(), "sha256:b".to_string()];
        let c = chain_ids(&d);
        assert_eq!(c[0], "sha256:a");
        assert_eq!(c[1], sha256_hex(b"sha256:a sha256:b"));
    }

    #[test]
    fn a_built_archive_reads_back() {
        let spec = ImageSpec {
            name: "rk.local/test:1".into(),
            files: vec![
                FileEntry::dir("bin", 0o755),
                FileEntry::file("bin/x", 0o755, b"hi".to_vec()),
                FileEntry::symlink("bin/y", "x"),
            ],
            entrypoint: vec!["/bin/x".into()],
            cmd: vec![],
            env: vec!["PATH=/bin".into()],
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.tar");
        std::fs::write(&path, oci_archive(&spec).unwrap()).unwrap();
        let a = Archive::open(&path).unwrap();
        let found = a.images().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].name, "rk.local/test:1");
        assert_eq!(found[0].layers.len(), 1);
        assert_eq!(found[0].diff_ids[0], found[0].layers[0].digest);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, b"not a tar at all").unwrap();
        let err = Archive::open(&path).and_then(|a| a.images()).unwrap_err();
        assert!(err.to_string().contains("x.tar"), "{err}");
    }
}
