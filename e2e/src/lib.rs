//! Real-world test harness for Ironpool: a real etcd + kube-apiserver control plane (TLS,
//! RBAC) started from the test process, and helpers to talk to it.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let control_plane = ironpool_e2e::ControlPlane::shared()?;
//! let namespace = control_plane.create_namespace("machines").await?;
//! let client = control_plane.client().await?;
//! # let _ = (namespace, client);
//! # Ok(())
//! # }
//! ```
//!
//! The binaries come from `e2e/scripts/build-control-plane.sh` (built once and cached) or
//! from `IRONPOOL_ETCD`, `IRONPOOL_KUBE_APISERVER` and `IRONPOOL_KUBECTL`; see [`Binaries`].

pub mod argocd;
mod binaries;
pub mod bmc;
pub mod capi;
pub mod chart;
mod client;
pub mod cluster;
pub mod clusterctl;
mod control_plane;
pub mod dashboard;
pub mod disk_boot;
pub mod lab;
pub mod netlab;
pub mod node;
pub mod pki;
mod process;
pub mod prometheus;
pub mod qemu;
pub mod secret;
pub mod ssh;
pub mod storm;
pub mod webdriver;

pub use binaries::{Binaries, helm};
pub use control_plane::ControlPlane;

/// The repository root (where `crds/`, `examples/` and `e2e/` live).
pub fn repo_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cache directory: `$IRONPOOL_CACHE`, else `~/.cache/ironpool`.
pub fn cache_dir() -> std::path::PathBuf {
    match std::env::var_os("IRONPOOL_CACHE") {
        Some(dir) => dir.into(),
        None => std::env::var_os("HOME")
            .map(|home| std::path::PathBuf::from(home).join(".cache/ironpool"))
            .unwrap_or_else(|| std::env::temp_dir().join("ironpool-cache")),
    }
}
