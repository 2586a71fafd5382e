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

/// The image cache's `Repr-Digest` value for `data`.
fn repr_digest(data: &[u8]) -> String {
    let hex = |alg| crate::http::fetch::hex(digest::digest(alg, data).as_ref());
    crate::http::reprdigest::format(&hex(&digest::SHA256), &hex(&digest::SHA512)).unwrap()
}

#[test]
fn the_caches_digest_is_used_only_when_it_names_the_declared_one() {
    let image = blob(3 << 20, 5);
    let declared = sha256(&image);
    // No field, or a field without the declared algorithm: the declared checksum.
    for field in [None, Some("sha-512=:AAAA:"), Some("garbage")] {
        let c = declared.for_download(field).unwrap();
        assert_eq!(
            (c.name, &c.hex, c.anchored_to),
            ("sha256", &declared.hex, None)
        );
    }
    // The field names this image: this CPU's cheaper algorithm, anchored to the declared one.
    let c = declared.for_download(Some(&repr_digest(&image))).unwrap();
    assert_eq!(c.name, cheapest_on_this_cpu());
    if c.name == "sha512" {
        let want = crate::http::fetch::hex(digest::digest(&digest::SHA512, &image).as_ref());
        assert_eq!((&c.hex, c.anchored_to), (&want, Some("sha256")));
        assert!(
            c.describe()
                .contains("than the declared sha256, which the agent's cache checked"),
            "{}",
            c.describe()
        );
    } else {
        assert_eq!((&c.hex, c.anchored_to), (&declared.hex, None));
    }
    // The field describes another image: refused before the disk is touched.
    let err = declared
        .for_download(Some(&repr_digest(b"another image")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not this image") && err.contains(&declared.hex),
        "{err}"
    );
}

#[test]
fn a_cache_digest_that_does_not_match_the_bytes_fails_and_says_where_to_look() {
    let size = 9 << 20;
    let image = blob(5 << 20, 3);
    let (f, disk) = old_disk(size);
    // The digest the cache sends for the image, but the bytes arriving differ in one place.
    let mut changed = image.clone();
    changed[3 << 20] ^= 1;
    let anchored = Checksum {
        algorithm: &digest::SHA512,
        name: "sha512",
        hex: crate::http::fetch::hex(digest::digest(&digest::SHA512, &image).as_ref()),
        anchored_to: Some("sha256"),
    };
    let err = write_image(
        &mut Cursor::new(&changed),
        changed.len() as u64,
        ImageFormat::Raw,
        &anchored,
        &disk,
        size,
        &AtomicU64::new(0),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("checksum mismatch") && err.contains("changed in the cache or on the way"),
        "{err}"
    );
    assert!(err.contains(&anchored.hex), "{err}");
    let after = std::fs::read(f.path()).unwrap();
    assert!(after[..HOLD as usize].iter().all(|b| *b == 0));
    // And the same bytes with the matching digest are written.
    let (_f, disk) = old_disk(size);
    write_image(
        &mut Cursor::new(&image),
        image.len() as u64,
        ImageFormat::Raw,
        &anchored,
        &disk,
        size,
        &AtomicU64::new(0),
    )
    .unwrap();
}
