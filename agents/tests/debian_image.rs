//! The Debian image (`boot-images/debian-image.sh`) deployed and booted for real, read by
//! real cloud-init: the machine agent's image writer puts `debian.qcow2` onto a 3 GiB disk
//! file and appends the cloud-init seed with the GrowRoot layout, exactly as on a machine
//! (`run::write_seed`); QEMU (TCG) boots it under OVMF. Debian's cloud-init 22.4 must apply
//! our NoCloud seed: the host name from the meta-data, a user with an SSH key and sudo,
//! `write_files` and `runcmd` from the user-data, and the network-config v2 the network
//! agent generates for a static address (NIC matched by MAC, gateway, DNS, MTU); its `resize_rootfs` grows
//! the root filesystem into the partition the agent grew. Then the image's check-in
//! (`ironpool-checkin.service`) reports cloud-init's verdict to a small HTTP listener of the
//! test, reached through QEMU's user-mode network (the guest's 10.0.2.2 is the host's
//! 127.0.0.1), and the test logs in over SSH (a QEMU host forward) to read what cloud-init
//! did. A second boot of the same disk, under SeaBIOS, checks in again without running the
//! user-data again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ironpool_agents::http::CloudInitSeed;
use ironpool_agents::machine::{image, run};
use ironpool_crds::deployment::ImageFormat;
use ironpool_e2e::disk_boot::{self, CheckIn, Firmware};

const DISK_BYTES: u64 = 3 << 30;
const TOKEN: &str = "debian-image-test-token";
const MAC: &str = "52:54:00:12:34:57";

/// Runs `boot-images/debian-image.sh` and returns its output directory.
fn build_image() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = Command::new(repo.join("boot-images/debian-image.sh"))
        .env("IRONPOOL_RAMDISK_PROFILE", "dev")
        .output()
        .expect("boot-images/debian-image.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "debian-image.sh failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .unwrap_or_default()
        .strip_prefix("debian-image: ")
        .unwrap_or_else(|| {
            panic!("the last line is not 'debian-image: <dir>': {stdout}\n{stderr}")
        });
    PathBuf::from(dir)
}

fn sha256_file(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    ironpool_agents::http::fetch::hex(ctx.finish().as_ref())
}

/// The network-config the network agent generates for a Deployment with a static address
/// from a Subnet: QEMU's user network (gateway 10.0.2.2, DNS 10.0.2.3), the NIC matched by
/// MAC.
fn network_config() -> String {
    let subnet: ironpool_crds::Subnet = serde_json::from_value(serde_json::json!({
        "apiVersion": "metal.ironpool.dev/v1alpha1",
        "kind": "Subnet",
        "metadata": {"name": "qemu-user"},
        "spec": {
            "cidr": "10.0.2.0/24",
            "gateway": "10.0.2.2",
            "dnsServers": ["10.0.2.3"],
            "domain": "lab.example",
            "mtu": 1500,
        }
    }))
    .unwrap();
    ironpool_agents::agent::netconfig::render(
        MAC.parse().unwrap(),
        "10.0.2.15".parse().unwrap(),
        &subnet,
    )
    .unwrap()
}

fn seed(port: u16, public_key: &str) -> CloudInitSeed {
    CloudInitSeed {
        meta_data: format!(
            "instance-id: debian-test-1\nlocal-hostname: deb-web-1\n\
             ironpool-checkin-url: http://10.0.2.2:{port}/api/v1/machines/{}/booted\n\
             ironpool-checkin-token: {TOKEN}\n",
            MAC.replace(':', "-")
        ),
        user_data: Some(format!(
            "#cloud-config\n\
             users:\n  - name: ops\n    shell: /bin/bash\n    sudo: ALL=(ALL) NOPASSWD:ALL\n    \
             ssh_authorized_keys:\n      - {public_key}\n\
             write_files:\n  - path: /etc/ironpool-test.txt\n    \
             content: |\n      hello from real cloud-init\n    permissions: '0644'\n\
             runcmd:\n  - [sh, -c, 'echo \"runcmd ran on $(hostname)\" >> /var/lib/ironpool-runcmd.txt']\n  \
             - cat /etc/ironpool-test.txt\n"
        )),
        network_data: Some(network_config()),
    }
}

fn qemu(fw: Firmware, disk: &Path, dir: &Path, ssh_port: u16) -> Child {
    let nic = format!("mac={MAC},hostfwd=tcp:127.0.0.1:{ssh_port}-10.0.2.15:22");
    disk_boot::qemu_command(fw, disk, dir, 1024, 2, &nic)
        .unwrap()
        .spawn()
        .expect("qemu-system-x86_64 starts (e2e/scripts/install-boot-image-tools.sh)")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A booted VM: QEMU, its console, the SSH port.
struct Vm {
    child: Child,
    dir: tempfile::TempDir,
    ssh_port: u16,
}

impl Vm {
    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    /// Runs `command` as `ops` over SSH; retries while sshd is not up yet.
    fn ssh(&self, key: &Path, command: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = Command::new("ssh")
                .args(ironpool_e2e::ssh::options(key))
                .args(["-p", &self.ssh_port.to_string(), "ops@127.0.0.1", command])
                .output()
                .unwrap();
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                panic!(
                    "ssh ops@ the guest failed: {}\nconsole:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots `disk` under `fw` and waits for the check-in: returns the VM, the check-in
/// (head, body) and the seconds from QEMU's start to the check-in.
fn boot(fw: Firmware, disk: &Path, rx: &mpsc::Receiver<CheckIn>) -> (Vm, String, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let ssh_port = free_port();
    let started = Instant::now();
    let child = qemu(fw, disk, dir.path(), ssh_port);
    let mut vm = Vm {
        child,
        dir,
        ssh_port,
    };
    let limit = Duration::from_secs(900);
    let CheckIn { head, body, at } = loop {
        if let Ok(got) = rx.recv_timeout(Duration::from_millis(500)) {
            break got;
        }
        if let Ok(Some(status)) = vm.child.try_wait() {
            panic!(
                "QEMU ({fw:?}) exited ({status}) before the check-in:\n{}",
                vm.console()
            );
        }
        if started.elapsed() > limit {
            panic!(
                "no check-in within {limit:?} ({fw:?}); console:\n{}",
                vm.console()
            );
        }
    };
    (vm, head, body, at.duration_since(started).as_secs_f64())
}

#[test]
fn debian_image_with_real_cloud_init_applies_the_seed_and_checks_in() {
    let out = build_image();
    let qcow = out.join("debian.qcow2");
    let raw = out.join("debian.raw");
    let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    let qcow_sum = sha256_file(&qcow);
    assert!(
        sums.contains(&format!("{qcow_sum}  debian.qcow2")),
        "{sums}"
    );
    let manifest = std::fs::read_to_string(out.join("manifest")).unwrap();
    eprintln!("debian image manifest:\n{manifest}");
    let image_bytes = std::fs::metadata(&raw).unwrap().len();

    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("id_ed25519");
    let public = ironpool_e2e::ssh::keygen(&key, "debian-image-test").unwrap();
    let (port, rx) = disk_boot::checkin_listener().unwrap();

    // Deploy as the machine agent does: the QCOW2 streamed onto the disk, then the seed
    // with the GrowRoot layout.
    let disk = work.path().join("disk.raw");
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&disk)
        .unwrap();
    dev.set_len(DISK_BYTES).unwrap();
    let checksum = image::Checksum::parse(&format!("sha256:{qcow_sum}")).unwrap();
    let total = std::fs::metadata(&qcow).unwrap().len();
    let started = Instant::now();
    let written = image::write_image(
        &mut std::fs::File::open(&qcow).unwrap(),
        total,
        ImageFormat::Qcow2,
        &checksum,
        &dev,
        DISK_BYTES,
        &AtomicU64::new(0),
    )
    .unwrap();
    assert_eq!(written.disk_bytes, image_bytes);
    let summary = run::write_seed(
        &dev,
        DISK_BYTES,
        written.disk_bytes,
        &seed(port, &public),
        true,
    )
    .unwrap();
    drop(dev);
    eprintln!(
        "wrote {total} QCOW2 bytes in {:.1} s; {summary}",
        started.elapsed().as_secs_f64()
    );
    assert!(summary.contains("partition 2 grown"), "{summary}");

    // 1. UEFI: first boot, cloud-init applies the seed.
    let (vm, head, body, secs) = boot(Firmware::Uefi, &disk, &rx);
    eprintln!("UEFI: QEMU start to check-in {secs:.1} s; check-in {body}");
    assert!(
        head.starts_with(&format!(
            "POST /api/v1/machines/{}/booted HTTP/1.1",
            MAC.replace(':', "-")
        )),
        "{head}"
    );
    assert!(
        head.contains(&format!("Authorization: Bearer {TOKEN}\r\n")),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instanceId"], "debian-test-1", "{v}");
    assert_eq!(v["hostname"], "deb-web-1", "{v}");
    assert!(
        v["kernel"].as_str().unwrap().ends_with("-cloud-amd64"),
        "{v}"
    );
    let ud = &v["userData"];
    assert_eq!(ud["kind"], "cloud-config", "{v}");
    assert_eq!(ud["exitCode"], 0, "cloud-init reported errors: {v}");
    let output = ud["output"].as_str().unwrap();
    assert!(
        output.contains("hello from real cloud-init"),
        "runcmd's output: {output}"
    );
    assert!(
        output.contains("Cloud-init v. "),
        "cloud-init's own log: {output}"
    );

    let text = vm.ssh(
        &key,
        "hostname; cat /etc/ironpool-test.txt; cat /var/lib/ironpool-runcmd.txt; \
         ip -o -4 addr show to 10.0.2.15; ip route show default; \
         grep -h -A6 'inet static' /etc/network/interfaces.d/*; \
         sudo -n cloud-init status --long; sudo -n true && echo sudo-ok; \
         df -B1 --output=size / | tail -n 1; cat /run/cloud-init/result.json; sync",
    );
    eprintln!("guest over SSH:\n{text}");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("deb-web-1"), "{text}");
    assert_eq!(lines.next(), Some("hello from real cloud-init"), "{text}");
    assert_eq!(lines.next(), Some("runcmd ran on deb-web-1"), "{text}");
    // The network-config: a static address (not DHCP's "dynamic" one from QEMU), the
    // default route, as cloud-init rendered it for ifupdown.
    let addr = lines.next().unwrap_or_default();
    assert!(
        addr.contains("inet 10.0.2.15/24") && !addr.contains("dynamic"),
        "network-config v2 (static address): {text}"
    );
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with("default via 10.0.2.2"),
        "{text}"
    );
    assert!(
        text.contains("address 10.0.2.15/24") && text.contains("mtu 1500"),
        "cloud-init's rendering of our network-config: {text}"
    );
    assert!(text.contains("status: done"), "{text}");
    assert!(text.contains("sudo-ok"), "{text}");
    let root_size: u64 = text
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no df size: {text}"));
    assert!(
        root_size > image_bytes + (1 << 30),
        "resize_rootfs grew / into the grown partition: {root_size} bytes"
    );
    let ssh_secs = secs;
    // The files first boot wrote (SSH host keys among them) are on the disk (`sync` above)
    // before QEMU is killed, as a power-off by the BMC would.
    drop(vm);

    // 2. BIOS: the same disk again; the check-in runs on every boot, cloud-init does not
    // run the user-data of the same instance twice.
    let (vm, _, body, secs) = boot(Firmware::Bios, &disk, &rx);
    eprintln!("BIOS (second boot): QEMU start to check-in {secs:.1} s");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["instanceId"], "debian-test-1", "{v}");
    assert_eq!(v["userData"]["exitCode"], 0, "{v}");
    let text = vm.ssh(&key, "cat /var/lib/ironpool-runcmd.txt");
    assert_eq!(text, "runcmd ran on deb-web-1\n", "runcmd ran once: {text}");
    eprintln!(
        "boot to check-in under TCG: UEFI first boot {ssh_secs:.1} s, BIOS second boot {secs:.1} s"
    );
}
