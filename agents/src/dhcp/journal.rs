//! The lease journal: dynamic leases in an append-only text file, one checksummed record
//! per line. Commits are batched (group commit): a writer thread takes every record queued
//! while the previous fsync ran (and, while clients queue, those arriving within
//! [`COMMIT_WINDOW`]), writes them and syncs once, then wakes all waiters; the
//! server sends an ACK only after its record is durable. On open the file is recovered
//! (torn or corrupt lines are skipped, never a panic) and compacted; it is compacted again
//! when mostly dead (live leases to a temporary file, fsync, rename, fsync the directory).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

use super::leases::{Lease, LeaseState};
use super::metrics::DhcpMetrics;
use super::outbox::Outbox;
use super::{DhcpError, MacAddr};

/// One journal record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A lease was bound or extended until `expires` (unix seconds).
    Bind {
        /// Client.
        mac: MacAddr,
        /// Address.
        ip: Ipv4Addr,
        /// End of the lease.
        expires: u64,
    },
    /// A lease ended early (release, decline).
    Free {
        /// Client.
        mac: MacAddr,
        /// Address.
        ip: Ipv4Addr,
    },
}

impl Record {
    /// The line for this record, newline included.
    pub fn encode(&self) -> String {
        let mut line = String::with_capacity(64);
        self.encode_into(&mut line);
        line
    }

    /// Appends the line for this record (newline included) to `out`, with no allocation
    /// (the writer thread encodes every record of a group commit into one buffer). The
    /// same bytes as `format!("B {mac} {ip} {expires}")` plus ` {fnv32:08x}\n`.
    pub fn encode_into(&self, out: &mut String) {
        let start = out.len();
        let (kind, mac, ip, expires) = match self {
            Record::Bind { mac, ip, expires } => ('B', mac, ip, *expires),
            Record::Free { mac, ip } => ('F', mac, ip, 0),
        };
        out.push(kind);
        out.push(' ');
        for (i, b) in mac.0.iter().enumerate() {
            if i > 0 {
                out.push(':');
            }
            push_hex(out, u64::from(*b), 2);
        }
        out.push(' ');
        for (i, o) in ip.octets().iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            push_decimal(out, u64::from(*o));
        }
        out.push(' ');
        push_decimal(out, expires);
        let sum = fnv1a(out.get(start..).unwrap_or_default().as_bytes());
        out.push(' ');
        push_hex(out, u64::from(sum), 8);
        out.push('\n');
    }

    /// Parses one line (without its newline); `None` if torn or corrupt.
    pub fn decode(line: &str) -> Option<Record> {
        let (body, sum) = line.rsplit_once(' ')?;
        if u32::from_str_radix(sum, 16).ok()? != fnv1a(body.as_bytes()) || sum.len() != 8 {
            return None;
        }
        let mut f = body.split(' ');
        let (kind, mac, ip, expires) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let mac: MacAddr = mac.parse().ok()?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        match kind {
            "B" => Some(Record::Bind {
                mac,
                ip,
                expires: expires.parse().ok()?,
            }),
            "F" => Some(Record::Free { mac, ip }),
            _ => None,
        }
    }
}

/// `n` in lower-case hex, zero-padded to `width` digits.
fn push_hex(out: &mut String, n: u64, width: u32) {
    for shift in (0..width).rev() {
        let digit = ((n >> (4 * shift)) & 0xf) as u32;
        out.push(char::from_digit(digit, 16).unwrap_or('0'));
    }
}

/// `n` in decimal.
fn push_decimal(out: &mut String, n: u64) {
    let mut digits = [0u8; 20];
    let (mut n, mut i) = (n, digits.len());
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    for d in digits.get(i..).unwrap_or_default() {
        out.push(char::from(*d));
    }
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Live leases by address: the result of replaying records.
type Live = HashMap<Ipv4Addr, (MacAddr, u64)>;

/// The address each MAC holds in a [`Live`] map, so that a Bind finds and drops the MAC's
/// previous lease in O(1) (a scan of every live lease per record made the writer thread,
/// and recovery, quadratic).
type ByMac = HashMap<MacAddr, Ipv4Addr>;

fn replay(live: &mut Live, by_mac: &mut ByMac, rec: &Record) {
    match rec {
        Record::Bind { mac, ip, expires } => {
            if let Some(old) = by_mac.insert(*mac, *ip)
                && old != *ip
                && live.get(&old).is_some_and(|(m, _)| m == mac)
            {
                live.remove(&old);
            }
            if let Some((prev, _)) = live.insert(*ip, (*mac, *expires))
                && prev != *mac
                && by_mac.get(&prev) == Some(ip)
            {
                by_mac.remove(&prev);
            }
        }
        Record::Free { mac, ip } => {
            if live.get(ip).is_some_and(|(m, _)| m == mac) {
                live.remove(ip);
                by_mac.remove(mac);
            }
        }
    }
}

/// The MAC index of `live` (after a `retain` on it).
fn index(live: &Live) -> ByMac {
    live.iter().map(|(ip, (mac, _))| (*mac, *ip)).collect()
}

/// Replays journal text; returns live leases and the number of skipped (torn) lines.
pub fn recover_text(text: &str) -> (Live, usize) {
    let mut live = Live::new();
    let mut by_mac = ByMac::new();
    let mut skipped = 0;
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    skipped += usize::from(!text.is_empty() && !text.ends_with('\n'));
    for line in complete.split('\n').filter(|l| !l.is_empty()) {
        match Record::decode(line) {
            Some(r) => replay(&mut live, &mut by_mac, &r),
            None => skipped += 1,
        }
    }
    (live, skipped)
}

/// Called on the writer thread once a record is durable (`Ok`) or could not be written;
/// replies it queues in the [`Outbox`] leave with one `sendmmsg` after the batch's
/// callbacks ran.
pub type OnDurable = Box<dyn FnOnce(Result<(), String>, &mut Outbox) + Send>;

/// Who waits for a record.
enum Waiter {
    /// An async caller of [`JournalHandle::commit`].
    Channel(oneshot::Sender<Result<(), String>>),
    /// A callback of [`JournalHandle::commit_then`].
    Call(OnDurable),
}

impl Waiter {
    fn done(self, result: &Result<(), String>, outbox: &mut Outbox) {
        match self {
            Waiter::Channel(tx) => {
                let _ = tx.send(result.clone());
            }
            Waiter::Call(f) => f(result.clone(), outbox),
        }
    }
}

enum Cmd {
    Append(Record, Option<Waiter>),
}

/// A handle to queue records; cheap to clone.
#[derive(Clone, Debug)]
pub struct JournalHandle {
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl JournalHandle {
    /// Queues `record` and waits until it is on disk (fsynced).
    pub async fn commit(&self, record: Record) -> Result<(), DhcpError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Append(record, Some(Waiter::Channel(tx))))
            .map_err(|_| DhcpError::JournalClosed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DhcpError::Journal {
                path: "journal".into(),
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(DhcpError::JournalClosed),
        }
    }

    /// Queues `record`; `then` runs on the writer thread right after the record's group
    /// commit (the DHCP server sends the ACK from there, with no hop through the runtime).
    pub fn commit_then(&self, record: Record, then: OnDurable) -> Result<(), DhcpError> {
        self.tx
            .send(Cmd::Append(record, Some(Waiter::Call(then))))
            .map_err(|_| DhcpError::JournalClosed)
    }

    /// Queues `record` without waiting (releases: nothing waits on them).
    pub fn append(&self, record: Record) -> Result<(), DhcpError> {
        self.tx
            .send(Cmd::Append(record, None))
            .map_err(|_| DhcpError::JournalClosed)
    }
}

/// The open journal: owns the writer thread. Dropping every handle and the journal stops
/// the thread after it has written what was queued.
#[derive(Debug)]
pub struct Journal {
    handle: JournalHandle,
    worker: Option<thread::JoinHandle<()>>,
}

fn io_err(path: &Path, source: std::io::Error) -> DhcpError {
    DhcpError::Journal {
        path: path.display().to_string(),
        source,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes the live leases to `path` crash-safely (temporary file, fsync, rename, fsync dir).
fn compact(path: &Path, live: &Live, now: u64) -> Result<File, DhcpError> {
    let tmp = path.with_extension("compact");
    {
        let mut w = BufWriter::new(File::create(&tmp).map_err(|e| io_err(&tmp, e))?);
        for (ip, (mac, expires)) in live.iter().filter(|(_, (_, e))| *e > now) {
            let line = Record::Bind {
                mac: *mac,
                ip: *ip,
                expires: *expires,
            }
            .encode();
            w.write_all(line.as_bytes()).map_err(|e| io_err(&tmp, e))?;
        }
        let f = w.into_inner().map_err(|e| io_err(&tmp, e.into_error()))?;
        f.sync_all().map_err(|e| io_err(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))?;
    OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| io_err(path, e))
}

impl Journal {
    /// Opens (creating) the journal at `path`, recovers its live leases, compacts it and
    /// starts the writer thread. Returns the journal and the leases still unexpired.
    pub fn open(path: &Path, metrics: DhcpMetrics) -> Result<(Journal, Vec<Lease>), DhcpError> {
        let mut text = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut text).map_err(|e| io_err(path, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path, e)),
        }
        let (mut live, skipped) = recover_text(&String::from_utf8_lossy(&text));
        if skipped > 0 {
            tracing::warn!(path = %path.display(), skipped, "lease journal had torn or corrupt records; skipped them");
        }
        let now = unix_now();
        live.retain(|_, (_, e)| *e > now);
        let file = compact(path, &live, now)?;
        let leases = live
            .iter()
            .map(|(ip, (mac, expires))| Lease {
                mac: *mac,
                ip: *ip,
                expires: *expires,
                state: LeaseState::Bound,
            })
            .collect();
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            by_mac: index(&live),
            live,
            records: 0,
            metrics,
        };
        let worker = thread::Builder::new()
            .name("dhcp-journal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(path, e))?;
        Ok((
            Journal {
                handle: JournalHandle { tx },
                worker: Some(worker),
            },
            leases,
        ))
    }

    /// A handle for committing records.
    pub fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// Stops the writer once all handles are gone and queued records are written.
    pub fn close(mut self) {
        let (tx, _) = mpsc::channel();
        self.handle = JournalHandle { tx };
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    live: Live,
    by_mac: ByMac,
    records: usize,
    metrics: DhcpMetrics,
}

const MAX_BATCH: usize = 8192;

/// How long a busy writer keeps gathering records after the first of a batch before it
/// writes and syncs them. An fsync costs the writer thread about 80 µs of CPU on a virtio
/// disk whatever it carries; under load, batches of a few records made those syncs
/// nearly half of what a lease cost. A DHCP client waits seconds before it retransmits, so
/// 2 ms more before an ACK is invisible to it, and it is only spent when the previous
/// batch showed other clients queueing (more than one record): a lone client is synced at
/// once.
pub const COMMIT_WINDOW: Duration = Duration::from_millis(2);

/// Takes the batch that begins with `first`: every record already queued and, when
/// `busy`, those arriving within `window` of the first, up to [`MAX_BATCH`]. The window is
/// slept through, not waited on record by record: a receiver blocked on the channel is
/// woken by every send (a futex wake and a context switch per record, which cost more than
/// the fsyncs saved).
fn gather<T>(rx: &mpsc::Receiver<T>, first: T, busy: bool, window: Duration) -> Vec<T> {
    if busy {
        thread::sleep(window);
    }
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(c) => batch.push(c),
            Err(_) => break,
        }
    }
    batch
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut buf = String::new();
        let mut waiters = Vec::new();
        let mut outbox = Outbox::default();
        let mut busy = false;
        while let Ok(first) = rx.recv() {
            let batch = gather(&rx, first, busy, COMMIT_WINDOW);
            busy = batch.len() > 1;
            let n = batch.len();
            buf.clear();
            for Cmd::Append(rec, waiter) in batch {
                rec.encode_into(&mut buf);
                replay(&mut self.live, &mut self.by_mac, &rec);
                waiters.extend(waiter);
            }
            let result = self
                .file
                .write_all(buf.as_bytes())
                .and_then(|()| self.file.sync_data())
                .map_err(|e| e.to_string());
            self.metrics.journal_syncs.inc();
            self.metrics.journal_records.inc_by(n as u64);
            self.records += n;
            if let Err(e) = &result {
                tracing::error!(path = %self.path.display(), error = %e, "lease journal write failed");
            }
            for w in waiters.drain(..) {
                w.done(&result, &mut outbox);
            }
            outbox.flush(&self.metrics);
            if result.is_ok() && self.records > 4096 && self.records > 2 * self.live.len() {
                self.compact_now();
            }
        }
    }

    fn compact_now(&mut self) {
        let now = unix_now();
        self.live.retain(|_, (_, e)| *e > now);
        self.by_mac = index(&self.live);
        match compact(&self.path, &self.live, now) {
            Ok(f) => {
                self.file = f;
                self.records = self.live.len();
            }
            Err(e) => {
                tracing::error!(error = %e, "lease journal compaction failed; keeping the old file")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn a_busy_writer_gathers_for_the_window_and_an_idle_one_does_not() {
        let window = Duration::from_millis(400);
        for busy in [true, false] {
            let (tx, rx) = mpsc::channel();
            tx.send(1).unwrap();
            tx.send(2).unwrap();
            let late = thread::spawn(move || {
                thread::sleep(Duration::from_millis(40));
                tx.send(3).unwrap();
                thread::sleep(Duration::from_millis(800));
                tx.send(4).unwrap();
            });
            let first = rx.recv().unwrap();
            let started = std::time::Instant::now();
            let batch = gather(&rx, first, busy, window);
            if busy {
                // 3 arrives inside the window, 4 long after it: the window ends the batch.
                assert_eq!(batch, vec![1, 2, 3]);
                assert!(started.elapsed() >= window, "{:?}", started.elapsed());
            } else {
                assert_eq!(batch, vec![1, 2]);
            }
            late.join().unwrap();
        }
    }

    /// The hand-written encoder writes what the `format!` definition does.
    #[test]
    fn encode_matches_the_format_definition() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let m = MacAddr(std::array::from_fn(|_| rng.u8(..)));
            let ip = Ipv4Addr::from(rng.u32(..));
            let expires = match rng.u8(0..3) {
                0 => 0,
                1 => u64::MAX,
                _ => rng.u64(..),
            };
            for (rec, body) in [
                (
                    Record::Bind {
                        mac: m,
                        ip,
                        expires,
                    },
                    format!("B {m} {ip} {expires}"),
                ),
                (Record::Free { mac: m, ip }, format!("F {m} {ip} 0")),
            ] {
                let want = format!("{body} {:08x}\n", fnv1a(body.as_bytes()));
                assert_eq!(rec.encode(), want);
            }
        }
    }

    #[test]
    fn records_round_trip_and_corruption_is_skipped() {
        let r = Record::Bind {
            mac: mac(1),
            ip: Ipv4Addr::new(10, 0, 0, 5),
            expires: 99,
        };
        let line = r.encode();
        assert_eq!(Record::decode(line.trim_end()), Some(r.clone()));
        let flipped = line.replace("10.0.0.5", "10.0.0.6");
        assert_eq!(Record::decode(flipped.trim_end()), None);
        let text = format!(
            "{line}garbage\n{}{}",
            Record::Free {
                mac: mac(1),
                ip: Ipv4Addr::new(10, 0, 0, 5)
            }
            .encode(),
            &line[..10]
        );
        let (live, skipped) = recover_text(&text);
        assert!(live.is_empty());
        assert_eq!(skipped, 2);
    }

    /// The indexed replay agrees with the plain definition (a Bind drops every other lease
    /// of its MAC and takes the address; a Free drops the lease only if the MAC holds it)
    /// over random records on few MACs and addresses, so moves and steals are frequent.
    #[test]
    fn indexed_replay_matches_the_definition() {
        let mut rng = fastrand::Rng::with_seed(3);
        let (mut live, mut by_mac, mut model) = (Live::new(), ByMac::new(), Live::new());
        for _ in 0..20_000 {
            let (m, ip) = (mac(rng.u8(0..8)), Ipv4Addr::new(10, 0, 0, rng.u8(0..8)));
            let rec = if rng.u8(0..4) == 0 {
                Record::Free { mac: m, ip }
            } else {
                Record::Bind {
                    mac: m,
                    ip,
                    expires: rng.u64(..),
                }
            };
            replay(&mut live, &mut by_mac, &rec);
            match &rec {
                Record::Bind { mac, ip, expires } => {
                    model.retain(|_, (x, _)| x != mac);
                    model.insert(*ip, (*mac, *expires));
                }
                Record::Free { mac, ip } => {
                    if model.get(ip).is_some_and(|(x, _)| x == mac) {
                        model.remove(ip);
                    }
                }
            }
            assert_eq!(live, model, "after {rec:?}");
            assert_eq!(by_mac, index(&live), "after {rec:?}");
        }
    }

    #[tokio::test]
    async fn commits_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.journal");
        let far = unix_now() + 3600;
        let (j, leases) = Journal::open(&path, DhcpMetrics::new()).unwrap();
        assert!(leases.is_empty());
        let h = j.handle();
        let mut tasks = Vec::new();
        for i in 0..50u8 {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                h.commit(Record::Bind {
                    mac: mac(i),
                    ip: Ipv4Addr::new(10, 0, 1, i),
                    expires: far,
                })
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        h.commit(Record::Free {
            mac: mac(3),
            ip: Ipv4Addr::new(10, 0, 1, 3),
        })
        .await
        .unwrap();
        h.commit(Record::Bind {
            mac: mac(4),
            ip: Ipv4Addr::new(10, 0, 1, 4),
            expires: 1,
        })
        .await
        .unwrap();
        drop(h);
        j.close();
        // a torn tail, as after a crash mid-write
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"B 02:00:00:00:00:63 10.0.1").unwrap();
        let (_j, leases) = Journal::open(&path, DhcpMetrics::new()).unwrap();
        assert_eq!(leases.len(), 48);
        assert!(leases.iter().all(|l| l.ip != Ipv4Addr::new(10, 0, 1, 3)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 48, "compacted on open");
    }
}
