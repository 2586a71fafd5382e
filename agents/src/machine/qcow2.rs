//! A streaming QCOW2 reader: turns the bytes of a QCOW2 file, read once from the start to
//! the end (as they come over HTTP), into writes of guest data at guest offsets. It needs
//! the L1 table and each L2 table to come before the data clusters they map, which holds
//! for images written by `qemu-img convert` and `qemu-img create` + guest writes (qemu
//! allocates an L2 table before the first data cluster it maps); an image that breaks this
//! is refused with a message saying how to rewrite it. Compressed clusters, backing files,
//! encryption, external data files and extended L2 entries are refused the same way.
//! Unallocated and zero clusters are reported by [`Qcow2Stream::unwritten`] so the caller
//! can zero them on the disk.

use std::collections::HashMap;

use super::MachineError;

const MAGIC: &[u8; 4] = b"QFI\xfb";
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// Receives guest data: `(guest_offset, bytes)`.
pub type GuestWrite<'a> = dyn FnMut(u64, &[u8]) -> Result<(), MachineError> + 'a;

/// The header fields the reader uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes per cluster (512 B .. 2 MiB).
    pub cluster_size: u64,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Entries in the L1 table.
    pub l1_size: u64,
    /// Host offset of the L1 table.
    pub l1_offset: u64,
}

fn be32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map_or(0, |a| u64::from(u32::from_be_bytes(a)))
}

fn be64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|s| <[u8; 8]>::try_from(s).ok())
        .map_or(0, u64::from_be_bytes)
}

fn refuse(why: String) -> MachineError {
    MachineError::Image(format!(
        "{why}; write the image as a plain QCOW2 with `qemu-img convert -O qcow2 in out` \
         (no -c) or use format raw"
    ))
}

/// Parses a QCOW2 header (version 2 or 3) from the first bytes of the file.
pub fn parse_header(b: &[u8]) -> Result<Header, MachineError> {
    if b.len() < 72 || &b[..4] != MAGIC {
        return Err(MachineError::Image(
            "the plan says qcow2 but the image does not start with the QCOW2 magic 'QFI\\xfb'"
                .to_string(),
        ));
    }
    let version = be32(b, 4);
    if version != 2 && version != 3 {
        return Err(refuse(format!("QCOW2 version {version} is not supported")));
    }
    if be64(b, 8) != 0 {
        return Err(refuse("the QCOW2 image has a backing file".to_string()));
    }
    let cluster_bits = be32(b, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(MachineError::Image(format!(
            "QCOW2 cluster_bits {cluster_bits} is outside 9..21"
        )));
    }
    if be32(b, 32) != 0 {
        return Err(refuse("the QCOW2 image is encrypted".to_string()));
    }
    if version == 3 {
        let incompatible = be64(b, 72);
        // bit 0 dirty (harmless: only refcounts may be stale), 3 compression type (only
        // matters for compressed clusters, which are refused below).
        for (bit, what) in [
            (1, "marked corrupt"),
            (2, "uses an external data file"),
            (4, "uses extended L2 entries"),
        ] {
            if incompatible & (1 << bit) != 0 {
                return Err(refuse(format!("the QCOW2 image {what}")));
            }
        }
        let unknown = incompatible & !0b1_1111;
        if unknown != 0 {
            return Err(refuse(format!(
                "the QCOW2 image has unknown incompatible features {unknown:#x}"
            )));
        }
    }
    let cluster_size = 1u64 << cluster_bits;
    let header = Header {
        cluster_size,
        size: be64(b, 24),
        l1_size: be32(b, 36),
        l1_offset: be64(b, 40),
    };
    let guest_per_l1 = cluster_size / 8 * cluster_size;
    if header.l1_size < header.size.div_ceil(guest_per_l1)
        || !header.l1_offset.is_multiple_of(cluster_size)
    {
        return Err(MachineError::Image(format!(
            "QCOW2 L1 table ({} entries at {}) cannot map a {}-byte disk",
            header.l1_size, header.l1_offset, header.size
        )));
    }
    Ok(header)
}

/// What a host cluster of the file holds, as far as the reader knows so far.
#[derive(Clone, Debug)]
enum Role {
    /// Part of the L1 table.
    L1,
    /// An L2 table mapping guest clusters from this guest offset on.
    L2(u64),
    /// Guest data for these guest offsets.
    Data(Vec<u64>),
}

/// The streaming reader. Feed it the file's bytes in order with [`Qcow2Stream::push`].
pub struct Qcow2Stream {
    header: Option<Header>,
    /// Bytes of the current (incomplete) host cluster, or of the header before it is known.
    pending: Vec<u8>,
    /// Host offset of `pending[0]`.
    pending_at: u64,
    /// Host cluster offset -> role, for clusters still to come.
    roles: HashMap<u64, Role>,
    l1: Vec<u8>,
    /// Guest clusters written so far.
    written: Vec<bool>,
}

impl Default for Qcow2Stream {
    fn default() -> Self {
        Self::new()
    }
}

impl Qcow2Stream {
    /// A reader at the start of the file.
    pub fn new() -> Self {
        Self {
            header: None,
            pending: Vec::new(),
            pending_at: 0,
            roles: HashMap::new(),
            l1: Vec::new(),
            written: Vec::new(),
        }
    }

    /// The header, once the first cluster has arrived.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Feeds the next bytes of the file; `write(guest_offset, bytes)` receives guest data.
    pub fn push(
        &mut self,
        mut data: &[u8],
        write: &mut GuestWrite<'_>,
    ) -> Result<(), MachineError> {
        while !data.is_empty() {
            let cs = match &self.header {
                Some(h) => h.cluster_size,
                None => {
                    // The header fits in 512 bytes; cluster 0 is at least that large.
                    let need = 512 - self.pending.len().min(512);
                    let take = need.min(data.len());
                    self.pending.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if self.pending.len() < 512 {
                        return Ok(());
                    }
                    self.start()?;
                    continue;
                }
            };
            let room = usize::try_from(cs).unwrap_or(usize::MAX) - self.pending.len();
            let take = room.min(data.len());
            // A whole cluster with nothing pending: handle it in place, no copy.
            if self.pending.is_empty() && take == usize::try_from(cs).unwrap_or(0) {
                let at = self.pending_at;
                self.pending_at += cs;
                self.cluster(at, &data[..take], write)?;
            } else {
                self.pending.extend_from_slice(&data[..take]);
                if self.pending.len() as u64 == cs {
                    let buf = std::mem::take(&mut self.pending);
                    let at = self.pending_at;
                    self.pending_at += cs;
                    self.cluster(at, &buf, write)?;
                    self.pending = buf;
                    self.pending.clear();
                }
            }
            data = &data[take..];
        }
        Ok(())
    }

    fn start(&mut self) -> Result<(), MachineError> {
        let h = parse_header(&self.pending)?;
        let clusters = usize::try_from(h.size.div_ceil(h.cluster_size)).map_err(|_| {
            MachineError::Image(format!("QCOW2 virtual size {} is too large", h.size))
        })?;
        self.written = vec![false; clusters];
        let l1_bytes = h.l1_size * 8;
        let mut at = h.l1_offset;
        while at < h.l1_offset + l1_bytes {
            self.roles.insert(at, Role::L1);
            at += h.cluster_size;
        }
        self.header = Some(h);
        // The header bytes are the start of cluster 0: keep them as its pending part.
        Ok(())
    }

    fn cluster(
        &mut self,
        at: u64,
        bytes: &[u8],
        write: &mut GuestWrite<'_>,
    ) -> Result<(), MachineError> {
        let Some(h) = self.header.clone() else {
            return Ok(());
        };
        let Some(role) = self.roles.remove(&at) else {
            return Ok(()); // header, refcounts, snapshots or free space
        };
        match role {
            Role::L1 => {
                self.l1.extend_from_slice(bytes);
                let want = usize::try_from(h.l1_size * 8).unwrap_or(usize::MAX);
                if self.l1.len() >= want && !self.roles.values().any(|r| matches!(r, Role::L1)) {
                    let l1 = std::mem::take(&mut self.l1);
                    let per_l1 = h.cluster_size / 8 * h.cluster_size;
                    for (i, e) in l1[..want].chunks_exact(8).enumerate() {
                        let l2 = be64(e, 0) & OFFSET_MASK;
                        if l2 != 0 {
                            self.expect(at, l2, Role::L2(i as u64 * per_l1), "L2 table")?;
                        }
                    }
                }
            }
            Role::L2(guest_base) => {
                for (i, e) in bytes.chunks_exact(8).enumerate() {
                    let entry = be64(e, 0);
                    let guest = guest_base + i as u64 * h.cluster_size;
                    if guest >= h.size {
                        break;
                    }
                    if entry & L2_COMPRESSED != 0 {
                        return Err(refuse(format!(
                            "the QCOW2 image has compressed clusters (guest offset {guest})"
                        )));
                    }
                    let host = entry & OFFSET_MASK;
                    if entry & L2_ZERO != 0 || host == 0 {
                        continue; // reads as zeros: zeroed by the caller
                    }
                    match self.roles.get_mut(&host) {
                        Some(Role::Data(guests)) => guests.push(guest),
                        _ => self.expect(at, host, Role::Data(vec![guest]), "data cluster")?,
                    }
                }
            }
            Role::Data(guests) => {
                for guest in guests {
                    let len = bytes
                        .len()
                        .min(usize::try_from(h.size - guest).unwrap_or(usize::MAX));
                    write(guest, &bytes[..len])?;
                    if let Some(w) = self.written.get_mut((guest / h.cluster_size) as usize) {
                        *w = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Registers that host cluster `host` (referenced from the cluster at `from`) has `role`.
    fn expect(&mut self, from: u64, host: u64, role: Role, what: &str) -> Result<(), MachineError> {
        if host <= from {
            return Err(refuse(format!(
                "the QCOW2 {what} at byte {host} comes before the table at byte {from} that \
                 maps it, so the image cannot be written while it streams"
            )));
        }
        if let Some(old) = self.roles.insert(host, role) {
            return Err(MachineError::Image(format!(
                "QCOW2 cluster at byte {host} is used twice ({old:?} and a {what}); the image is \
                 corrupt"
            )));
        }
        Ok(())
    }

    /// Ends the stream: handles a final partial cluster and checks nothing mapped is missing.
    pub fn finish(&mut self, write: &mut GuestWrite<'_>) -> Result<(), MachineError> {
        if self.header.is_none() {
            return Err(MachineError::Image(format!(
                "the image ended after {} bytes, inside the QCOW2 header",
                self.pending.len()
            )));
        }
        if !self.pending.is_empty() {
            let buf = std::mem::take(&mut self.pending);
            let at = self.pending_at;
            self.pending_at += buf.len() as u64;
            self.cluster(at, &buf, write)?;
        }
        if let Some(missing) = self.roles.keys().min() {
            return Err(MachineError::Image(format!(
                "the QCOW2 image ended at byte {} but maps a cluster at byte {missing}; it is \
                 truncated",
                self.pending_at
            )));
        }
        Ok(())
    }

    /// Guest byte ranges `(offset, len)` that no data cluster wrote (they read as zeros),
    /// merged, in order.
    pub fn unwritten(&self) -> Vec<(u64, u64)> {
        let Some(h) = &self.header else {
            return Vec::new();
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        for (i, w) in self.written.iter().enumerate() {
            if *w {
                continue;
            }
            let start = i as u64 * h.cluster_size;
            let len = h.cluster_size.min(h.size - start);
            match out.last_mut() {
                Some((s, l)) if *s + *l == start => *l += len,
                _ => out.push((start, len)),
            }
        }
        out
    }
}

#[cfg(test)]
#[path = "qcow2_tests.rs"]
mod tests;
