//! Rescue mode: the ramdisk admits the plan's SSH keys as root and starts the SSH server
//! (dropbear, shipped in the ramdisk), so a person can repair a Deployed or Broken server
//! with its disks as they are. Nothing here opens a disk: the inventory is not even taken.
//! The result names the address to log in to; the server stays in the ramdisk until the
//! operator boots it elsewhere.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::MachineError;

/// The SSH server in the ramdisk.
pub const DROPBEAR: &str = "usr/sbin/dropbear";
/// Where the ramdisk's DHCP script writes the boot NIC's address.
pub const ADDRESS_FILE: &str = "run/ironpool/address";
/// The SSH port.
const PORT: u16 = 22;
/// How long to wait for the server to listen after it forked.
const LISTEN_WAIT: Duration = Duration::from_secs(20);

/// Writes `keys` as the root account's `authorized_keys` under `root` (`/` in the
/// ramdisk): its home directory and the `.ssh` in it mode 0700, the file 0600, one key per
/// line, as sshd and dropbear require. Returns the file's path.
pub fn install_keys(root: &Path, keys: &[String]) -> Result<PathBuf, MachineError> {
    let ssh = root.join("root/.ssh");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&ssh)
        .map_err(|e| MachineError::io(format!("creating {}", ssh.display()), &e))?;
    for dir in [root.join("root"), ssh.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| MachineError::io(format!("chmod 0700 {}", dir.display()), &e))?;
    }
    let path = ssh.join("authorized_keys");
    let mut text = String::new();
    for key in keys {
        // One line each: a key with a newline in it would admit a second, unchecked line.
        text.push_str(key.lines().next().unwrap_or_default().trim());
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| MachineError::io(format!("writing {}", path.display()), &e))?;
    f.write_all(text.as_bytes())
        .map_err(|e| MachineError::io(format!("writing {}", path.display()), &e))?;
    Ok(path)
}

/// The boot NIC's address as the DHCP script recorded it, if it did.
pub fn address(root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(root.join(ADDRESS_FILE)).ok()?;
    let ip = text.trim();
    (!ip.is_empty()).then(|| ip.to_string())
}

/// The result line for a rescue shell on `address` admitting `keys` keys.
pub fn summary(address: Option<&str>, keys: usize) -> String {
    let login = match address {
        Some(ip) => format!("ssh root@{ip}"),
        None => "ssh root@<the machine's DHCP address>".to_string(),
    };
    format!(
        "rescue shell ready: {login} ({keys} key{} admitted); the disks are untouched",
        if keys == 1 { "" } else { "s" }
    )
}

/// Installs the keys, starts dropbear in the background and waits until it listens.
pub fn start(keys: &[String], root: &Path) -> Result<String, MachineError> {
    if keys.is_empty() {
        return Err(MachineError::Io {
            what: "rescue".into(),
            message: "the plan admits no SSH key; set spec.rescue.sshAuthorizedKeys".into(),
        });
    }
    install_keys(root, keys)?;
    let dropbear = root.join(DROPBEAR);
    if !dropbear.exists() {
        return Err(MachineError::Io {
            what: "rescue".into(),
            message: format!(
                "this ramdisk has no SSH server at /{DROPBEAR}; rebuild it with \
                 boot-images/build.sh"
            ),
        });
    }
    std::fs::create_dir_all(root.join("etc/dropbear"))
        .map_err(|e| MachineError::io("creating /etc/dropbear", &e))?;
    // -R: host keys made on first use; -E: log to the console; forks into the background.
    let status = Command::new(&dropbear)
        .args([
            "-R",
            "-E",
            "-p",
            &PORT.to_string(),
            "-P",
            "/run/dropbear.pid",
        ])
        .status()
        .map_err(|e| MachineError::io(format!("starting {}", dropbear.display()), &e))?;
    if !status.success() {
        return Err(MachineError::Io {
            what: "rescue".into(),
            message: format!("dropbear exited with {status}; its reason is on the console"),
        });
    }
    let local = SocketAddr::from(([127, 0, 0, 1], PORT));
    let deadline = Instant::now() + LISTEN_WAIT;
    while TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_err() {
        if Instant::now() > deadline {
            return Err(MachineError::Io {
                what: "rescue".into(),
                message: format!(
                    "dropbear started but does not listen on port {PORT} after {}s",
                    LISTEN_WAIT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = summary(address(root).as_deref(), keys.len());
    tracing::info!("{summary}");
    Ok(summary)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn keys_are_installed_one_per_line_with_the_modes_ssh_requires() {
        let root = tempfile::tempdir().unwrap();
        let keys = vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop".to_string(),
            "ssh-rsa AAAAB3NzaC1yc2E=\nssh-ed25519 AAAAsmuggled".to_string(),
        ];
        let path = install_keys(root.path(), &keys).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE alice@laptop\nssh-rsa AAAAB3NzaC1yc2E=\n"
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.path().join("root/.ssh")), 0o700);
        assert_eq!(mode(&root.path().join("root")), 0o700);
        // Entering rescue again replaces the keys.
        install_keys(root.path(), &keys[..1]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    #[test]
    fn the_result_names_the_address_to_log_in_to() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            summary(address(root.path()).as_deref(), 1),
            "rescue shell ready: ssh root@<the machine's DHCP address> (1 key admitted); \
             the disks are untouched"
        );
        std::fs::create_dir_all(root.path().join("run/ironpool")).unwrap();
        std::fs::write(root.path().join(ADDRESS_FILE), "10.77.0.50\n").unwrap();
        assert_eq!(
            summary(address(root.path()).as_deref(), 2),
            "rescue shell ready: ssh root@10.77.0.50 (2 keys admitted); the disks are untouched"
        );
    }

    #[test]
    fn no_keys_or_no_server_is_refused_with_what_to_do() {
        let root = tempfile::tempdir().unwrap();
        let e = start(&[], root.path()).unwrap_err().to_string();
        assert!(e.contains("spec.rescue.sshAuthorizedKeys"), "{e}");
        let e = start(&["ssh-ed25519 AAAA".into()], root.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SSH server"), "{e}");
    }
}
