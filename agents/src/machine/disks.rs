//! Choosing the root disk from the inventory and the root-device hints (pure).

use ironpool_crds::RootDeviceHints;
use ironpool_crds::machine::Disk;

use super::MachineError;

/// The root disk: the first disk (by name) that matches every hint ([`Disk::mismatch`], the
/// check the operator also makes against the inventory) and holds `min_bytes`.
/// The error lists every disk and why it was passed over.
pub fn choose<'a>(
    disks: &'a [Disk],
    hints: Option<&RootDeviceHints>,
    min_bytes: u64,
) -> Result<&'a Disk, MachineError> {
    let mut why = Vec::new();
    for d in disks {
        let reason = hints.and_then(|h| d.mismatch(h)).or_else(|| {
            (u64::try_from(d.size_bytes).unwrap_or(0) < min_bytes).then(|| {
                format!(
                    "{} bytes cannot hold the {min_bytes}-byte image",
                    d.size_bytes
                )
            })
        });
        match reason {
            None => return Ok(d),
            Some(r) => why.push(format!("{}: {r}", d.name)),
        }
    }
    Err(MachineError::NoDisk(if disks.is_empty() {
        "this machine has no disks the ramdisk can see (is the storage driver in the \
         initramfs?)"
            .to_string()
    } else {
        format!("no disk matches the root-device hints: {}", why.join("; "))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gb: i64, rotational: bool, serial: &str) -> Disk {
        Disk {
            name: name.to_string(),
            size_bytes: gb * 1_000_000_000,
            rotational: Some(rotational),
            serial_number: Some(serial.to_string()),
            model: Some("Samsung SSD 970".to_string()),
            wwn: Some("0x5000c500a0b1c2d3".to_string()),
            ..Disk::default()
        }
    }

    #[test]
    fn hints_pick_the_disk_and_the_error_says_why_not() {
        let disks = [disk("sda", 4000, true, "A"), disk("vda", 200, false, "B")];
        assert_eq!(choose(&disks, None, 0).unwrap().name, "sda");
        let ssd = RootDeviceHints {
            rotational: Some(false),
            ..RootDeviceHints::default()
        };
        assert_eq!(choose(&disks, Some(&ssd), 0).unwrap().name, "vda");
        for (hints, want) in [
            (
                RootDeviceHints {
                    device_name: Some("/dev/vda".into()),
                    ..Default::default()
                },
                "vda",
            ),
            (
                RootDeviceHints {
                    serial_number: Some("A".into()),
                    ..Default::default()
                },
                "sda",
            ),
            (
                RootDeviceHints {
                    model: Some("samsung".into()),
                    ..Default::default()
                },
                "sda",
            ),
            (
                RootDeviceHints {
                    wwn: Some("0x5000C500A0B1C2D3".into()),
                    ..Default::default()
                },
                "sda",
            ),
            (
                RootDeviceHints {
                    min_size_gigabytes: Some(1000),
                    ..Default::default()
                },
                "sda",
            ),
        ] {
            assert_eq!(
                choose(&disks, Some(&hints), 0).unwrap().name,
                want,
                "{hints:?}"
            );
        }
        let big = RootDeviceHints {
            min_size_gigabytes: Some(5000),
            ..RootDeviceHints::default()
        };
        let err = choose(&disks, Some(&big), 0).unwrap_err().to_string();
        assert!(
            err.contains("sda: 4000000000000 bytes is below 5000 GB"),
            "{err}"
        );
        // Too small for the image.
        let err = choose(&disks[1..], None, 300_000_000_000)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot hold"), "{err}");
        let err = choose(&[], None, 0).unwrap_err().to_string();
        assert!(err.contains("no disks"), "{err}");
    }
}
