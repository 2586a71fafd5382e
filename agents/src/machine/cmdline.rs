//! The `ironpool.*` arguments the iPXE script passes on the kernel command line.

use ironpool_crds::machine::BootPurpose;

use super::MachineError;
use crate::dhcp::MacAddr;

/// What the ramdisk learns from `/proc/cmdline`.
#[derive(Clone, Debug, PartialEq)]
pub struct BootArgs {
    /// `ironpool.url=`: the network agent's base URL, e.g. `http://10.20.0.5:8080`.
    pub url: String,
    /// `ironpool.token=`: the bearer token for this MAC and attempt.
    pub token: String,
    /// `ironpool.mac=`: the boot MAC.
    pub mac: MacAddr,
    /// `ironpool.purpose=`: Enlist, Commission, Deploy, Erase or Rescue.
    pub purpose: BootPurpose,
    /// `ironpool.attempt=`: the boot intent attempt (0 while enlisting).
    pub attempt: i64,
}

/// Parses the `ironpool.*` arguments out of a kernel command line; other arguments are
/// ignored. Every missing or malformed argument is named in the error.
pub fn parse(cmdline: &str) -> Result<BootArgs, MachineError> {
    let get = |key: &str| {
        cmdline
            .split_ascii_whitespace()
            .filter_map(|arg| arg.strip_prefix(key))
            .next_back()
    };
    let missing = |key: &str| {
        MachineError::Cmdline(format!(
            "no {key}<value>; this ramdisk must be booted by the Ironpool agent's iPXE script"
        ))
    };
    let url = get("ironpool.url=").ok_or_else(|| missing("ironpool.url="))?;
    if !url.starts_with("http://") {
        return Err(MachineError::Cmdline(format!(
            "ironpool.url={url} is not an http:// URL"
        )));
    }
    let token = get("ironpool.token=").ok_or_else(|| missing("ironpool.token="))?;
    if token.is_empty() {
        return Err(missing("ironpool.token="));
    }
    let mac_text = get("ironpool.mac=").ok_or_else(|| missing("ironpool.mac="))?;
    let mac = mac_text.parse::<MacAddr>().map_err(|_| {
        MachineError::Cmdline(format!("ironpool.mac={mac_text} is not a MAC address"))
    })?;
    let purpose_text = get("ironpool.purpose=").ok_or_else(|| missing("ironpool.purpose="))?;
    let purpose = match purpose_text {
        "Enlist" => BootPurpose::Enlist,
        "Commission" => BootPurpose::Commission,
        "Deploy" => BootPurpose::Deploy,
        "Erase" => BootPurpose::Erase,
        "Rescue" => BootPurpose::Rescue,
        other => {
            return Err(MachineError::Cmdline(format!(
                "ironpool.purpose={other} is not Enlist, Commission, Deploy, Erase or Rescue"
            )));
        }
    };
    let attempt_text = get("ironpool.attempt=").ok_or_else(|| missing("ironpool.attempt="))?;
    let attempt = attempt_text
        .parse::<i64>()
        .ok()
        .filter(|a| *a >= 0)
        .ok_or_else(|| {
            MachineError::Cmdline(format!(
                "ironpool.attempt={attempt_text} is not a non-negative integer"
            ))
        })?;
    Ok(BootArgs {
        url: url.trim_end_matches('/').to_string(),
        token: token.to_string(),
        mac,
        purpose,
        attempt,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "BOOT_IMAGE=vmlinuz initrd=initramfs ironpool.url=http://10.0.2.2:8080/ \
        ironpool.token=abc-_123 ironpool.mac=52:54:00:12:34:56 ironpool.purpose=Deploy \
        ironpool.attempt=3 console=ttyS0";

    #[test]
    fn parses_the_agent_arguments() {
        let args = parse(LINE).unwrap();
        assert_eq!(args.url, "http://10.0.2.2:8080");
        assert_eq!(args.token, "abc-_123");
        assert_eq!(args.mac.to_string(), "52:54:00:12:34:56");
        assert_eq!(args.purpose, BootPurpose::Deploy);
        assert_eq!(args.attempt, 3);
    }

    #[test]
    fn names_what_is_missing_or_wrong() {
        for (from, to, want) in [
            ("ironpool.token=abc-_123 ", "", "no ironpool.token="),
            (
                "ironpool.url=http://10.0.2.2:8080/",
                "ironpool.url=ftp://x",
                "not an http://",
            ),
            (
                "ironpool.mac=52:54:00:12:34:56",
                "ironpool.mac=52:54",
                "not a MAC",
            ),
            (
                "ironpool.purpose=Deploy",
                "ironpool.purpose=Run",
                "not Enlist",
            ),
            ("ironpool.attempt=3", "ironpool.attempt=-1", "non-negative"),
            ("ironpool.attempt=3", "", "no ironpool.attempt="),
        ] {
            assert!(LINE.contains(from), "{from}");
            let err = parse(&LINE.replace(from, to)).unwrap_err().to_string();
            assert!(err.contains(want), "{from} -> {to}: {err}");
        }
    }
}
