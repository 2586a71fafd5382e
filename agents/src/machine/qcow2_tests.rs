use super::*;

const CS: u64 = 512;

/// A version-3 QCOW2 file with 512-byte clusters: header, L1 at cluster 1, one L2 table
/// at cluster 2, then the data clusters in `order` (guest cluster indexes). Guest cluster
/// `g` holds bytes `g + 1` repeated; `zero` guest clusters carry the zero flag.
fn image(size: u64, order: &[u64], zero: &[u64], l2_at: u64) -> Vec<u8> {
    let mut f = vec![0u8; (3 + order.len() as u64 * CS) as usize];
    f.resize((3 * CS) as usize, 0);
    f[..4].copy_from_slice(MAGIC);
    f[4..8].copy_from_slice(&3u32.to_be_bytes());
    f[20..24].copy_from_slice(&9u32.to_be_bytes());
    f[24..32].copy_from_slice(&size.to_be_bytes());
    f[36..40].copy_from_slice(&1u32.to_be_bytes());
    f[40..48].copy_from_slice(&CS.to_be_bytes());
    f[100..104].copy_from_slice(&104u32.to_be_bytes());
    f[512..520].copy_from_slice(&((l2_at * CS) | 1 << 63).to_be_bytes());
    let l2 = (l2_at * CS) as usize;
    if f.len() < l2 + CS as usize {
        f.resize(l2 + CS as usize, 0);
    }
    let mut host = f.len() as u64;
    for g in order {
        let entry = host | 1 << 63;
        f[l2 + *g as usize * 8..][..8].copy_from_slice(&entry.to_be_bytes());
        f.extend(std::iter::repeat_n(*g as u8 + 1, CS as usize));
        host += CS;
    }
    for g in zero {
        f[l2 + *g as usize * 8..][..8].copy_from_slice(&1u64.to_be_bytes());
    }
    f
}

/// Converts `file` fed in `chunk`-byte pieces; returns the guest disk (zeros where unwritten).
fn convert(file: &[u8], chunk: usize) -> Result<Vec<u8>, MachineError> {
    let mut s = Qcow2Stream::new();
    let mut disk = Vec::new();
    let mut put = |at: u64, b: &[u8]| {
        let end = at as usize + b.len();
        if disk.len() < end {
            disk.resize(end, 0xee);
        }
        disk[at as usize..end].copy_from_slice(b);
        Ok(())
    };
    for piece in file.chunks(chunk) {
        s.push(piece, &mut put)?;
    }
    s.finish(&mut put)?;
    let size = s.header().unwrap().size as usize;
    disk.resize(size, 0xee);
    for (at, len) in s.unwritten() {
        disk[at as usize..(at + len) as usize].fill(0);
    }
    Ok(disk)
}

#[test]
fn clusters_land_at_their_guest_offsets_in_any_host_order_and_chunking() {
    // 6 guest clusters, the last one short (size not a multiple of the cluster size).
    let size = 5 * CS + 100;
    let file = image(size, &[4, 0, 5, 2], &[3], 2);
    let mut want = vec![0u8; size as usize];
    for g in [0u64, 2, 4, 5] {
        let end = ((g + 1) * CS).min(size) as usize;
        want[(g * CS) as usize..end].fill(g as u8 + 1);
    }
    for chunk in [1, 7, 512, 513, 4096, file.len()] {
        assert_eq!(convert(&file, chunk).unwrap(), want, "chunk {chunk}");
    }
    let mut s = Qcow2Stream::new();
    let mut sink = |_: u64, _: &[u8]| Ok(());
    s.push(&file, &mut sink).unwrap();
    s.finish(&mut sink).unwrap();
    assert_eq!(s.unwritten(), [(CS, CS), (3 * CS, CS)]);
}

#[test]
fn unstreamable_or_unsupported_images_are_refused_with_advice() {
    // L2 table placed after the data it maps (at cluster 6, data from cluster 3 on).
    let mut file = image(4 * CS, &[0, 1], &[], 2);
    let l2: Vec<u8> = file[1024..1536].to_vec();
    file.resize(7 * CS as usize, 0);
    file[6 * CS as usize..].copy_from_slice(&l2);
    file[1024..1536].fill(0);
    file[512..520].copy_from_slice(&((6 * CS) | 1 << 63).to_be_bytes());
    // Its data clusters (3, 4) come before the L2 (6): refused.
    let err = convert(&file, 4096).unwrap_err().to_string();
    assert!(err.contains("comes before the table"), "{err}");
    assert!(err.contains("qemu-img convert -O qcow2"), "{err}");

    let mut compressed = image(2 * CS, &[0], &[], 2);
    compressed[1024..1032].copy_from_slice(&((3 * CS) | (1 << 62)).to_be_bytes());
    let err = convert(&compressed, 4096).unwrap_err().to_string();
    assert!(err.contains("compressed clusters"), "{err}");

    let mut backing = image(2 * CS, &[0], &[], 2);
    backing[8..16].copy_from_slice(&600u64.to_be_bytes());
    assert!(
        convert(&backing, 4096)
            .unwrap_err()
            .to_string()
            .contains("backing file")
    );

    let file = image(2 * CS, &[0, 1], &[], 2);
    let err = convert(&file[..file.len() - CS as usize], 4096)
        .unwrap_err()
        .to_string();
    assert!(err.contains("it is truncated"), "{err}");
    let err = convert(&file[..100], 4096).unwrap_err().to_string();
    assert!(err.contains("inside the QCOW2 header"), "{err}");
    let err = convert(&[0u8; 1024], 4096).unwrap_err().to_string();
    assert!(err.contains("QCOW2 magic"), "{err}");
}
