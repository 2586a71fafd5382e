//! Table tests of iPXE script rendering.

use ironpool_crds::machine::{Architecture, BootMode, BootPurpose, BootTarget};

use super::*;

const MAC: MacAddr = MacAddr([0x3c, 0xec, 0xef, 0x12, 0x34, 0x56]);

fn cfg() -> ScriptConfig {
    ScriptConfig::new("http://10.20.0.2:8080/", "quiet").unwrap()
}

fn keys() -> TokenKey {
    TokenKey::new(&[9; 32]).unwrap()
}

fn machine(mode: BootMode, intent: Option<(BootTarget, BootPurpose, i64)>) -> MachineView {
    let mut m = MachineView::example("r1-u07", MAC).with_boot_mode(mode);
    if let Some((t, p, a)) = intent {
        m = m.with_intent(t, p, a);
    }
    m
}

#[test]
fn scripts_per_intent_and_boot_mode() {
    use BootPurpose::*;
    use BootTarget::*;
    let token3 = keys().derive(&MAC, 3);
    // (machine, lines the script must contain, lines it must not, summary)
    type Row = (
        Option<MachineView>,
        Vec<String>,
        Vec<&'static str>,
        &'static str,
    );
    let table: Vec<Row> = vec![
        (
            None,
            vec![
                "echo Ironpool: no Machine has MAC 3c:ec:ef:12:34:56: booting the enlistment ramdisk".into(),
                format!(
                    "kernel http://10.20.0.2:8080/assets/vmlinuz?mac=3c-ec-ef-12-34-56 initrd=initramfs \
                     ironpool.url=http://10.20.0.2:8080 ironpool.token={} \
                     ironpool.mac=3c:ec:ef:12:34:56 ironpool.purpose=Enlist ironpool.attempt=0 \
                     console=ttyS0 quiet",
                    keys().derive(&MAC, 0)
                ),
                "initrd http://10.20.0.2:8080/assets/initramfs?mac=3c-ec-ef-12-34-56".into(),
                "boot".into(),
            ],
            vec!["sanboot", "exit"],
            "enlistment ramdisk (unknown MAC)",
        ),
        (
            Some(machine(BootMode::Uefi, Some((Ramdisk, Deploy, 3)))),
            vec![
                "echo Ironpool: Machine datacenter-a/r1-u07: Deploy (attempt 3)".into(),
                format!(
                    "kernel http://10.20.0.2:8080/assets/vmlinuz?mac=3c-ec-ef-12-34-56 initrd=initramfs \
                     ironpool.url=http://10.20.0.2:8080 ironpool.token={token3} \
                     ironpool.mac=3c:ec:ef:12:34:56 ironpool.purpose=Deploy ironpool.attempt=3 \
                     console=ttyS0 quiet"
                ),
                "initrd http://10.20.0.2:8080/assets/initramfs?mac=3c-ec-ef-12-34-56".into(),
                "boot".into(),
            ],
            vec!["sanboot", "exit"],
            "ramdisk for Deploy attempt 3",
        ),
        (
            Some(machine(BootMode::Legacy, Some((Ramdisk, Commission, 1)))),
            vec!["~ironpool.purpose=Commission ironpool.attempt=1".into(), "boot".into()],
            vec!["sanboot"],
            "ramdisk for Commission attempt 1",
        ),
        (
            Some(machine(BootMode::Legacy, Some((Ramdisk, Erase, 7)))),
            vec!["~ironpool.purpose=Erase ironpool.attempt=7".into()],
            vec![],
            "ramdisk for Erase attempt 7",
        ),
        (
            Some(machine(BootMode::Legacy, Some((Disk, Run, 4)))),
            vec![
                "echo Ironpool: Machine datacenter-a/r1-u07: Run (attempt 4) boots from its local disk".into(),
                "sanboot --no-describe --drive 0x80 || exit".into(),
            ],
            vec!["kernel", "initrd", "token"],
            "local disk for Run attempt 4",
        ),
        (
            Some(machine(BootMode::Uefi, Some((Disk, Run, 4)))),
            vec!["exit 1".into()],
            vec!["kernel", "sanboot", "token"],
            "local disk for Run attempt 4",
        ),
        (
            Some(machine(BootMode::Uefi, Some((Off, Idle, 5)))),
            vec!["poweroff || exit".into()],
            vec!["kernel", "sanboot", "token"],
            "power off for Idle attempt 5",
        ),
        (
            Some(machine(BootMode::Uefi, None)),
            vec![
                "sleep 10".into(),
                "chain --replace --autofree http://10.20.0.2:8080/boot/3c-ec-ef-12-34-56.ipxe".into(),
            ],
            vec!["kernel", "token"],
            "no boot intent yet: waiting",
        ),
    ];
    for (m, must, must_not, summary) in table {
        let r = render_script(&cfg(), &keys(), &MAC, m.as_ref());
        assert!(r.script.starts_with("#!ipxe\n"), "{}", r.script);
        assert!(
            r.script.contains("echo Ironpool: "),
            "explains itself:\n{}",
            r.script
        );
        let lines: Vec<&str> = r.script.lines().collect();
        for line in must {
            // "~text" must appear inside some line; anything else is a whole line.
            let found = match line.strip_prefix('~') {
                Some(part) => lines.iter().any(|l| l.contains(part)),
                None => lines.contains(&line.as_str()),
            };
            assert!(found, "missing line {line:?} in\n{}", r.script);
        }
        for word in must_not {
            let code: Vec<_> = lines.iter().filter(|l| !l.starts_with("echo")).collect();
            assert!(
                !code.iter().any(|l| l.contains(word)),
                "unexpected {word:?} in\n{}",
                r.script
            );
        }
        assert_eq!(r.summary, summary);
    }
}

#[test]
fn other_architectures_get_their_own_assets() {
    let mut m = machine(
        BootMode::Uefi,
        Some((BootTarget::Ramdisk, BootPurpose::Commission, 2)),
    );
    m.architecture = Architecture::Aarch64;
    let r = render_script(&cfg(), &keys(), &MAC, Some(&m));
    assert!(
        r.script
            .contains("kernel http://10.20.0.2:8080/assets/aarch64/vmlinuz?mac=3c-ec-ef-12-34-56 ")
    );
    assert!(
        r.script.contains(
            "initrd http://10.20.0.2:8080/assets/aarch64/initramfs?mac=3c-ec-ef-12-34-56\n"
        )
    );
}

#[test]
fn bad_config_is_refused_with_advice() {
    for bad in ["10.0.0.1:8080", "http://", "http://a b", "http://x/${evil}"] {
        let err = ScriptConfig::new(bad, "").unwrap_err().to_string();
        assert!(err.contains("e.g. http://"), "{bad}: {err}");
    }
    assert!(ScriptConfig::new("http://x", "a\"b").is_err());
    assert_eq!(
        ScriptConfig::new("http://x:1/", "").unwrap().base_url(),
        "http://x:1"
    );
}
