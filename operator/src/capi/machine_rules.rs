//! What an IronpoolMachine needs next, as a pure function of what the controller observed:
//! its CAPI Machine and Cluster, the bootstrap data, and the Deployment that carries it.
//! The controller (`machine_controller.rs`) gathers the inputs and carries out the one
//! action decided; every reason a person may read is written here.

use std::collections::BTreeMap;

use ironpool_crds::capi::{
    BLOCK_MOVE_ANNOTATION, CLUSTER_NAME_LABEL, Initialization, IronpoolMachine,
    IronpoolMachineStatus, MachineAddress, MachineAddressType, PAUSED_ANNOTATION,
    REMEDIATED_ANNOTATION, condition::PAUSED, provider_id,
};
use ironpool_crds::conditions::{self, READY, Status};
use ironpool_crds::deployment::{DeploymentPhase, DeploymentSpec, MachineSelector};
use ironpool_crds::{DataSecretRef, Deployment, LocalObjectRef, Machine};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use kube::{Resource, ResourceExt};

use super::types::{CapiCluster, CapiMachine};

/// Finalizer that keeps an IronpoolMachine until its server is released.
pub const FINALIZER: &str = "infrastructure.cluster.x-k8s.io/ironpool-machine";
/// Label on the Deployment naming the IronpoolMachine it carries.
pub const IRONPOOL_MACHINE_LABEL: &str = "infrastructure.cluster.x-k8s.io/ironpool-machine";
/// The key of a Cluster API bootstrap Secret that holds the data.
pub const BOOTSTRAP_VALUE_KEY: &str = "value";

/// What the controller found of the Machine's bootstrap data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootstrapData {
    /// Not looked at: the Deployment exists already, or the Machine names no Secret.
    NotRead,
    /// The Machine names this Secret, and it does not exist.
    Missing(String),
    /// The Secret exists but has no `value`.
    NoValue(String),
    /// The Secret holds Ignition (`format: ignition`), which Ironpool cannot write.
    Ignition(String),
    /// The Secret holds cloud-config in `value`.
    Ready(String),
}

/// The Deployment named like the IronpoolMachine, as found.
#[derive(Clone, Copy, Debug)]
pub enum Carrier<'a> {
    /// No such Deployment.
    Absent,
    /// One exists that this IronpoolMachine does not own.
    NotOurs,
    /// Ours.
    Ours(&'a Deployment),
}

/// Everything the decision looks at.
pub struct Observed<'a> {
    /// The IronpoolMachine.
    pub im: &'a IronpoolMachine,
    /// Its owner, the Cluster API Machine.
    pub owner: Option<&'a CapiMachine>,
    /// The Cluster it belongs to.
    pub cluster: Option<&'a CapiCluster>,
    /// The bootstrap data, when it had to be read.
    pub bootstrap: BootstrapData,
    /// The Deployment carrying it.
    pub deployment: Carrier<'a>,
    /// The server the Deployment was allocated, if any.
    pub server: Option<&'a Machine>,
    /// The Machine label whose values are failure domains.
    pub failure_domain_label: &'a str,
    /// Now, for condition transition times.
    pub now: Time,
}

/// The one thing to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Act {
    /// Only the status (if it changed).
    Nothing,
    /// Add [`FINALIZER`].
    AddFinalizer,
    /// Create this Deployment.
    CreateDeployment(Box<Deployment>),
    /// Set spec.providerID to this.
    SetProviderId(String),
    /// Annotate the server with [`REMEDIATED_ANNOTATION`] (this note), before it is
    /// released, so that the replacement is placed elsewhere.
    MarkRemediated {
        /// The server (Ironpool Machine).
        server: String,
        /// The annotation's value.
        note: String,
    },
    /// Delete the Deployment (the server is released and erased).
    DeleteDeployment,
    /// Clear old status backups from the Deployment and the server, and put
    /// [`BLOCK_MOVE_ANNOTATION`] on the IronpoolMachine: a clusterctl move waits until the
    /// backups it needs are written.
    ArmMove,
    /// Paused for a move: write the Deployment's and the server's status backups, then
    /// lift [`BLOCK_MOVE_ANNOTATION`].
    PrepareMove,
    /// Remove [`FINALIZER`]: the server is released.
    RemoveFinalizer,
}

/// The decision: an action and the status to write.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// What to do.
    pub act: Act,
    /// The status the IronpoolMachine should show.
    pub status: IronpoolMachineStatus,
}

/// Whether the IronpoolMachine or its Cluster is paused, and by what.
fn paused_by(o: &Observed<'_>) -> Option<String> {
    if o.im.annotations().contains_key(PAUSED_ANNOTATION) {
        return Some(format!(
            "annotation {PAUSED_ANNOTATION} is set on this IronpoolMachine; remove it to resume"
        ));
    }
    let c = o.cluster?;
    c.paused().then(|| {
        format!(
            "Cluster {} is paused (spec.paused, e.g. during clusterctl move); Ironpool changes \
             nothing until it is unpaused",
            c.name_any()
        )
    })
}

/// Decides the next step of `o.im`.
pub fn decide(o: &Observed<'_>) -> Decision {
    let im = o.im;
    let gen_ = im.metadata.generation;
    let mut status = carried_status(o);
    let ready = |status: &mut IronpoolMachineStatus, s: Status, reason: &str, msg: &str| {
        conditions::set(
            &mut status.conditions,
            READY,
            s,
            reason,
            msg,
            gen_,
            o.now.clone(),
        );
    };
    if let Some(why) = paused_by(o) {
        conditions::set(
            &mut status.conditions,
            PAUSED,
            Status::True,
            "Paused",
            &why,
            gen_,
            o.now.clone(),
        );
        let blocked = im.annotations().contains_key(BLOCK_MOVE_ANNOTATION);
        let act = match o.deployment {
            Carrier::Ours(_) if blocked => Act::PrepareMove,
            _ => Act::Nothing,
        };
        return Decision { act, status };
    }
    conditions::set(
        &mut status.conditions,
        PAUSED,
        Status::False,
        "NotPaused",
        "",
        gen_,
        o.now.clone(),
    );
    let finalized = im.finalizers().iter().any(|f| f == FINALIZER);
    if im.meta().deletion_timestamp.is_some() {
        if let Carrier::Ours(d) = o.deployment {
            mirror(o, d, &mut status);
        }
        let act = match o.deployment {
            Carrier::Ours(d) if d.meta().deletion_timestamp.is_none() => {
                remediation_note(o).unwrap_or(Act::DeleteDeployment)
            }
            Carrier::Ours(_) => Act::Nothing,
            Carrier::Absent | Carrier::NotOurs if finalized => Act::RemoveFinalizer,
            Carrier::Absent | Carrier::NotOurs => Act::Nothing,
        };
        let msg = match (&status.machine_ref, o.deployment) {
            (Some(m), Carrier::Ours(_)) => format!(
                "releasing server {}: Deployment {} is erasing it ({:?}) and returning it to \
                 the pool",
                m.name,
                im.name_any(),
                im.spec.erase
            ),
            (None, Carrier::Ours(_)) => format!("deleting Deployment {}", im.name_any()),
            _ => "server released".to_string(),
        };
        ready(&mut status, Status::False, "Deleting", &msg);
        return Decision { act, status };
    }
    if !finalized {
        ready(
            &mut status,
            Status::False,
            "Creating",
            "adding the release finalizer",
        );
        return Decision {
            act: Act::AddFinalizer,
            status,
        };
    }
    let Some(owner) = o.owner else {
        ready(
            &mut status,
            Status::False,
            "WaitingForMachineOwner",
            "waiting for Cluster API to set a Machine as owner; IronpoolMachines are made by \
             Cluster API from an IronpoolMachineTemplate, not by hand",
        );
        return Decision {
            act: Act::Nothing,
            status,
        };
    };
    let act = match o.deployment {
        Carrier::NotOurs => {
            ready(
                &mut status,
                Status::False,
                "DeploymentNameTaken",
                &format!(
                    "a Deployment named {} exists and is not owned by this IronpoolMachine; \
                     delete or rename it so Ironpool can create its own",
                    im.name_any()
                ),
            );
            Act::Nothing
        }
        Carrier::Absent => before_deployment(o, owner, &mut status),
        Carrier::Ours(d) => {
            mirror(o, d, &mut status);
            let armed = im.annotations().contains_key(BLOCK_MOVE_ANNOTATION);
            match (&status.machine_ref, &im.spec.provider_id) {
                (Some(m), None) => {
                    Act::SetProviderId(provider_id(&im.namespace().unwrap_or_default(), &m.name))
                }
                (Some(_), Some(_)) if !armed => Act::ArmMove,
                _ => Act::Nothing,
            }
        }
    };
    Decision { act, status }
}

/// When a MachineHealthCheck found the owner unhealthy and the server does not carry the
/// note yet: the annotation to put on it before it is released.
fn remediation_note(o: &Observed<'_>) -> Option<Act> {
    let why = o.owner?.unhealthy()?;
    let server = o.server?;
    let who = format!(
        "{}/{}",
        o.im.namespace().unwrap_or_default(),
        o.owner?.name_any()
    );
    if server
        .annotations()
        .get(REMEDIATED_ANNOTATION)
        .is_some_and(|v| v.contains(&who))
    {
        return None;
    }
    Some(Act::MarkRemediated {
        server: server.name_any(),
        note: format!("{} {who}: {why}", o.now.0),
    })
}

/// The status fields that survive every reconcile: provisioned never goes back to false.
fn carried_status(o: &Observed<'_>) -> IronpoolMachineStatus {
    let old = o.im.status.clone().unwrap_or_default();
    IronpoolMachineStatus {
        initialization: old.initialization.filter(|i| i.provisioned == Some(true)),
        conditions: old.conditions,
        observed_generation: o.im.metadata.generation,
        ..IronpoolMachineStatus::default()
    }
}

/// Before the Deployment exists: wait for the cluster and the bootstrap data, then make it.
fn before_deployment(o: &Observed<'_>, owner: &CapiMachine, st: &mut IronpoolMachineStatus) -> Act {
    let gen_ = o.im.metadata.generation;
    let mut wait = |reason: &str, msg: String| {
        st.phase = Some("WaitingForBootstrap".into());
        conditions::set(
            &mut st.conditions,
            READY,
            Status::False,
            reason,
            &msg,
            gen_,
            o.now.clone(),
        );
        Act::Nothing
    };
    let Some(cluster) = o.cluster else {
        return wait(
            "WaitingForCluster",
            format!(
                "Cluster {} of Machine {} does not exist",
                owner.spec.cluster_name,
                owner.name_any()
            ),
        );
    };
    if !cluster.infrastructure_provisioned() {
        return wait(
            "WaitingForClusterInfrastructure",
            format!(
                "waiting for Cluster {} to report its infrastructure provisioned (its \
                 IronpoolCluster's Ready condition says why it is not)",
                cluster.name_any()
            ),
        );
    }
    let machine = owner.name_any();
    match &o.bootstrap {
        BootstrapData::NotRead => wait(
            "WaitingForBootstrapData",
            format!(
                "waiting for the bootstrap provider to write Machine {machine}'s bootstrap \
                 data (spec.bootstrap.dataSecretName)"
            ),
        ),
        BootstrapData::Missing(s) => wait(
            "BootstrapDataMissing",
            format!(
                "Machine {machine} names bootstrap Secret {s}, which does not exist; the \
                 bootstrap provider (e.g. its KubeadmConfig) should create it"
            ),
        ),
        BootstrapData::NoValue(s) => wait(
            "BootstrapDataInvalid",
            format!(
                "bootstrap Secret {s} has no key '{BOOTSTRAP_VALUE_KEY}'; Cluster API \
                 bootstrap Secrets keep the data there: check the bootstrap provider"
            ),
        ),
        BootstrapData::Ignition(s) => wait(
            "BootstrapFormatUnsupported",
            format!(
                "bootstrap Secret {s} holds Ignition (format: ignition); Ironpool writes \
                 cloud-init NoCloud data: set the KubeadmConfig's spec.format to cloud-config"
            ),
        ),
        BootstrapData::Ready(s) => {
            let d = deployment_for(o.im, owner, s, o.failure_domain_label);
            st.phase = Some("Pending".into());
            st.deployment_ref = Some(LocalObjectRef::new(o.im.name_any()));
            conditions::set(
                &mut st.conditions,
                READY,
                Status::False,
                "Pending",
                &format!(
                    "creating Deployment {} with the bootstrap data of Secret {s}",
                    o.im.name_any()
                ),
                gen_,
                o.now.clone(),
            );
            Act::CreateDeployment(Box::new(d))
        }
    }
}

/// The Deployment that carries `im`: its image and server constraints, the bootstrap
/// Secret as user data, owned by `im` so that deleting `im` (or Cluster API's garbage
/// collection) releases the server.
pub fn deployment_for(
    im: &IronpoolMachine,
    owner: &CapiMachine,
    secret: &str,
    failure_domain_label: &str,
) -> Deployment {
    let mut selector = im.spec.host_selector.clone().unwrap_or(MachineSelector {
        ..Default::default()
    });
    if let Some(fd) = owner
        .spec
        .failure_domain
        .as_ref()
        .or(im.spec.failure_domain.as_ref())
    {
        selector
            .match_labels
            .insert(failure_domain_label.to_string(), fd.clone());
    }
    let hostname = Some(owner.name_any()).filter(|n| is_dns_label(n));
    let spec = DeploymentSpec {
        machine_selector: Some(selector),
        machine_ref: None,
        image: im.spec.image.clone(),
        user_data_secret_ref: Some(DataSecretRef {
            name: secret.to_string(),
            key: Some(BOOTSTRAP_VALUE_KEY.to_string()),
        }),
        network_data_secret_ref: im.spec.network_data_secret_ref.clone(),
        storage: im.spec.storage.clone(),
        hostname,
        subnet_ref: im.spec.subnet_ref.clone(),
        erase: im.spec.erase,
    };
    let mut d = Deployment::new(&im.name_any(), spec);
    d.metadata.namespace = im.namespace();
    let mut labels = BTreeMap::from([(IRONPOOL_MACHINE_LABEL.to_string(), im.name_any())]);
    if let Some(c) = im.labels().get(CLUSTER_NAME_LABEL) {
        labels.insert(CLUSTER_NAME_LABEL.to_string(), c.clone());
    }
    d.metadata.labels = Some(labels);
    // Born with the release finalizer: the Deployment controller need not add it.
    d.metadata.finalizers = Some(vec![crate::deployment_controller::FINALIZER.to_string()]);
    d.metadata.owner_references = Some(vec![OwnerReference {
        api_version: IronpoolMachine::api_version(&()).into_owned(),
        kind: IronpoolMachine::kind(&()).into_owned(),
        name: im.name_any(),
        uid: im.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    d
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Mirrors the Deployment's progress onto the IronpoolMachine.
fn mirror(o: &Observed<'_>, d: &Deployment, st: &mut IronpoolMachineStatus) {
    let gen_ = o.im.metadata.generation;
    let ds = d.status.clone().unwrap_or_default();
    st.deployment_ref = Some(LocalObjectRef::new(d.name_any()));
    st.machine_ref = ds.machine_ref.clone();
    st.phase = Some(
        ds.phase
            .map_or("Pending", IronpoolMachineStatus::phase_of)
            .to_string(),
    );
    st.progress = ds.progress.as_ref().and_then(|p| p.summary.clone());
    if let Some(server) = o.server {
        st.failure_domain = server.labels().get(o.failure_domain_label).cloned();
    }
    if st.machine_ref.is_some() {
        let host = d.spec.hostname.clone().unwrap_or_else(|| d.name_any());
        st.addresses = std::iter::once(MachineAddress {
            type_: MachineAddressType::Hostname,
            address: host,
        })
        .chain(ds.addresses.iter().map(|a| MachineAddress {
            type_: MachineAddressType::InternalIP,
            address: a.clone(),
        }))
        .collect();
    }
    let deployed = ds.phase == Some(DeploymentPhase::Deployed);
    if deployed {
        st.initialization = Some(Initialization {
            provisioned: Some(true),
        });
    }
    let server = st
        .machine_ref
        .as_ref()
        .map_or("no server yet".to_string(), |m| {
            format!("server {}", m.name)
        });
    let (s, reason, msg) = match conditions::get(&ds.conditions, READY) {
        _ if deployed => (
            Status::True,
            "Deployed".to_string(),
            format!("{server} runs the image and booted with the bootstrap data"),
        ),
        Some(c) => (
            Status::False,
            c.reason.clone(),
            format!("Deployment {} ({server}): {}", d.name_any(), c.message),
        ),
        None => (
            Status::False,
            "Pending".to_string(),
            format!(
                "Deployment {} was created; waiting for Ironpool to allocate a server",
                d.name_any()
            ),
        ),
    };
    conditions::set(
        &mut st.conditions,
        READY,
        s,
        &reason,
        &msg,
        gen_,
        o.now.clone(),
    );
}

#[cfg(test)]
mod tests;
