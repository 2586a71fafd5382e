//! `kubectl ironpool describe MACHINE`: one machine's story. Where it is and since when,
//! its power and BMC, what it is doing (operation, ramdisk progress, boot intent), its
//! conditions, the boot flight recorder as a timeline from the first step, the hardware
//! inventory (from its MachineInventory) and the Events about it (its phase history).

use std::io::Write;

use ironpool_crds::conditions::{self, READY};
use ironpool_crds::machine::MachinePhase;
use ironpool_crds::{Machine, MachineInventory};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use crate::output::{Format, age, bytes, structured, table};

/// What `-o json|yaml` prints: the Machine, its inventory object and its Events.
#[derive(Serialize)]
struct Described<'a> {
    machine: &'a Machine,
    inventory: Option<&'a MachineInventory>,
    events: &'a [Event],
}

fn event_time(e: &Event) -> Option<Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The description as people read it.
pub fn render(
    m: &Machine,
    inv: Option<&MachineInventory>,
    events: &[Event],
    now: Timestamp,
) -> String {
    let mut o = String::new();
    let field =
        |o: &mut String, k: &str, v: String| o.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    let st = m.status.clone().unwrap_or_default();
    field(&mut o, "Name", m.name_any());
    field(&mut o, "Namespace", m.namespace().unwrap_or_default());
    let ready = conditions::get(&st.conditions, READY);
    let phase = st.phase.unwrap_or(MachinePhase::New).as_str().to_string();
    let since = ready.map_or(String::new(), |c| {
        format!(" (since {} ago)", age(c.last_transition_time.0, now))
    });
    field(&mut o, "Phase", format!("{phase}{since}"));
    if let Some(c) = ready {
        field(&mut o, "Why", format!("{}: {}", c.reason, c.message));
    }
    field(&mut o, "Boot MAC", m.spec.boot_mac_address.clone());
    field(
        &mut o,
        "BMC",
        m.spec.bmc.as_ref().map_or(
            "none (power is manual until one is set: spec.bmc)".into(),
            |b| {
                format!(
                    "{} (credentials Secret {})",
                    b.address, b.credentials_secret_ref.name
                )
            },
        ),
    );
    field(
        &mut o,
        "Power",
        st.power
            .as_ref()
            .map_or("unknown (never synced)".into(), |p| {
                let synced = p
                    .last_sync
                    .as_ref()
                    .map_or(String::new(), |t| format!(", synced {} ago", age(t.0, now)));
                format!("{:?}{synced}", p.state)
            }),
    );
    field(
        &mut o,
        "Deployment",
        st.deployment_ref
            .as_ref()
            .map_or("-".into(), |r| r.name.clone()),
    );
    if let Some(op) = &st.last_operation {
        let took = op.finished.as_ref().map_or_else(
            || format!("running for {}", age(op.started.0, now)),
            |f| {
                format!(
                    "took {}",
                    crate::output::duration(f.0.duration_since(op.started.0).as_secs())
                )
            },
        );
        let mut v = format!(
            "{:?} {:?}, started {} ago, {took}, {} retries",
            op.kind,
            op.result,
            age(op.started.0, now),
            op.retries
        );
        if let Some(msg) = &op.message {
            v.push_str(&format!(": {msg}"));
        }
        field(&mut o, "Operation", v);
    }
    if let Some(p) = &st.provisioning {
        let mut v = format!("attempt {} {:?}", p.attempt, p.step);
        if let (Some(w), Some(t)) = (p.bytes_written, p.bytes_total) {
            let pct = if t > 0 { 100 * w / t } else { 0 };
            v.push_str(&format!(", {} of {} ({pct}%)", bytes(w), bytes(t)));
        }
        if let Some(r) = &p.reason {
            v.push_str(&format!(", failed: {r:?}"));
        }
        if let Some(msg) = &p.message {
            v.push_str(&format!(": {msg}"));
        }
        field(&mut o, "Ramdisk", v);
    }
    if let Some(r) = &m.spec.rescue {
        let keys = r.ssh_authorized_keys.len();
        let mut v = format!(
            "asked (spec.rescue, {keys} SSH key{})",
            if keys == 1 { "" } else { "s" }
        );
        let current = st.boot_intent.as_ref().map(|i| i.attempt);
        match st.rescue.as_ref().filter(|x| Some(x.attempt) == current) {
            Some(x) => v.push_str(&format!(
                ", {:?}: {}",
                x.step,
                x.message.as_deref().unwrap_or("")
            )),
            None => v.push_str(", the rescue ramdisk has not reported yet"),
        }
        field(&mut o, "Rescue", v);
    }
    if let Some(i) = &st.boot_intent {
        let applied = st
            .boot_applied
            .as_ref()
            .map_or("not yet applied".into(), |a| {
                if a.attempt >= i.attempt {
                    "applied".to_string()
                } else {
                    format!("pending (attempt {} applied last)", a.attempt)
                }
            });
        field(
            &mut o,
            "Boot intent",
            format!(
                "#{} {:?} for {:?}, {applied}",
                i.attempt, i.target, i.purpose
            ),
        );
    }
    if !st.conditions.is_empty() {
        o.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = st
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    age(c.last_transition_time.0, now),
                    c.message.clone(),
                ]
            })
            .collect();
        o.push_str(&indent(&table(
            &["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"],
            &rows,
        )));
    }
    o.push_str("\nBoot flight recorder:\n");
    if st.boot.is_empty() {
        o.push_str("  (no boot recorded: the machine has not PXE-booted since it was enlisted)\n");
    } else {
        let first = st.boot[0].at.0;
        let rows: Vec<Vec<String>> = st
            .boot
            .iter()
            .map(|b| {
                let dt = b.at.0.duration_since(first);
                vec![
                    format!("+{:.3}s", dt.as_secs_f64()),
                    format!("{:?}", b.step),
                    b.detail.clone().unwrap_or_default(),
                ]
            })
            .collect();
        o.push_str(&format!("  first step {} ago\n", age(first, now)));
        o.push_str(&indent(&table(&["AT", "STEP", "DETAIL"], &rows)));
    }
    o.push_str("\nInventory:\n");
    match inv {
        None => o.push_str("  (none: the machine has not been commissioned)\n"),
        Some(inv) => {
            let hw = &inv.spec.hardware;
            let collected = inv.spec.collected_at.as_ref().map_or(String::new(), |t| {
                format!(" (collected {} ago)", age(t.0, now))
            });
            o.push_str(&format!(
                "  MachineInventory {}{collected}\n",
                inv.name_any()
            ));
            if let Some(c) = &hw.cpu {
                o.push_str(&format!(
                    "  CPU: {} x{} sockets, {} cores / {} threads, {}\n",
                    c.model.clone().unwrap_or_default(),
                    c.sockets.unwrap_or(1),
                    c.cores.unwrap_or_default(),
                    c.threads.unwrap_or_default(),
                    c.architecture.clone().unwrap_or_default()
                ));
            }
            if let Some(mem) = hw.memory.clone().or(hw.memory_bytes.map(bytes)) {
                o.push_str(&format!("  Memory: {mem}\n"));
            }
            if let Some(s) = &hw.system {
                o.push_str(&format!(
                    "  System: {} {} serial {}\n",
                    s.manufacturer.clone().unwrap_or_default(),
                    s.product.clone().unwrap_or_default(),
                    s.serial_number.clone().unwrap_or_default()
                ));
            }
            if !hw.disks.is_empty() {
                let rows: Vec<Vec<String>> = hw
                    .disks
                    .iter()
                    .map(|d| {
                        vec![
                            d.name.clone(),
                            bytes(d.size_bytes),
                            d.disk_type.map_or("-".into(), |t| format!("{t:?}")),
                            d.model.clone().unwrap_or_default(),
                            d.serial_number.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                o.push_str(&indent(&table(
                    &["DISK", "SIZE", "TYPE", "MODEL", "SERIAL"],
                    &rows,
                )));
            }
            if !hw.nics.is_empty() {
                let rows: Vec<Vec<String>> =
                    hw.nics
                        .iter()
                        .map(|n| {
                            vec![
                                n.name.clone(),
                                n.mac.clone(),
                                n.link.map_or("-".into(), |l| {
                                    if l { "up".into() } else { "down".into() }
                                }),
                                n.speed_mbps.map_or("-".into(), |s| format!("{s} Mb/s")),
                                n.driver.clone().unwrap_or_default(),
                            ]
                        })
                        .collect();
                o.push_str(&indent(&table(
                    &["NIC", "MAC", "LINK", "SPEED", "DRIVER"],
                    &rows,
                )));
            }
        }
    }
    o.push_str("\nEvents:\n");
    if events.is_empty() {
        o.push_str("  (none in the last hour: Events expire)\n");
    } else {
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    event_time(e).map_or("-".into(), |t| age(t, now)),
                    e.type_.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default(),
                ]
            })
            .collect();
        o.push_str(&indent(&table(
            &["AGE", "TYPE", "REASON", "MESSAGE"],
            &rows,
        )));
    }
    o
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}

/// Reads the machine, its inventory and Events; prints.
pub async fn run(
    client: &Client,
    ns: &str,
    name: &str,
    format: Format,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let m = crate::lookup::machine(client, ns, name).await?;
    let inventories: Api<MachineInventory> = Api::namespaced(client.clone(), ns);
    let inv = inventories.get_opt(name).await.unwrap_or(None);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let selector = format!("involvedObject.kind=Machine,involvedObject.name={name}");
    let mut events = events
        .list(&ListParams::default().fields(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    events.sort_by_key(event_time);
    if !structured(
        format,
        &Described {
            machine: &m,
            inventory: inv.as_ref(),
            events: &events,
        },
        out,
    )? {
        out.write_all(render(&m, inv.as_ref(), &events, Timestamp::now()).as_bytes())?;
    }
    Ok(())
}
