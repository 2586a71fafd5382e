//! Writing an image stream onto a disk: raw or QCOW2 (through [`super::qcow2`]), hashing
//! every byte as it arrives, on its own thread so the hash overlaps the writes. The disk's
//! first and last MiB are zeroed before the first write and the image's first MiB (where
//! partition tables and boot code live) is held in memory and written only after the
//! checksum matched, so a failed or wrong image never leaves a disk that looks deployed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use ironpool_crds::deployment::ImageFormat;
use ring::digest;

use super::MachineError;
use super::qcow2::Qcow2Stream;

/// Bytes at the start of the image held back until the checksum matched.
pub const HOLD: u64 = 1 << 20;
/// Read size from the network.
const CHUNK: usize = 4 << 20;
/// Chunks in flight between the reader, the hasher and the writer.
const BUFFERS: usize = 6;
/// Largest coalesced write.
const WRITE_MAX: usize = 8 << 20;

/// A declared checksum: the algorithm and the expected lower-case hex digest.
#[derive(Clone, Debug)]
pub struct Checksum {
    /// ring's algorithm.
    pub algorithm: &'static digest::Algorithm,
    /// `sha256` or `sha512`.
    pub name: &'static str,
    /// Expected hex digest, lower case.
    pub hex: String,
    /// `None` for the Deployment's own checksum; for a digest taken from the image cache's
    /// `Repr-Digest` field, the declared algorithm that anchored it.
    pub anchored_to: Option<&'static str>,
}

impl Checksum {
    /// Parses `sha256:<hex>` or `sha512:<hex>`.
    pub fn parse(text: &str) -> Result<Self, MachineError> {
        let bad = || {
            MachineError::Image(format!(
                "checksum '{text}' is not sha256:<64 hex digits> or sha512:<128 hex digits>"
            ))
        };
        let (name, hex) = text.split_once(':').ok_or_else(bad)?;
        let (algorithm, name, len) = match name {
            "sha256" => (&digest::SHA256, "sha256", 64),
            "sha512" => (&digest::SHA512, "sha512", 128),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Self {
            algorithm,
            name,
            hex: hex.to_ascii_lowercase(),
            anchored_to: None,
        })
    }

    /// The checksum to verify a download with. The image cache sends a `Repr-Digest` field
    /// with the image's SHA-256 and SHA-512 (computed while it verified the declared
    /// checksum). If the field carries the declared algorithm with the declared digest, it
    /// describes this very image, and the bytes are verified with whichever of its digests
    /// costs this CPU the least ([`cheapest_on_this_cpu`]). If it carries the declared
    /// algorithm with another digest, the server sends another image: an error. Without the
    /// field (or without the declared algorithm in it), the declared checksum is used.
    pub fn for_download(&self, repr_digest: Option<&str>) -> Result<Self, MachineError> {
        let offered = repr_digest
            .map(crate::http::reprdigest::parse)
            .unwrap_or_default();
        match offered.iter().find(|(algo, _)| *algo == self.name) {
            None => return Ok(self.clone()),
            Some((_, hex)) if *hex != self.hex => {
                return Err(MachineError::Image(format!(
                    "the agent's image cache sends an image whose {} is {hex}, but the plan \
                     declares {}:{}; the cache entry is not this image — the disk was not \
                     touched; restart the network agent to rebuild its cache if this repeats",
                    self.name, self.name, self.hex
                )));
            }
            Some(_) => {}
        }
        let best = cheapest_on_this_cpu();
        Ok(match offered.into_iter().find(|(algo, _)| *algo == best) {
            Some((name, hex)) if name != self.name => Self {
                algorithm: if name == "sha512" {
                    &digest::SHA512
                } else {
                    &digest::SHA256
                },
                name,
                hex,
                anchored_to: Some(self.name),
            },
            _ => self.clone(),
        })
    }

    /// What was verified, for the result message.
    pub fn describe(&self) -> String {
        match self.anchored_to {
            None => self.name.to_string(),
            Some(declared) => format!(
                "{} (cheaper on this CPU than the declared {declared}, which the agent's cache \
                 checked)",
                self.name
            ),
        }
    }
}

/// `sha256` or `sha512`, whichever hashes 1 MiB faster on this CPU (the best of three
/// tries each, measured once per process: a few milliseconds). SHA-256 wins where the CPU
/// has SHA instructions; SHA-512 (64-bit words, 80 rounds per 128 bytes) wins in software
/// on 64-bit CPUs without them, e.g. about 1.6x under QEMU TCG's default CPU.
pub fn cheapest_on_this_cpu() -> &'static str {
    static BEST: OnceLock<&'static str> = OnceLock::new();
    BEST.get_or_init(|| {
        let data = vec![0x5au8; 1 << 20];
        let cost = |algo: &'static digest::Algorithm| {
            (0..3)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(digest::digest(algo, &data));
                    t.elapsed()
                })
                .min()
                .unwrap_or_default()
        };
        let (a, b) = (cost(&digest::SHA256), cost(&digest::SHA512));
        tracing::debug!(
            sha256_us = a.as_micros() as u64,
            sha512_us = b.as_micros() as u64,
            "hash cost on this CPU"
        );
        if b < a { "sha512" } else { "sha256" }
    })
}

/// What a successful write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// Image bytes received (the file, as hashed).
    pub bytes_read: u64,
    /// Bytes of the disk the image covers (raw size or QCOW2 virtual size).
    pub disk_bytes: u64,
    /// Time from the first byte to the final sync.
    pub elapsed: Duration,
}

/// Coalescing positioned writer that holds the first [`HOLD`] bytes back.
struct Writer<'a> {
    disk: &'a File,
    limit: u64,
    head: Vec<u8>,
    buf: Vec<u8>,
    buf_at: u64,
    extent: u64,
}

impl<'a> Writer<'a> {
    fn new(disk: &'a File, limit: u64) -> Self {
        Self {
            disk,
            limit,
            head: vec![0; usize::try_from(HOLD.min(limit)).unwrap_or(0)],
            buf: Vec::with_capacity(WRITE_MAX),
            buf_at: 0,
            extent: 0,
        }
    }

    fn write(&mut self, at: u64, data: &[u8]) -> Result<(), MachineError> {
        let end = at + data.len() as u64;
        if end > self.limit {
            return Err(MachineError::Image(format!(
                "the image needs {end} bytes but the disk has {}",
                self.limit
            )));
        }
        self.extent = self.extent.max(end);
        let (mut at, mut data) = (at, data);
        if at < HOLD {
            let n = usize::try_from((HOLD - at).min(data.len() as u64)).unwrap_or(0);
            let h = usize::try_from(at).unwrap_or(0);
            self.head[h..h + n].copy_from_slice(&data[..n]);
            at += n as u64;
            data = &data[n..];
        }
        if data.is_empty() {
            return Ok(());
        }
        let contiguous = self.buf_at + self.buf.len() as u64 == at;
        if !(contiguous && self.buf.len() + data.len() <= WRITE_MAX) {
            self.flush()?;
        }
        if self.buf.is_empty() && data.len() >= WRITE_MAX / 2 {
            return write_at(self.disk, at, data);
        }
        if self.buf.is_empty() {
            self.buf_at = at;
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), MachineError> {
        if !self.buf.is_empty() {
            write_at(self.disk, self.buf_at, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

fn write_at(disk: &File, at: u64, data: &[u8]) -> Result<(), MachineError> {
    disk.write_all_at(data, at)
        .map_err(|e| MachineError::io(format!("write {} bytes at {at}", data.len()), &e))
}

/// Writes zeros over `[at, at + len)`.
pub fn zero(disk: &File, at: u64, len: u64) -> Result<(), MachineError> {
    let zeros = vec![0u8; WRITE_MAX];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(WRITE_MAX as u64) as usize;
        write_at(disk, at + done, &zeros[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// Zeros the first and last [`HOLD`] bytes of a disk of `size` bytes and syncs: no
/// partition table (primary or GPT backup) and no filesystem signature at the start stay.
pub fn wipe_ends(disk: &File, size: u64) -> Result<(), MachineError> {
    zero(disk, 0, HOLD.min(size))?;
    if size > HOLD {
        zero(disk, size - HOLD.min(size - HOLD), HOLD.min(size - HOLD))?;
    }
    disk.sync_all()
        .map_err(|e| MachineError::io("sync the disk after wiping its ends", &e))
}

/// Reads until `buf` is full or the stream ends; returns the bytes read.
fn fill(src: &mut dyn Read, buf: &mut [u8]) -> Result<usize, MachineError> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(MachineError::io("read the image from the agent", &e)),
        }
    }
    Ok(n)
}

/// Streams `src` (`total` bytes: the file as served) onto `disk` (`disk_size` bytes) as
/// `format`, verifying `checksum`; `progress` follows the bytes received. On any error the
/// disk's ends are wiped again, so it never looks deployed.
pub fn write_image(
    src: &mut (dyn Read + Send),
    total: u64,
    format: ImageFormat,
    checksum: &Checksum,
    disk: &File,
    disk_size: u64,
    progress: &AtomicU64,
) -> Result<Written, MachineError> {
    if format == ImageFormat::Raw && total > disk_size {
        return Err(MachineError::Image(format!(
            "the {total}-byte raw image does not fit the {disk_size}-byte disk"
        )));
    }
    wipe_ends(disk, disk_size)?;
    let started = Instant::now();
    let mut writer = Writer::new(disk, disk_size);
    let result = stream(src, total, format, checksum, &mut writer, progress);
    match result {
        Ok(disk_bytes) => {
            let head = writer
                .head
                .len()
                .min(usize::try_from(writer.extent).unwrap_or(0));
            write_at(disk, 0, &writer.head[..head])?;
            disk.sync_all()
                .map_err(|e| MachineError::io("sync the disk after writing the image", &e))?;
            let written = Written {
                bytes_read: progress.load(Ordering::Relaxed),
                disk_bytes,
                elapsed: started.elapsed(),
            };
            tracing::info!(
                bytes = written.bytes_read,
                disk_bytes,
                elapsed_ms = written.elapsed.as_millis() as u64,
                "image written, verified and synced"
            );
            Ok(written)
        }
        Err(e) => {
            // Best effort: the error that stopped the write is the one to report.
            let _ = writer.flush();
            let _ = wipe_ends(disk, disk_size);
            if writer.extent > HOLD {
                let tail = HOLD.min(writer.extent - HOLD);
                let _ = zero(disk, writer.extent - tail, tail);
                let _ = disk.sync_all();
            }
            Err(e)
        }
    }
}

/// One received chunk, shared by the hasher and the writer; the last one to drop it gives
/// its buffer back to the reader, so the pipeline allocates [`BUFFERS`] chunks in all.
struct Chunk {
    buf: Vec<u8>,
    pool: mpsc::Sender<Vec<u8>>,
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // The reader may be gone (the stream ended): then the buffer is simply freed.
        let _ = self.pool.send(std::mem::take(&mut self.buf));
    }
}

/// Reads `src` into pooled buffers and hands each chunk to the hasher and the writer;
/// returns the bytes read. Stops when the stream ends or either consumer is gone.
fn read_chunks(
    src: &mut (dyn Read + Send),
    pool: &mpsc::Receiver<Vec<u8>>,
    pool_tx: &mpsc::Sender<Vec<u8>>,
    to_hash: &mpsc::Sender<Arc<Chunk>>,
    to_write: &mpsc::Sender<Arc<Chunk>>,
) -> Result<u64, MachineError> {
    let mut read = 0u64;
    loop {
        let Ok(mut buf) = pool.recv() else {
            return Ok(read);
        };
        buf.resize(CHUNK, 0);
        let n = fill(src, &mut buf)?;
        if n == 0 {
            return Ok(read);
        }
        buf.truncate(n);
        read += n as u64;
        let chunk = Arc::new(Chunk {
            buf,
            pool: pool_tx.clone(),
        });
        if to_hash.send(chunk.clone()).is_err() || to_write.send(chunk).is_err() {
            return Ok(read);
        }
    }
}

/// Streams the image through three threads, so receiving, hashing and writing overlap
/// (each alone is a large share of a deployment's CPU on a slow machine): a reader fills
/// [`CHUNK`]-sized buffers from the network, a hasher digests them, and the calling thread
/// decodes (QCOW2) and writes them. At most [`BUFFERS`] chunks are in flight.
fn stream(
    src: &mut (dyn Read + Send),
    total: u64,
    format: ImageFormat,
    checksum: &Checksum,
    writer: &mut Writer<'_>,
    progress: &AtomicU64,
) -> Result<u64, MachineError> {
    let mut qcow = (format == ImageFormat::Qcow2).then(Qcow2Stream::new);
    let (pool_tx, pool_rx) = mpsc::channel::<Vec<u8>>();
    for _ in 0..BUFFERS {
        let _ = pool_tx.send(Vec::with_capacity(CHUNK));
    }
    let (hash_tx, hash_rx) = mpsc::channel::<Arc<Chunk>>();
    let (write_tx, write_rx) = mpsc::channel::<Arc<Chunk>>();
    let algorithm = checksum.algorithm;
    let (read, digest, written) = std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let r = read_chunks(src, &pool_rx, &pool_tx, &hash_tx, &write_tx);
            drop((hash_tx, write_tx, pool_tx));
            r
        });
        let hasher = s.spawn(move || {
            let mut ctx = digest::Context::new(algorithm);
            for chunk in hash_rx {
                ctx.update(&chunk.buf);
            }
            ctx.finish()
        });
        let mut at = 0u64;
        let mut written = Ok(());
        for chunk in &write_rx {
            let data = &chunk.buf[..];
            written = match &mut qcow {
                Some(q) => q.push(data, &mut |off, b| writer.write(off, b)),
                None => writer.write(at, data),
            };
            if written.is_err() {
                break;
            }
            at += data.len() as u64;
            progress.store(at, Ordering::Relaxed);
        }
        // A failed write stops the reader at its next chunk.
        drop(write_rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(MachineError::Image("the image reader panicked".into())));
        let digest = hasher
            .join()
            .map_err(|_| MachineError::Image("the image hasher panicked".into()));
        (read, digest, written)
    });
    written?;
    let read = read?;
    let digest = digest?;
    if read != total {
        return Err(MachineError::Image(format!(
            "the agent announced {total} bytes but sent {read}"
        )));
    }
    let got = crate::http::fetch::hex(digest.as_ref());
    if got != checksum.hex {
        let name = checksum.name;
        return Err(match checksum.anchored_to {
            None => MachineError::ChecksumMismatch(format!(
                "checksum mismatch: the Deployment declares {name}:{} but the {read} bytes \
                 received hash to {name}:{got}; the disk was wiped and not deployed — fix the \
                 image or its checksum",
                checksum.hex
            )),
            // Verified by the cache, changed since: a retry may well succeed.
            Some(declared) => MachineError::Image(format!(
                "checksum mismatch: the agent's image cache verified this image against the \
                 declared {declared} and sends {name}:{} for it, but the {read} bytes received \
                 hash to {name}:{got}; they changed in the cache or on the way — the disk was \
                 wiped and not deployed; retry, and check the agent's cache disk and the \
                 provisioning network if it repeats",
                checksum.hex
            )),
        });
    }
    let disk_bytes = match &mut qcow {
        Some(q) => {
            q.finish(&mut |at, b| writer.write(at, b))?;
            let size = q.header().map_or(0, |h| h.size);
            if size > writer.limit {
                return Err(MachineError::Image(format!(
                    "the QCOW2 virtual size {size} exceeds the {}-byte disk",
                    writer.limit
                )));
            }
            writer.flush()?;
            for (at, len) in q.unwritten() {
                let start = at.max(HOLD);
                if start < at + len {
                    zero(writer.disk, start, at + len - start)?;
                }
            }
            writer.extent = writer.extent.max(size);
            size
        }
        None => read,
    };
    writer.flush()?;
    Ok(disk_bytes)
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
