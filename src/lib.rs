//! rk: a lightweight Kubernetes distribution in one executable.
#![deny(unsafe_code)]

pub mod agent;
pub mod api;
pub mod checks;
pub mod cli;
pub mod embedded;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod server;

// mimalloc rather than glibc's malloc: the API server's work is a stream of short-lived
// JSON trees built and freed on many threads, where glibc's per-thread arenas spent a
// fifth of the CPU in consolidating free lists and kept freed memory resident.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Whether a flag value is not a Kubernetes quantity ("4", "500m", "8Gi").
pub fn quantity_invalid(s: &str) -> bool {
    server::scheduler::parse_quantity(s).is_none_or(|q| q < 0.0)
}

/// The node name used when none is given: the host name, lower-cased.
pub fn default_node_name() -> String {
    hostname::get().map(|h| h.to_string_lossy().to_lowercase()).unwrap_or_else(|_| "rk-node".into())
}

static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// Marks the process's start, for [`component_ready`] (the first call wins).
pub fn mark_start() {
    let _ = STARTED.get_or_init(std::time::Instant::now);
}

/// Logs one line as a component of rk becomes ready, with how long after the
/// process started: `component ready component=datastore at_ms=12`.
pub fn component_ready(component: &str) {
    let at_ms = STARTED.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64;
    tracing::info!(component, at_ms, "component ready");
}

/// Tells systemd the service is ready (`READY=1` on `$NOTIFY_SOCKET`), if it asked.
pub fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let res = if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abs).and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", std::path::Path::new(&path))
    };
    if let Err(e) = res {
        tracing::warn!(error = %e, "notifying systemd failed");
    }
}
