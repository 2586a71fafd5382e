//! UEFI HTTP boot against the real HTTP server: the DHCP pipeline answers a DISCOVER from
//! HTTP boot firmware (vendor class `HTTPClient`, arch 16) with a URL, and curl fetches
//! exactly that URL from the agent's HTTP server serving Debian's real `/usr/lib/ipxe`,
//! whose `ipxe.efi` is a symlink to `/boot/ipxe.efi` (the default `--tftp-root`). The URL
//! names the MAC, so the download is a step in that machine's flight recorder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, Opcode, OptionCode};
use http_support::{curl, curl_text};
use ironpool_agents::dhcp::{BootConfig, Request, ServerState, SubnetConfig, handle};
use ironpool_agents::http::{
    HttpMetrics, HttpServer, ImageCache, MemoryBootSource, MemoryReportSink, ScriptConfig,
    ServerConfig, TokenKey,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const IPXE_DIR: &str = "/usr/lib/ipxe";

/// Starts the HTTP server on loopback with `boot_files` as its iPXE directory; returns its
/// base URL, the metrics and the token that stops it.
async fn start(
    boot_files: Option<&Path>,
) -> (
    String,
    HttpMetrics,
    CancellationToken,
    tokio::sync::mpsc::Receiver<ironpool_agents::http::BootEvent>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let assets = tempfile::tempdir().unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let metrics = HttpMetrics::new();
    let mut config = ServerConfig::new(
        ScriptConfig::new(&base, "").unwrap(),
        assets.path().to_path_buf(),
    );
    config.boot_files_dir = boot_files.map(Path::to_path_buf);
    let (tx, events) = tokio::sync::mpsc::channel(16);
    let server = HttpServer {
        config,
        keys: TokenKey::new(&[7; 32]).unwrap(),
        source: Arc::new(MemoryBootSource::new()),
        sink: Arc::new(MemoryReportSink::new()),
        cache: ImageCache::open(cache_dir.path(), 1 << 20, metrics.clone()).unwrap(),
        metrics: metrics.clone(),
        events: tx,
    };
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    tokio::spawn(async move {
        let _dirs = (assets, cache_dir);
        server.serve(listener, token).await
    });
    (base, metrics, cancel, events)
}

/// The boot file name (option 67) the DHCP pipeline offers UEFI HTTP boot firmware.
fn offered_url(http_base: &str) -> String {
    let ip = |d| Ipv4Addr::new(10, 0, 0, d);
    let subnet = SubnetConfig {
        name: "prov".into(),
        network: ip(0),
        prefix: 24,
        gateway: Some(ip(1)),
        dns: vec![],
        domain: None,
        mtu: None,
        lease_secs: 600,
        dynamic: Some((ip(100), ip(110))),
        reserved: vec![],
        pxe: true,
    };
    let mut config = ironpool_agents::dhcp::ServerConfig::new(ip(2));
    config.boot = Some(BootConfig::new(http_base));
    let state = ServerState::new(config, vec![subnet]);
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_chaddr(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    opts.insert(DhcpOption::ClassIdentifier(
        b"HTTPClient:Arch:00016:UNDI:003001".to_vec(),
    ));
    opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(16)));
    let req = Request {
        msg: &m,
        interface_ip: ip(2),
    };
    let decision = handle(&req, &state, 1_000);
    let (reply, _) = decision.reply.expect("an OFFER");
    let class = reply.opts().get(OptionCode::ClassIdentifier);
    assert_eq!(
        class,
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec())),
        "HTTP boot firmware ignores offers without vendor class HTTPClient"
    );
    match reply.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => String::from_utf8(f.clone()).unwrap(),
        other => panic!("no boot file in the offer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offered_http_boot_url_serves_debians_ipxe_efi() {
    let dir = Path::new(IPXE_DIR);
    assert!(
        dir.join("ipxe.efi").exists(),
        "{IPXE_DIR}/ipxe.efi is missing: run e2e/scripts/install-net-tools.sh (Debian's ipxe)"
    );
    let (base, metrics, cancel, mut events) = start(Some(dir)).await;
    let url = offered_url(&base);
    assert_eq!(url, format!("{base}/boot/52-54-00-12-34-56/ipxe.efi"));

    let want = std::fs::read(dir.join("ipxe.efi")).unwrap();
    assert!(want.starts_with(b"MZ"), "ipxe.efi is a PE/COFF image");
    let (status, body) = curl(&[&url]).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), want.len());
    assert!(body == want, "the bytes of Debian's ipxe.efi");
    assert_eq!(metrics.bytes_served.get(), want.len() as u64);

    // EDK2's HttpBootDxe asks for the size first (HEAD) and may resume with a Range.
    let (status, _) = curl(&["-I", &url]).await;
    assert_eq!(status, 200);
    let (status, part) = curl(&["-r", "0-1", &url]).await;
    assert_eq!((status, part.as_slice()), (206, &b"MZ"[..]));
    // The whole-file GET is the machine's flight-recorder step; HEAD and Range are not.
    let e = events.try_recv().expect("the download is recorded");
    assert_eq!(e.mac.to_string(), "52:54:00:12:34:56");
    assert_eq!(e.step, ironpool_crds::machine::BootStep::AssetFetched);
    assert_eq!(
        e.detail,
        format!("/boot/ipxe.efi over UEFI HTTP boot ({} bytes)", want.len())
    );
    assert!(
        events.try_recv().is_err(),
        "only the whole-file GET is a step"
    );
    // A missing file is recorded with its status; a bad MAC is refused.
    let gone = format!("{base}/boot/52-54-00-12-34-56/snponly-missing.efi");
    assert_eq!(curl_text(&[&gone]).await.0, 404);
    let e = events.try_recv().expect("the failed download is recorded");
    assert!(
        e.detail.ends_with("failed: HTTP 404 Not Found"),
        "{}",
        e.detail
    );
    let (status, body) = curl_text(&[&format!("{base}/boot/not-a-mac/ipxe.efi")]).await;
    assert_eq!(status, 400, "{body}");

    // The BIOS binary is served too; scripts still answer at <mac>.ipxe.
    let (status, body) = curl(&[&format!("{base}/boot/undionly.kpxe")]).await;
    assert_eq!(status, 200);
    assert!(body == std::fs::read(dir.join("undionly.kpxe")).unwrap());
    let (status, script) = curl_text(&[&format!("{base}/boot/52-54-00-12-34-56.ipxe")]).await;
    assert_eq!(status, 200);
    assert!(script.starts_with("#!ipxe"), "{script}");
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_files_are_confined_like_tftp() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("key"), b"private").unwrap();
    let mode = std::os::unix::fs::PermissionsExt::from_mode(0o600);
    std::fs::set_permissions(outside.path().join("key"), mode).unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("snponly.efi"), b"MZ snp").unwrap();
    std::os::unix::fs::symlink(outside.path().join("key"), root.path().join("key.efi")).unwrap();
    let (base, _, cancel, _events) = start(Some(root.path())).await;

    let (status, body) = curl(&[&format!("{base}/boot/snponly.efi")]).await;
    assert_eq!((status, body.as_slice()), (200, &b"MZ snp"[..]));
    let (status, body) = curl_text(&[&format!("{base}/boot/key.efi")]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not world-readable"), "{body}");
    let (status, body) = curl_text(&[&format!("{base}/boot/missing.efi")]).await;
    assert_eq!(status, 404);
    assert!(body.contains("no iPXE binary 'missing.efi'"), "{body}");
    for escape in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cetc%5Cpasswd",
    ] {
        let (status, body) = curl_text(&[&format!("{base}/boot/{escape}")]).await;
        assert_eq!(status, 403, "{escape}: {body}");
    }
    cancel.cancel();

    // Without an iPXE directory the route serves scripts only, and says so.
    let (base, _, cancel, _events) = start(None).await;
    let (status, body) = curl_text(&[&format!("{base}/boot/ipxe.efi")]).await;
    assert_eq!(status, 404);
    assert!(body.contains("serves no iPXE binaries"), "{body}");
    cancel.cancel();
}
