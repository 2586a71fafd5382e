//! Adding the cloud-init seed partition to the written image's partition table (MBR or
//! GPT), at the end of the disk. GPT: a new entry (Microsoft basic data, name `cidata`),
//! both headers and entry arrays rewritten with fresh CRC32s, the backup moved to the
//! disk's last sectors. MBR: a FAT12 entry in a free primary slot.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::MachineError;
use super::seed::SEED_SECTORS;

const SECTOR: u64 = 512;
/// Microsoft basic data partition type, in GPT's mixed-endian byte order.
const BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];

/// CRC-32 (IEEE 802.3), as GPT uses it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in data {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn read(disk: &File, at: u64, len: usize) -> Result<Vec<u8>, MachineError> {
    let mut buf = vec![0u8; len];
    disk.read_exact_at(&mut buf, at)
        .map_err(|e| MachineError::io(format!("read {len} bytes at {at}"), &e))?;
    Ok(buf)
}

fn write(disk: &File, at: u64, data: &[u8]) -> Result<(), MachineError> {
    disk.write_all_at(data, at)
        .map_err(|e| MachineError::io(format!("write {} bytes at {at}", data.len()), &e))
}

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// What [`add_seed_partition`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedPartition {
    /// The seed's first sector; the caller writes the filesystem there.
    pub start: u64,
    /// With `grow`: the image's last partition (1-based number), its sectors before and after
    /// it was grown to end just before the seed. None when nothing was grown.
    pub grown: Option<(usize, u64, u64)>,
}

/// Adds a seed partition at the end of a disk of `disk_sectors` whose image ends at byte
/// `image_end`. With `grow` (the GrowRoot layout) the partition that ends last is grown to
/// end where the seed starts (its filesystem is grown by the OS: cloud-init's
/// `resize_rootfs`); an MBR extended partition is left as it is.
pub fn add_seed_partition(
    disk: &File,
    disk_sectors: u64,
    image_end: u64,
    grow: bool,
) -> Result<SeedPartition, MachineError> {
    let start = (disk_sectors.saturating_sub(SEED_SECTORS + 34)) / 2048 * 2048;
    if start * SECTOR < image_end || start == 0 {
        return Err(MachineError::NoDisk(format!(
            "no room for the 1 MiB cloud-init seed after the {image_end}-byte image on a \
             {}-byte disk",
            disk_sectors * SECTOR
        )));
    }
    let mbr = read(disk, 0, 512)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(MachineError::Image(
            "the image has no partition table (no MBR signature), so the cloud-init seed \
             partition cannot be added; use an image with an MBR or GPT partition table"
                .to_string(),
        ));
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + i * 16..462 + i * 16]).collect();
    let grown = if entries.iter().any(|e| e[4] == 0xee) {
        gpt(disk, disk_sectors, start, mbr.clone(), grow)?
    } else {
        mbr_add(disk, &mbr, start, grow)?
    };
    Ok(SeedPartition { start, grown })
}

fn mbr_add(
    disk: &File,
    mbr: &[u8],
    start: u64,
    grow: bool,
) -> Result<Option<(usize, u64, u64)>, MachineError> {
    let mut mbr = mbr.to_vec();
    let mut free = None;
    for i in 0..4 {
        let e = &mbr[446 + i * 16..462 + i * 16];
        if e[4] == 0 {
            free = free.or(Some(i));
        } else if le32(e, 8) + le32(e, 12) > start {
            return Err(MachineError::Image(format!(
                "MBR partition {} reaches past sector {start}, where the seed goes",
                i + 1
            )));
        }
    }
    let i = free.ok_or_else(|| {
        MachineError::Image(
            "all four MBR primary slots are used; the cloud-init seed needs one".to_string(),
        )
    })?;
    let last = (0..4)
        .filter(|&k| mbr[446 + k * 16 + 4] != 0)
        .max_by_key(|&k| le32(&mbr[446 + k * 16..], 8) + le32(&mbr[446 + k * 16..], 12));
    let mut grown = None;
    if let Some(k) = last.filter(|_| grow) {
        let at = 446 + k * 16;
        let (first, size) = (le32(&mbr[at..], 8), le32(&mbr[at..], 12));
        // Extended partitions (05, 0f, 85) hold logical ones: growing the container grows none.
        if ![0x05, 0x0f, 0x85].contains(&mbr[at + 4]) && first + size < start {
            let new = start - first;
            mbr[at + 12..at + 16].copy_from_slice(&(new as u32).to_le_bytes());
            grown = Some((k + 1, size, new));
        }
    }
    let e = &mut mbr[446 + i * 16..462 + i * 16];
    e.copy_from_slice(&[
        0, 0xfe, 0xff, 0xff, 0x01, 0xfe, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(SEED_SECTORS as u32).to_le_bytes());
    write(disk, 0, &mbr)?;
    Ok(grown)
}

fn gpt(
    disk: &File,
    disk_sectors: u64,
    start: u64,
    mut mbr: Vec<u8>,
    grow: bool,
) -> Result<Option<(usize, u64, u64)>, MachineError> {
    let header = read(disk, SECTOR, 512)?;
    if &header[..8] != b"EFI PART" {
        return Err(MachineError::Image(
            "protective MBR but no GPT header at sector 1".to_string(),
        ));
    }
    let hsize = usize::try_from(le32(&header, 12))
        .unwrap_or(0)
        .clamp(92, 512);
    let (old_backup, entries_lba) = (le64(&header, 32), le64(&header, 72));
    let (count, esize) = (le32(&header, 80), le32(&header, 84));
    if esize < 128 || count == 0 || count > 1024 {
        return Err(MachineError::Image(format!(
            "GPT header with {count} entries of {esize} bytes is not usable"
        )));
    }
    let table_len = (count * esize) as usize;
    let mut table = read(disk, entries_lba * SECTOR, table_len)?;
    let mut free = None;
    for i in 0..count as usize {
        let e = &table[i * esize as usize..(i + 1) * esize as usize];
        if e[..16].iter().all(|b| *b == 0) {
            free = free.or(Some(i));
        } else if le64(e, 40) >= start {
            return Err(MachineError::Image(format!(
                "GPT partition {} reaches past sector {start}, where the seed goes",
                i + 1
            )));
        }
    }
    let i = free.ok_or_else(|| MachineError::Image("the GPT has no free entry".to_string()))?;
    let es = esize as usize;
    let last = (0..count as usize)
        .filter(|&k| table[k * es..k * es + 16].iter().any(|b| *b != 0))
        .max_by_key(|&k| le64(&table[k * es..], 40));
    let mut grown = None;
    if let Some(k) = last.filter(|_| grow) {
        let (first, end) = (le64(&table[k * es..], 32), le64(&table[k * es..], 40));
        if end + 1 < start {
            table[k * es + 40..k * es + 48].copy_from_slice(&(start - 1).to_le_bytes());
            grown = Some((k + 1, end + 1 - first, start - first));
        }
    }
    let e = &mut table[i * es..(i + 1) * es];
    e[..16].copy_from_slice(&BASIC_DATA);
    let unique: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    e[16..32].copy_from_slice(&unique);
    e[32..40].copy_from_slice(&start.to_le_bytes());
    e[40..48].copy_from_slice(&(start + SEED_SECTORS - 1).to_le_bytes());
    for (k, u) in "cidata".encode_utf16().enumerate() {
        e[56 + k * 2..58 + k * 2].copy_from_slice(&u.to_le_bytes());
    }
    let entry_sectors = (table_len as u64).div_ceil(SECTOR);
    let last = disk_sectors - 1;
    let table_crc = crc32(&table);
    let mut primary = header.clone();
    primary[32..40].copy_from_slice(&last.to_le_bytes());
    primary[48..56].copy_from_slice(&(last - entry_sectors - 1).to_le_bytes());
    primary[88..92].copy_from_slice(&table_crc.to_le_bytes());
    let mut backup = primary.clone();
    backup[24..32].copy_from_slice(&last.to_le_bytes());
    backup[32..40].copy_from_slice(&1u64.to_le_bytes());
    backup[72..80].copy_from_slice(&(last - entry_sectors).to_le_bytes());
    for h in [&mut primary, &mut backup] {
        h[16..20].fill(0);
        let crc = crc32(&h[..hsize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }
    write(disk, entries_lba * SECTOR, &table)?;
    write(disk, (last - entry_sectors) * SECTOR, &table)?;
    write(disk, last * SECTOR, &backup)?;
    write(disk, SECTOR, &primary)?;
    if old_backup != last && old_backup < disk_sectors {
        write(disk, old_backup * SECTOR, &[0u8; 512])?;
    }
    // The protective MBR covers the whole disk.
    for k in 0..4 {
        let at = 446 + k * 16;
        if mbr[at + 4] == 0xee {
            let n = (disk_sectors - 1).min(u64::from(u32::MAX)) as u32;
            mbr[at + 12..at + 16].copy_from_slice(&n.to_le_bytes());
        }
    }
    write(disk, 0, &mbr)?;
    Ok(grown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn mbr_gets_a_seed_entry_or_a_clear_refusal() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(64 << 20).unwrap();
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[446 + 4] = 0x83;
        mbr[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&8192u32.to_le_bytes());
        f.write_all_at(&mbr, 0).unwrap();
        let seed = add_seed_partition(&f, (64 << 20) / 512, 10240 * 512, false).unwrap();
        let start = seed.start;
        assert_eq!(start, 126_976); // 1 MiB aligned, leaving room for a GPT backup
        assert_eq!(seed.grown, None);
        let after = read(&f, 0, 512).unwrap();
        assert_eq!(after[462 + 4], 0x01);
        assert_eq!(le32(&after, 462 + 8), start);
        assert_eq!(le32(&after, 462 + 12), SEED_SECTORS);
        assert_eq!(
            le32(&after, 446 + 12),
            8192,
            "AsImage: partition 1 as it was"
        );
        // GrowRoot: partition 1 now ends where the seed starts.
        f.write_all_at(&mbr, 0).unwrap();
        let seed = add_seed_partition(&f, (64 << 20) / 512, 10240 * 512, true).unwrap();
        assert_eq!(seed.grown, Some((1, 8192, start - 2048)));
        let after = read(&f, 0, 512).unwrap();
        assert_eq!(le32(&after, 446 + 8) + le32(&after, 446 + 12), start);
        // An extended partition is not grown (its logical partitions would not be).
        let mut ext = mbr.clone();
        ext[446 + 4] = 0x05;
        f.write_all_at(&ext, 0).unwrap();
        let seed = add_seed_partition(&f, (64 << 20) / 512, 10240 * 512, true).unwrap();
        assert_eq!(seed.grown, None);
        // Image too large: refused.
        let err = add_seed_partition(&f, (64 << 20) / 512, 64 << 20, false).unwrap_err();
        assert!(err.to_string().contains("no room"), "{err}");
        // No partition table: refused with advice.
        let g = tempfile::tempfile().unwrap();
        g.set_len(64 << 20).unwrap();
        let err = add_seed_partition(&g, (64 << 20) / 512, 1 << 20, true).unwrap_err();
        assert!(err.to_string().contains("no partition table"), "{err}");
    }
}
