//! Finding the machine a verb names.

use ironpool_crds::Machine;
use kube::{Api, Client};

/// Machine `name` in `ns`, or an error that says how to list the machines there.
pub async fn machine(client: &Client, ns: &str, name: &str) -> anyhow::Result<Machine> {
    let machines: Api<Machine> = Api::namespaced(client.clone(), ns);
    machines.get_opt(name).await?.ok_or_else(|| {
        anyhow::anyhow!(
            "machine {name} not found in namespace {ns}: `kubectl get bmm -n {ns}` lists the \
             machines there (or pass -n)"
        )
    })
}
