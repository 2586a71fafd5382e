//! TFTP server against real clients on loopback: `atftp` (blksize, windowsize, tsize),
//! `tftp` (tftp-hpa, lockstep RFC 1350) and `curl tftp://`; bytes compared; path escapes
//! refused with an error; write requests refused; many concurrent fetches.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "dhcp_support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use ironpool_agents::tftp::packet::{self, Packet};
use ironpool_agents::tftp::{TftpMetrics, TftpServer};
use support::have;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

struct Fixture {
    root: tempfile::TempDir,
    out: tempfile::TempDir,
    addr: SocketAddr,
    metrics: TftpMetrics,
    token: CancellationToken,
    _outside: tempfile::TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(root.path().join("big.bin"), &big).unwrap();
    std::fs::write(root.path().join("exact.bin"), vec![7u8; 512 * 4]).unwrap();
    std::fs::create_dir(root.path().join("efi")).unwrap();
    std::fs::write(root.path().join("efi/ipxe.efi"), b"MZ fake efi").unwrap();
    // Outside the root: a private file (its symlink stays refused) and a world-readable one
    // (served through its symlink, like Debian's /usr/lib/ipxe/ipxe.efi -> /boot/ipxe.efi).
    std::fs::write(outside.path().join("secret"), b"secret").unwrap();
    std::fs::set_permissions(outside.path().join("secret"), mode(0o600)).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.path().join("escape")).unwrap();
    std::fs::write(outside.path().join("public.efi"), b"MZ public").unwrap();
    std::fs::set_permissions(outside.path().join("public.efi"), mode(0o644)).unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("public.efi"),
        root.path().join("system.efi"),
    )
    .unwrap();
    start(root, outside).await
}

fn mode(m: u32) -> std::fs::Permissions {
    std::os::unix::fs::PermissionsExt::from_mode(m)
}

/// Serves `root` on a loopback port.
async fn start(root: tempfile::TempDir, outside: tempfile::TempDir) -> Fixture {
    let metrics = TftpMetrics::default();
    let server = TftpServer::new(root.path(), metrics.clone()).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move { server.serve(sock, t).await });
    Fixture {
        root,
        out: tempfile::tempdir().unwrap(),
        addr,
        metrics,
        token,
        _outside: outside,
    }
}

fn same(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

async fn atftp(f: &Fixture, remote: &str, local: &str, options: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("atftp");
    cmd.args(["-g", "-r", remote, "-l"])
        .arg(f.out.path().join(local));
    for o in options {
        cmd.args(["--option", o]);
    }
    cmd.args(["127.0.0.1", &f.addr.port().to_string()]);
    cmd.output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atftp_fetches_with_options() {
    if !have("atftp") {
        eprintln!("SKIP: atftp missing (e2e/scripts/install-net-tools.sh)");
        return;
    }
    let f = fixture().await;
    let cases: &[(&str, &[&str])] = &[
        ("big.bin", &[]),
        ("big.bin", &["blksize 1468"]),
        ("big.bin", &["blksize 1468", "windowsize 16", "tsize 0"]),
        ("exact.bin", &["blksize 512"]),
        ("efi/ipxe.efi", &["timeout 2"]),
    ];
    for (i, (file, opts)) in cases.iter().enumerate() {
        let local = format!("out{i}");
        let out = atftp(&f, file, &local, opts).await;
        assert!(
            out.status.success(),
            "{file} {opts:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            same(&f.root.path().join(file), &f.out.path().join(&local)),
            "{file} {opts:?} differs"
        );
    }
    // The server counts a transfer when it sees the last ACK, which may come just after the
    // client has exited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while f.metrics.get("completed") < cases.len() as u64 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(f.metrics.get("completed"), cases.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_and_curl_fetch() {
    let f = fixture().await;
    if have("tftp") {
        let local = f.out.path().join("hpa");
        let out = Command::new("tftp")
            .args([
                "-m",
                "binary",
                "127.0.0.1",
                &f.addr.port().to_string(),
                "-c",
                "get",
                "big.bin",
            ])
            .arg(&local)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(same(&f.root.path().join("big.bin"), &local));
    }
    if have("curl") {
        for blk in ["512", "1468"] {
            let local = f.out.path().join(format!("curl{blk}"));
            let out = tokio::process::Command::new("curl")
                .args(["-sS", "--tftp-blksize", blk, "-o"])
                .arg(&local)
                .arg(format!("tftp://127.0.0.1:{}/big.bin", f.addr.port()))
                .output()
                .await
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(same(&f.root.path().join("big.bin"), &local));
        }
    }
}

/// Sends one request and returns the first answer.
async fn ask(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(3), s.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf.truncate(n);
    buf
}

#[tokio::test]
async fn escapes_and_writes_are_refused_and_garbage_is_counted() {
    let f = fixture().await;
    for (name, code) in [
        ("../secret", 2),
        ("/etc/passwd", 2),
        ("efi/../../etc/passwd", 2),
        ("escape", 2),
        ("nope", 1),
        ("system.efi/x", 1),
    ] {
        let answer = ask(f.addr, &packet::rrq(name, &[])).await;
        match packet::parse(&answer).unwrap() {
            Packet::Error(c, msg) => assert_eq!(c, code, "{name}: {msg}"),
            other => panic!("{name}: served {other:?}"),
        }
    }
    let wrq = b"\x00\x02file\x00octet\x00";
    assert!(matches!(
        packet::parse(&ask(f.addr, wrq).await).unwrap(),
        Packet::Error(2, _)
    ));
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [&b""[..], b"\x00", b"\x00\x01nonul", b"\xff\xff\xff"] {
        s.send_to(junk, f.addr).await.unwrap();
    }
    // still serving, also through a symlink to a world-readable file outside the root
    let answer = ask(f.addr, &packet::rrq("efi/ipxe.efi", &[])).await;
    assert!(matches!(
        packet::parse(&answer).unwrap(),
        Packet::Data(1, b"MZ fake efi")
    ));
    let answer = ask(f.addr, &packet::rrq("system.efi", &[])).await;
    assert!(matches!(
        packet::parse(&answer).unwrap(),
        Packet::Data(1, b"MZ public")
    ));
    assert_eq!(f.metrics.get("malformed"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_fetches() {
    if !have("atftp") {
        return;
    }
    let f = fixture().await;
    let names: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    let mut tasks = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let opts: &[&str] = if i % 2 == 0 {
            &["blksize 1468", "windowsize 8"]
        } else {
            &[]
        };
        tasks.push(atftp(&f, "big.bin", name, opts));
    }
    let outs = futures::future::join_all(tasks).await;
    for (i, out) in outs.iter().enumerate() {
        assert!(
            out.status.success(),
            "fetch {i}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(same(
            &f.root.path().join("big.bin"),
            &f.out.path().join(format!("c{i}"))
        ));
    }
}

/// The default `--tftp-root`, Debian's `/usr/lib/ipxe`, where `ipxe.efi` is a symlink to
/// `/boot/ipxe.efi`: curl fetches both iPXE binaries byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debians_ipxe_directory_is_served_through_its_symlinks() {
    let dir = Path::new("/usr/lib/ipxe");
    assert!(
        dir.join("undionly.kpxe").exists(),
        "Debian's ipxe package is missing: run e2e/scripts/install-net-tools.sh"
    );
    let metrics = TftpMetrics::default();
    let server = TftpServer::new(dir, metrics.clone()).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move { server.serve(sock, t).await });
    let out_dir = tempfile::tempdir().unwrap();
    for file in ["ipxe.efi", "undionly.kpxe"] {
        let local = out_dir.path().join(file);
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "--tftp-blksize", "1468", "-o"])
            .arg(&local)
            .arg(format!("tftp://127.0.0.1:{port}/{file}"))
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(same(&dir.join(file), &local), "{file} differs");
    }
    token.cancel();
}
