//! Network boot decisions: which kind of boot client sent a request (legacy PXE firmware,
//! UEFI PXE, UEFI HTTP boot, or iPXE already running) and which file or URL it gets.

use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, OptionCode};

use super::MacAddr;
use super::config::BootConfig;

/// Processor/firmware family from option 93 (RFC 4578, IANA registry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// 0: x86 legacy BIOS.
    Bios,
    /// 7, 9 (PXE) and 16 (HTTP): x86-64 UEFI.
    UefiX64,
    /// 11 (PXE) and 19 (HTTP): arm64 UEFI.
    UefiArm64,
    /// Anything else.
    Other(u16),
}

impl Arch {
    /// Maps an option 93 code.
    pub fn from_code(code: u16) -> Arch {
        match code {
            0 => Arch::Bios,
            7 | 9 | 16 => Arch::UefiX64,
            11 | 19 => Arch::UefiArm64,
            n => Arch::Other(n),
        }
    }

    /// Option 93 of `msg`, if present.
    pub fn of(msg: &Message) -> Option<Arch> {
        match msg.opts().get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(Arch::from_code(u16::from(*a))),
            _ => None,
        }
    }
}

/// What kind of boot client a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootClient {
    /// No sign of network boot: an OS's DHCP client.
    Plain,
    /// iPXE is running (user class "iPXE" or option 175): it gets its script over HTTP.
    Ipxe,
    /// PXE firmware (vendor class `PXEClient`): it gets an iPXE binary over TFTP.
    Pxe(Arch),
    /// UEFI HTTP boot (vendor class `HTTPClient`): it gets an HTTP URL of an iPXE binary.
    Http(Arch),
}

/// The boot answer for a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootAnswer {
    /// Boot file name (BOOTP `file` and option 67): a TFTP path or an HTTP URL.
    pub filename: String,
    /// next-server (siaddr) for TFTP.
    pub next_server: Option<Ipv4Addr>,
    /// Option 60 to echo (`HTTPClient` for UEFI HTTP boot).
    pub vendor_class: Option<&'static str>,
    /// Short description for the boot flight recorder.
    pub detail: String,
}

/// Option 175 (iPXE's encapsulated options) is sent only by iPXE.
const IPXE_ENCAPSULATED: u8 = 175;

/// Tells the boot client kind from options 60, 77, 93 and 175.
pub fn classify(msg: &Message) -> BootClient {
    let opts = msg.opts();
    let ipxe_user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(raw)) => is_ipxe_user_class(raw),
        _ => false,
    };
    if ipxe_user_class || opts.get(OptionCode::Unknown(IPXE_ENCAPSULATED)).is_some() {
        return BootClient::Ipxe;
    }
    let arch = Arch::of(msg);
    let class = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(c)) => c.as_slice(),
        _ => &[],
    };
    if class.starts_with(b"HTTPClient") {
        BootClient::Http(arch.unwrap_or(Arch::UefiX64))
    } else if class.starts_with(b"PXEClient") {
        BootClient::Pxe(arch.unwrap_or(Arch::Bios))
    } else {
        BootClient::Plain
    }
}

/// Option 77 as iPXE sends it: the raw bytes `iPXE`, or RFC 3004 length-prefixed classes
/// one of which is `iPXE`.
fn is_ipxe_user_class(raw: &[u8]) -> bool {
    if raw == b"iPXE" {
        return true;
    }
    let mut rest = raw;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        let Some(class) = tail.get(..len) else {
            return false;
        };
        if class == b"iPXE" {
            return true;
        }
        rest = &tail[len..];
    }
    false
}

/// The boot file or URL for `client`; `None` for plain DHCP clients and unknown
/// architectures.
pub fn answer(
    client: BootClient,
    mac: &MacAddr,
    boot: &BootConfig,
    server: Ipv4Addr,
) -> Option<BootAnswer> {
    match client {
        BootClient::Plain => None,
        BootClient::Ipxe => {
            let url = format!("{}/boot/{}.ipxe", boot.http_base, mac.dashed());
            Some(BootAnswer {
                detail: format!("iPXE script {url}"),
                filename: url,
                next_server: None,
                vendor_class: None,
            })
        }
        BootClient::Pxe(arch) => {
            let file = match arch {
                Arch::Bios => &boot.bios_file,
                Arch::UefiX64 => &boot.uefi_x64_file,
                Arch::UefiArm64 => &boot.uefi_arm64_file,
                Arch::Other(_) => return None,
            };
            Some(BootAnswer {
                detail: format!("{file} over TFTP"),
                filename: file.clone(),
                next_server: Some(server),
                vendor_class: None,
            })
        }
        BootClient::Http(arch) => {
            let file = match arch {
                Arch::UefiX64 => &boot.uefi_x64_file,
                Arch::UefiArm64 => &boot.uefi_arm64_file,
                Arch::Bios | Arch::Other(_) => return None,
            };
            // The MAC in the path makes the download a flight-recorder step for it.
            let url = format!("{}/boot/{}/{file}", boot.http_base, mac.dashed());
            Some(BootAnswer {
                detail: format!("{file} over HTTP boot"),
                filename: url,
                next_server: None,
                vendor_class: Some("HTTPClient"),
            })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::type_complexity)]
mod tests {
    use super::*;
    use dhcproto::v4::Architecture;

    fn msg(opts: Vec<DhcpOption>) -> Message {
        let mut m = Message::default();
        for o in opts {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn classifies_and_answers_by_table() {
        let mac = MacAddr([0x3c, 0xec, 0xef, 0x12, 0x34, 0x56]);
        let boot = BootConfig::new("http://10.0.0.1:8080");
        let srv = Ipv4Addr::new(10, 0, 0, 1);
        let pxe = |a: u16| {
            vec![
                DhcpOption::ClassIdentifier(
                    format!("PXEClient:Arch:{a:05}:UNDI:002001").into_bytes(),
                ),
                DhcpOption::ClientSystemArchitecture(Architecture::from(a)),
            ]
        };
        let cases: Vec<(&str, Vec<DhcpOption>, BootClient, Option<&str>)> = vec![
            ("plain", vec![], BootClient::Plain, None),
            (
                "bios",
                pxe(0),
                BootClient::Pxe(Arch::Bios),
                Some("undionly.kpxe"),
            ),
            (
                "uefi bc",
                pxe(7),
                BootClient::Pxe(Arch::UefiX64),
                Some("ipxe.efi"),
            ),
            (
                "uefi x64",
                pxe(9),
                BootClient::Pxe(Arch::UefiX64),
                Some("ipxe.efi"),
            ),
            (
                "arm64",
                pxe(11),
                BootClient::Pxe(Arch::UefiArm64),
                Some("ipxe-arm64.efi"),
            ),
            (
                "unknown arch",
                pxe(2),
                BootClient::Pxe(Arch::Other(2)),
                None,
            ),
            (
                "ipxe raw user class",
                [pxe(0), vec![DhcpOption::UserClass(b"iPXE".to_vec())]].concat(),
                BootClient::Ipxe,
                Some("http://10.0.0.1:8080/boot/3c-ec-ef-12-34-56.ipxe"),
            ),
            (
                "ipxe rfc3004 user class",
                vec![DhcpOption::UserClass(b"\x03foo\x04iPXE".to_vec())],
                BootClient::Ipxe,
                Some("http://10.0.0.1:8080/boot/3c-ec-ef-12-34-56.ipxe"),
            ),
            (
                "ipxe option 175",
                [
                    pxe(7),
                    vec![DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                        175.into(),
                        vec![1, 1, 1],
                    ))],
                ]
                .concat(),
                BootClient::Ipxe,
                Some("http://10.0.0.1:8080/boot/3c-ec-ef-12-34-56.ipxe"),
            ),
            (
                "http boot",
                vec![
                    DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()),
                    DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
                ],
                BootClient::Http(Arch::UefiX64),
                Some("http://10.0.0.1:8080/boot/3c-ec-ef-12-34-56/ipxe.efi"),
            ),
        ];
        for (name, opts, kind, file) in cases {
            let m = msg(opts);
            assert_eq!(classify(&m), kind, "{name}");
            let a = answer(kind, &mac, &boot, srv);
            assert_eq!(a.as_ref().map(|a| a.filename.as_str()), file, "{name}");
            if let Some(a) = a {
                assert_eq!(
                    a.next_server.is_some(),
                    matches!(kind, BootClient::Pxe(_)),
                    "{name}"
                );
                assert_eq!(
                    a.vendor_class.is_some(),
                    matches!(kind, BootClient::Http(_)),
                    "{name}"
                );
            }
        }
    }
}
