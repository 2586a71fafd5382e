//! Setting up a control plane for Ironpool: CRDs installed and Established, kubectl helpers.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::ControlPlane;

/// Runs a kubectl command; returns its stdout, or an error with its stderr.
pub fn kubectl_ok(cmd: &mut Command) -> Result<String> {
    crate::netlab::run(cmd)
}

/// The kinds Ironpool installs.
const KINDS: [&str; 3] = ["Machine", "Subnet", "Deployment"];

/// Where the apiserver publishes their OpenAPI v3 schemas.
const OPENAPI_PATH: &str = "/openapi/v3/apis/metal.ironpool.dev/v1alpha1";

/// `kubectl wait --for=condition=Established --timeout=60s` with `what` (CRD names, or
/// `-f <file or dir>`), again while a CRD created a moment ago has no `status.conditions`
/// yet: kubectl then fails at once ("accessor error: <nil>") instead of waiting.
pub fn wait_established(cp: &ControlPlane, what: &[&std::ffi::OsStr]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let wait = kubectl_ok(
            cp.kubectl()
                .args(["wait", "--for=condition=Established", "--timeout=60s"])
                .args(what),
        );
        match wait {
            Ok(_) => return Ok(()),
            Err(e) if e.to_string().contains("accessor error") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Applies the committed CRDs (`crds/yaml`), waits until each is Established, and then
/// until their schemas are published in the OpenAPI document, which the apiserver rebuilds
/// a moment after Established (`kubectl explain` and `--validate=strict` read it).
pub fn install_crds(cp: &ControlPlane) -> Result<()> {
    let dir = crate::repo_dir().join("crds/yaml");
    kubectl_ok(
        cp.kubectl()
            .args(["apply", "--server-side", "-f"])
            .arg(&dir),
    )?;
    wait_established(cp, &["-f".as_ref(), dir.as_os_str()])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut streak = 0;
    while streak < 2 {
        let doc = kubectl_ok(cp.kubectl().args(["get", "--raw", OPENAPI_PATH])).unwrap_or_default();
        let complete = KINDS
            .iter()
            .all(|k| doc.contains(&format!("\"dev.ironpool.metal.v1alpha1.{k}\"")));
        streak = if complete { streak + 1 } else { 0 };
        if Instant::now() > deadline {
            bail!("the schemas of {KINDS:?} were not all published at {OPENAPI_PATH} within 60s");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}
