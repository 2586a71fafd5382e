//! Setting up a control plane for Ironpool: CRDs installed and Established, kubectl helpers.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::ControlPlane;

/// Runs a kubectl command; returns its stdout, or an error with its stderr.
pub fn kubectl_ok(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies the committed CRDs (`crds/yaml`) and waits until each is Established.
pub fn install_crds(cp: &ControlPlane) -> Result<()> {
    let dir = crate::repo_dir().join("crds/yaml");
    kubectl_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(&dir),
    )?;
    kubectl_ok(
        cp.kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s", "-f"])
            .arg(&dir),
    )?;
    Ok(())
}
