//! The image cache against an upstream HTTP server on loopback: download once and verify,
//! serve from the cache afterwards, single-flight for concurrent requests, nothing servable
//! after a checksum mismatch, LRU eviction, serving many Range readers at once, and the
//! `Repr-Digest` field (SHA-256 and SHA-512 of the image) kept beside each image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http_support::{Harness, blob, client, curl, curl_text, get as http_get, sha256};
use ironpool_agents::http::{CacheKey, HttpError, ImageRef, MacAddr, MachineView};
use ironpool_crds::deployment::ImageFormat;
use ironpool_crds::machine::{BootPurpose, BootTarget};

struct Upstream {
    hits: AtomicUsize,
    images: Vec<Bytes>,
}

async fn serve_image(
    State(u): State<Arc<Upstream>>,
    axum::extract::Path(n): axum::extract::Path<usize>,
) -> axum::response::Response {
    u.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    match u.images.get(n) {
        Some(b) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            b.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Starts an upstream serving `images` at /img/<index> (after 300 ms, so concurrent
/// requests overlap) and /moved/<index> (a redirect).
async fn upstream(images: Vec<Vec<u8>>) -> (String, Arc<Upstream>) {
    let state = Arc::new(Upstream {
        hits: AtomicUsize::new(0),
        images: images.into_iter().map(Bytes::from).collect(),
    });
    let app = Router::new()
        .route("/img/{n}", get(serve_image))
        .route(
            "/moved/{n}",
            get(
                |axum::extract::Path(n): axum::extract::Path<usize>| async move {
                    (StatusCode::FOUND, [(header::LOCATION, format!("/img/{n}"))])
                },
            ),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, state)
}

fn image(url: String, data: &[u8]) -> ImageRef {
    ImageRef {
        url,
        checksum: sha256(data),
        format: ImageFormat::Raw,
    }
}

/// The images in the cache directory; asserts that each has its digest file and that no
/// other file is there.
fn servable_files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let (digests, images): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|n| n.ends_with(".repr-digest"));
    let want: Vec<String> = images.iter().map(|i| format!("{i}.repr-digest")).collect();
    assert_eq!(digests, want, "one digest file per image, no other");
    images
}

/// The `Repr-Digest` value (RFC 9530) the cache must send for `data`.
fn repr_digest(data: &[u8]) -> String {
    use base64::Engine;
    let b64 = |alg| {
        base64::engine::general_purpose::STANDARD.encode(ring::digest::digest(alg, data).as_ref())
    };
    format!(
        "sha-256=:{}:, sha-512=:{}:",
        b64(&ring::digest::SHA256),
        b64(&ring::digest::SHA512)
    )
}

#[tokio::test]
async fn downloads_once_verifies_and_serves_from_cache_with_ranges() {
    let h = Harness::start(1 << 30).await;
    let data = blob(3_000_000, 7);
    let (up, state) = upstream(vec![data.clone()]).await;
    let img = image(format!("{up}/moved/0"), &data);

    let key = h.cache.fetch(&img).await.unwrap();
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
    assert_eq!(servable_files(h.cache_dir.path()), vec![key.file_name()]);
    assert_eq!(
        std::fs::read(h.cache_dir.path().join(key.file_name())).unwrap(),
        data
    );
    assert_eq!(h.cache.fetch(&img).await.unwrap(), key);
    assert_eq!(
        state.hits.load(Ordering::SeqCst),
        1,
        "second fetch served from the cache"
    );
    assert_eq!(h.metrics.image_fetch_count("downloaded"), 1);
    assert_eq!(h.metrics.image_fetch_count("hit"), 1);
    assert_eq!(h.cache.usage(), (3_000_000, 1));

    let url = format!("{}/images/{}", h.base, key.file_name());
    let (status, body) = curl(&[&url]).await;
    assert_eq!((status, body == data), (200, true));
    let (status, body) = curl(&["-r", "1000000-1000099", &url]).await;
    assert_eq!(
        (status, body.as_slice()),
        (206, &data[1_000_000..1_000_100])
    );
    // Both answers carry the digests of the whole image, computed while it was verified.
    let c = client();
    for range in [None, Some("bytes=5-9")] {
        let (status, headers, _) = http_get(&c, &url, range).await;
        assert_eq!(status, if range.is_some() { 206 } else { 200 });
        assert_eq!(
            headers["repr-digest"],
            repr_digest(&data).as_str(),
            "{range:?}"
        );
    }
    // Many machines at once, each reading its own part.
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..32usize {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let start = i * 90_000;
            let (status, _, body) =
                http_get(&c, &url, Some(&format!("bytes={start}-{}", start + 89_999))).await;
            (status, start, body)
        }));
    }
    for t in tasks {
        let (status, start, body) = t.await.unwrap();
        assert_eq!(status, 206);
        assert_eq!(&body[..], &data[start..start + 90_000]);
    }
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn twenty_concurrent_fetches_share_one_download() {
    let h = Harness::start(1 << 30).await;
    let data = blob(2_000_000, 8);
    let (up, state) = upstream(vec![data.clone()]).await;
    let img = image(format!("{up}/img/0"), &data);
    let fetches = (0..20).map(|_| {
        let (cache, img) = (h.cache.clone(), img.clone());
        tokio::spawn(async move { cache.fetch(&img).await })
    });
    for f in futures::future::join_all(fetches).await {
        f.unwrap().unwrap();
    }
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
    assert_eq!(h.metrics.image_fetch_count("downloaded"), 1);
    assert_eq!(h.metrics.image_fetch_count("joined"), 19);
}

#[tokio::test]
async fn checksum_mismatch_and_upstream_errors_leave_nothing_servable() {
    let h = Harness::start(1 << 30).await;
    let data = blob(500_000, 9);
    let (up, _) = upstream(vec![data.clone()]).await;
    let wrong = format!("sha256:{}", "0".repeat(64));
    let img = ImageRef {
        url: format!("{up}/img/0"),
        checksum: wrong.clone(),
        format: ImageFormat::Raw,
    };
    let err = h.cache.fetch(&img).await.unwrap_err();
    let HttpError::ChecksumMismatch {
        expected,
        got,
        bytes,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((expected, got, *bytes), (&wrong, &sha256(&data), 500_000));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("expected {wrong}, got {}", sha256(&data))),
        "{msg}"
    );
    assert!(
        servable_files(h.cache_dir.path()).is_empty(),
        "no file, not even a partial one"
    );
    let key = CacheKey::from_checksum(&wrong).unwrap();
    let (status, body) = curl_text(&[&format!("{}/images/{}", h.base, key.file_name())]).await;
    assert_eq!(status, 502);
    assert!(body.contains("does not match its checksum"), "{body}");
    // The ramdisk's client reads the answer as a failure no retry can fix.
    let url = format!("{}/images/{}", h.base, key.file_name());
    let answer = tokio::task::spawn_blocking(move || {
        ironpool_agents::machine::client::request("GET", &url, None, None).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        (answer.status, answer.failure.as_deref()),
        (502, Some("ChecksumMismatch"))
    );
    assert_eq!(h.metrics.image_fetch_count("checksum_mismatch"), 1);

    let missing = image(format!("{up}/img/5"), b"x");
    let err = h.cache.fetch(&missing).await.unwrap_err().to_string();
    assert!(err.contains("HTTP 404 Not Found"), "{err}");
    let refused = image("http://127.0.0.1:9/img".into(), b"y");
    let err = h.cache.fetch(&refused).await.unwrap_err().to_string();
    assert!(
        err.contains("fetching image http://127.0.0.1:9/img: request failed"),
        "{err}"
    );
    let bad = ImageRef {
        checksum: "md5:abc".into(),
        ..missing
    };
    assert!(
        h.cache
            .fetch(&bad)
            .await
            .unwrap_err()
            .to_string()
            .contains("is not an image checksum")
    );
    assert!(servable_files(h.cache_dir.path()).is_empty());
    let (status, _) = curl_text(&[&format!("{}/images/sha256-{}", h.base, "1".repeat(64))]).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn least_recently_used_images_nobody_reads_are_evicted() {
    let h = Harness::start(2_500_000).await;
    let images: Vec<Vec<u8>> = (0..4).map(|i| blob(1_000_000, 100 + i)).collect();
    let (up, _) = upstream(images.clone()).await;
    let refs: Vec<ImageRef> = (0..4)
        .map(|i| image(format!("{up}/img/{i}"), &images[i]))
        .collect();
    let keys: Vec<CacheKey> =
        futures::future::join_all(refs.iter().take(2).map(|r| h.cache.fetch(r)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    h.cache.fetch(&refs[0]).await.unwrap(); // image 0 is now the most recently used
    let k2 = h.cache.fetch(&refs[2]).await.unwrap();
    let mut want = vec![keys[0].file_name(), k2.file_name()];
    want.sort();
    assert_eq!(
        servable_files(h.cache_dir.path()),
        want,
        "image 1 (least recently used) went"
    );
    assert_eq!(h.cache.usage(), (2_000_000, 2));

    // An image being served is never evicted, even when it is the oldest.
    let ironpool_agents::http::Lookup::Ready(_, _, _, guard) = h.cache.lookup(&keys[0]) else {
        panic!()
    };
    h.cache.fetch(&refs[2]).await.unwrap(); // refresh image 2
    let k3 = h.cache.fetch(&refs[3]).await.unwrap();
    let mut want = vec![keys[0].file_name(), k3.file_name()];
    want.sort();
    assert_eq!(
        servable_files(h.cache_dir.path()),
        want,
        "image 0 is read, so image 2 went"
    );
    drop(guard);
    assert_eq!(h.metrics.image_fetch_count("evicted"), 2);
}

#[tokio::test]
async fn a_deploy_plan_prefetches_the_image_for_the_ramdisk() {
    let h = Harness::start(1 << 30).await;
    let data = blob(1_500_000, 11);
    let (up, state) = upstream(vec![data.clone()]).await;
    let mac = MacAddr([2, 0, 0, 0, 0, 9]);
    h.source.put(
        MachineView::example("m9", mac)
            .with_intent(BootTarget::Ramdisk, BootPurpose::Deploy, 1)
            .with_image(&format!("{up}/img/0"), &sha256(&data)),
    );
    let token = format!("Authorization: Bearer {}", h.keys.derive(&mac, 1));
    let (status, plan) = curl_text(&[
        "-H",
        &token,
        &format!("{}/api/v1/machines/02-00-00-00-00-09/plan", h.base),
    ])
    .await;
    assert_eq!(status, 200);
    let plan: ironpool_agents::http::Plan = serde_json::from_str(&plan).unwrap();
    let url = plan.image.unwrap().url;
    let (status, _) = curl_text(&[&url]).await;
    assert_eq!(
        status, 503,
        "still downloading (upstream answers after 300 ms)"
    );
    let mut body = Vec::new();
    for _ in 0..50 {
        let (status, b) = curl(&[&url]).await;
        if status == 200 {
            body = b;
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(body, data);
    assert_eq!(state.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_reopened_cache_adopts_verified_images_and_drops_partial_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = blob(10_000, 12);
    let key = CacheKey::from_checksum(&sha256(&data)).unwrap();
    std::fs::write(dir.path().join(key.file_name()), &data).unwrap();
    std::fs::write(
        dir.path().join(format!(".partial-{}-1", key.file_name())),
        b"half",
    )
    .unwrap();
    // The image's digest file is adopted with it; one whose image is gone, or that does not
    // parse, is removed.
    let digest_file = |k: &CacheKey| dir.path().join(format!("{}.repr-digest", k.file_name()));
    std::fs::write(digest_file(&key), repr_digest(&data)).unwrap();
    let gone = CacheKey::from_checksum(&sha256(b"gone")).unwrap();
    std::fs::write(digest_file(&gone), repr_digest(b"gone")).unwrap();
    let metrics = ironpool_agents::http::HttpMetrics::new();
    let cache = ironpool_agents::http::ImageCache::open(dir.path(), 1 << 20, metrics).unwrap();
    assert_eq!(cache.usage(), (10_000, 1));
    assert_eq!(servable_files(dir.path()), vec![key.file_name()]);
    let ironpool_agents::http::Lookup::Ready(_, 10_000, Some(value), _) = cache.lookup(&key) else {
        panic!("the adopted image is servable with its digests")
    };
    assert_eq!(value, repr_digest(&data));
    drop(cache);

    std::fs::write(digest_file(&key), "garbage").unwrap();
    let metrics = ironpool_agents::http::HttpMetrics::new();
    let cache = ironpool_agents::http::ImageCache::open(dir.path(), 1 << 20, metrics).unwrap();
    assert!(
        !digest_file(&key).exists(),
        "an unreadable digest file is dropped"
    );
    // An image cached before digest files existed is still served, without the field.
    assert!(matches!(
        cache.lookup(&key),
        ironpool_agents::http::Lookup::Ready(_, 10_000, None, _)
    ));
}
