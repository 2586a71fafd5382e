//! The HTTP boot server with real clients (curl, hyper) on loopback: iPXE scripts per
//! intent, boot assets (confinement, Range), the machine API (tokens, reports, bad input),
//! flight-recorder events, metrics and graceful shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;

use std::time::Duration;

use http_support::{Harness, blob, client, curl, curl_text, get, write};
use ironpool_agents::http::{MacAddr, MachineView, Plan, Report, SecretKey};
use ironpool_crds::machine::{BootMode, BootPurpose, BootStep, BootTarget, ProvisioningStep};

const MAC: MacAddr = MacAddr([0x3c, 0xec, 0xef, 0x12, 0x34, 0x56]);

#[tokio::test]
async fn scripts_follow_the_intent_and_unknown_macs_enlist() {
    let mut h = Harness::start(1 << 30).await;
    // Unknown MAC: the enlistment ramdisk, whatever the spelling of the MAC.
    for spelling in [
        "3c-ec-ef-12-34-56",
        "3C:EC:EF:12:34:56",
        "3c:ec:ef:12:34:56",
    ] {
        let (status, script) = curl_text(&[&format!("{}/boot/{spelling}.ipxe", h.base)]).await;
        assert_eq!(status, 200, "{spelling}");
        assert!(script.starts_with("#!ipxe\n"));
        assert!(
            script.contains("ironpool.purpose=Enlist ironpool.attempt=0"),
            "{script}"
        );
        assert!(script.contains(&format!("ironpool.token={}", h.keys.derive(&MAC, 0))));
        assert!(script.contains(&format!("ironpool.url={} ", h.base)));
    }
    // Known machine: deploy ramdisk, then local disk per boot mode.
    let m = MachineView::example("r1-u07", MAC).with_intent(
        BootTarget::Ramdisk,
        BootPurpose::Deploy,
        3,
    );
    h.source.put(m.clone());
    let url = format!("{}/boot/3c-ec-ef-12-34-56.ipxe", h.base);
    let (_, script) = curl_text(&[&url]).await;
    assert!(
        script.contains(&format!("ironpool.token={} ", h.keys.derive(&MAC, 3))),
        "{script}"
    );
    assert!(script.contains("ironpool.purpose=Deploy ironpool.attempt=3"));
    h.source.put(
        m.clone()
            .with_intent(BootTarget::Disk, BootPurpose::Run, 4)
            .with_boot_mode(BootMode::Legacy),
    );
    let (_, script) = curl_text(&[&url]).await;
    assert!(
        script.contains("\nsanboot --no-describe --drive 0x80 || exit\n"),
        "{script}"
    );
    h.source
        .put(m.clone().with_intent(BootTarget::Disk, BootPurpose::Run, 4));
    let (_, script) = curl_text(&[&url]).await;
    assert!(script.ends_with("\nexit 1\n"), "{script}");
    h.source
        .put(m.with_intent(BootTarget::Off, BootPurpose::Idle, 5));
    let (_, script) = curl_text(&[&url]).await;
    assert!(script.contains("\npoweroff || exit\n"), "{script}");
    // Bad names are 400 with advice.
    let (status, body) = curl_text(&[&format!("{}/boot/not-a-mac.ipxe", h.base)]).await;
    assert_eq!(status, 400);
    assert!(body.contains("/boot/3c-ec-ef-12-34-56.ipxe"), "{body}");
    // Every script fetch reached the flight recorder.
    let events = h.drain_events();
    assert_eq!(events.len(), 7, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e.mac == MAC && e.step == BootStep::ScriptFetched)
    );
    assert!(!events[0].known && events[3].known);
    assert_eq!(
        events[3].detail,
        "/boot/3c-ec-ef-12-34-56.ipxe: ramdisk for Deploy attempt 3"
    );
    assert_eq!(h.metrics.request_count("boot", 200), 7);
    assert_eq!(h.metrics.request_count("boot", 400), 1);
}

#[tokio::test]
async fn assets_are_confined_and_ranges_return_the_right_bytes() {
    let mut h = Harness::start(1 << 30).await;
    let kernel = blob(300_000, 1);
    write(h.assets.path(), "vmlinuz", &kernel);
    std::fs::create_dir(h.assets.path().join("aarch64")).unwrap();
    write(h.assets.path(), "aarch64/vmlinuz", b"arm");
    write(
        h.assets.path().parent().unwrap(),
        "ironpool-outside-secret",
        b"secret",
    );
    let url = format!("{}/assets/vmlinuz", h.base);

    let (status, body) = curl(&[&format!("{url}?mac=3c-ec-ef-12-34-56")]).await;
    assert_eq!((status, body.len()), (200, kernel.len()));
    assert_eq!(body, kernel);
    let (status, body) = curl(&[&format!("{}/assets/aarch64/vmlinuz", h.base)]).await;
    assert_eq!((status, body.as_slice()), (200, &b"arm"[..]));

    for (range, want) in [
        ("100-199", &kernel[100..200]),
        ("299990-", &kernel[299_990..]),
        ("-50", &kernel[kernel.len() - 50..]),
        ("0-0", &kernel[..1]),
        ("299999-500000", &kernel[299_999..]),
    ] {
        let (status, body) = curl(&["-r", range, &url]).await;
        assert_eq!(status, 206, "{range}");
        assert_eq!(body, want, "{range}");
    }
    let (status, headers, _) = get(&client(), &url, Some("bytes=100-199")).await;
    assert_eq!(status, 206);
    assert_eq!(headers["content-range"], "bytes 100-199/300000");
    assert_eq!(headers["content-length"], "100");
    let (status, headers, body) = get(&client(), &url, Some("bytes=300000-")).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], "bytes */300000");
    assert!(!body.is_empty());
    let (status, headers, _) = get(&client(), &url, None).await;
    assert_eq!(
        (
            status,
            &headers["content-length"],
            &headers["accept-ranges"]
        ),
        (200, &"300000".parse().unwrap(), &"bytes".parse().unwrap())
    );

    // Escapes: raw, percent-encoded, absolute, backslash; all refused as "not found".
    for path in [
        "/assets/../ironpool-outside-secret",
        "/assets/%2e%2e/ironpool-outside-secret",
        "/assets/..%2fironpool-outside-secret",
        "/assets//etc/passwd",
        "/assets/%2fetc%2fpasswd",
        "/assets/aarch64/../../ironpool-outside-secret",
        "/assets/..%5cironpool-outside-secret",
        "/assets/aarch64",
    ] {
        let (status, body) = curl(&["--path-as-is", &format!("{}{path}", h.base)]).await;
        assert_eq!(status, 404, "{path}");
        assert_ne!(body, b"secret", "{path}");
    }
    // Only the un-ranged fetch with ?mac= is a flight-recorder step.
    let events = h.drain_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].step, events[0].mac),
        (BootStep::AssetFetched, MAC)
    );
    assert_eq!(events[0].detail, "/assets/vmlinuz (300000 bytes)");
    assert!(h.metrics.bytes_served.get() >= 600_000);
}

fn deploying(h: &Harness, attempt: i64) -> MachineView {
    let m = MachineView::example("r1-u07", MAC)
        .with_intent(BootTarget::Ramdisk, BootPurpose::Deploy, attempt)
        .with_image(
            "http://127.0.0.1:9/x.raw",
            &format!("sha256:{}", "ab".repeat(32)),
        );
    h.source.put(m.clone());
    m
}

fn auth(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[tokio::test]
async fn machine_api_checks_tokens_and_reports_reach_the_sink() {
    let mut h = Harness::start(1 << 30).await;
    deploying(&h, 3);
    let api = format!("{}/api/v1/machines/3c-ec-ef-12-34-56", h.base);
    let good = auth(&h.keys.derive(&MAC, 3));

    let (status, body) = curl_text(&["-H", &good, &format!("{api}/plan")]).await;
    assert_eq!(status, 200, "{body}");
    let plan: Plan = serde_json::from_str(&body).unwrap();
    assert_eq!((plan.purpose, plan.attempt), (BootPurpose::Deploy, 3));
    assert_eq!(
        plan.image.unwrap().url,
        format!("{}/images/sha256-{}", h.base, "ab".repeat(32))
    );

    // Refusals: no token, wrong token, a stale attempt's token, another MAC's token.
    for (header, part) in [
        (None, "missing 'Authorization: Bearer <token>'"),
        (
            Some(auth("nonsense")),
            "token does not match Machine datacenter-a/r1-u07",
        ),
        (
            Some(auth(&h.keys.derive(&MAC, 2))),
            "token of attempt 2 has expired",
        ),
        (
            Some(auth(&h.keys.derive(&MacAddr([2, 0, 0, 0, 0, 1]), 3))),
            "token does not match",
        ),
    ] {
        let mut args = vec![format!("{api}/plan")];
        if let Some(hd) = header {
            args = vec!["-H".into(), hd, format!("{api}/plan")];
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, body) = curl_text(&args).await;
        assert_eq!(status, 401, "{args:?}");
        assert!(body.contains(part), "{args:?}: {body}");
    }

    let inventory = r#"{"cpu":{"cores":8,"model":"QEMU"},"memoryBytes":1073741824,
        "disks":[{"name":"vda","sizeBytes":10737418240}],"nics":[{"name":"eth0","mac":"3c:ec:ef:12:34:56"}]}"#;
    let post = |path: &'static str, body: &'static str, hdr: String| {
        let url = format!("{api}/{path}");
        async move {
            curl_text(&[
                "-H",
                &hdr,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &url,
            ])
            .await
        }
    };
    assert_eq!(post("inventory", inventory, good.clone()).await.0, 204);
    let progress =
        r#"{"step":"WritingImage","bytesWritten":1024,"bytesTotal":4096,"message":"25%"}"#;
    assert_eq!(post("progress", progress, good.clone()).await.0, 204);
    let (status, body) = post(
        "result",
        r#"{"attempt":2,"step":"Succeeded"}"#,
        good.clone(),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("attempt 2 but this token is for attempt 3"),
        "{body}"
    );
    assert_eq!(
        post(
            "result",
            r#"{"attempt":3,"step":"Succeeded","message":"done"}"#,
            good.clone()
        )
        .await
        .0,
        204
    );

    // Malformed input is 400 with serde's reason.
    for (path, body, part) in [
        ("inventory", "{not json", "malformed inventory JSON"),
        (
            "inventory",
            r#"{"disks":[{"name":"vda"}]}"#,
            "missing field `sizeBytes`",
        ),
        (
            "progress",
            r#"{"step":"Teleporting"}"#,
            "unknown variant `Teleporting`",
        ),
        (
            "progress",
            r#"{"step":"Erasing","extra":1}"#,
            "unknown field `extra`",
        ),
        (
            "progress",
            r#"{"step":"Succeeded"}"#,
            "POST them to .../result",
        ),
        (
            "result",
            r#"{"attempt":3,"step":"Erasing"}"#,
            "Succeeded or Failed",
        ),
    ] {
        let (status, text) = post(path, body, good.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {text}");
        assert!(text.contains(part), "{path} {body}: {text}");
    }
    let big = format!("{api}/inventory");
    let huge = format!("{{\"memory\":\"{}\"}}", "x".repeat(100_000));
    let (status, _) = curl_text(&["-H", &good, "--data-binary", &huge, &big]).await;
    assert_eq!(status, 413);

    let reports = h.sink.reports();
    assert_eq!(reports.len(), 3, "{reports:?}");
    assert!(
        matches!(&reports[0], Report::Inventory { machine: Some(m), hardware, .. }
        if m == "r1-u07" && hardware.cpu.as_ref().unwrap().cores == Some(8))
    );
    let Report::Provisioning { report, .. } = &reports[1] else {
        panic!("{reports:?}")
    };
    assert_eq!(
        (report.attempt, report.step, report.bytes_written),
        (3, ProvisioningStep::WritingImage, Some(1024))
    );
    assert!(report.updated_at.is_some());
    let Report::Provisioning { report, .. } = &reports[2] else {
        panic!("{reports:?}")
    };
    assert_eq!(
        (report.step, report.message.as_deref()),
        (ProvisioningStep::Succeeded, Some("done"))
    );

    // A sink that fails answers 503 with Retry-After, and the ramdisk may retry.
    h.sink.fail_with(Some("apiserver unreachable"));
    let (status, body) = post("progress", progress, good.clone()).await;
    assert_eq!(status, 503);
    assert!(body.contains("apiserver unreachable; retry"), "{body}");

    let steps: Vec<_> = h
        .drain_events()
        .into_iter()
        .map(|e| (e.step, e.detail))
        .collect();
    assert_eq!(
        steps,
        vec![
            (
                BootStep::RamdiskCheckIn,
                "plan: Deploy attempt 3".to_string()
            ),
            (
                BootStep::RamdiskCheckIn,
                "inventory: 8 cores, 1 disks, 1 NICs".to_string()
            ),
            (
                BootStep::RamdiskCheckIn,
                "result: Succeeded for attempt 3".to_string()
            ),
        ]
    );
    assert_eq!(h.metrics.request_count("plan", 401), 4);
}

#[tokio::test]
async fn enlisting_macs_send_inventory_only_until_a_machine_exists() {
    let h = Harness::start(1 << 30).await;
    let api = format!("{}/api/v1/machines/3c:ec:ef:12:34:56", h.base);
    let enlist = auth(&h.keys.derive(&MAC, 0));
    let (status, body) = curl_text(&["-H", &enlist, &format!("{api}/plan")]).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""purpose":"Enlist","attempt":0"#), "{body}");
    let (status, _) = curl_text(&[
        "-H",
        &enlist,
        "--data-binary",
        r#"{"memory":"1Gi"}"#,
        &format!("{api}/inventory"),
    ])
    .await;
    assert_eq!(status, 204);
    let (status, body) = curl_text(&[
        "-H",
        &enlist,
        "--data-binary",
        r#"{"step":"Erasing"}"#,
        &format!("{api}/progress"),
    ])
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        matches!(&h.sink.reports()[0], Report::Inventory { machine: None, mac, .. } if *mac == MAC)
    );
    // Once the operator created the Machine, the enlistment token is dead.
    deploying(&h, 1);
    let (status, body) = curl_text(&["-H", &enlist, &format!("{api}/plan")]).await;
    assert_eq!(status, 401);
    assert!(
        body.contains("enlistment token, but Machine datacenter-a/r1-u07 now has this MAC"),
        "{body}"
    );
}

#[tokio::test]
async fn shutdown_drains_within_the_deadline() {
    let h = Harness::start(1 << 30).await;
    write(h.assets.path(), "initramfs", &blob(1000, 2));
    let (status, _) = curl(&[&format!("{}/assets/initramfs", h.base)]).await;
    assert_eq!(status, 200);
    // A client that holds a keep-alive connection open does not hold up shutdown.
    let idle = tokio::net::TcpStream::connect(h.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    h.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), h.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

/// One keep-alive connection: pipelined asset downloads (the zero-copy `sendfile` path), a
/// 404 answered on that path, then a script request, which hands the connection with the
/// bytes already read to hyper; every answer arrives in order and complete.
#[tokio::test]
async fn file_downloads_and_other_requests_share_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start(1 << 30).await;
    let kernel = blob(3_000_000, 5);
    write(h.assets.path(), "vmlinuz", &kernel);
    let mut conn = tokio::net::TcpStream::connect(h.base.trim_start_matches("http://"))
        .await
        .unwrap();
    let requests = "GET /assets/vmlinuz HTTP/1.1\r\nHost: t\r\nRange: bytes=10-19\r\n\r\n\
        GET /assets/vmlinuz HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /assets/missing HTTP/1.1\r\nHost: t\r\n\r\n\
        GET /boot/3c-ec-ef-12-34-56.ipxe HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    conn.write_all(requests.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let mut rest = got.as_slice();
    let mut next = |want_status: &str| -> Vec<u8> {
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(rest[..end].to_vec()).unwrap();
        assert!(head.starts_with(want_status), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(String::from)
            })
            .unwrap()
            .parse()
            .unwrap();
        let body = rest[end..end + len].to_vec();
        rest = &rest[end + len..];
        body
    };
    assert_eq!(next("HTTP/1.1 206"), &kernel[10..20]);
    assert_eq!(next("HTTP/1.1 200"), kernel);
    assert!(
        String::from_utf8(next("HTTP/1.1 404"))
            .unwrap()
            .contains("no asset 'missing'")
    );
    assert!(next("HTTP/1.1 200").starts_with(b"#!ipxe\n"));
    assert!(
        rest.is_empty(),
        "{} bytes after the last answer",
        rest.len()
    );
    assert_eq!(h.metrics.request_count("assets", 206), 1);
    assert_eq!(h.metrics.request_count("assets", 404), 1);
    assert_eq!(h.metrics.request_count("boot", 200), 1);
}

#[tokio::test]
async fn deploy_plans_read_cloud_init_secrets_and_the_deployed_os_checks_in() {
    let mut h = Harness::start(1 << 30).await;
    let mut m = deploying(&h, 3);
    let d = m.deploy.as_mut().unwrap();
    d.user_data = None;
    d.user_data_secret = Some(SecretKey {
        name: "web-1-user-data".into(),
        key: "userData".into(),
    });
    h.source.put(m.clone());
    let api = format!("{}/api/v1/machines/3c-ec-ef-12-34-56", h.base);
    let ramdisk = auth(&h.keys.derive(&MAC, 3));

    // The Secret is missing: the plan waits for it, saying which Secret and key.
    let (status, body) = curl_text(&["-H", &ramdisk, &format!("{api}/plan")]).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("Secret datacenter-a/web-1-user-data but it has no key 'userData'"),
        "{body}"
    );
    h.source.put_secret(
        "datacenter-a",
        "web-1-user-data",
        "userData",
        "#!/bin/sh\necho hi\n",
    );
    let (status, body) = curl_text(&["-H", &ramdisk, &format!("{api}/plan")]).await;
    assert_eq!(status, 200, "{body}");
    let plan: Plan = serde_json::from_str(&body).unwrap();
    let seed = plan.cloud_init.unwrap();
    assert_eq!(seed.user_data.as_deref(), Some("#!/bin/sh\necho hi\n"));
    let meta: std::collections::BTreeMap<&str, &str> = seed
        .meta_data
        .lines()
        .filter_map(|l| l.split_once(": "))
        .collect();
    let url = meta["ironpool-checkin-url"];
    let os_token = meta["ironpool-checkin-token"];
    assert_eq!(url, format!("{api}/booted"));
    assert_eq!(os_token, h.keys.derive_os(&MAC, 3));

    let body = r#"{"instanceId":"datacenter-a-r1-u07-3","kernel":"6.1.0","uptimeSeconds":7.5,
        "userData":{"kind":"script","exitCode":0,"output":"hi\n"}}"#;
    let check_in = |token: String, body: &'static str| {
        let url = url.to_string();
        async move {
            curl_text(&[
                "-H",
                &auth(&token),
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                body,
                &url,
            ])
            .await
        }
    };
    // While the machine still runs the ramdisk, the OS token is refused.
    let (status, text) = check_in(os_token.to_string(), body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("not booting a deployed OS"), "{text}");
    // The operator set "boot from disk" (attempt 4): the OS of attempt 3 checks in.
    h.source
        .put(m.clone().with_intent(BootTarget::Disk, BootPurpose::Run, 4));
    h.drain_events();
    let (status, text) = check_in(h.keys.derive(&MAC, 3), body).await;
    assert_eq!(status, 401, "a ramdisk token is no OS token: {text}");
    let (status, text) = check_in(os_token.to_string(), "{not json").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("malformed check-in JSON"), "{text}");
    let (status, text) = check_in(os_token.to_string(), body).await;
    assert_eq!(status, 204, "{text}");
    let events = h.drain_events();
    let booted: Vec<_> = events
        .iter()
        .filter(|e| e.step == BootStep::OsBooted)
        .collect();
    assert_eq!(booted.len(), 1, "{events:?}");
    assert_eq!(
        booted[0].detail,
        "OS booted from disk (Deploy attempt 3, kernel 6.1.0, up 7.5 s); user-data script exit 0: hi"
    );
    assert_eq!(booted[0].mac, MAC);
}
