use std::io::Cursor;

use super::*;

fn sha256(data: &[u8]) -> Checksum {
    let d = digest::digest(&digest::SHA256, data);
    Checksum::parse(&format!("sha256:{}", crate::http::fetch::hex(d.as_ref()))).unwrap()
}

fn blob(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(1..)).collect()
}

/// A "disk" file of `size` bytes full of 0xaa (an old installation).
fn old_disk(size: u64) -> (tempfile::NamedTempFile, File) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), vec![0xaa; size as usize]).unwrap();
    let file = File::options()
        .read(true)
        .write(true)
        .open(f.path())
        .unwrap();
    (f, file)
}

#[test]
fn checksums_parse_or_say_what_is_wrong() {
    assert_eq!(
        Checksum::parse(&format!("sha256:{}", "A".repeat(64)))
            .unwrap()
            .hex,
        "a".repeat(64)
    );
    assert_eq!(
        Checksum::parse(&format!("sha512:{}", "0".repeat(128)))
            .unwrap()
            .name,
        "sha512"
    );
    for bad in [
        "md5:00",
        "sha256:abc",
        "sha256",
        &format!("sha256:{}", "g".repeat(64)),
    ] {
        let err = Checksum::parse(bad).unwrap_err().to_string();
        assert!(err.contains("is not sha256:"), "{bad}: {err}");
    }
}

#[test]
fn a_raw_image_is_written_byte_for_byte() {
    let size = 9 << 20;
    let image = blob(3 * 1024 * 1024 + 12345, 1);
    let (f, disk) = old_disk(size);
    let progress = AtomicU64::new(0);
    let w = write_image(
        &mut Cursor::new(&image),
        image.len() as u64,
        ImageFormat::Raw,
        &sha256(&image),
        &disk,
        size,
        &progress,
    )
    .unwrap();
    assert_eq!(
        (w.bytes_read, w.disk_bytes),
        (image.len() as u64, image.len() as u64)
    );
    let after = std::fs::read(f.path()).unwrap();
    assert_eq!(&after[..image.len()], &image[..]);
    // Between the image and the last MiB: untouched; the last MiB: wiped.
    assert!(
        after[image.len()..(size - HOLD) as usize]
            .iter()
            .all(|b| *b == 0xaa)
    );
    assert!(after[(size - HOLD) as usize..].iter().all(|b| *b == 0));
}

#[test]
fn a_wrong_checksum_fails_and_leaves_nothing_that_looks_deployed() {
    let size = 9 << 20;
    let image = blob(5 << 20, 2);
    let (f, disk) = old_disk(size);
    let wrong = sha256(b"something else");
    let err = write_image(
        &mut Cursor::new(&image),
        image.len() as u64,
        ImageFormat::Raw,
        &wrong,
        &disk,
        size,
        &AtomicU64::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains(&wrong.hex) && err.contains(&sha256(&image).hex),
        "{err}"
    );
    let after = std::fs::read(f.path()).unwrap();
    // The first MiB (partition table, boot code) was never written and is zero, and so
    // are the last MiB of the image and of the disk.
    assert!(after[..HOLD as usize].iter().all(|b| *b == 0));
    assert!(after[(4 << 20)..(5 << 20)].iter().all(|b| *b == 0));
    assert!(after[(size - HOLD) as usize..].iter().all(|b| *b == 0));
}

#[test]
fn short_streams_and_oversized_images_are_refused() {
    let image = blob(2 << 20, 3);
    let (_f, disk) = old_disk(4 << 20);
    let err = write_image(
        &mut Cursor::new(&image),
        image.len() as u64 + 1,
        ImageFormat::Raw,
        &sha256(&image),
        &disk,
        4 << 20,
        &AtomicU64::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("announced"), "{err}");
    let err = write_image(
        &mut Cursor::new(&image),
        image.len() as u64,
        ImageFormat::Raw,
        &sha256(&image),
        &disk,
        1 << 20,
        &AtomicU64::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not fit"), "{err}");
}
