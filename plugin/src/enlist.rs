//! `kubectl ironpool enlist --mac MAC [--bmc URL ...]`: a server the operator should
//! commission, as a new Machine; or, when the agent has already enlisted that MAC (an
//! `enlisted-<mac>` Machine with no BMC), that Machine gets the BMC. The apiserver validates
//! everything (the MAC, the BMC URL) and its message is passed on.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use ironpool_crds::Machine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::output::{Format, structured};

/// `enlist` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The MAC address the server PXE-boots from.
    #[arg(long)]
    pub mac: String,
    /// Machine name (default: enlisted-<mac>, as the agent names what it enlists).
    #[arg(long)]
    pub name: Option<String>,
    /// BMC URL: redfish://, redfish+http(s)://, or ipmi://host[:port].
    #[arg(long)]
    pub bmc: Option<String>,
    /// Existing Secret with the BMC `username` and `password`.
    #[arg(long, conflicts_with = "bmc_username")]
    pub bmc_secret: Option<String>,
    /// BMC user name; the password is read from stdin, and a Secret <name>-bmc is created.
    #[arg(long, requires = "bmc")]
    pub bmc_username: Option<String>,
    /// Accept any TLS certificate from a Redfish BMC.
    #[arg(long)]
    pub insecure_skip_verify: bool,
    /// UEFI or BIOS.
    #[arg(long, default_value = "UEFI")]
    pub boot_mode: String,
    /// x86_64 or aarch64.
    #[arg(long, default_value = "x86_64")]
    pub arch: String,
    /// Labels, key=value (repeatable), e.g. for Deployments' machineSelector.
    #[arg(long = "label", short = 'l')]
    pub labels: Vec<String>,
}

/// The agent's name for a machine it enlists from its MAC.
pub fn default_name(mac: &str) -> String {
    format!("enlisted-{}", mac.to_ascii_lowercase().replace(':', "-"))
}

fn labels(args: &Args) -> anyhow::Result<BTreeMap<String, String>> {
    args.labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--label {l}: expected key=value"))
        })
        .collect()
}

/// Creates (or completes) the Machine.
pub async fn run(
    client: &Client,
    ns: &str,
    args: &Args,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(|| default_name(&args.mac));
    let labels = labels(args)?;
    if args.bmc.is_some() && args.bmc_secret.is_none() && args.bmc_username.is_none() {
        anyhow::bail!(
            "--bmc needs credentials: --bmc-secret NAME, or --bmc-username USER with the password on stdin"
        );
    }
    let secret_name = match (&args.bmc_secret, &args.bmc_username) {
        (Some(s), _) => Some(s.clone()),
        (None, Some(_)) => Some(format!("{name}-bmc")),
        _ => None,
    };
    let bmc = args.bmc.as_ref().map(|address| {
        json!({"address": address, "credentialsSecretRef": {"name": secret_name},
               "insecureSkipVerify": args.insecure_skip_verify})
    });
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    // The same server under another name: complete the agent's enlistment, or refuse.
    let existing = machines
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|m| m.spec.boot_mac_address.eq_ignore_ascii_case(&args.mac));
    if let Some(m) = &existing
        && (m.spec.bmc.is_some() || bmc.is_none())
    {
        anyhow::bail!(
            "MAC {} is Machine {} already{}: `kubectl edit bmm {} -n {ns}` changes it",
            args.mac,
            m.name_any(),
            m.spec
                .bmc
                .as_ref()
                .map_or(String::new(), |b| format!(" (BMC {})", b.address)),
            m.name_any()
        );
    }
    if let Some(user) = &args.bmc_username {
        let mut password = String::new();
        std::io::stdin().read_to_string(&mut password)?;
        let password = password.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            anyhow::bail!("--bmc-username {user}: give the BMC password on stdin");
        }
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: secret_name.clone(),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([
                ("username".to_string(), ByteString(user.as_bytes().to_vec())),
                (
                    "password".to_string(),
                    ByteString(password.as_bytes().to_vec()),
                ),
            ])),
            ..Default::default()
        };
        let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot create the BMC credentials Secret {}: {e}",
                    secret_name.clone().unwrap_or_default()
                )
            })?;
    }
    let made = match existing {
        Some(m) => {
            let patch = json!({"spec": {"bmc": bmc}});
            let made = machines
                .patch(
                    &m.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot set the BMC of Machine {}: {e}", m.name_any())
                })?;
            if !structured(format, &made, out)? {
                writeln!(
                    out,
                    "machine {}: BMC set; the operator commissions it now",
                    made.name_any()
                )?;
            }
            return Ok(());
        }
        None => {
            let machine: Machine = serde_json::from_value(json!({
                "apiVersion": "metal.ironpool.dev/v1alpha1", "kind": "Machine",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"bootMACAddress": args.mac, "bootMode": args.boot_mode,
                         "architecture": args.arch, "bmc": bmc},
            }))
            .map_err(|e| {
                anyhow::anyhow!("{e} (--boot-mode is UEFI or BIOS, --arch x86_64 or aarch64)")
            })?;
            machines
                .create(&PostParams::default(), &machine)
                .await
                .map_err(|e| anyhow::anyhow!("cannot create Machine {name}: {e}"))?
        }
    };
    if !structured(format, &made, out)? {
        let next = if made.spec.bmc.is_some() {
            "the operator commissions it now"
        } else {
            "power it on to PXE-boot, or give it a BMC (`kubectl ironpool enlist --mac ... --bmc ...` again)"
        };
        writeln!(out, "machine {} enlisted; {next}", made.name_any())?;
    }
    Ok(())
}
