//! The machine agent: the program that runs inside the boot ramdisk. It reads its agent URL
//! and token from the kernel command line ([`cmdline`]), takes the hardware inventory from
//! `/proc` and `/sys` ([`inventory`]), asks the network agent for its plan and carries it
//! out: erase disks ([`erase`]) or stream an image (raw or qcow2, [`qcow2`]) onto the root
//! disk chosen by the root-device hints ([`disks`], [`image`]), verifying the checksum while
//! writing and reporting progress every second, then reports the result ([`run`]). In
//! rescue mode it starts an SSH server instead and touches no disk ([`rescue`]).
//!
//! Parsing and decisions are pure and tested with fixtures; [`client`] (a small blocking
//! HTTP/1.1 client over `std::net`, plain http only: the agent URL is on the provisioning
//! LAN) and the device writes are the only I/O. It is built as a static
//! `x86_64-unknown-linux-musl` binary by `boot-images/build.sh`.

pub mod client;
pub mod cmdline;
pub mod disks;
pub mod erase;
pub mod firstboot;
pub mod image;
pub mod inventory;
pub mod nvme;
pub mod partition;
pub mod qcow2;
pub mod rescue;
pub mod run;
pub mod seed;

pub use cmdline::BootArgs;

/// Everything that can go wrong in the machine agent; each message says what happened and,
/// where it can, what to do.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The kernel command line lacks or garbles an `ironpool.*` argument.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Talking to the network agent failed.
    #[error("agent {url}: {message}")]
    Http {
        /// The URL called.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The image is not what the plan promised (checksum, format, size).
    #[error("image: {0}")]
    Image(String),
    /// No disk fits the root-device hints (or the image).
    #[error("root disk: {0}")]
    NoDisk(String),
    /// The image's bytes do not hash to the Deployment's checksum (seen by the ramdisk or
    /// by the agent's image cache): another boot would fail the same way.
    #[error("image: {0}")]
    ChecksumMismatch(String),
    /// Reading or writing a device or file failed.
    #[error("{what}: {message}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        message: String,
    },
}

impl MachineError {
    /// The failure as the result reports it, when retrying cannot fix it.
    pub fn reason(&self) -> Option<ironpool_crds::machine::FailureReason> {
        use ironpool_crds::machine::FailureReason;
        match self {
            MachineError::NoDisk(_) => Some(FailureReason::NoMatchingDisk),
            MachineError::ChecksumMismatch(_) => Some(FailureReason::ChecksumMismatch),
            _ => None,
        }
    }

    /// A [`MachineError::Io`] from an I/O error and what was being done.
    pub fn io(what: impl Into<String>, err: &std::io::Error) -> Self {
        MachineError::Io {
            what: what.into(),
            message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use ironpool_crds::machine::FailureReason;

    use super::MachineError;

    #[test]
    fn only_failures_a_retry_cannot_fix_carry_a_reason() {
        let cases = [
            (
                MachineError::ChecksumMismatch("x".into()),
                Some(FailureReason::ChecksumMismatch),
            ),
            (
                MachineError::NoDisk("x".into()),
                Some(FailureReason::NoMatchingDisk),
            ),
            (MachineError::Image("truncated".into()), None),
            (
                MachineError::Http {
                    url: "u".into(),
                    message: "HTTP 500".into(),
                },
                None,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want, "{e}");
        }
    }
}
