//! Erasing disks per the Deployment's erase policy, one result per disk. Quick: zero the
//! first and last MiB (partition tables, GPT backup, RAID/LVM/filesystem signatures) and
//! the btrfs superblock mirrors. Full: `blkdiscard` where the disk supports discard
//! (`queue/discard_max_bytes` > 0; NVMe and SSDs), else overwrite every byte with zeros.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Full-erases one disk: discard when supported, else overwrite with zeros; `done` follows
/// the bytes overwritten.
pub fn full(
    name: &str,
    sys_block: &Path,
    dev_path: &Path,
    size: u64,
    done: &AtomicU64,
) -> Result<String, MachineError> {
    let discard = attr(&sys_block.join(name).join("queue/discard_max_bytes"))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if discard > 0 {
        let out = Command::new("blkdiscard")
            .arg(dev_path)
            .output()
            .map_err(|e| MachineError::io("run blkdiscard", &e))?;
        if out.status.success() {
            let dev = open(dev_path)?;
            quick(&dev, size)?;
            done.fetch_add(size, Ordering::Relaxed);
            return Ok(format!(
                "discarded all {size} bytes (blkdiscard) and wiped the ends"
            ));
        }
        tracing::warn!(
            disk = name,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "blkdiscard failed; overwriting instead"
        );
    }
    let dev = open(dev_path)?;
    let step = 64u64 << 20;
    let mut at = 0;
    while at < size {
        let n = step.min(size - at);
        image::zero(&dev, at, n)?;
        at += n;
        done.fetch_add(n, Ordering::Relaxed);
    }
    dev.sync_all()
        .map_err(|e| MachineError::io("sync after overwriting", &e))?;
    Ok(format!("overwrote all {size} bytes with zeros"))
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

        // Full, no discard support in the (absent) sysfs: every byte overwritten.
        let results = erase_all(&disks, ErasePolicy::Full, r, &done);
        assert!(results.iter().all(|r| r.outcome.is_ok()), "{results:?}");
        assert!(summary(&results).contains("overwrote all 5242880 bytes"));
        for name in ["vda", "vdb"] {
            assert!(
                std::fs::read(r.join("dev").join(name))
                    .unwrap()
                    .iter()
                    .all(|b| *b == 0)
            );
        }
        let results = erase_all(&disks, ErasePolicy::None, r, &done);
        assert!(summary(&results).contains("erase policy None"));
    }
}
