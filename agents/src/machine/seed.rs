//! The cloud-init NoCloud seed: a small FAT12 filesystem labelled `CIDATA` holding
//! `meta-data`, `user-data` and `network-config` (built in memory, no mkfs in the ramdisk),
//! placed in a new partition at the end of the root disk, added to the image's MBR or GPT.
//! cloud-init finds it by its label.

use super::MachineError;
use crate::http::CloudInitSeed;

/// Size of the seed filesystem: 1 MiB (2048 sectors) holds the files with room to spare.
pub const SEED_SECTORS: u64 = 2048;
const SECTOR: usize = 512;
const FAT_SECTORS: usize = 6; // 2048 clusters * 1.5 bytes
const ROOT_ENTRIES: usize = 16;
const DATA_START: usize = 1 + 2 * FAT_SECTORS + ROOT_ENTRIES * 32 / SECTOR;

/// `vendor-data` of an AsImage deployment: cloud-init must not grow the image's last
/// partition or its filesystem (its defaults do both). User-data can still ask for it.
pub const AS_IMAGE_VENDOR_DATA: &str = "#cloud-config\n# Ironpool: storage layout AsImage\ngrowpart:\n  mode: \"off\"\nresize_rootfs: false\n";

/// The seed files in the order they are written.
pub fn files(seed: &CloudInitSeed) -> Vec<(&'static str, &[u8])> {
    let mut out = vec![("meta-data", seed.meta_data.as_bytes())];
    out.push((
        "user-data",
        seed.user_data.as_deref().unwrap_or("").as_bytes(),
    ));
    if let Some(n) = &seed.network_data {
        out.push(("network-config", n.as_bytes()));
    }
    out
}

/// Checksum of an 8.3 name for its long-name entries.
fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, b| sum.rotate_right(1).wrapping_add(*b))
}

/// Directory entries (long-name entries, then the 8.3 entry) for `name`.
fn dir_entries(name: &str, index: usize, cluster: u16, size: u32) -> Vec<[u8; 32]> {
    let mut short = *b"SEED~0     ";
    short[5] = b'0' + (index as u8 % 10);
    let sum = lfn_checksum(&short);
    let units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    let mut out = Vec::new();
    for part in (0..parts).rev() {
        let mut e = [0u8; 32];
        e[0] = (part as u8 + 1) | if part == parts - 1 { 0x40 } else { 0 };
        e[11] = 0x0f;
        e[13] = sum;
        let slots = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (k, at) in slots.iter().enumerate() {
            let i = part * 13 + k;
            let u = match i.cmp(&units.len()) {
                std::cmp::Ordering::Less => units[i],
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Greater => 0xffff,
            };
            e[*at..at + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(&short);
    e[11] = 0x20; // archive
    e[26..28].copy_from_slice(&cluster.to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    out.push(e);
    out
}

/// A FAT12 filesystem of [`SEED_SECTORS`] sectors labelled `CIDATA` holding `files`;
/// `hidden` is the partition's first sector (written into the boot sector).
pub fn fat12(files: &[(&str, &[u8])], hidden: u32) -> Result<Vec<u8>, MachineError> {
    let mut fs = vec![0u8; SEED_SECTORS as usize * SECTOR];
    let b = &mut fs[..SECTOR];
    b[..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
    b[3..11].copy_from_slice(b"IRONPOOL");
    b[11..13].copy_from_slice(&512u16.to_le_bytes());
    b[13] = 1; // sectors per cluster
    b[14..16].copy_from_slice(&1u16.to_le_bytes()); // reserved sectors
    b[16] = 2; // FATs
    b[17..19].copy_from_slice(&(ROOT_ENTRIES as u16).to_le_bytes());
    b[19..21].copy_from_slice(&(SEED_SECTORS as u16).to_le_bytes());
    b[21] = 0xf8;
    b[22..24].copy_from_slice(&(FAT_SECTORS as u16).to_le_bytes());
    b[24..26].copy_from_slice(&32u16.to_le_bytes());
    b[26..28].copy_from_slice(&64u16.to_le_bytes());
    b[28..32].copy_from_slice(&hidden.to_le_bytes());
    b[36] = 0x80;
    b[38] = 0x29;
    b[39..43].copy_from_slice(&0x1c0f_fee5u32.to_le_bytes());
    b[43..54].copy_from_slice(b"CIDATA     ");
    b[54..62].copy_from_slice(b"FAT12   ");
    b[510] = 0x55;
    b[511] = 0xaa;

    let mut fat = vec![0u8; FAT_SECTORS * SECTOR];
    let mut set = |cluster: usize, value: u16| {
        let at = cluster * 3 / 2;
        let v = value & 0xfff;
        if cluster.is_multiple_of(2) {
            fat[at] = v as u8;
            fat[at + 1] = (fat[at + 1] & 0xf0) | (v >> 8) as u8;
        } else {
            fat[at] = (fat[at] & 0x0f) | ((v << 4) as u8);
            fat[at + 1] = (v >> 4) as u8;
        }
    };
    set(0, 0xff8);
    set(1, 0xfff);
    let mut root: Vec<[u8; 32]> = Vec::new();
    let mut label = [0u8; 32];
    label[..11].copy_from_slice(b"CIDATA     ");
    label[11] = 0x08;
    root.push(label);
    let mut next = 2usize;
    let clusters_total = SEED_SECTORS as usize - DATA_START;
    for (i, (name, data)) in files.iter().enumerate() {
        let n = data.len().div_ceil(SECTOR);
        if next + n > clusters_total + 2 {
            return Err(MachineError::Image(format!(
                "the cloud-init seed files do not fit the {} KiB seed",
                SEED_SECTORS / 2
            )));
        }
        let first = if n == 0 { 0 } else { next };
        for k in 0..n {
            let c = next + k;
            set(c, if k + 1 == n { 0xfff } else { (c + 1) as u16 });
            let at = (DATA_START + c - 2) * SECTOR;
            let chunk = &data[k * SECTOR..((k + 1) * SECTOR).min(data.len())];
            fs[at..at + chunk.len()].copy_from_slice(chunk);
        }
        next += n;
        root.extend(dir_entries(name, i, first as u16, data.len() as u32));
    }
    if root.len() > ROOT_ENTRIES {
        return Err(MachineError::Image("too many seed files".to_string()));
    }
    for copy in 0..2 {
        let at = (1 + copy * FAT_SECTORS) * SECTOR;
        fs[at..at + fat.len()].copy_from_slice(&fat);
    }
    let root_at = (1 + 2 * FAT_SECTORS) * SECTOR;
    for (i, e) in root.iter().enumerate() {
        fs[root_at + i * 32..root_at + i * 32 + 32].copy_from_slice(e);
    }
    Ok(fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat12_layout_and_long_names() {
        let fs = fat12(
            &[
                ("meta-data", b"instance-id: x\n"),
                ("network-config", &[b'n'; 700]),
            ],
            63,
        )
        .unwrap();
        assert_eq!(fs.len(), 1 << 20);
        assert_eq!(&fs[43..54], b"CIDATA     ");
        assert_eq!(&fs[510..512], &[0x55, 0xaa]);
        assert_eq!(u32::from_le_bytes(fs[28..32].try_into().unwrap()), 63);
        // network-config: 14 characters = two long-name entries before its 8.3 entry.
        let root = (1 + 2 * FAT_SECTORS) * SECTOR;
        assert_eq!(fs[root + 11], 0x08);
        assert_eq!(fs[root + 32 + 11], 0x0f);
        assert_eq!(fs[root + 64 + 11], 0x20);
        assert_eq!(fs[root + 96], 0x42);
        // Its data spans two clusters chained in the FAT: 3 -> 4 -> end.
        let entry = |c: usize| {
            let at = SECTOR + c * 3 / 2;
            let v = u16::from_le_bytes([fs[at], fs[at + 1]]);
            if c.is_multiple_of(2) {
                v & 0xfff
            } else {
                v >> 4
            }
        };
        assert_eq!(
            (entry(2), entry(3), entry(4), entry(5)),
            (0xfff, 4, 0xfff, 0)
        );
        let data = (DATA_START + 1) * SECTOR;
        assert_eq!(&fs[data..data + 700], &[b'n'; 700][..]);
        let too_big = vec![0u8; 2 << 20];
        assert!(fat12(&[("user-data", &too_big)], 0).is_err());
    }
}
