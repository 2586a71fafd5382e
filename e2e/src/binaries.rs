//! Locating the etcd, kube-apiserver and kubectl binaries, building them once if needed.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
};

use anyhow::{Context, Result, bail};

/// Environment variables that, when all three are set, point at prebuilt binaries and skip
/// the build script (for CI images that ship them).
const ENV_OVERRIDES: [&str; 3] = [
    "IRONPOOL_ETCD",
    "IRONPOOL_KUBE_APISERVER",
    "IRONPOOL_KUBECTL",
];

/// Paths of the real control-plane binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// etcd server.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kubectl.
    pub kubectl: PathBuf,
}

impl Binaries {
    /// Returns the binaries, building them first if they are not cached yet.
    ///
    /// Uses `IRONPOOL_ETCD`, `IRONPOOL_KUBE_APISERVER` and `IRONPOOL_KUBECTL` when all three
    /// are set; otherwise runs `e2e/scripts/build-control-plane.sh` (a no-op when its cache
    /// under `${IRONPOOL_CACHE:-~/.cache/ironpool}` is warm), with its progress on stderr.
    /// The result is remembered for the life of the process, and a lock file in the cache
    /// directory keeps concurrent test binaries from building at the same time.
    pub fn ensure() -> Result<Binaries> {
        static CACHED: Mutex<Option<Binaries>> = Mutex::new(None);
        let mut cached = CACHED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = cached.as_ref() {
            return Ok(found.clone());
        }
        let found = match Self::from_env()? {
            Some(found) => found,
            None => Self::from_script()?,
        };
        found.check()?;
        *cached = Some(found.clone());
        Ok(found)
    }

    fn from_env() -> Result<Option<Binaries>> {
        let values: Vec<Option<PathBuf>> = ENV_OVERRIDES
            .iter()
            .map(|name| std::env::var_os(name).map(PathBuf::from))
            .collect();
        match values.as_slice() {
            [Some(etcd), Some(kube_apiserver), Some(kubectl)] => Ok(Some(Binaries {
                etcd: etcd.clone(),
                kube_apiserver: kube_apiserver.clone(),
                kubectl: kubectl.clone(),
            })),
            [None, None, None] => Ok(None),
            _ => bail!("set all of {ENV_OVERRIDES:?} or none of them"),
        }
    }

    fn from_script() -> Result<Binaries> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-control-plane.sh");
        let stdout = run_build_script(&script)?;
        parse_script_output(&stdout)
            .with_context(|| format!("reading the output of {}: {stdout:?}", script.display()))
    }

    fn check(&self) -> Result<()> {
        for path in [&self.etcd, &self.kube_apiserver, &self.kubectl] {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("control-plane binary {} is missing", path.display()))?;
            if !meta.is_file() {
                bail!("control-plane binary {} is not a file", path.display());
            }
        }
        Ok(())
    }
}

/// The helm CLI, built once from the `helm.sh/helm/v3` Go module by
/// `e2e/scripts/build-helm.sh` (a no-op when cached), or `IRONPOOL_HELM` when set. The
/// result is remembered for the life of the process; the same lock as the control-plane
/// build keeps concurrent test binaries from building it twice.
pub fn helm() -> Result<PathBuf> {
    static CACHED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = CACHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = cached.as_ref() {
        return Ok(found.clone());
    }
    let found = match std::env::var_os("IRONPOOL_HELM") {
        Some(path) => PathBuf::from(path),
        None => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-helm.sh");
            let stdout = run_build_script(&script)?;
            stdout
                .lines()
                .find_map(|line| line.trim().strip_prefix("HELM="))
                .map(PathBuf::from)
                .with_context(|| {
                    format!("{} printed no HELM= line: {stdout:?}", script.display())
                })?
        }
    };
    if !found.is_file() {
        bail!("helm binary {} is missing", found.display());
    }
    *cached = Some(found.clone());
    Ok(found)
}

/// Runs a build script under the build lock; returns its stdout (progress goes to stderr).
pub(crate) fn run_build_script(script: &Path) -> Result<String> {
    let _lock = BuildLock::acquire()?;
    let output = Command::new("bash")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}); its progress log is above on stderr",
            script.display(),
            output.status
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Parses the `ETCD=`, `KUBE_APISERVER=` and `KUBECTL=` lines the build script prints.
fn parse_script_output(stdout: &str) -> Result<Binaries> {
    let (mut etcd, mut kube_apiserver, mut kubectl) = (None, None, None);
    for line in BufReader::new(stdout.as_bytes()).lines() {
        let line = line?;
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let slot = match key {
            "ETCD" => &mut etcd,
            "KUBE_APISERVER" => &mut kube_apiserver,
            "KUBECTL" => &mut kubectl,
            _ => continue,
        };
        *slot = Some(PathBuf::from(value));
    }
    match (etcd, kube_apiserver, kubectl) {
        (Some(etcd), Some(kube_apiserver), Some(kubectl)) => Ok(Binaries {
            etcd,
            kube_apiserver,
            kubectl,
        }),
        _ => bail!("expected ETCD=, KUBE_APISERVER= and KUBECTL= lines"),
    }
}

/// An exclusive lock on `<cache>/.build.lock`, held while the build script runs.
struct BuildLock(File);

impl BuildLock {
    fn acquire() -> Result<BuildLock> {
        let cache = crate::cache_dir();
        std::fs::create_dir_all(&cache)
            .with_context(|| format!("creating cache directory {}", cache.display()))?;
        let path = cache.join(".build.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(BuildLock(file))
    }
}

impl Drop for BuildLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_script_output() {
        let out =
            "ETCD=/c/etcd-v3.6.16/etcd\nKUBE_APISERVER=/c/k/kube-apiserver\nKUBECTL=/c/k/kubectl\n";
        let b = parse_script_output(out).unwrap();
        assert_eq!(b.etcd, PathBuf::from("/c/etcd-v3.6.16/etcd"));
        assert_eq!(b.kube_apiserver, PathBuf::from("/c/k/kube-apiserver"));
        assert_eq!(b.kubectl, PathBuf::from("/c/k/kubectl"));
    }

    #[test]
    fn rejects_incomplete_output() {
        assert!(parse_script_output("ETCD=/x\n").is_err());
    }
}
