//! The image cache: content-addressed by checksum, filled once per image from its upstream
//! URL (concurrent requests share one download), verified before it becomes servable, and
//! kept under a size limit by evicting the least recently used images nobody is reading.
//!
//! Layout: `<dir>/sha256-<hex>` (or `sha512-<hex>`) for verified images, each with
//! `<name>.repr-digest`: its SHA-256 and SHA-512 as a `Repr-Digest` field value, computed
//! in the verifying pass and sent with the image ([`super::reprdigest`]). Downloads go to
//! `<dir>/.partial-<name>-<random>` and are renamed into place only after the checksum
//! matched (the digest file first), so a crash or a mismatch never leaves a servable file.
//! Partial files and digest files without their image are deleted when the cache opens.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::fetch::Upstream;
use super::metrics::HttpMetrics;
use super::{HttpError, ImageRef};

/// A content address: a checksum algorithm and its lower-case hex digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    sha512: bool,
    hex: String,
}

impl CacheKey {
    /// From a Deployment checksum, `sha256:<64 hex>` or `sha512:<128 hex>`.
    pub fn from_checksum(checksum: &str) -> Result<Self, HttpError> {
        let (algo, hex) = checksum
            .split_once(':')
            .ok_or_else(|| HttpError::BadChecksum(checksum.to_string()))?;
        Self::parts(algo, hex).ok_or_else(|| HttpError::BadChecksum(checksum.to_string()))
    }

    /// From a cache file name or URL segment: `sha256-<hex>`, `sha512-<hex>`, or a bare
    /// 64-digit hex (SHA-256).
    pub fn from_file_name(name: &str) -> Option<Self> {
        match name.split_once('-') {
            Some((algo, hex)) => Self::parts(algo, hex),
            None => Self::parts("sha256", name),
        }
    }

    fn parts(algo: &str, hex: &str) -> Option<Self> {
        let sha512 = match algo {
            "sha256" => false,
            "sha512" => true,
            _ => return None,
        };
        let want = if sha512 { 128 } else { 64 };
        let ok = hex.len() == want && hex.bytes().all(|b| b.is_ascii_hexdigit());
        ok.then(|| Self {
            sha512,
            hex: hex.to_ascii_lowercase(),
        })
    }

    /// `sha256-<hex>`: the file name in the cache and the last URL segment.
    pub fn file_name(&self) -> String {
        format!("{}-{}", self.algo_name(), self.hex)
    }

    /// `sha256:<hex>`, as Deployments write it.
    pub fn checksum(&self) -> String {
        format!("{}:{}", self.algo_name(), self.hex)
    }

    fn algo_name(&self) -> &'static str {
        if self.sha512 { "sha512" } else { "sha256" }
    }
}

/// The suffix of an image's digest file.
const DIGEST_SUFFIX: &str = ".repr-digest";

/// What [`ImageCache::lookup`] found.
#[derive(Debug)]
pub enum Lookup {
    /// Servable: the open file, its length, its `Repr-Digest` value (absent for images
    /// cached before digest files existed) and a guard that marks the image in use.
    Ready(File, u64, Option<String>, ReaderGuard),
    /// Being downloaded from upstream now.
    Fetching,
    /// The last download failed with this error (a new plan request retries).
    Failed(HttpError),
    /// Neither cached nor known.
    Unknown,
}

/// Held while an image is being served; images with readers are never evicted.
#[derive(Clone, Debug)]
pub struct ReaderGuard(#[allow(dead_code)] Arc<()>);

type Outcome = Option<Result<(), HttpError>>;

#[derive(Debug)]
struct Entry {
    size: u64,
    last_used: u64,
    readers: Arc<()>,
    repr_digest: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<CacheKey, Entry>,
    inflight: HashMap<CacheKey, watch::Receiver<Outcome>>,
    failed: HashMap<CacheKey, HttpError>,
    upstreams: HashMap<CacheKey, ImageRef>,
    total: u64,
    tick: u64,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    limit: u64,
    upstream: Upstream,
    metrics: HttpMetrics,
    state: Mutex<State>,
}

/// The image cache. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

impl ImageCache {
    /// Opens (creating) the cache in `dir`, keeping at most `limit` bytes of images not in
    /// use. Verified images already there are adopted; partial downloads are deleted.
    pub fn open(dir: &Path, limit: u64, metrics: HttpMetrics) -> Result<Self, HttpError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HttpError::io(format!("create {}", dir.display()), &e))?;
        let mut state = State::default();
        let listing = std::fs::read_dir(dir)
            .map_err(|e| HttpError::io(format!("list {}", dir.display()), &e))?;
        let mut digests = Vec::new();
        for item in listing.flatten() {
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with(".partial-") {
                let _ = std::fs::remove_file(item.path());
            } else if let Some(image) = name.strip_suffix(DIGEST_SUFFIX) {
                digests.push((image.to_string(), item.path()));
            } else if let (Some(key), Ok(meta)) = (CacheKey::from_file_name(&name), item.metadata())
            {
                state.total += meta.len();
                state.entries.insert(
                    key,
                    Entry {
                        size: meta.len(),
                        last_used: 0,
                        readers: Arc::new(()),
                        repr_digest: None,
                    },
                );
            }
        }
        for (image, path) in digests {
            let entry = CacheKey::from_file_name(&image).and_then(|k| state.entries.get_mut(&k));
            let value = std::fs::read_to_string(&path).ok();
            match (entry, value) {
                (Some(e), Some(v)) if !super::reprdigest::parse(v.trim()).is_empty() => {
                    e.repr_digest = Some(v.trim().to_string());
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        metrics
            .cache_bytes
            .set(i64::try_from(state.total).unwrap_or(i64::MAX));
        let upstream = Upstream::new(Duration::from_secs(60))?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            limit,
            upstream,
            metrics,
            state: Mutex::new(state),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Bytes and number of verified images in the cache.
    pub fn usage(&self) -> (u64, usize) {
        let st = self.state();
        (st.total, st.entries.len())
    }

    /// Makes `image` servable: returns at once if cached, joins a running download of the
    /// same checksum, or downloads it. Errors say what to fix.
    pub async fn fetch(&self, image: &ImageRef) -> Result<CacheKey, HttpError> {
        let key = CacheKey::from_checksum(&image.checksum)?;
        let mut rx = self.start(&key, image);
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| HttpError::Io {
                what: "image download task".into(),
                message: "it stopped".into(),
            })?
            .clone();
        match outcome {
            Some(Err(e)) => Err(e),
            _ => Ok(key),
        }
    }

    /// Starts fetching `image` in the background unless it is cached or on its way (used
    /// when a Deploy plan is handed out, so the image is ready when the ramdisk asks).
    pub fn prefetch(&self, image: &ImageRef) {
        if let Ok(key) = CacheKey::from_checksum(&image.checksum) {
            drop(self.start(&key, image));
        }
    }

    fn start(&self, key: &CacheKey, image: &ImageRef) -> watch::Receiver<Outcome> {
        let mut guard = self.state();
        let st = &mut *guard;
        st.upstreams.insert(key.clone(), image.clone());
        if let Some(e) = st.entries.get_mut(key) {
            st.tick += 1;
            e.last_used = st.tick;
            let (_tx, rx) = watch::channel(Some(Ok(())));
            self.inner.metrics.image_fetch("hit");
            return rx;
        }
        if let Some(rx) = st.inflight.get(key) {
            self.inner.metrics.image_fetch("joined");
            return rx.clone();
        }
        let (tx, rx) = watch::channel(None);
        st.inflight.insert(key.clone(), rx.clone());
        st.failed.remove(key);
        drop(guard);
        let (cache, key, url) = (self.clone(), key.clone(), image.url.clone());
        tokio::spawn(async move {
            let result = cache.download(&key, &url).await;
            cache.inner.metrics.image_fetch(match &result {
                Ok(()) => "downloaded",
                Err(e) => e.metric_label(),
            });
            if let Err(e) = &result {
                tracing::warn!(url = %url, error = %e, "image download failed");
            }
            {
                let mut st = cache.state();
                st.inflight.remove(&key);
                if let Err(e) = &result {
                    st.failed.insert(key.clone(), e.clone());
                }
            }
            let _ = tx.send(Some(result));
        });
        rx
    }

    async fn download(&self, key: &CacheKey, url: &str) -> Result<(), HttpError> {
        let name = key.file_name();
        let tmp = self
            .inner
            .dir
            .join(format!(".partial-{name}-{:016x}", fastrand::u64(..)));
        let result = self
            .inner
            .upstream
            .download(url, &tmp, self.inner.limit)
            .await;
        let got = match result {
            Ok(got) => got,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let digest = if key.sha512 { &got.sha512 } else { &got.sha256 };
        if *digest != key.hex {
            let _ = std::fs::remove_file(&tmp);
            return Err(HttpError::ChecksumMismatch {
                url: url.to_string(),
                expected: key.checksum(),
                got: format!("{}:{digest}", key.algo_name()),
                bytes: got.bytes,
            });
        }
        // The digest file goes in place first: an image never lacks one for long, and a
        // digest file left without its image (a crash in between) is removed at open.
        let repr_digest = super::reprdigest::format(&got.sha256, &got.sha512);
        if let Some(value) = &repr_digest {
            let partial = self
                .inner
                .dir
                .join(format!(".partial-{name}{DIGEST_SUFFIX}"));
            let path = self.inner.dir.join(format!("{name}{DIGEST_SUFFIX}"));
            std::fs::write(&partial, value)
                .and_then(|()| std::fs::rename(&partial, &path))
                .map_err(|e| {
                    let _ = std::fs::remove_file(&tmp);
                    let _ = std::fs::remove_file(&partial);
                    HttpError::io(format!("write {}", path.display()), &e)
                })?;
        }
        let dest = self.inner.dir.join(&name);
        std::fs::rename(&tmp, &dest).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            HttpError::io(format!("rename into {}", dest.display()), &e)
        })?;
        tracing::info!(url, image = %name, bytes = got.bytes, "image cached and verified");
        let mut guard = self.state();
        let st = &mut *guard;
        st.tick += 1;
        let entry = Entry {
            size: got.bytes,
            last_used: st.tick,
            readers: Arc::new(()),
            repr_digest,
        };
        if let Some(old) = st.entries.insert(key.clone(), entry) {
            st.total -= old.size;
        }
        st.total += got.bytes;
        self.evict(st, key);
        Ok(())
    }

    /// Removes least recently used images without readers until the cache fits its limit.
    fn evict(&self, st: &mut State, keep: &CacheKey) {
        while st.total > self.inner.limit {
            let victim = st
                .entries
                .iter()
                .filter(|(k, e)| *k != keep && Arc::strong_count(&e.readers) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            let Some(victim) = victim else {
                tracing::warn!(
                    total = st.total,
                    limit = self.inner.limit,
                    "image cache over its limit; every other image is in use"
                );
                break;
            };
            if let Some(e) = st.entries.remove(&victim) {
                st.total -= e.size;
                let name = victim.file_name();
                let _ = std::fs::remove_file(self.inner.dir.join(&name));
                let _ = std::fs::remove_file(self.inner.dir.join(format!("{name}{DIGEST_SUFFIX}")));
                self.inner.metrics.image_fetch("evicted");
                tracing::info!(image = %victim.file_name(), bytes = e.size, "image evicted (least recently used)");
            }
        }
        self.inner
            .metrics
            .cache_bytes
            .set(i64::try_from(st.total).unwrap_or(i64::MAX));
    }

    /// Opens a cached image for serving. A miss whose upstream is known (from an earlier
    /// plan) starts the download again and answers [`Lookup::Fetching`].
    pub fn lookup(&self, key: &CacheKey) -> Lookup {
        let mut guard = self.state();
        let st = &mut *guard;
        st.tick += 1;
        let tick = st.tick;
        if let Some(e) = st.entries.get_mut(key) {
            e.last_used = tick;
            let guard = ReaderGuard(Arc::clone(&e.readers));
            let path = self.inner.dir.join(key.file_name());
            return match File::open(&path) {
                Ok(f) => Lookup::Ready(f, e.size, e.repr_digest.clone(), guard),
                Err(err) => Lookup::Failed(HttpError::io(format!("open {}", path.display()), &err)),
            };
        }
        if st.inflight.contains_key(key) {
            return Lookup::Fetching;
        }
        if let Some(e) = st.failed.get(key) {
            return Lookup::Failed(e.clone());
        }
        let Some(image) = st.upstreams.get(key).cloned() else {
            return Lookup::Unknown;
        };
        drop(guard);
        self.prefetch(&image);
        Lookup::Fetching
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_and_print() {
        let hex = "9f".repeat(32);
        let k = CacheKey::from_checksum(&format!("sha256:{hex}")).unwrap();
        assert_eq!(k.file_name(), format!("sha256-{hex}"));
        assert_eq!(CacheKey::from_file_name(&k.file_name()), Some(k.clone()));
        assert_eq!(CacheKey::from_file_name(&hex), Some(k.clone()));
        assert_eq!(CacheKey::from_file_name(&hex.to_uppercase()), Some(k));
        let long = "ab".repeat(64);
        assert!(CacheKey::from_checksum(&format!("sha512:{long}")).is_ok());
        for bad in ["", "sha256:", "md5:abcd", "sha256:zz", "sha512:abcd", &hex] {
            let err = CacheKey::from_checksum(bad).unwrap_err().to_string();
            assert!(err.contains("sha256:<64"), "{bad}: {err}");
        }
        assert_eq!(CacheKey::from_file_name(".partial-x"), None);
        assert_eq!(CacheKey::from_file_name("../etc"), None);
    }
}
