//! Confinement of TFTP paths to the server's root: relative names only, no `..`, and the
//! resolved file (after following symlinks) must lie inside the root and be a regular file.

use std::path::{Component, Path, PathBuf};

use super::TftpError;

/// Resolves `requested` under `root` (which must already be canonical).
pub fn resolve(root: &Path, requested: &str) -> Result<PathBuf, TftpError> {
    let deny = |why: &str| Err(TftpError::AccessViolation(format!("'{requested}': {why}")));
    if requested.is_empty() || requested.contains('\0') {
        return deny("empty or contains NUL");
    }
    // PXE ROMs of some vendors send DOS-style separators.
    let normalised = requested.replace('\\', "/");
    let rel = Path::new(&normalised);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return deny("'..' is not allowed"),
            Component::RootDir | Component::Prefix(_) => {
                return deny("absolute paths are not allowed");
            }
        }
    }
    let joined = root.join(rel);
    let real = match joined.canonicalize() {
        Ok(p) => p,
        Err(_) => return Err(TftpError::NotFound(requested.to_string())),
    };
    if !real.starts_with(root) {
        return deny("resolves outside the TFTP root");
    }
    match real.metadata() {
        Ok(m) if m.is_file() => Ok(real),
        Ok(_) => deny("not a regular file"),
        Err(_) => Err(TftpError::NotFound(requested.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn confinement_table() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("efi")).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"ok").unwrap();
        std::fs::write(root.join("efi/ipxe.efi"), b"ok").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("link-out")).unwrap();
        std::os::unix::fs::symlink(root.join("undionly.kpxe"), root.join("link-in")).unwrap();
        let cases = [
            ("undionly.kpxe", "ok"),
            ("efi/ipxe.efi", "ok"),
            ("./efi//ipxe.efi", "ok"),
            ("efi\\ipxe.efi", "ok"),
            ("link-in", "ok"),
            ("../secret", "access"),
            ("efi/../../secret", "access"),
            ("/etc/passwd", "access"),
            ("link-out", "access"),
            ("efi", "access"),
            ("", "access"),
            ("missing", "notfound"),
        ];
        for (req, want) in cases {
            let got = match resolve(&root, req) {
                Ok(_) => "ok",
                Err(TftpError::AccessViolation(_)) => "access",
                Err(TftpError::NotFound(_)) => "notfound",
                Err(_) => "other",
            };
            assert_eq!(got, want, "{req}");
        }
    }
}
