//! The real boot ramdisk (`boot-images/build.sh`: Debian kernel, modules, busybox, the
//! static machine agent) booted under QEMU (TCG) against the real HTTP boot server on
//! loopback, reached through QEMU's user-mode network (the guest's 10.0.2.2 is the host's
//! 127.0.0.1). One VM with 2 CPUs, 512 MiB and a 64 MiB virtio disk walks through:
//! commission (inventory equals the QEMU flags), deploy a QCOW2 image, quick erase, deploy
//! a raw image, and deploy an image whose checksum is wrong (fails with the reason; the
//! disk keeps what it had, nothing half-written). A second VM full-erases a virtio and an
//! NVMe disk. A third boots into rescue mode: root logs in over SSH with the plan's key, and
//! the disk is exactly as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ironpool_agents::http::{
    HttpMetrics, HttpServer, ImageCache, MacAddr, MachineView, MemoryBootSource, MemoryReportSink,
    Report, ScriptConfig, ServerConfig, TokenKey,
};
use ironpool_crds::deployment::{ErasePolicy, ImageFormat};
use ironpool_crds::machine::{BootPurpose, BootTarget, Hardware, ProvisioningStep};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const DISK_BYTES: u64 = 64 << 20;
const MEMORY_MIB: u64 = 512;

/// Runs `boot-images/build.sh` once per test process and returns the output directory (two
/// concurrent runs with the same inputs would share build.sh's temporary output directory).
fn build_ramdisk() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(run_build_sh).clone()
}

fn run_build_sh() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    // The dev profile: its static build of the agents crate is the one the image test makes
    // too (a release build would add ~10 CPU minutes to CI on 2 cores).
    let out = Command::new(repo.join("boot-images/build.sh"))
        .env("IRONPOOL_RAMDISK_PROFILE", "dev")
        .output()
        .expect("boot-images/build.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build.sh failed:\n{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ramdisk: "))
        .unwrap_or_else(|| panic!("no 'ramdisk:' line in {stdout}\n{stderr}"));
    eprintln!("{stderr}");
    PathBuf::from(dir)
}

struct Lab {
    port: u16,
    source: Arc<MemoryBootSource>,
    sink: Arc<MemoryReportSink>,
    assets: tempfile::TempDir,
    _cache: tempfile::TempDir,
    cancel: CancellationToken,
}

async fn start_server() -> Lab {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The guest reaches the host's loopback as 10.0.2.2.
    let base = format!("http://10.0.2.2:{port}");
    let assets = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let metrics = HttpMetrics::new();
    let cache = ImageCache::open(cache_dir.path(), 1 << 30, metrics.clone()).unwrap();
    let source = Arc::new(MemoryBootSource::new());
    let sink = Arc::new(MemoryReportSink::new());
    let (tx, mut events) = mpsc::channel(1024);
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let script = ScriptConfig::new(&base, "ironpool.done=poweroff").unwrap();
    let server = HttpServer {
        config: ServerConfig::new(script, assets.path().into()),
        keys: TokenKey::new(&[7; 32]).unwrap(),
        source: source.clone(),
        sink: sink.clone(),
        cache,
        metrics,
        events: tx,
    };
    let cancel = CancellationToken::new();
    tokio::spawn(server.serve(listener, cancel.clone()));
    Lab {
        port,
        source,
        sink,
        assets,
        _cache: cache_dir,
        cancel,
    }
}

/// The kernel arguments of the iPXE script the server renders for the machine now.
async fn kernel_args(lab: &Lab) -> String {
    let url = format!("http://127.0.0.1:{}/boot/{}.ipxe", lab.port, MAC.dashed());
    let out = tokio::process::Command::new("curl")
        .args(["-sSf", "--max-time", "10", &url])
        .output()
        .await
        .unwrap();
    let script = String::from_utf8(out.stdout).unwrap();
    let line = script
        .lines()
        .find(|l| l.starts_with("kernel "))
        .unwrap_or_else(|| panic!("no kernel line in {script}"));
    // "kernel <url> initrd=initramfs <args>": keep the args.
    line.split_whitespace()
        .skip(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Boots the ramdisk on `disk` with the script's kernel arguments; returns the console
/// text. Ends when the VM powers off, or kills it when the ramdisk reports a failure.
async fn boot(ramdisk: &Path, disk: &Path, args: &str) -> (bool, String) {
    boot_with(ramdisk, disk, args, &[]).await
}

/// The VM of these tests booting the ramdisk on `disk` with kernel arguments `args`, its
/// serial console written to `console`, with `extra` QEMU arguments and `nic` appended to
/// its user-mode NIC's options.
fn qemu(
    ramdisk: &Path,
    disk: &Path,
    args: &str,
    console: &Path,
    extra: &[String],
    nic: &str,
) -> tokio::process::Child {
    tokio::process::Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-smp", "2", "-m", &MEMORY_MIB.to_string()])
        .args([
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-monitor",
            "none",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(ramdisk.join("vmlinuz"))
        .arg("-initrd")
        .arg(ramdisk.join("initramfs"))
        .args(["-append", args])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=root,cache=writeback",
            disk.display()
        ))
        .args(["-device", "virtio-blk-pci,drive=root,serial=ironpool-root"])
        .args(extra)
        .args([
            "-nic",
            &format!("user,model=virtio-net-pci,mac={MAC},restrict=off{nic}"),
        ])
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-system-x86_64 starts (e2e/scripts/install-boot-image-tools.sh)")
}

/// [`boot`] with more QEMU arguments (more disks).
async fn boot_with(ramdisk: &Path, disk: &Path, args: &str, extra: &[String]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let mut child = qemu(ramdisk, disk, args, &console, extra, "");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            return (
                status.success() && text.contains("ironpool-ramdisk: work done"),
                text,
            );
        }
        if text.contains("ironpool-ramdisk: FAILED") {
            tokio::time::sleep(Duration::from_millis(500)).await;
            child.kill().await.unwrap();
            return (false, std::fs::read_to_string(&console).unwrap_or_default());
        }
        assert!(
            Instant::now() < deadline,
            "the ramdisk did not finish within 300 s; console:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sha256(data: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", ironpool_agents::http::fetch::hex(d.as_ref()))
}

/// An image: pseudo-random data with a zero stretch, partitioned by `sfdisk` with `label`
/// (`gpt` or `dos`) and one Linux partition.
fn image(len: usize, seed: u64, label: &str) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    v[len / 2..len / 2 + (1 << 20)].fill(0);
    v[..1 << 20].fill(0);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &v).unwrap();
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(f.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("sfdisk runs (e2e/scripts/install-boot-image-tools.sh)");
    use std::io::Write as _;
    write!(child.stdin.take().unwrap(), "label: {label}\n,,L\n").unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::read(f.path()).unwrap()
}

/// Checks the seed partition with independent tools: `sfdisk` sees a 2048-sector
/// partition at the end of the disk, `blkid` a vfat filesystem labelled CIDATA there, and
/// `mcopy` reads `meta-data` and `user-data` from it.
fn check_seed(disk: &Path, instance: &str) {
    let out = Command::new("sfdisk")
        .args(["-J"])
        .arg(disk)
        .output()
        .unwrap();
    let table: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sfdisk -J: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{table}");
    let seed = &parts[1];
    assert_eq!(seed["size"], 2048, "{table}");
    let start = seed["start"].as_u64().unwrap();
    assert!(start * 512 + (1 << 20) <= DISK_BYTES, "{table}");
    // The Deployment's layout is GrowRoot: the image's partition now ends where the seed
    // starts.
    let root = &parts[0];
    assert_eq!(
        root["start"].as_u64().unwrap() + root["size"].as_u64().unwrap(),
        start,
        "GrowRoot: {table}"
    );
    let verify = Command::new("sfdisk")
        .arg("--verify")
        .arg(disk)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stdout).to_string()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !said.contains("mismatch") && !said.contains("corrupt"),
        "{said}"
    );
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &(start * 512).to_string()])
        .arg(disk)
        .output()
        .unwrap();
    let b = String::from_utf8_lossy(&blkid.stdout);
    assert!(
        b.contains("LABEL=CIDATA") && b.contains("TYPE=vfat"),
        "blkid: {b}"
    );
    let read = |name: &str| {
        let out = Command::new("mcopy")
            .arg("-i")
            .arg(format!("{}@@{}", disk.display(), start * 512))
            .args([&format!("::{name}"), "-"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mcopy {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let meta = read("meta-data");
    assert!(meta.contains(&format!("instance-id: {instance}")), "{meta}");
    assert!(meta.contains("local-hostname: web-1"), "{meta}");
    assert_eq!(read("user-data"), "#cloud-config\n");
}

/// (step, bytes written, bytes total, message) of every provisioning report.
type Step = (ProvisioningStep, Option<i64>, Option<i64>, Option<String>);

fn provisioning(sink: &MemoryReportSink) -> Vec<Step> {
    sink.reports()
        .into_iter()
        .filter_map(|r| match r {
            Report::Provisioning { report, .. } => Some((
                report.step,
                report.bytes_written,
                report.bytes_total,
                report.message,
            )),
            Report::Inventory { .. } | Report::Rescue { .. } => None,
        })
        .collect()
}

fn last_result(sink: &MemoryReportSink) -> (ProvisioningStep, String) {
    let (step, _, _, msg) = provisioning(sink)
        .into_iter()
        .rev()
        .find(|(s, ..)| matches!(s, ProvisioningStep::Succeeded | ProvisioningStep::Failed))
        .expect("a result was reported");
    (step, msg.unwrap_or_default())
}

fn inventory(sink: &MemoryReportSink) -> Hardware {
    sink.reports()
        .into_iter()
        .rev()
        .find_map(|r| match r {
            Report::Inventory { hardware, .. } => Some(*hardware),
            Report::Provisioning { .. } | Report::Rescue { .. } => None,
        })
        .expect("an inventory was reported")
}

fn deploy_view(
    lab: &Lab,
    attempt: i64,
    file: &str,
    checksum: &str,
    format: ImageFormat,
) -> MachineView {
    let upstream = format!("http://127.0.0.1:{}/assets/{file}", lab.port);
    let mut m = MachineView::example("qemu-1", MAC)
        .with_intent(BootTarget::Ramdisk, BootPurpose::Deploy, attempt)
        .with_image(&upstream, checksum);
    m.deploy.as_mut().unwrap().image.format = format;
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramdisk_commissions_deploys_and_erases_a_qemu_machine() {
    let ramdisk = build_ramdisk();
    let lab = start_server().await;
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::write(&disk, vec![0xaau8; DISK_BYTES as usize]).unwrap();

    // 1. Commission: the inventory equals the QEMU flags.
    lab.source
        .put(MachineView::example("qemu-1", MAC).with_intent(
            BootTarget::Ramdisk,
            BootPurpose::Commission,
            1,
        ));
    let args = kernel_args(&lab).await;
    assert!(
        args.contains("ironpool.purpose=Commission ironpool.attempt=1"),
        "{args}"
    );
    let started = Instant::now();
    let (ok, console) = boot(&ramdisk, &disk, &args).await;
    assert!(ok, "commission boot failed:\n{console}");
    eprintln!("commission boot: {:.1}s", started.elapsed().as_secs_f64());
    let hw = inventory(&lab.sink);
    let cpu = hw.cpu.as_ref().unwrap();
    assert_eq!((cpu.cores, cpu.threads), (Some(2), Some(2)), "{cpu:?}");
    assert_eq!(hw.memory_bytes, Some((MEMORY_MIB << 20) as i64), "{hw:?}");
    assert_eq!(hw.memory.as_deref(), Some("512Mi"));
    let vda = hw
        .disks
        .iter()
        .find(|d| d.name == "vda")
        .expect("vda reported");
    assert_eq!(vda.size_bytes, DISK_BYTES as i64);
    assert_eq!(vda.serial_number.as_deref(), Some("ironpool-root"));
    assert_eq!(hw.nics.len(), 1, "{:?}", hw.nics);
    assert_eq!(hw.nics[0].mac, MAC.to_string());
    assert_eq!(hw.nics[0].driver.as_deref(), Some("virtio_net"));
    assert_eq!(hw.nics[0].link, Some(true));
    assert_eq!(
        hw.system.as_ref().unwrap().manufacturer.as_deref(),
        Some("QEMU")
    );
    assert!(hw.pci.iter().any(|p| p.vendor_id == "1af4"), "{:?}", hw.pci);
    assert_eq!(last_result(&lab.sink).0, ProvisioningStep::Succeeded);

    // 2. Deploy a QCOW2 image made by qemu-img.
    let raw2 = image(12 << 20, 2, "dos");
    std::fs::write(work.path().join("two.raw"), &raw2).unwrap();
    let q = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(work.path().join("two.raw"))
        .arg(lab.assets.path().join("two.qcow2"))
        .output()
        .unwrap();
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let qcow = std::fs::read(lab.assets.path().join("two.qcow2")).unwrap();
    lab.source.put(deploy_view(
        &lab,
        2,
        "two.qcow2",
        &sha256(&qcow),
        ImageFormat::Qcow2,
    ));
    let (ok, console) = boot(&ramdisk, &disk, &kernel_args(&lab).await).await;
    assert!(ok, "qcow2 deploy failed:\n{console}");
    let (step, msg) = last_result(&lab.sink);
    assert_eq!(step, ProvisioningStep::Succeeded, "{msg}");
    assert!(msg.contains("Qcow2") && msg.contains("/dev/vda"), "{msg}");
    let on_disk = std::fs::read(&disk).unwrap();
    // The MBR gained the seed entry; everything else is the image.
    assert!(
        on_disk[512..raw2.len()] == raw2[512..],
        "the disk does not hold the qcow2 image"
    );
    assert!(on_disk[..446] == raw2[..446]);
    check_seed(&disk, "datacenter-a-qemu-1-2");
    let progress: Vec<_> = provisioning(&lab.sink)
        .into_iter()
        .filter(|(s, ..)| *s == ProvisioningStep::WritingImage)
        .collect();
    assert!(
        !progress.is_empty(),
        "no WritingImage progress was reported"
    );
    assert!(
        progress
            .iter()
            .all(|(_, _, total, _)| *total == Some(qcow.len() as i64))
    );

    // 3. Quick erase: partition tables and the disk's ends are gone.
    let mut m =
        MachineView::example("qemu-1", MAC).with_intent(BootTarget::Ramdisk, BootPurpose::Erase, 3);
    m.erase = ErasePolicy::Quick;
    lab.source.put(m);
    let (ok, console) = boot(&ramdisk, &disk, &kernel_args(&lab).await).await;
    assert!(ok, "erase failed:\n{console}");
    let (step, msg) = last_result(&lab.sink);
    assert_eq!(step, ProvisioningStep::Succeeded, "{msg}");
    assert!(msg.contains("vda: wiped partition tables"), "{msg}");
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(
        on_disk[..1 << 20].iter().all(|b| *b == 0),
        "first MiB not wiped"
    );
    assert!(
        on_disk[(DISK_BYTES - (1 << 20)) as usize..]
            .iter()
            .all(|b| *b == 0)
    );
    assert!(
        on_disk[(2 << 20)..(3 << 20)] == raw2[(2 << 20)..(3 << 20)],
        "quick erase is quick"
    );

    // 4. Deploy a raw image.
    let raw4 = image(20 << 20, 4, "gpt");
    std::fs::write(lab.assets.path().join("four.raw"), &raw4).unwrap();
    lab.source.put(deploy_view(
        &lab,
        4,
        "four.raw",
        &sha256(&raw4),
        ImageFormat::Raw,
    ));
    let started = Instant::now();
    let (ok, console) = boot(&ramdisk, &disk, &kernel_args(&lab).await).await;
    assert!(ok, "raw deploy failed:\n{console}");
    eprintln!("raw deploy boot: {:.1}s", started.elapsed().as_secs_f64());
    let (step, msg) = last_result(&lab.sink);
    assert_eq!(step, ProvisioningStep::Succeeded, "{msg}");
    eprintln!("raw deploy: {msg}");
    let on_disk = std::fs::read(&disk).unwrap();
    // GPT headers and entries were rewritten for the seed; the rest is the image.
    let (from, to) = (34 * 512, raw4.len() - 33 * 512);
    assert!(
        on_disk[from..to] == raw4[from..to],
        "the disk does not hold the raw image"
    );
    check_seed(&disk, "datacenter-a-qemu-1-4");
    let deployed = on_disk;

    // 5. A wrong checksum: the deployment fails with the reason, nothing is written.
    let five = image(6 << 20, 5, "gpt");
    std::fs::write(lab.assets.path().join("five.raw"), &five).unwrap();
    let wrong = sha256(b"not the image");
    lab.source
        .put(deploy_view(&lab, 5, "five.raw", &wrong, ImageFormat::Raw));
    let (ok, console) = boot(&ramdisk, &disk, &kernel_args(&lab).await).await;
    assert!(!ok, "a wrong checksum deployed:\n{console}");
    let (step, msg) = last_result(&lab.sink);
    assert_eq!(step, ProvisioningStep::Failed, "{msg}");
    assert!(
        msg.contains("does not match its checksum") && msg.contains(&wrong),
        "{msg}"
    );
    assert!(console.contains("FAILED"), "{console}");
    let on_disk = std::fs::read(&disk).unwrap();
    assert!(on_disk == deployed, "a failed deploy changed the disk");

    lab.cancel.cancel();
}

/// Full erase on a virtio disk and an NVMe disk (QEMU's emulated NVMe controller): every
/// byte of both reads zero afterwards; the NVMe drive erases itself (Format NVM), the virtio
/// disk by the cheapest zeroing method it accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramdisk_full_erase_zeroes_virtio_and_nvme_disks() {
    let ramdisk = build_ramdisk();
    let lab = start_server().await;
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    std::fs::write(&disk, vec![0xaau8; DISK_BYTES as usize]).unwrap();
    let nvme = work.path().join("nvme.raw");
    let nvme_bytes = 96u64 << 20;
    std::fs::write(&nvme, vec![0xbbu8; nvme_bytes as usize]).unwrap();
    let extra = [
        "-drive".to_string(),
        format!(
            "file={},format=raw,if=none,id=nv,cache=writeback",
            nvme.display()
        ),
        "-device".to_string(),
        "nvme,serial=ironpool-nvme,drive=nv".to_string(),
    ];
    let mut m =
        MachineView::example("qemu-1", MAC).with_intent(BootTarget::Ramdisk, BootPurpose::Erase, 1);
    m.erase = ErasePolicy::Full;
    lab.source.put(m);
    let started = Instant::now();
    let (ok, console) = boot_with(&ramdisk, &disk, &kernel_args(&lab).await, &extra).await;
    assert!(ok, "full erase failed:\n{console}");
    eprintln!("full erase boot: {:.1}s", started.elapsed().as_secs_f64());
    let hw = inventory(&lab.sink);
    let nv = hw
        .disks
        .iter()
        .find(|d| d.name == "nvme0n1")
        .unwrap_or_else(|| panic!("no nvme0n1 in {:?}", hw.disks));
    assert_eq!(nv.size_bytes, nvme_bytes as i64);
    assert_eq!(nv.serial_number.as_deref(), Some("ironpool-nvme"));
    let (step, msg) = last_result(&lab.sink);
    eprintln!("full erase: {msg}");
    assert_eq!(step, ProvisioningStep::Succeeded, "{msg}");
    // The NVMe namespace is formatted by the drive (QEMU's controller supports Format NVM
    // and zeroes the namespace); the virtio disk takes Write Zeroes with unmapping.
    let want = format!(
        "vda: zeroed by the device, unmapping allowed (fallocate punch-hole) all {DISK_BYTES} bytes"
    );
    assert!(msg.contains(&want), "{msg}");
    assert!(
        msg.contains(
            "nvme0n1: NVMe Format NVM, user data erase (SES 1), namespace 1; read zeros back"
        ),
        "{msg}"
    );
    assert_eq!(
        msg.matches("read zeros back at 16 places").count(),
        2,
        "{msg}"
    );
    for (file, len) in [(&disk, DISK_BYTES), (&nvme, nvme_bytes)] {
        let data = std::fs::read(file).unwrap();
        assert_eq!(data.len() as u64, len);
        let bad = data.iter().position(|b| *b != 0);
        assert_eq!(
            bad,
            None,
            "{} keeps data after the full erase",
            file.display()
        );
    }
    lab.cancel.cancel();
}

/// Rescue mode: the plan's key logs in as root over SSH (QEMU forwards a host port to the
/// guest's 22), nothing is inventoried or reported as provisioning, and the disk, read by
/// root in the guest and by the host afterwards, has the bytes it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ramdisk_rescue_admits_the_key_over_ssh_and_leaves_the_disk_alone() {
    let ramdisk = build_ramdisk();
    let lab = start_server().await;
    let work = tempfile::tempdir().unwrap();
    let disk = work.path().join("disk.raw");
    let bytes = image(DISK_BYTES as usize, 11, "gpt");
    std::fs::write(&disk, &bytes).unwrap();
    let key = work.path().join("id_ed25519");
    let public = ironpool_e2e::ssh::keygen(&key, "rescue-test")
        .expect("ssh-keygen runs (e2e/scripts/install-boot-image-tools.sh)");

    let mut m = MachineView::example("qemu-1", MAC).with_intent(
        BootTarget::Ramdisk,
        BootPurpose::Rescue,
        9,
    );
    m.rescue_keys = vec![public];
    lab.source.put(m);
    let args = kernel_args(&lab).await;
    assert!(
        args.contains("ironpool.purpose=Rescue ironpool.attempt=9"),
        "{args}"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let console = work.path().join("console.log");
    let started = Instant::now();
    let mut vm = qemu(
        &ramdisk,
        &disk,
        &args,
        &console,
        &[],
        &format!(",hostfwd=tcp:127.0.0.1:{port}-:22"),
    );
    let deadline = Instant::now() + Duration::from_secs(300);
    let ready = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        let reported = lab.sink.reports().into_iter().find_map(|r| match r {
            Report::Rescue { report, .. } => Some(report),
            _ => None,
        });
        if let Some(r) = reported {
            break r;
        }
        assert!(
            !text.contains("ironpool-ramdisk: FAILED") && Instant::now() < deadline,
            "no rescue result within 300 s; console:\n{text}"
        );
        assert!(vm.try_wait().unwrap().is_none(), "the VM exited:\n{text}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "rescue shell ready {:.1}s after power-on",
        started.elapsed().as_secs_f64()
    );
    let message = ready.message.clone().unwrap_or_default();
    assert_eq!(ready.step, ProvisioningStep::Succeeded, "{message}");
    assert_eq!(ready.attempt, 9);
    assert!(message.contains("ssh root@10.0.2.15"), "{message}");
    assert!(
        lab.sink
            .reports()
            .iter()
            .all(|r| matches!(r, Report::Rescue { .. })),
        "rescue reports nothing else (no inventory, no provisioning): {:?}",
        lab.sink.reports()
    );

    let ssh = |key: &Path, command: &str| {
        Command::new("ssh")
            .args(ironpool_e2e::ssh::options(key))
            .args(["-p", &port.to_string(), "root@127.0.0.1", command])
            .output()
            .unwrap()
    };
    let out = ssh(&key, "id -u; cat /proc/cmdline; sha256sum /dev/vda");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let console_text = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        out.status.success(),
        "ssh failed: {}\nconsole:\n{console_text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("0"), "logged in as root: {text}");
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .contains("ironpool.purpose=Rescue"),
        "{text}"
    );
    let want = sha256(&bytes);
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with(want.trim_start_matches("sha256:")),
        "root reads the disk as it was: {text}"
    );
    // Another key is refused.
    let other = work.path().join("other");
    ironpool_e2e::ssh::keygen(&other, "not-admitted").unwrap();
    let refused = ssh(&other, "true");
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && why.contains("Permission denied"),
        "a key not in spec.rescue is refused by the server (not merely unreachable): {why}"
    );
    vm.kill().await.unwrap();
    assert!(
        std::fs::read(&disk).unwrap() == bytes,
        "the disk is unchanged after rescue"
    );
}
