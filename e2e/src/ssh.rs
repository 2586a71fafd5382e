//! OpenSSH's client as the tests log in to a machine in rescue mode: a throwaway key pair,
//! and the options of a non-interactive login to a host whose key is new each boot.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use anyhow::{Result, bail};

/// Makes an ed25519 key pair without a passphrase at `path` (public key at `path.pub`) and
/// returns the public key line.
pub fn keygen(path: &Path, comment: &str) -> Result<String> {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .status()?;
    if !status.success() {
        bail!("ssh-keygen failed for {}", path.display());
    }
    Ok(std::fs::read_to_string(path.with_extension("pub"))?
        .trim()
        .to_string())
}

/// Arguments of `ssh` logging in with `key` only, without prompts, without checking or
/// recording the host key (a rescue ramdisk makes a new one each boot).
pub fn options(key: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = vec!["-i".into(), key.into()];
    for o in [
        "BatchMode=yes",
        "IdentitiesOnly=yes",
        "StrictHostKeyChecking=no",
        "UserKnownHostsFile=/dev/null",
        "ConnectTimeout=30",
        "LogLevel=ERROR",
    ] {
        v.push("-o".into());
        v.push(o.into());
    }
    v
}
