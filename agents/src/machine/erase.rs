//! Erasing disks per the Deployment's erase policy, one result per disk. Quick: zero the
//! first and last MiB (partition tables, GPT backup, RAID/LVM/filesystem signatures) and
//! the btrfs superblock mirrors. Full: every byte reads back as zero afterwards, done the
//! cheapest way the device allows, through `fallocate(2)` on the block device (rustix's
//! safe wrapper; what util-linux's `fallocate -p`/`-z` do):
//!
//! 1. `PUNCH_HOLE`: the kernel deallocates with a command that guarantees zeros (NVMe Write
//!    Zeroes with Deallocate, SCSI WRITE SAME with UNMAP, virtio-blk WRITE_ZEROES with
//!    unmap) and refuses when the device cannot promise zeros — unlike a plain discard
//!    (`blkdiscard`), after which an SSD may still return the old data;
//! 2. else `ZERO_RANGE`: the kernel zeroes (Write Zeroes offload where present, else it
//!    writes zero pages itself);
//! 3. else this program overwrites with zeros.
//!
//! It then reads back 4 KiB at 16 places and fails if any byte is not zero.
//!
//! An NVMe namespace is first formatted with a user data erase ([`super::nvme`], Format NVM
//! with SES 1), which also reaches the blocks the drive hides from the host. The erased
//! content is "indeterminate" by the specification, so the read-back decides: zeros end the
//! erase there, anything else is zeroed by the steps above. A drive without Format NVM, or
//! one that refuses it, goes straight to the steps above.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Advice, FallocateFlags, fadvise, fallocate};

use ironpool_crds::deployment::ErasePolicy;
use ironpool_crds::machine::Disk;

use super::MachineError;
use super::image::{self, HOLD};
use super::inventory::attr;

/// How one disk was erased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskErased {
    /// Kernel name.
    pub disk: String,
    /// What was done, or why it failed.
    pub outcome: Result<String, String>,
}

/// btrfs keeps superblock copies at 64 MiB and 256 GiB.
const BTRFS_MIRRORS: [u64; 2] = [64 << 20, 256 << 30];

/// Quick-erases one disk (`dev`, `size` bytes).
pub fn quick(dev: &File, size: u64) -> Result<String, MachineError> {
    image::wipe_ends(dev, size)?;
    for at in BTRFS_MIRRORS {
        if at + 4096 <= size {
            image::zero(dev, at, 4096)?;
        }
    }
    dev.sync_all()
        .map_err(|e| MachineError::io("sync after the quick erase", &e))?;
    Ok(format!(
        "wiped partition tables and signatures (first and last {} KiB)",
        HOLD.min(size) / 1024
    ))
}

/// How a full erase zeroed a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Zeroing {
    /// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: deallocated, zeros guaranteed by the device.
    Deallocate,
    /// `fallocate(ZERO_RANGE | KEEP_SIZE)`: zeroed by the kernel (offloaded where it can).
    ZeroRange,
    /// Zeros written by this program.
    Overwrite,
}

impl Zeroing {
    fn apply(self, dev: &File, at: u64, len: u64) -> Result<(), MachineError> {
        let flags = match self {
            Zeroing::Deallocate => FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            Zeroing::ZeroRange => FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
            Zeroing::Overwrite => return image::zero(dev, at, len),
        };
        fallocate(dev, flags, at, len).map_err(|e| {
            MachineError::io(
                format!("fallocate {self:?} of {len} bytes at {at}"),
                &std::io::Error::from(e),
            )
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Zeroing::Deallocate => "zeroed by the device, unmapping allowed (fallocate punch-hole)",
            Zeroing::ZeroRange => "zeroed by the kernel (fallocate zero-range)",
            Zeroing::Overwrite => "overwrote with zeros",
        }
    }
}

/// Bytes per zeroing call: progress is reported between calls.
const ERASE_STEP: u64 = 1 << 30;

/// Full-erases one disk (see the module documentation); `done` follows the bytes zeroed.
pub fn full(
    name: &str,
    sys_block: &Path,
    dev_path: &Path,
    size: u64,
    done: &AtomicU64,
) -> Result<String, MachineError> {
    let queue = sys_block.join(name).join("queue");
    let offload = |what: &str| {
        attr(&queue.join(what))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (write_zeroes, discard) = (
        offload("write_zeroes_max_bytes"),
        offload("discard_max_bytes"),
    );
    let dev = open(dev_path)?;
    let nsid = attr(&sys_block.join(name).join("nsid")).and_then(|v| v.parse::<u32>().ok());
    let mut formatted = None;
    if let Some(nsid) = nsid {
        match format_nvme(&dev, nsid, size) {
            Ok((what, true)) => {
                done.fetch_add(size, Ordering::Relaxed);
                return Ok(format!("{what}; read zeros back at 16 places"));
            }
            Ok((what, false)) => formatted = Some(what),
            Err(e) => tracing::info!(disk = name, error = %e, "NVMe Format NVM not used"),
        }
    }
    let mut method = None;
    let mut at = 0;
    while at < size {
        let n = ERASE_STEP.min(size - at);
        match method {
            Some(m) => Zeroing::apply(m, &dev, at, n)?,
            None => {
                // The first step picks the method: the cheapest one the device accepts.
                let mut chosen = Zeroing::Overwrite;
                for m in [Zeroing::Deallocate, Zeroing::ZeroRange] {
                    match m.apply(&dev, at, n) {
                        Ok(()) => {
                            chosen = m;
                            break;
                        }
                        Err(e) => tracing::info!(disk = name, error = %e, "not supported here"),
                    }
                }
                if chosen == Zeroing::Overwrite {
                    chosen.apply(&dev, at, n)?;
                }
                method = Some(chosen);
            }
        }
        at += n;
        done.fetch_add(n, Ordering::Relaxed);
    }
    dev.sync_all()
        .map_err(|e| MachineError::io("sync after the full erase", &e))?;
    let method = method.unwrap_or(Zeroing::Overwrite);
    verify_zero(&dev, size).map_err(|e| match e {
        MachineError::Io { what, message } => MachineError::Io {
            what: format!("{what} after the disk was {}", method.describe()),
            message,
        },
        other => other,
    })?;
    let first = formatted.map_or(String::new(), |f| {
        format!("{f}, which left non-zero content, then ")
    });
    Ok(format!(
        "{first}{} all {size} bytes and read zeros back at 16 places (device offload: \
         write-zeroes up to {write_zeroes} bytes, discard up to {discard} bytes per command)",
        method.describe()
    ))
}

/// Formats NVMe namespace `nsid` behind `dev` with a user data erase; Ok((what was done,
/// whether every sampled byte now reads zero)).
fn format_nvme(dev: &File, nsid: u32, size: u64) -> Result<(String, bool), String> {
    dev.sync_all()
        .map_err(|e| format!("sync before the format: {e}"))?;
    let what = super::nvme::format_user_data_erase(dev, nsid)?;
    // Pages cached from before the format would hide what the drive now returns.
    fadvise(dev, 0, None, Advice::DontNeed)
        .map_err(|e| format!("drop the page cache after the format: {e}"))?;
    Ok((what, verify_zero(dev, size).is_ok()))
}

/// Reads 4 KiB at the start, the end and 14 places between; every byte must be zero.
fn verify_zero(dev: &File, size: u64) -> Result<(), MachineError> {
    let block = 4096u64.min(size);
    if block == 0 {
        return Ok(());
    }
    let mut buf = vec![0u8; usize::try_from(block).unwrap_or(4096)];
    let last = size - block;
    for i in 0..16u64 {
        let at = (last / 15 * i.min(15)) / 512 * 512;
        let at = if i == 15 { last } else { at };
        dev.read_exact_at(&mut buf, at)
            .map_err(|e| MachineError::io(format!("read back {block} bytes at {at}"), &e))?;
        if let Some(k) = buf.iter().position(|b| *b != 0) {
            return Err(MachineError::Io {
                what: "verify the erase".to_string(),
                message: format!("byte {} still reads {:#04x}", at + k as u64, buf[k]),
            });
        }
    }
    Ok(())
}

/// Opens a block device for writing.
pub fn open(path: &Path) -> Result<File, MachineError> {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| MachineError::io(format!("open {}", path.display()), &e))
}

/// Erases every disk with `policy`; disks are named in `/dev`.
pub fn erase_all(
    disks: &[Disk],
    policy: ErasePolicy,
    root: &Path,
    done: &AtomicU64,
) -> Vec<DiskErased> {
    disks
        .iter()
        .map(|d| {
            let size = u64::try_from(d.size_bytes).unwrap_or(0);
            let dev_path = root.join("dev").join(&d.name);
            let outcome = match policy {
                ErasePolicy::None => Ok("left as it is (erase policy None)".to_string()),
                ErasePolicy::Quick => open(&dev_path).and_then(|f| {
                    let r = quick(&f, size);
                    done.fetch_add(size, Ordering::Relaxed);
                    r
                }),
                ErasePolicy::Full => full(&d.name, &root.join("sys/block"), &dev_path, size, done),
            };
            DiskErased {
                disk: d.name.clone(),
                outcome: outcome.map_err(|e| e.to_string()),
            }
        })
        .collect()
}

/// One line for the result message: `vda: ...; vdb: FAILED ...`.
pub fn summary(results: &[DiskErased]) -> String {
    results
        .iter()
        .map(|r| match &r.outcome {
            Ok(what) => format!("{}: {what}", r.disk),
            Err(why) => format!("{}: FAILED {why}", r.disk),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk_file(root: &Path, name: &str, size: usize) -> Disk {
        std::fs::create_dir_all(root.join("dev")).unwrap();
        std::fs::write(root.join("dev").join(name), vec![0xaau8; size]).unwrap();
        Disk {
            name: name.to_string(),
            size_bytes: size as i64,
            ..Disk::default()
        }
    }

    #[test]
    fn quick_and_full_erase_report_per_disk() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let disks = [disk_file(r, "vda", 5 << 20), disk_file(r, "vdb", 3 << 20)];
        let missing = Disk {
            name: "vdc".into(),
            size_bytes: 1 << 20,
            ..Disk::default()
        };
        let all = [disks[0].clone(), disks[1].clone(), missing];
        let done = AtomicU64::new(0);
        let results = erase_all(&all, ErasePolicy::Quick, r, &done);
        let text = summary(&results);
        assert!(text.starts_with("vda: wiped partition tables"), "{text}");
        assert!(text.contains("vdc: FAILED open"), "{text}");
        let vda = std::fs::read(r.join("dev/vda")).unwrap();
        assert!(vda[..1 << 20].iter().all(|b| *b == 0));
        assert!(vda[1 << 20..4 << 20].iter().all(|b| *b == 0xaa));
        assert!(vda[4 << 20..].iter().all(|b| *b == 0));

        // Full: every byte reads zero afterwards.
        let results = erase_all(&disks, ErasePolicy::Full, r, &done);
        assert!(results.iter().all(|r| r.outcome.is_ok()), "{results:?}");
        // tmpfs and ext4 files take PUNCH_HOLE: the cheapest method is chosen.
        let text = summary(&results);
        assert!(
            text.contains(
                "vda: zeroed by the device, unmapping allowed (fallocate punch-hole) all 5242880 \
                 bytes and read zeros back"
            ),
            "{text}"
        );
        for name in ["vda", "vdb"] {
            assert!(
                std::fs::read(r.join("dev").join(name))
                    .unwrap()
                    .iter()
                    .all(|b| *b == 0)
            );
        }
        // The read-back check finds a byte the erase missed.
        let f = open(&r.join("dev/vda")).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[7], (5 << 20) - 1).unwrap();
        let err = verify_zero(&f, 5 << 20).unwrap_err().to_string();
        assert!(err.contains("byte 5242879 still reads 0x07"), "{err}");
        let results = erase_all(&disks, ErasePolicy::None, r, &done);
        assert!(summary(&results).contains("erase policy None"));
    }
}
