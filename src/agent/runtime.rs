//! The container runtime below the kubelet: containerd, spoken to over its unix socket
//! with CRI (`runtime.v1`, crate `k8s-cri`) for pods and containers and with its
//! native API (crate `containerd-client`) for image import, on one tonic channel.

pub mod containerd;
pub mod image;
pub mod pause;
pub mod registries;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// Why the runtime could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The socket could not be connected.
    #[error("connecting to containerd at {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// CRI answered with an error.
    #[error("containerd at {path} does not answer CRI: {source}")]
    Cri {
        /// The socket.
        path: PathBuf,
        /// The answer.
        #[source]
        source: tonic::Status,
    },
}

/// A channel to containerd's socket.
pub async fn channel(path: &Path) -> Result<Channel, RuntimeError> {
    containerd_client::connect(path).await.map_err(|source| RuntimeError::Connect { path: path.to_path_buf(), source })
}

/// Connects and checks that CRI answers (`Version`).
pub async fn connect_cri(path: &Path) -> Result<Cri, RuntimeError> {
    let ch = tokio::time::timeout(Duration::from_secs(2), channel(path)).await.unwrap_or_else(|_| {
        Err(RuntimeError::Cri { path: path.into(), source: tonic::Status::deadline_exceeded("connect") })
    })?;
    let cri = Cri::new(ch);
    cri.rt()
        .version(k8s_cri::v1::VersionRequest { version: "v1".into() })
        .await
        .map_err(|source| RuntimeError::Cri { path: path.to_path_buf(), source })?;
    Ok(cri)
}

/// CRI clients on one channel; cheap to clone.
#[derive(Clone)]
pub struct Cri {
    channel: Channel,
}

impl Cri {
    /// CRI over `channel`.
    pub fn new(channel: Channel) -> Cri {
        Cri { channel }
    }
    /// The runtime service.
    pub fn rt(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    /// The image service.
    pub fn img(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    /// The channel, for containerd's native API.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// Imports rk's pause image, unless containerd has it already.
pub async fn ensure_pause_image(cri: &Cri) -> Result<(), image::ImageError> {
    let have = cri
        .img()
        .image_status(k8s_cri::v1::ImageStatusRequest {
            image: Some(k8s_cri::v1::ImageSpec { image: pause::PAUSE_IMAGE.into(), ..Default::default() }),
            verbose: false,
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().image)
        .is_some();
    if have {
        return Ok(());
    }
    let spec = pause::pause_image().ok_or_else(|| image::ImageError::Format {
        path: PathBuf::from(pause::PAUSE_IMAGE),
        reason: format!("no pause program for {}", std::env::consts::ARCH),
    })?;
    image::Importer::new(cri.channel()).import_spec(&spec).await?;
    tracing::info!(image = pause::PAUSE_IMAGE, "imported rk's pause image");
    Ok(())
}

/// Imports `<dir>/*.tar` (OCI layouts or `docker save` archives), skipping files
/// unchanged since they were last imported (size and mtime, kept in `.imported`).
pub async fn import_dir(cri: &Cri, dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let record = dir.join(".imported");
    let mut seen: std::collections::BTreeMap<String, String> =
        std::fs::read(&record).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
    let mut files: Vec<PathBuf> =
        rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "tar")).collect();
    files.sort();
    let importer = image::Importer::new(cri.channel());
    let mut changed = false;
    for f in files {
        let Ok(md) = std::fs::metadata(&f) else { continue };
        let stamp = format!("{}:{:?}", md.len(), md.modified().ok());
        let key = f.display().to_string();
        if seen.get(&key) == Some(&stamp) {
            continue;
        }
        match importer.import_file(&f).await {
            Ok(names) => {
                tracing::info!(file = %f.display(), images = ?names, "imported images");
                seen.insert(key, stamp);
                changed = true;
            }
            Err(e) => tracing::warn!(error = %e, "importing images failed"),
        }
    }
    if changed && let Ok(b) = serde_json::to_vec(&seen) {
        let _ = std::fs::write(&record, b);
    }
}
