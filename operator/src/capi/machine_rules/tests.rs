//! The IronpoolMachine decision, case by case.

use super::*;
use ironpool_crds::capi::{BLOCK_MOVE_ANNOTATION, IronpoolMachineSpec, ZONE_LABEL};
use ironpool_crds::deployment::{DeploymentStatus, Image, ImageFormat};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use crate::capi::types::{CapiClusterStatus, CapiMachineSpec, ClusterInitialization, ContractRef};

fn now() -> Time {
    Time(Timestamp::UNIX_EPOCH)
}

fn im() -> IronpoolMachine {
    let mut im = IronpoolMachine::new(
        "md-0-abc",
        IronpoolMachineSpec {
            image: Image {
                url: Some("http://images/os.qcow2".into()),
                checksum: Some(format!("sha256:{}", "a".repeat(64))),
                format: Some(ImageFormat::Qcow2),
                oci: None,
            },
            ..Default::default()
        },
    );
    im.metadata.namespace = Some("lab".into());
    im.metadata.uid = Some("im-uid".into());
    im.metadata.generation = Some(1);
    im.metadata.finalizers = Some(vec![FINALIZER.into()]);
    im.labels_mut()
        .insert(CLUSTER_NAME_LABEL.into(), "c1".into());
    im.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "cluster.x-k8s.io/v1beta2".into(),
        kind: "Machine".into(),
        name: "c1-md-0-xyz".into(),
        uid: "m-uid".into(),
        ..Default::default()
    }]);
    im
}

fn owner(secret: Option<&str>) -> CapiMachine {
    let mut m = CapiMachine::new(
        "c1-md-0-xyz",
        CapiMachineSpec {
            cluster_name: "c1".into(),
            bootstrap: crate::capi::types::Bootstrap {
                data_secret_name: secret.map(Into::into),
            },
            infrastructure_ref: ContractRef {
                api_group: "infrastructure.cluster.x-k8s.io".into(),
                kind: "IronpoolMachine".into(),
                name: "md-0-abc".into(),
            },
            failure_domain: None,
        },
    );
    m.metadata.namespace = Some("lab".into());
    m
}

fn cluster(provisioned: bool) -> CapiCluster {
    let mut c = CapiCluster::new("c1", Default::default());
    c.metadata.namespace = Some("lab".into());
    c.status = Some(CapiClusterStatus {
        initialization: Some(ClusterInitialization {
            infrastructure_provisioned: Some(provisioned),
        }),
    });
    c
}

fn ours(
    phase: Option<DeploymentPhase>,
    server: Option<&str>,
    ready: Option<(&str, &str)>,
) -> Deployment {
    let mut d = deployment_for(&im(), &owner(Some("boot")), "boot", ZONE_LABEL);
    d.status = Some(DeploymentStatus {
        phase,
        machine_ref: server.map(LocalObjectRef::new),
        addresses: vec!["10.77.0.50".into()],
        conditions: ready
            .map(|(reason, message)| Condition {
                type_: READY.into(),
                status: "False".into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: None,
                last_transition_time: now(),
            })
            .into_iter()
            .collect(),
        ..Default::default()
    });
    d
}

struct Case<'a> {
    im: IronpoolMachine,
    owner: Option<CapiMachine>,
    cluster: Option<CapiCluster>,
    bootstrap: BootstrapData,
    deployment: Option<&'a Deployment>,
    not_ours: bool,
    server: Option<Machine>,
}

impl<'a> Case<'a> {
    fn new() -> Self {
        Case {
            im: im(),
            owner: Some(owner(None)),
            cluster: Some(cluster(true)),
            bootstrap: BootstrapData::NotRead,
            deployment: None,
            not_ours: false,
            server: None,
        }
    }

    fn decide(&self) -> Decision {
        let deployment = match (self.deployment, self.not_ours) {
            (_, true) => Carrier::NotOurs,
            (Some(d), false) => Carrier::Ours(d),
            (None, false) => Carrier::Absent,
        };
        decide(&Observed {
            im: &self.im,
            owner: self.owner.as_ref(),
            cluster: self.cluster.as_ref(),
            bootstrap: self.bootstrap.clone(),
            deployment,
            server: self.server.as_ref(),
            failure_domain_label: ZONE_LABEL,
            now: now(),
        })
    }
}

fn ready(d: &Decision) -> (String, String, String) {
    let c = conditions::get(&d.status.conditions, READY).expect("Ready condition");
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn waits_for_each_thing_it_needs_and_says_which() {
    type Change = Box<dyn Fn(&mut Case)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "no owner",
            Box::new(|c| c.owner = None),
            "WaitingForMachineOwner",
        ),
        (
            "no cluster",
            Box::new(|c| c.cluster = None),
            "WaitingForCluster",
        ),
        (
            "cluster infrastructure",
            Box::new(|c| c.cluster = Some(cluster(false))),
            "WaitingForClusterInfrastructure",
        ),
        (
            "no bootstrap data",
            Box::new(|_| {}),
            "WaitingForBootstrapData",
        ),
        (
            "secret missing",
            Box::new(|c| c.bootstrap = BootstrapData::Missing("boot".into())),
            "BootstrapDataMissing",
        ),
        (
            "no value key",
            Box::new(|c| c.bootstrap = BootstrapData::NoValue("boot".into())),
            "BootstrapDataInvalid",
        ),
        (
            "ignition",
            Box::new(|c| c.bootstrap = BootstrapData::Ignition("boot".into())),
            "BootstrapFormatUnsupported",
        ),
    ];
    for (what, change, reason) in cases {
        let mut c = Case::new();
        change(&mut c);
        let d = c.decide();
        assert_eq!(d.act, Act::Nothing, "{what}");
        let (status, r, msg) = ready(&d);
        assert_eq!(
            (status.as_str(), r.as_str()),
            ("False", reason),
            "{what}: {msg}"
        );
        assert!(!msg.is_empty(), "{what}");
        assert_eq!(
            d.status.phase.as_deref(),
            Some("WaitingForBootstrap").filter(|_| reason != "WaitingForMachineOwner"),
            "{what}"
        );
    }
}

#[test]
fn bad_bootstrap_messages_say_what_to_do() {
    let mut c = Case::new();
    c.bootstrap = BootstrapData::Ignition("boot".into());
    assert!(ready(&c.decide()).2.contains("spec.format to cloud-config"));
    c.bootstrap = BootstrapData::NoValue("boot".into());
    assert!(ready(&c.decide()).2.contains("no key 'value'"));
}

#[test]
fn bootstrap_data_makes_one_owned_deployment() {
    let mut c = Case::new();
    c.bootstrap = BootstrapData::Ready("boot".into());
    c.owner.as_mut().unwrap().spec.failure_domain = Some("rack2".into());
    let d = c.decide();
    let Act::CreateDeployment(dep) = d.act else {
        panic!("expected a Deployment, got {:?}", d.act);
    };
    assert_eq!(dep.metadata.name.as_deref(), Some("md-0-abc"));
    assert_eq!(dep.metadata.namespace.as_deref(), Some("lab"));
    let ud = dep.spec.user_data_secret_ref.as_ref().unwrap();
    assert_eq!(
        (ud.name.as_str(), ud.key.as_deref()),
        ("boot", Some("value"))
    );
    let sel = dep.spec.machine_selector.as_ref().unwrap();
    assert_eq!(sel.match_labels[ZONE_LABEL], "rack2");
    assert_eq!(dep.spec.hostname.as_deref(), Some("c1-md-0-xyz"));
    assert_eq!(dep.spec.image, c.im.spec.image);
    let o = &dep.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (o.kind.as_str(), o.uid.as_str(), o.controller),
        ("IronpoolMachine", "im-uid", Some(true))
    );
    assert_eq!(dep.labels()[CLUSTER_NAME_LABEL], "c1");
    assert_eq!(dep.labels()[IRONPOOL_MACHINE_LABEL], "md-0-abc");
    // Born with the release finalizer, so no write adds it later.
    assert_eq!(
        dep.finalizers(),
        [crate::deployment_controller::FINALIZER.to_string()]
    );
}

#[test]
fn a_bound_server_becomes_the_provider_id_then_provisioned() {
    let allocated = ours(
        Some(DeploymentPhase::Provisioning),
        Some("r1-u07"),
        Some(("Provisioning", "writing image 60%")),
    );
    let mut c = Case::new();
    c.deployment = Some(&allocated);
    let d = c.decide();
    assert_eq!(d.act, Act::SetProviderId("ironpool://lab/r1-u07".into()));
    assert_eq!(d.status.machine_ref, Some(LocalObjectRef::new("r1-u07")));
    assert_eq!(d.status.phase.as_deref(), Some("Provisioning"));
    let (s, reason, msg) = ready(&d);
    assert_eq!((s.as_str(), reason.as_str()), ("False", "Provisioning"));
    assert!(
        msg.contains("writing image 60%") && msg.contains("r1-u07"),
        "{msg}"
    );
    assert!(d.status.initialization.is_none());

    let deployed = ours(Some(DeploymentPhase::Deployed), Some("r1-u07"), None);
    c.im.spec.provider_id = Some("ironpool://lab/r1-u07".into());
    c.deployment = Some(&deployed);
    assert_eq!(
        c.decide().act,
        Act::ArmMove,
        "bound: clusterctl move must wait for backups"
    );
    c.im.annotations_mut()
        .insert(BLOCK_MOVE_ANNOTATION.into(), String::new());
    c.server = Some(crate::capi::test_server("r1-u07", Some("rack1")));
    let d = c.decide();
    assert_eq!(d.act, Act::Nothing);
    assert_eq!(
        d.status.initialization.as_ref().unwrap().provisioned,
        Some(true)
    );
    assert_eq!(ready(&d).0, "True");
    assert_eq!(d.status.failure_domain.as_deref(), Some("rack1"));
    let addrs: Vec<_> = d
        .status
        .addresses
        .iter()
        .map(|a| (a.type_, a.address.as_str()))
        .collect();
    assert_eq!(
        addrs,
        vec![
            (MachineAddressType::Hostname, "c1-md-0-xyz"),
            (MachineAddressType::InternalIP, "10.77.0.50")
        ]
    );

    // Provisioned never reads false again, e.g. while the image is rewritten.
    c.im.status = Some(d.status.clone());
    c.deployment = Some(&allocated);
    assert_eq!(
        c.decide().status.initialization.unwrap().provisioned,
        Some(true)
    );
}

#[test]
fn a_pending_deployment_tells_why_no_server_fits() {
    let pending = ours(
        Some(DeploymentPhase::Pending),
        None,
        Some((
            "NoMachineAvailable",
            "0 of 3 Ready machines have >= 64Gi memory",
        )),
    );
    let mut c = Case::new();
    c.deployment = Some(&pending);
    let d = c.decide();
    assert_eq!(d.act, Act::Nothing);
    let (_, reason, msg) = ready(&d);
    assert_eq!(reason, "NoMachineAvailable");
    assert!(
        msg.contains("0 of 3 Ready machines have >= 64Gi memory"),
        "{msg}"
    );
    assert!(d.status.addresses.is_empty());
}

#[test]
fn deletion_releases_the_server_before_the_finalizer_goes() {
    let deployed = ours(Some(DeploymentPhase::Deployed), Some("r1-u07"), None);
    let mut c = Case::new();
    c.im.metadata.deletion_timestamp = Some(now());
    c.deployment = Some(&deployed);
    assert_eq!(c.decide().act, Act::DeleteDeployment);

    let mut releasing = deployed.clone();
    releasing.metadata.deletion_timestamp = Some(now());
    c.deployment = Some(&releasing);
    let d = c.decide();
    assert_eq!(d.act, Act::Nothing);
    let (_, reason, msg) = ready(&d);
    assert_eq!(reason, "Deleting");
    assert!(msg.contains("releasing server r1-u07"), "{msg}");

    c.deployment = None;
    assert_eq!(c.decide().act, Act::RemoveFinalizer);
    c.im.metadata.finalizers = None;
    assert_eq!(c.decide().act, Act::Nothing);
}

#[test]
fn a_new_object_gets_the_finalizer_first() {
    let mut c = Case::new();
    c.im.metadata.finalizers = None;
    c.bootstrap = BootstrapData::Ready("boot".into());
    assert_eq!(c.decide().act, Act::AddFinalizer);
}

#[test]
fn paused_does_nothing_and_says_by_what() {
    let deployed = ours(Some(DeploymentPhase::Deployed), Some("r1-u07"), None);
    let mut c = Case::new();
    c.deployment = Some(&deployed);
    c.cluster.as_mut().unwrap().spec.paused = Some(true);
    c.im.metadata.deletion_timestamp = Some(now());
    let d = c.decide();
    assert_eq!(d.act, Act::Nothing);
    let p = conditions::get(&d.status.conditions, PAUSED).unwrap();
    assert_eq!(p.status, "True");
    assert!(p.message.contains("Cluster c1 is paused"), "{}", p.message);

    let mut c = Case::new();
    c.im.annotations_mut()
        .insert(PAUSED_ANNOTATION.into(), "".into());
    c.bootstrap = BootstrapData::Ready("boot".into());
    let d = c.decide();
    assert_eq!(d.act, Act::Nothing);
    assert!(
        conditions::get(&d.status.conditions, PAUSED)
            .unwrap()
            .message
            .contains("annotation")
    );
}

#[test]
fn a_deployment_of_someone_else_is_left_alone() {
    let mut c = Case::new();
    c.not_ours = true;
    c.bootstrap = BootstrapData::Ready("boot".into());
    let d = c.decide();
    assert_eq!(d.act, Act::Nothing);
    assert_eq!(ready(&d).1, "DeploymentNameTaken");
}

#[test]
fn long_or_odd_machine_names_leave_the_hostname_to_the_deployment() {
    let mut o = owner(Some("boot"));
    o.metadata.name = Some("x".repeat(64));
    assert_eq!(
        deployment_for(&im(), &o, "boot", ZONE_LABEL).spec.hostname,
        None
    );
    o.metadata.name = Some("Upper".into());
    assert_eq!(
        deployment_for(&im(), &o, "boot", ZONE_LABEL).spec.hostname,
        None
    );
}

#[test]
fn a_remediated_machine_marks_its_server_before_releasing_it() {
    let deployed = ours(Some(DeploymentPhase::Deployed), Some("r1-u07"), None);
    let mut c = Case::new();
    c.im.metadata.deletion_timestamp = Some(now());
    c.deployment = Some(&deployed);
    c.server = Some(crate::capi::test_server("r1-u07", None));
    c.owner.as_mut().unwrap().status = Some(crate::capi::types::CapiMachineStatus {
        conditions: vec![Condition {
            type_: "HealthCheckSucceeded".into(),
            status: "False".into(),
            reason: "UnhealthyNode".into(),
            message: "Condition Ready on Node is reporting status False for more than 20s".into(),
            observed_generation: None,
            last_transition_time: now(),
        }],
    });
    let Act::MarkRemediated { server, note } = c.decide().act else {
        panic!("expected the server to be marked");
    };
    assert_eq!(server, "r1-u07");
    assert!(
        note.starts_with("1970-01-01T00:00:00Z lab/c1-md-0-xyz: Condition Ready"),
        "{note}"
    );
    // Marked: now the Deployment goes.
    c.server
        .as_mut()
        .unwrap()
        .annotations_mut()
        .insert(REMEDIATED_ANNOTATION.into(), note);
    assert_eq!(c.decide().act, Act::DeleteDeployment);
}

#[test]
fn a_paused_cluster_gets_its_status_backed_up_once_for_clusterctl_move() {
    let deployed = ours(Some(DeploymentPhase::Deployed), Some("r1-u07"), None);
    let mut c = Case::new();
    c.im.spec.provider_id = Some("ironpool://lab/r1-u07".into());
    c.deployment = Some(&deployed);
    c.cluster.as_mut().unwrap().spec.paused = Some(true);
    assert_eq!(
        c.decide().act,
        Act::Nothing,
        "not armed: nothing waits on it"
    );
    c.im.annotations_mut()
        .insert(BLOCK_MOVE_ANNOTATION.into(), String::new());
    assert_eq!(c.decide().act, Act::PrepareMove);
    c.cluster.as_mut().unwrap().spec.paused = Some(false);
    assert_eq!(
        c.decide().act,
        Act::Nothing,
        "armed and running: nothing to do"
    );
}
