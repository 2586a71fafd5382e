//! What stops a machine that is working for a Deployment, read from its status alone
//! (pure): a BMC that cannot be driven, a boot intent no agent carries out, a boot that
//! never checks in, ramdisk progress that stopped. The Deployment's own status and columns
//! carry it, so the object a person made says why it does not move and what to do.

use std::time::Duration;

use ironpool_crds::Machine;
use ironpool_crds::conditions;
use ironpool_crds::machine::{
    BootIntent, BootRecord, BootStep, BootTarget, MachinePhase, ProvisioningStep,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::lifecycle::Policy;

/// The condition type the network agent writes about the machine's BMC.
pub const BMC_REACHABLE: &str = "BMCReachable";

/// How long a boot intent may wait for a network agent to carry it out.
pub const POWER_PENDING_AFTER: Duration = Duration::from_secs(120);
/// How long ramdisk progress may stand still (it reports every second).
pub const PROGRESS_STALL_AFTER: Duration = Duration::from_secs(120);

/// Why a machine does not move, for the Deployment that holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// CamelCase reason, e.g. `BMCAuthenticationFailed`, `NoCheckIn`.
    pub reason: String,
    /// A few words for the progress column, e.g. "the BMC rejects the credentials".
    pub short: String,
    /// The whole story with what to do, for the Ready condition.
    pub message: String,
}

/// The blocker, if any, and when to look again because a deadline passes then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// What stops the machine now.
    pub blocker: Option<Blocker>,
    /// When a deadline of a rule that holds no blocker yet passes.
    pub recheck_after: Option<Duration>,
}

fn since(now: Timestamp, then: Timestamp) -> Duration {
    if now > then {
        now.duration_since(then).unsigned_abs()
    } else {
        Duration::ZERO
    }
}

/// A time as the column shows it, `23:05:12Z` (stable: the status does not change as the
/// wait goes on).
fn clock(t: Timestamp) -> String {
    t.strftime("%H:%M:%SZ").to_string()
}

/// A time to the second, RFC 3339.
fn stamp(t: Timestamp) -> String {
    Timestamp::from_second(t.as_second()).map_or_else(|_| t.to_string(), |t| t.to_string())
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// The blocker of `m`, if it is in a phase that works for a Deployment.
pub fn check(m: &Machine, now: Timestamp, policy: &Policy) -> Check {
    let Some(st) = m.status.as_ref() else {
        return Check::default();
    };
    let working = matches!(
        st.phase,
        Some(MachinePhase::Allocated | MachinePhase::Deploying | MachinePhase::Releasing)
    );
    if !working {
        return Check::default();
    }
    if let Some(b) = bmc(m) {
        return found(b);
    }
    let Some(intent) = st.boot_intent.as_ref() else {
        return Check::default();
    };
    let issued = intent.issued_at.as_ref().map_or(now, |t| t.0);
    let applied = st
        .boot_applied
        .as_ref()
        .is_some_and(|a| a.attempt >= intent.attempt);
    if !applied {
        return power_pending(m, intent, issued, since(now, issued));
    }
    if intent.target == BootTarget::Off {
        return Check::default();
    }
    let after = |at: Timestamp| at >= issued;
    let records: Vec<&BootRecord> = st.boot.iter().filter(|r| after(r.at.0)).collect();
    let arrived = match intent.target {
        BootTarget::Ramdisk => BootStep::RamdiskCheckIn,
        _ => BootStep::OsBooted,
    };
    if !records.iter().any(|r| r.step == arrived) {
        let powered = st
            .boot_applied
            .as_ref()
            .and_then(|a| a.applied_at.as_ref())
            .map_or(issued, |t| t.0);
        let waited = since(now, powered);
        if waited < policy.checkin_deadline {
            return recheck(policy.checkin_deadline - waited);
        }
        return found(no_check_in(m, intent, &records, powered));
    }
    progress_stalled(m, intent, now)
}

fn found(b: Blocker) -> Check {
    Check {
        blocker: Some(b),
        recheck_after: None,
    }
}

fn recheck(after: Duration) -> Check {
    Check {
        blocker: None,
        recheck_after: Some(after.max(Duration::from_secs(1))),
    }
}

/// The BMC the agent cannot drive: its `BMCReachable` condition is False.
fn bmc(m: &Machine) -> Option<Blocker> {
    let st = m.status.as_ref()?;
    m.spec.bmc.as_ref()?;
    let c = conditions::get(&st.conditions, BMC_REACHABLE).filter(|c| c.status == "False")?;
    let short = match c.reason.as_str() {
        "AuthenticationFailed" => "the BMC rejects the credentials",
        "NoCredentials" => "the BMC credentials Secret is missing or incomplete",
        "Unreachable" | "Timeout" => "the BMC does not answer",
        "TLSVerificationFailed" => "the BMC's TLS certificate does not verify",
        "InvalidAddress" => "spec.bmc.address is not usable",
        "ActionUnsupported" => "the BMC lacks a needed action",
        _ => "the BMC cannot be driven",
    };
    let reason = if c.reason.starts_with("BMC") {
        c.reason.clone()
    } else {
        format!("BMC{}", c.reason)
    };
    Some(Blocker {
        reason,
        short: short.into(),
        message: format!(
            "machine {} cannot be powered: {}; Ironpool retries by itself once that is fixed",
            m.name_any(),
            c.message
        ),
    })
}

fn what(intent: &BootIntent) -> String {
    format!(
        "boot intent #{} ({:?} for {:?})",
        intent.attempt, intent.target, intent.purpose
    )
}

/// The boot intent has not been carried out: no BMC, or no agent acts on it.
fn power_pending(m: &Machine, intent: &BootIntent, issued: Timestamp, age: Duration) -> Check {
    if m.spec.bmc.is_none() {
        return found(Blocker {
            reason: "NoBMC".into(),
            short: "no BMC: power it by hand".into(),
            message: format!(
                "machine {} has no spec.bmc, so Ironpool cannot carry out {}: power it on by \
                 hand to boot from the network, or add its BMC to spec.bmc",
                m.name_any(),
                what(intent)
            ),
        });
    }
    if age < POWER_PENDING_AFTER {
        return recheck(POWER_PENDING_AFTER - age);
    }
    found(Blocker {
        reason: "PowerActionPending".into(),
        short: format!("no agent has powered it since {}", clock(issued)),
        message: format!(
            "{} for machine {} was issued at {} and no network agent has carried it out: check \
             that an ironpool-agent pod runs on a node that serves this machine's Subnet and can \
             reach its BMC (the agent pods' logs say why)",
            what(intent),
            m.name_any(),
            stamp(issued)
        ),
    })
}

/// Powered on, yet the ramdisk (or the deployed OS) never checked in: say where the boot
/// stopped by the last step the flight recorder saw.
fn no_check_in(
    m: &Machine,
    intent: &BootIntent,
    records: &[&BootRecord],
    powered: Timestamp,
) -> Blocker {
    let last = records.last().map(|r| r.step);
    let detail = |r: Option<&&BootRecord>| {
        r.and_then(|r| r.detail.clone())
            .map_or(String::new(), |d| format!(" ({d})"))
    };
    let (short, story) = match (intent.target, last) {
        (BootTarget::Disk, _) => (
            "the deployed OS never checked in".to_string(),
            "the image was written and the machine told to boot from disk, but the deployed \
             OS has not checked in: see the machine's console; check that the image boots on \
             this hardware and runs cloud-init (it reads the Ironpool seed)"
                .to_string(),
        ),
        (_, None) => (
            "no network boot seen".to_string(),
            format!(
                "the BMC accepted the power-on but no DHCP request from {} reached an agent: \
                 check that the machine boots from the network first, that \
                 spec.bootMACAddress is its boot NIC, and that its provisioning network reaches \
                 the agent (a DHCP relay must point at it)",
                m.spec.boot_mac_address
            ),
        ),
        (_, Some(BootStep::DhcpDiscover | BootStep::DhcpOffer | BootStep::DhcpNak)) => (
            "stuck in DHCP".to_string(),
            format!(
                "the machine asked for an address but never took one (last: {:?}{}): check the \
                 Subnet's ranges and that no other DHCP server answers on that network",
                last.unwrap_or(BootStep::DhcpDiscover),
                detail(records.last())
            ),
        ),
        (_, Some(BootStep::DhcpAck)) => (
            "got an address, never fetched iPXE".to_string(),
            format!(
                "the machine got its address{} but never fetched the iPXE binary over TFTP or \
                 HTTP: check that UDP port 69 reaches the agent and the firmware's boot mode \
                 (spec.bootMode) matches the machine",
                detail(records.last())
            ),
        ),
        (_, Some(BootStep::TftpRead)) => (
            "loaded iPXE, never fetched its script".to_string(),
            format!(
                "iPXE was loaded{} but never fetched its script from the agent's HTTP port: \
                 check that the agent's HTTP port is reachable from the provisioning network",
                detail(records.last())
            ),
        ),
        (_, Some(BootStep::ScriptFetched)) => (
            "fetched its script, never the ramdisk".to_string(),
            "the iPXE script was fetched but not the kernel and initrd: see the machine's \
             console for iPXE's error (the agent's boot assets may be missing)"
                .to_string(),
        ),
        (_, Some(_)) => (
            "the ramdisk never checked in".to_string(),
            format!(
                "the ramdisk was loaded{} but its agent never checked in: see the machine's \
                 serial console (kernel or driver trouble, or no route back to the agent)",
                detail(records.last())
            ),
        ),
    };
    Blocker {
        reason: "NoCheckIn".into(),
        short: format!("{short} since power-on at {}", clock(powered)),
        message: format!(
            "machine {}, {}, powered on at {}: {story}. Ironpool boots it again when the \
             step's timeout passes",
            m.name_any(),
            what(intent),
            stamp(powered)
        ),
    }
}

/// The ramdisk reported a long step, then went quiet.
fn progress_stalled(m: &Machine, intent: &BootIntent, now: Timestamp) -> Check {
    let Some(r) = m
        .status
        .as_ref()
        .and_then(|s| s.provisioning.as_ref())
        .filter(|r| r.attempt == intent.attempt)
    else {
        return Check::default();
    };
    let long = matches!(
        r.step,
        ProvisioningStep::Inventory
            | ProvisioningStep::Erasing
            | ProvisioningStep::WritingImage
            | ProvisioningStep::WritingConfig
    );
    let Some(at) = r.updated_at.as_ref().map(|t| t.0).filter(|_| long) else {
        return Check::default();
    };
    let quiet = since(now, at);
    if quiet < PROGRESS_STALL_AFTER {
        return recheck(PROGRESS_STALL_AFTER - quiet);
    }
    let done = match (r.bytes_written, r.bytes_total) {
        (Some(w), Some(t)) if t > 0 => format!(" at {}%", w.saturating_mul(100) / t),
        _ => String::new(),
    };
    found(Blocker {
        reason: "ProgressStalled".into(),
        short: format!("{:?} stalled{done} since {}", r.step, clock(at)),
        message: format!(
            "machine {}: the ramdisk reported {:?}{done} at {} and nothing since (for more than \
             {}): see the machine's serial console (a hung disk or a lost network); Ironpool \
             boots it again when the step's timeout passes",
            m.name_any(),
            r.step,
            stamp(at),
            human(PROGRESS_STALL_AFTER)
        ),
    })
}

#[cfg(test)]
#[path = "blocker_tests.rs"]
mod tests;
