//! The test OS image (`boot-images/os-image.sh`) deployed and booted for real: the machine
//! agent's own image writer puts `os.qcow2` (and `os.raw`) onto a 64 MiB disk file and
//! appends the cloud-init seed partition exactly as on a machine (`run::write_seed`), then
//! QEMU (TCG) boots that disk from its own MBR under SeaBIOS and under OVMF. The OS's
//! first-boot step must run the user-data (a file written by `write_files`, `cat` by
//! `runcmd`) and check in with a small HTTP listener of the test, reached through QEMU's
//! user-mode network (the guest's 10.0.2.2 is the host's 127.0.0.1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ironpool_agents::http::CloudInitSeed;
use ironpool_agents::machine::{image, run};
use ironpool_crds::deployment::ImageFormat;
use ironpool_e2e::disk_boot::{self, CheckIn, Firmware};

const DISK_BYTES: u64 = 64 << 20;
const TOKEN: &str = "os-image-test-token";

/// Runs `boot-images/os-image.sh` and returns its output directory.
fn build_image() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The dev profile, like the ramdisk test: one static build of the agents crate.
    let out = Command::new(repo.join("boot-images/os-image.sh"))
        .env("IRONPOOL_RAMDISK_PROFILE", "dev")
        .output()
        .expect("boot-images/os-image.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "os-image.sh failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let dir = last
        .strip_prefix("os-image: ")
        .unwrap_or_else(|| panic!("the last line is not 'os-image: <dir>': {stdout}\n{stderr}"));
    eprintln!("{stderr}");
    PathBuf::from(dir)
}

fn sha256_file(path: &Path) -> String {
    let data = std::fs::read(path).unwrap();
    let d = ring::digest::digest(&ring::digest::SHA256, &data);
    ironpool_agents::http::fetch::hex(d.as_ref())
}

/// Writes `file` (`format`) onto a fresh disk file of [`DISK_BYTES`] full of 0xaa with the
/// machine agent's image writer, then the seed; returns the disk and the image's size.
fn deploy(file: &Path, format: ImageFormat, disk: &Path, seed: &CloudInitSeed) -> u64 {
    std::fs::write(disk, vec![0xaau8; DISK_BYTES as usize]).unwrap();
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .unwrap();
    let checksum = image::Checksum::parse(&format!("sha256:{}", sha256_file(file))).unwrap();
    let total = std::fs::metadata(file).unwrap().len();
    let mut src = std::fs::File::open(file).unwrap();
    let written = image::write_image(
        &mut src,
        total,
        format,
        &checksum,
        &dev,
        DISK_BYTES,
        &AtomicU64::new(0),
    )
    .unwrap();
    let summary = run::write_seed(&dev, DISK_BYTES, written.disk_bytes, seed, false).unwrap();
    assert!(summary.contains("CIDATA"), "{summary}");
    written.disk_bytes
}

fn seed(name: &str, port: u16) -> CloudInitSeed {
    CloudInitSeed {
        meta_data: format!(
            "instance-id: os-test-{name}\nlocal-hostname: os-{name}\n\
             ironpool-checkin-url: http://10.0.2.2:{port}/api/v1/machines/52-54-00-12-34-56/booted\n\
             ironpool-checkin-token: {TOKEN}\n"
        ),
        user_data: Some(format!(
            "#cloud-config\nwrite_files:\n  - path: /etc/ironpool-test.txt\n    \
             content: hello from the {name} user-data\n    permissions: '0600'\n\
             runcmd:\n  - cat /etc/ironpool-test.txt\n  - [sh, -c, 'echo; hostname']\n\
             package_update: true\n"
        )),
        network_data: Some("version: 2\nethernets: {}\n".to_string()),
    }
}

fn qemu(fw: Firmware, disk: &Path, dir: &Path) -> Child {
    disk_boot::qemu_command(fw, disk, dir, 512, 1, "mac=52:54:00:12:34:56")
        .unwrap()
        .spawn()
        .expect("qemu-system-x86_64 starts (e2e/scripts/install-boot-image-tools.sh)")
}

/// Boots `disk` under `fw`; returns the check-in (head, body), the console text and the
/// seconds from QEMU's start to the check-in.
fn boot(fw: Firmware, disk: &Path, rx: &mpsc::Receiver<CheckIn>) -> (String, String, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut child = qemu(fw, disk, dir.path());
    let console = || std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();
    let deadline = started + Duration::from_secs(240);
    let CheckIn { head, body, at } = loop {
        if let Ok(got) = rx.recv_timeout(Duration::from_millis(250)) {
            break got;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "QEMU ({fw:?}) exited ({status}) before the check-in:\n{}",
                console()
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("no check-in within 240 s ({fw:?}); console:\n{}", console());
        }
    };
    let secs = at.duration_since(started).as_secs_f64();
    // The init prints its last line once the first-boot step has exited.
    while !console().contains("ironpool-os: booted from disk") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = console();
    let _ = child.kill();
    let _ = child.wait();
    (head, body, text, secs)
}

fn check(fw: Firmware, name: &str, head: &str, body: &str, console: &str) {
    assert!(
        console.contains("ironpool-os: booted from disk"),
        "{fw:?} console:\n{console}"
    );
    assert!(
        head.starts_with("POST /api/v1/machines/52-54-00-12-34-56/booted HTTP/1.1"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Authorization: Bearer {TOKEN}\r\n")),
        "{head}"
    );
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["instanceId"], format!("os-test-{name}"), "{v}");
    assert_eq!(v["hostname"], format!("os-{name}"), "{v}");
    assert!(v["kernel"].as_str().unwrap().starts_with("6."), "{v}");
    assert!(v["uptimeSeconds"].as_f64().unwrap() > 0.0, "{v}");
    let ud = &v["userData"];
    assert_eq!(ud["kind"], "cloud-config", "{v}");
    assert_eq!(ud["exitCode"], 0, "{v}");
    assert_eq!(
        ud["output"],
        format!("ignored: package_update\nhello from the {name} user-data\nos-{name}\n"),
        "{v}"
    );
}

#[test]
fn os_image_boots_from_its_own_disk_under_bios_and_uefi_and_checks_in() {
    let out = build_image();
    let raw = out.join("os.raw");
    let qcow = out.join("os.qcow2");
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{}  os.raw", sha256_file(&raw)))
            && sums.contains(&format!("{}  os.qcow2", sha256_file(&qcow))),
        "{sums}"
    );
    let raw_bytes = std::fs::read(&raw).unwrap();
    assert!(
        raw_bytes.len() <= 32 << 20,
        "the image is {} bytes",
        raw_bytes.len()
    );
    let cmp = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .output()
        .unwrap();
    assert!(
        cmp.status.success(),
        "{}",
        String::from_utf8_lossy(&cmp.stdout)
    );

    let work = tempfile::tempdir().unwrap();
    let (port, rx) = disk_boot::checkin_listener().unwrap();
    let mut times = Vec::new();
    for (fw, name, file, format) in [
        (Firmware::Bios, "bios", &qcow, ImageFormat::Qcow2),
        (Firmware::Uefi, "uefi", &raw, ImageFormat::Raw),
    ] {
        let disk = work.path().join(format!("{name}.raw"));
        let image_end = deploy(file, format, &disk, &seed(name, port));
        assert_eq!(image_end, raw_bytes.len() as u64);
        let on_disk = std::fs::read(&disk).unwrap();
        // The agent changed only the MBR's second slot; the rest up to the image's end is
        // the image (for the QCOW2: the agent's reader expanded it to os.raw's bytes).
        assert!(
            on_disk[..462] == raw_bytes[..462] && on_disk[478..].starts_with(&raw_bytes[478..])
        );
        let (head, body, console, secs) = boot(fw, &disk, &rx);
        eprintln!("{fw:?}: QEMU start to check-in {secs:.1} s; check-in body {body}");
        check(fw, name, &head, &body, &console);
        let lines: Vec<&str> = console
            .lines()
            .filter(|l| l.contains("ironpool-"))
            .collect();
        eprintln!("{fw:?} console:\n{}", lines.join("\n"));
        times.push((fw, secs));
    }
    eprintln!("boot to check-in under TCG: {times:?}");
}
