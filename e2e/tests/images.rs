//! The container images: `e2e/scripts/build-images.sh` builds them with buildah (dev
//! profile here, to keep CI short; the script's default is release), and each archive is
//! unpacked and checked: non-root user, the entrypoint is a static binary that runs, the
//! boot-assets image holds Debian's iPXE binaries, and a second build gives the same
//! digests (the build is reproducible).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Runs the build script (with prebuilt `binaries` when given); returns the archive of
/// each image by name.
fn build_images(binaries: Option<&Path>) -> BTreeMap<String, PathBuf> {
    let script = ironpool_e2e::repo_dir().join("e2e/scripts/build-images.sh");
    let mut command = Command::new("bash");
    if let Some(dir) = binaries {
        // A rebuild for real: the script skips buildah when its inputs are unchanged.
        command
            .env("IRONPOOL_IMAGE_BINARIES", dir)
            .env("IRONPOOL_IMAGE_REBUILD", "1");
    }
    let out = command
        .arg(&script)
        .env("IRONPOOL_IMAGE_PROFILE", "dev")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{} failed", script.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("IMAGE_")?.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect()
}

fn tar(args: &[&str], archive: &Path, dir: &Path) {
    let status = Command::new("tar")
        .args(args)
        .arg(archive)
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "tar {args:?} {}", archive.display());
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    dir.join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// An unpacked image: its manifest digest, its config, and its root filesystem.
struct Image {
    manifest_digest: String,
    config: Value,
    rootfs: PathBuf,
    _dir: tempfile::TempDir,
}

fn unpack(archive: &Path) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&oci).unwrap();
    std::fs::create_dir_all(&rootfs).unwrap();
    tar(&["-xf"], archive, &oci);
    let read =
        |p: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap() };
    let index = read(oci.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = read(blob(&oci, &manifest_digest));
    let config = read(blob(&oci, manifest["config"]["digest"].as_str().unwrap()));
    for layer in manifest["layers"].as_array().unwrap() {
        tar(
            &["-xzf"],
            &blob(&oci, layer["digest"].as_str().unwrap()),
            &rootfs,
        );
    }
    Image {
        manifest_digest,
        config,
        rootfs,
        _dir: dir,
    }
}

/// True when `path` is an ELF executable without a PT_INTERP program header (static).
fn is_static_elf(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([b[o], b[o + 1]]));
    let phoff = usize::try_from(u64::from_le_bytes(b[0x20..0x28].try_into().unwrap())).unwrap();
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

#[test]
fn images_are_small_non_root_static_and_reproducible() {
    let archives = build_images(None);
    let binaries = tempfile::tempdir().unwrap();
    let names: Vec<&str> = archives.keys().map(String::as_str).collect();
    assert_eq!(names, ["AGENT", "BOOT_ASSETS", "OPERATOR", "PAUSE"]);
    let mut digests = BTreeMap::new();
    for (name, archive) in &archives {
        let image = unpack(archive);
        let config = &image.config["config"];
        let user = if name == "PAUSE" {
            "65535:65535"
        } else {
            "65532:65532"
        };
        assert_eq!(config["User"], user, "{name} must not run as root");
        digests.insert(name.clone(), image.manifest_digest.clone());
        let files: Vec<String> = std::fs::read_dir(&image.rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if name == "BOOT_ASSETS" {
            for f in ["undionly.kpxe", "ipxe.efi", "snponly.efi"] {
                assert_eq!(
                    std::fs::read(image.rootfs.join("ipxe").join(f)).unwrap(),
                    std::fs::read(Path::new("/usr/lib/ipxe").join(f)).unwrap(),
                    "boot-assets /ipxe/{f}"
                );
            }
            // The machine-agent ramdisk: a bzImage kernel and a zstd cpio.
            let kernel = std::fs::read(image.rootfs.join("assets/vmlinuz")).unwrap();
            assert_eq!(
                &kernel[0x202..0x206],
                b"HdrS",
                "boot-assets /assets/vmlinuz"
            );
            let initramfs = std::fs::read(image.rootfs.join("assets/initramfs")).unwrap();
            assert_eq!(
                &initramfs[..4],
                &[0x28, 0xb5, 0x2f, 0xfd],
                "boot-assets /assets/initramfs is zstd"
            );
            assert!(config["Entrypoint"].is_null(), "boot-assets runs nothing");
            continue;
        }
        if name == "PAUSE" {
            assert_eq!(files, ["pause"], "pause image content");
            assert!(is_static_elf(&image.rootfs.join("pause")));
            assert_eq!(config["Entrypoint"], serde_json::json!(["/pause"]));
            let out = Command::new(image.rootfs.join("pause"))
                .arg("-v")
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                "ironpool-pause"
            );
            continue;
        }
        // One static binary as the entrypoint, and nothing else but the kubectl plugin beside
        // the operator, the agent's CA bundle and ipmitool (with its libraries and loader).
        let binary = format!("ironpool-{}", name.to_lowercase());
        assert_eq!(
            config["Entrypoint"],
            serde_json::json!([format!("/{binary}")])
        );
        let mut expected = vec![binary.clone()];
        if name == "OPERATOR" {
            // The kubectl plugin ships beside the operator, static too.
            expected.push("kubectl-ironpool".into());
            let plugin = image.rootfs.join("kubectl-ironpool");
            assert!(
                is_static_elf(&plugin),
                "kubectl-ironpool is not a static executable"
            );
            std::fs::copy(&plugin, binaries.path().join("kubectl-ironpool")).unwrap();
            let out = Command::new(&plugin)
                .arg("--version")
                .env_clear()
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&out.stdout).starts_with("kubectl ironpool "),
                "kubectl-ironpool --version: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if name == "AGENT" {
            expected.extend(["etc", "lib", "lib64", "usr"].map(String::from));
            assert!(
                image
                    .rootfs
                    .join("etc/ssl/certs/ca-certificates.crt")
                    .is_file()
            );
            // ipmitool runs from the image's own root (its loader and libraries).
            let root = image.rootfs.display().to_string();
            let out = Command::new("chroot")
                .args([&root, "/usr/bin/ipmitool", "-V"])
                .output()
                .unwrap();
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ipmitool"),
                "ipmitool in the agent image: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut files = files;
        files.sort();
        expected.sort();
        assert_eq!(files, expected, "{name} image content");
        let path = image.rootfs.join(&binary);
        assert!(is_static_elf(&path), "{binary} is not a static executable");
        std::fs::copy(&path, binaries.path().join(&binary)).unwrap();
        let out = Command::new(&path)
            .arg("--version")
            .env_clear()
            .output()
            .unwrap();
        let version = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && version.starts_with(&binary),
            "{binary} --version: {version}"
        );
    }
    // The same binaries give the same images, byte for byte (taken from the first images,
    // so that a source edit in between cannot change them).
    let again = build_images(Some(binaries.path()));
    for (name, archive) in &again {
        assert_eq!(
            unpack(archive).manifest_digest,
            digests[name],
            "{name}: a rebuild changed the image digest"
        );
    }
}
