//! The data loop of one transfer, on its own thread with a blocking socket, as tftpd-hpa
//! does it: per lockstep block one `send` and one blocking `recv` (no readiness poll, no
//! `EAGAIN` round trip, no timer), file reads in 64 KiB chunks, no allocation. The socket's
//! receive timeout is the retransmission clock; it is cut into slices of at most 250 ms so
//! that a cancelled transfer notices within one slice.

use std::fs::File;
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::metrics::TftpMetrics;
use super::packet::{self, Packet, code};
use super::session::{Action, Session};

/// The longest a blocked `recv` waits before the loop checks for cancellation.
const SLICE: Duration = Duration::from_millis(250);
/// Bytes read from the file at a time (rounded down to whole blocks).
const CHUNK: usize = 64 * 1024;
/// Blocks sent between two checks for cancellation while ACKs keep coming.
const CANCEL_CHECK_BLOCKS: u64 = 256;

/// How a transfer ended short of completion.
#[derive(Debug)]
pub enum End {
    /// Error 8 in answer to the OACK: the client only wanted the options (tsize).
    SizeQuery,
    /// Anything else.
    Failed(String),
}

impl From<std::io::Error> for End {
    fn from(e: std::io::Error) -> Self {
        End::Failed(e.to_string())
    }
}

/// Everything one transfer's loop needs besides the session.
pub struct Transfer<'a> {
    /// Socket connected to the client, in blocking mode.
    pub sock: &'a UdpSocket,
    /// The file being sent.
    pub file: &'a File,
    /// Options to acknowledge (empty: no OACK).
    pub oack: &'a [(String, String)],
    /// Retransmission timeout.
    pub timeout: Duration,
    /// Block size, for the read chunking.
    pub blksize: usize,
    /// Counts retransmitted blocks.
    pub metrics: &'a TftpMetrics,
    /// Server shutdown.
    pub stop: &'a CancellationToken,
}

impl Transfer<'_> {
    /// Drives `session` to its end on the calling thread.
    pub fn run(&self, session: &mut Session) -> Result<(), End> {
        self.sock.set_read_timeout(Some(self.timeout.min(SLICE)))?;
        let mut blocks = Blocks::new(self.file, self.blksize);
        let mut out = Vec::with_capacity(self.blksize + 4);
        let mut buf = [0u8; 1024];
        let mut action = session.start();
        let (mut data_sent, mut highest_sent) = (false, 0u64);
        let mut waited = Duration::ZERO;
        loop {
            match action {
                Action::Done => return Ok(()),
                Action::Fail(why) => return Err(End::Failed(why)),
                Action::SendOack => {
                    self.sock.send(&packet::oack(self.oack))?;
                    waited = Duration::ZERO;
                }
                Action::SendBlocks(from, to) => {
                    for n in from..=to {
                        let (offset, size, wire) = session.block(n);
                        out.clear();
                        packet::data(&mut out, wire, blocks.get(offset, size as usize)?);
                        self.sock.send(&out)?;
                        if n <= highest_sent {
                            self.metrics.retransmits.inc();
                        }
                        if n % CANCEL_CHECK_BLOCKS == 0 && self.stop.is_cancelled() {
                            return Err(End::Failed("server shutting down".into()));
                        }
                    }
                    data_sent = true;
                    highest_sent = highest_sent.max(to);
                    waited = Duration::ZERO;
                }
                Action::Wait => {}
            }
            action = match self.sock.recv(&mut buf) {
                Ok(n) => match packet::parse(buf.get(..n).unwrap_or(&[])) {
                    Ok(Packet::Ack(b)) => session.on_ack(b),
                    Ok(Packet::Error(code::OPTIONS, _)) if !data_sent && !self.oack.is_empty() => {
                        return Err(End::SizeQuery);
                    }
                    Ok(Packet::Error(c, m)) => {
                        return Err(End::Failed(format!("client error {c}: {m}")));
                    }
                    _ => Action::Wait,
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if self.stop.is_cancelled() {
                        return Err(End::Failed("server shutting down".into()));
                    }
                    waited += self.timeout.min(SLICE);
                    if waited >= self.timeout {
                        session.on_timeout()
                    } else {
                        Action::Wait
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => Action::Wait,
                Err(e) => return Err(e.into()),
            };
        }
    }
}

/// Reads a file in chunks of whole blocks and hands out one block at a time, so a lockstep
/// transfer reads the file once per ~44 blocks of 1468 bytes instead of once per block.
struct Blocks<'a> {
    file: &'a File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf`.
    len: usize,
    /// The chunk ends at the end of the file.
    eof: bool,
}

impl<'a> Blocks<'a> {
    fn new(file: &'a File, blksize: usize) -> Self {
        let blksize = blksize.max(1);
        let size = (CHUNK / blksize).max(1) * blksize;
        Blocks {
            file,
            buf: vec![0; size],
            start: 0,
            len: 0,
            eof: false,
        }
    }

    /// The bytes of the block at `offset` (shorter than `size` at the end of the file).
    fn get(&mut self, offset: u64, size: usize) -> std::io::Result<&[u8]> {
        let end = self.start + self.len as u64;
        let cached = offset >= self.start
            && (offset + size as u64 <= end || (self.eof && offset <= end))
            && (self.len > 0 || self.eof);
        if !cached {
            self.len = read_full(self.file, &mut self.buf, offset)?;
            self.start = offset;
            self.eof = self.len < self.buf.len();
        }
        let from = usize::try_from(offset - self.start).unwrap_or(usize::MAX);
        let to = from.saturating_add(size).min(self.len);
        Ok(self.buf.get(from..to).unwrap_or(&[]))
    }
}

fn read_full(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = file.read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Blocks come out right in order, after a rewind (retransmission of an earlier
    /// window), at a chunk boundary and at the end of files that end inside a block, on a
    /// block boundary, and are empty.
    #[test]
    fn blocks_match_the_file() {
        for len in [0usize, 1, 1468, 1468 * 44, 1468 * 44 + 1, 200_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut tmp = tempfile::NamedTempFile::new().unwrap();
            std::io::Write::write_all(&mut tmp, &data).unwrap();
            let file = tmp.reopen().unwrap();
            let mut blocks = Blocks::new(&file, 1468);
            let last = len / 1468 + 1;
            let order: Vec<usize> = (1..=last).chain([1, last, 2]).chain(1..=last).collect();
            for n in order {
                let off = (n - 1) * 1468;
                let want = data.get(off..(off + 1468).min(len)).unwrap_or(&[]);
                let got = blocks.get(off as u64, 1468).unwrap();
                assert_eq!(got, want, "len {len} block {n}");
            }
        }
    }
}
