//! Confinement of TFTP paths to the server's root. The *request* may not leave the root:
//! relative names only, no `..`, no absolute paths. Symlinks inside the root are the
//! administrator's (Debian's `/usr/lib/ipxe/ipxe.efi` points to `/boot/ipxe.efi`) and are
//! followed; what they resolve to must be a regular file, and a file outside the root must
//! also be world-readable (o+r), tftpd-hpa's rule for an unauthenticated protocol. So a
//! stray link to `/etc/shadow` or a private key stays refused.

use std::os::unix::fs::PermissionsExt;
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
    let inside = real.starts_with(root);
    match real.metadata() {
        Ok(m) if !m.is_file() => deny("not a regular file"),
        Ok(m) if !inside && m.permissions().mode() & 0o004 == 0 => {
            deny("a symlink leads outside the TFTP root to a file that is not world-readable")
        }
        Ok(_) => Ok(real),
        Err(_) => Err(TftpError::NotFound(requested.to_string())),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    #[test]
    fn confinement_table() {
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        let link = |target: &Path, name: &str, root: &Path| {
            std::os::unix::fs::symlink(target, root.join(name)).unwrap();
        };
        // Outside the root: a private file, a world-readable one (like Debian's
        // /boot/ipxe.efi), a directory and a device.
        let outside = tempfile::tempdir().unwrap();
        let out = outside.path();
        std::fs::write(out.join("secret"), b"x").unwrap();
        mode(&out.join("secret"), 0o600);
        std::fs::write(out.join("ipxe.efi"), b"MZ").unwrap();
        mode(&out.join("ipxe.efi"), 0o644);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("efi")).unwrap();
        std::fs::write(root.join("undionly.kpxe"), b"ok").unwrap();
        std::fs::write(root.join("efi/ipxe.efi"), b"ok").unwrap();
        std::fs::write(root.join("private-inside"), b"ok").unwrap();
        mode(&root.join("private-inside"), 0o600);
        link(&out.join("secret"), "link-out", &root);
        link(&out.join("ipxe.efi"), "link-system", &root);
        link(out, "dir-out", &root);
        link(Path::new("/dev/zero"), "link-dev", &root);
        link(&root.join("undionly.kpxe"), "link-in", &root);
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
            ("link-system", "ok"),
            ("dir-out/ipxe.efi", "ok"),
            ("dir-out/secret", "access"),
            ("dir-out/../secret", "access"),
            ("dir-out", "access"),
            ("link-dev", "access"),
            ("private-inside", "ok"),
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
