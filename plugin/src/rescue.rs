//! `kubectl ironpool rescue MACHINE [--ssh-key FILE]...` and `rescue --exit MACHINE`: rescue
//! mode written into the Machine's spec (`spec.rescue`). The operator boots the machine
//! into the ramdisk with an SSH server for those keys and its Ready condition names the
//! address; removing the field boots the deployed OS again (a Broken machine is powered
//! off). Nothing here talks to the machine.

use std::io::Write;
use std::path::{Path, PathBuf};

use ironpool_crds::Machine;
use ironpool_crds::machine::MachinePhase;
use kube::Client;
use serde_json::json;

use crate::output::{Format, structured};
use crate::power::Requested;

/// Public keys tried, in order, when no `--ssh-key` is given.
const DEFAULT_KEYS: [&str; 3] = ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"];

/// `rescue` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Machine name.
    pub machine: String,
    /// Public key file admitted as root; repeat for more. Default: the first of
    /// ~/.ssh/id_ed25519.pub, id_ecdsa.pub and id_rsa.pub that exists.
    #[arg(long = "ssh-key", value_name = "FILE")]
    pub ssh_keys: Vec<PathBuf>,
    /// Leave rescue mode (removes spec.rescue): the deployed OS boots again.
    #[arg(long, conflicts_with = "ssh_keys")]
    pub exit: bool,
}

/// The keys of the public key file `path`, one per non-empty line, or why it is not one.
pub fn read_keys(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read SSH public key {}: {e}", path.display()))?;
    if text.contains("PRIVATE KEY") {
        return Err(format!(
            "{} is a private key: pass the public one (usually the same name with .pub)",
            path.display()
        ));
    }
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect();
    let known = |k: &str| {
        ["ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-nistp", "sk-"]
            .iter()
            .any(|p| k.starts_with(p))
    };
    match keys.iter().find(|k| !known(k)) {
        _ if keys.is_empty() => Err(format!("{} has no SSH public key in it", path.display())),
        Some(bad) => Err(format!(
            "{} does not read as an SSH public key (a line starts with '{}'; it should start \
             with ssh-ed25519, ssh-rsa or ecdsa-sha2-...)",
            path.display(),
            bad.chars().take(20).collect::<String>()
        )),
        None => Ok(keys),
    }
}

/// The key files to use: those given, else the first default one in `ssh_dir` that exists.
pub fn key_files(given: &[PathBuf], ssh_dir: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    ssh_dir
        .and_then(|dir| {
            DEFAULT_KEYS
                .iter()
                .map(|f| dir.join(f))
                .find(|p| p.exists())
        })
        .map(|p| vec![p])
        .ok_or_else(|| {
            "no SSH public key found in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): \
             pass one with --ssh-key FILE, or make one with ssh-keygen -t ed25519"
                .to_string()
        })
}

/// The spec change that puts `m` into rescue mode for `keys` (or takes it out, when `keys`
/// is None), or why it cannot be asked.
pub fn request(m: &Machine, keys: Option<&[String]>) -> Result<serde_json::Value, String> {
    let name = m.metadata.name.as_deref().unwrap_or("?");
    let phase = m
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or(MachinePhase::New);
    let Some(keys) = keys else {
        return if m.spec.wants_rescue() {
            Ok(json!({"spec": {"rescue": null}}))
        } else {
            Err(format!(
                "machine {name} is not in rescue mode (it has no spec.rescue); \
                 `kubectl ironpool rescue {name}` puts it there"
            ))
        };
    };
    if m.spec.wants_rescue() {
        return Err(format!(
            "machine {name} is in rescue mode already; to change its keys, \
             `kubectl ironpool rescue --exit {name}` first"
        ));
    }
    if m.spec.bmc.is_none() {
        return Err(format!(
            "machine {name} has no BMC, so Ironpool cannot boot it into rescue: add spec.bmc \
             (`kubectl ironpool enlist --mac {} --bmc ...` fills it in)",
            m.spec.boot_mac_address
        ));
    }
    match phase {
        MachinePhase::Deployed | MachinePhase::Broken => {
            Ok(json!({"spec": {"rescue": {"sshAuthorizedKeys": keys}}}))
        }
        MachinePhase::Maintenance => Err(format!(
            "machine {name} is held for maintenance: Ironpool takes no action on it until \
             spec.maintenance is cleared"
        )),
        MachinePhase::Allocated | MachinePhase::Deploying | MachinePhase::Releasing => {
            Err(format!(
                "machine {name} is {}: rescue mode is for Deployed or Broken machines; wait \
                 until its work is done, or set spec.broken to stop it and rescue it then",
                phase.as_str()
            ))
        }
        _ => Err(format!(
            "machine {name} is {}: rescue mode is for Deployed or Broken machines (this one \
             has no deployed OS to repair); mark it broken (spec.broken: true) to rescue it \
             anyway",
            phase.as_str()
        )),
    }
}

/// Writes the request into the machine's spec.
pub async fn run(
    client: &Client,
    ns: &str,
    args: &Args,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let name = &args.machine;
    let keys = if args.exit {
        None
    } else {
        let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh"));
        let files = key_files(&args.ssh_keys, home.as_deref()).map_err(anyhow::Error::msg)?;
        let mut keys = Vec::new();
        for f in &files {
            keys.extend(read_keys(f).map_err(anyhow::Error::msg)?);
        }
        Some(keys)
    };
    let m = crate::lookup::machine(client, ns, name).await?;
    let patch = request(&m, keys.as_deref()).map_err(anyhow::Error::msg)?;
    crate::lookup::patch_machine(client, ns, name, &patch).await?;
    let action = if args.exit { "exit-rescue" } else { "rescue" };
    let result = Requested::new(name, action, patch);
    if !structured(format, &result, out)? {
        match &keys {
            Some(k) => writeln!(
                out,
                "machine {name}: booting into rescue mode with {} SSH key{} (spec.rescue); \
                 `kubectl get bmm {name} -o wide -w` shows REASON Rescue, and \
                 `kubectl ironpool describe {name}` the address to ssh root@",
                k.len(),
                if k.len() == 1 { "" } else { "s" }
            )?,
            None => writeln!(
                out,
                "machine {name}: leaving rescue mode; it boots its deployed OS again \
                 (a Broken machine is powered off)"
            )?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use ironpool_crds::machine::Rescue;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk alice@laptop";

    fn machine(phase: MachinePhase, bmc: bool, rescue: bool) -> Machine {
        let mut m = crate::lookup::test_machine(phase, bmc);
        m.spec.rescue = rescue.then(|| Rescue {
            ssh_authorized_keys: vec![KEY.into()],
        });
        m
    }

    #[test]
    fn deployed_and_broken_machines_enter_rescue_others_say_why_not() {
        let keys = vec![KEY.to_string()];
        for phase in [MachinePhase::Deployed, MachinePhase::Broken] {
            assert_eq!(
                request(&machine(phase, true, false), Some(&keys)).unwrap(),
                json!({"spec": {"rescue": {"sshAuthorizedKeys": [KEY]}}})
            );
        }
        let says = |phase, bmc, rescue, keys: Option<&[String]>, what: &str| {
            let e = request(&machine(phase, bmc, rescue), keys).unwrap_err();
            assert!(e.contains(what), "{e}");
        };
        says(
            MachinePhase::Ready,
            true,
            false,
            Some(&keys),
            "no deployed OS",
        );
        says(
            MachinePhase::Deploying,
            true,
            false,
            Some(&keys),
            "wait until",
        );
        says(
            MachinePhase::Maintenance,
            true,
            false,
            Some(&keys),
            "spec.maintenance",
        );
        says(
            MachinePhase::Deployed,
            false,
            false,
            Some(&keys),
            "has no BMC",
        );
        says(
            MachinePhase::Deployed,
            true,
            true,
            Some(&keys),
            "rescue --exit m1",
        );
        says(
            MachinePhase::Deployed,
            true,
            false,
            None,
            "not in rescue mode",
        );
        assert_eq!(
            request(&machine(MachinePhase::Deployed, true, true), None).unwrap(),
            json!({"spec": {"rescue": null}})
        );
    }

    #[test]
    fn key_files_are_read_and_private_keys_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = key_files(&[], Some(dir.path())).unwrap_err();
        assert!(e.contains("--ssh-key FILE"), "{e}");
        std::fs::write(dir.path().join("id_rsa.pub"), "ssh-rsa AAAAB3Nza bob@x\n").unwrap();
        std::fs::write(
            dir.path().join("id_ed25519.pub"),
            format!("# mine\n{KEY}\n\n"),
        )
        .unwrap();
        let files = key_files(&[], Some(dir.path())).unwrap();
        assert_eq!(files, vec![dir.path().join("id_ed25519.pub")]);
        assert_eq!(read_keys(&files[0]).unwrap(), vec![KEY.to_string()]);
        let private = dir.path().join("id_ed25519");
        std::fs::write(&private, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n").unwrap();
        assert!(
            read_keys(&private)
                .unwrap_err()
                .contains("is a private key")
        );
        let junk = dir.path().join("junk.pub");
        std::fs::write(&junk, "hello world\n").unwrap();
        assert!(
            read_keys(&junk)
                .unwrap_err()
                .contains("does not read as an SSH public key")
        );
        assert!(read_keys(&dir.path().join("missing.pub")).is_err());
    }
}
