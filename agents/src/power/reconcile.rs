//! One reconcile of one Machine: apply a pending boot intent, or sync power when due,
//! then write status; on failure, say why in `BMCReachable` and back off.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use ironpool_crds::Machine;
use ironpool_crds::machine::{BootApplied, BootApplying, PowerState};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::PowerError;
use super::context::Ctx;
use super::decide::{self, Step};
use super::status::{self, Reachability};
use crate::bmc::{BmcAddress, BmcError, PowerDriver};

/// How soon to look again after carrying out an intent (to observe the power landing).
const AFTER_APPLY: Duration = Duration::from_secs(10);

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Times a BMC call into the metrics.
async fn timed<T>(
    ctx: &Ctx,
    driver: &dyn PowerDriver,
    operation: &'static str,
    call: BoxFuture<'_, Result<T, BmcError>>,
) -> Result<T, BmcError> {
    let started = Instant::now();
    let r = call.await;
    let result = r.as_ref().map_or_else(BmcError::metric_label, |_| "ok");
    ctx.config
        .metrics
        .call(driver.kind().as_str(), operation, result, started.elapsed());
    r
}

/// The reconcile function given to the kube Controller.
pub async fn reconcile(machine: Arc<Machine>, ctx: Arc<Ctx>) -> Result<Action, PowerError> {
    let ns = machine.namespace().unwrap_or_default();
    let name = machine.name_any();
    let key = format!("{ns}/{name}");
    let Some(bmc_spec) = machine.spec.bmc.clone() else {
        return Ok(Action::await_change());
    };
    let api: Api<Machine> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = &bmc_spec.credentials_secret_ref.name;
    let found = ctx.credentials(&ns, secret).await?;
    let creds = match found.creds {
        Ok(c) => c,
        Err(detail) => {
            write_status(
                &ctx,
                &api,
                &machine,
                None,
                None,
                existing_marker(&machine),
                &Reachability::no_credentials(detail.clone()),
            )
            .await?;
            return Err(PowerError::NoCredentials(detail));
        }
    };
    let (driver, fresh) = match ctx.driver(&key, &bmc_spec, &creds, &found.version) {
        Ok(d) => d,
        Err(PowerError::Bmc(e)) => {
            let marker = existing_marker(&machine);
            write_status(
                &ctx,
                &api,
                &machine,
                None,
                None,
                marker,
                &Reachability::failed(&e),
            )
            .await?;
            return Err(e.into());
        }
        Err(e) => return Err(e),
    };
    if !fresh && let Some(until) = ctx.backoff_until(&key) {
        return Ok(Action::requeue(
            until.saturating_duration_since(Instant::now()),
        ));
    }
    let host = BmcAddress::parse(&bmc_spec.address)
        .map(|a| a.host_port())
        .unwrap_or_default();
    let limit = ctx.host_limit(&host);
    let _permit = limit.acquire_owned().await;
    let status = machine.status.clone().unwrap_or_default();
    let pending = decide::pending(status.boot_intent.as_ref(), status.boot_applied.as_ref())
        .filter(|a| ctx.applied(&key).is_none_or(|done| *a > done));
    let held = machine.spec.maintenance == Some(true) || machine.spec.broken == Some(true);
    // The in-flight marker as status holds it; apply() replaces it when it records a new
    // one, and every status write carries it until one records its attempt as applied.
    let mut applying = status.boot_applying.clone();

    let outcome = match (pending, status.boot_intent.as_ref()) {
        (Some(attempt), Some(intent)) if !held => {
            apply(
                &ctx,
                &api,
                &machine,
                driver.as_ref(),
                intent,
                attempt,
                &mut applying,
            )
            .await
        }
        _ if ctx.sync_due(&key) => sync(driver.as_ref(), &ctx)
            .await
            .map(|p| (p, status.boot_applied.clone())),
        _ => {
            return Ok(Action::requeue(
                ctx.until_sync(&key).max(Duration::from_secs(1)),
            ));
        }
    };
    match outcome {
        Ok((power, applied)) => {
            let r = Reachability::reachable(driver.kind().as_str());
            let marker = status::still_applying(applying.as_ref(), applied.as_ref());
            write_status(
                &ctx,
                &api,
                &machine,
                Some(power),
                applied.as_ref(),
                marker,
                &r,
            )
            .await?;
            let applied_now = applied.as_ref().map(|a| a.attempt)
                != status.boot_applied.as_ref().map(|a| a.attempt);
            if applied_now && status::applying_annotation(&machine).is_some() {
                // Left by an agent from before the marker moved into status.
                clear_annotation(&api, &name).await?;
            }
            if let Some(a) = &applied {
                ctx.remember_applied(&key, a.attempt);
            }
            ctx.succeeded(&key);
            let after = if pending.is_some() {
                AFTER_APPLY
            } else {
                ctx.config.sync_interval
            };
            Ok(Action::requeue(ctx.schedule_sync(&key, after)))
        }
        Err(e) => {
            warn!(machine = %key, bmc = %host, driver = driver.kind().as_str(), reason = e.metric_label(), error = %e, "BMC call failed");
            if matches!(e, BmcError::Authentication { .. }) {
                ctx.forget_secret(&ns, secret);
            }
            let unknown = status::power(PowerState::Unknown, now());
            let power = (!matches!(e, BmcError::Unsupported { .. })).then_some(unknown);
            // The marker stays: the action may have landed before the failure.
            let marker = status::still_applying(applying.as_ref(), status.boot_applied.as_ref());
            write_status(
                &ctx,
                &api,
                &machine,
                power,
                status.boot_applied.as_ref(),
                marker,
                &Reachability::failed(&e),
            )
            .await?;
            Err(e.into())
        }
    }
}

/// Reads power for the periodic sync.
async fn sync(
    driver: &dyn PowerDriver,
    ctx: &Ctx,
) -> Result<ironpool_crds::machine::PowerStatus, BmcError> {
    let r = timed(ctx, driver, "power_state", driver.power_state()).await;
    ctx.config
        .metrics
        .sync(r.as_ref().map_or_else(BmcError::metric_label, |_| "ok"));
    Ok(status::power(r?, now()))
}

/// Carries out attempt `attempt` of `intent`.
async fn apply(
    ctx: &Ctx,
    api: &Api<Machine>,
    machine: &Machine,
    driver: &dyn PowerDriver,
    intent: &ironpool_crds::machine::BootIntent,
    attempt: i64,
    applying: &mut Option<BootApplying>,
) -> Result<(ironpool_crds::machine::PowerStatus, Option<BootApplied>), BmcError> {
    let name = machine.name_any();
    let power = timed(ctx, driver, "power_state", driver.power_state()).await?;
    let resumed = applying.as_ref().map(|a| a.attempt) == Some(attempt)
        || status::applying_annotation(machine) == Some(attempt);
    let steps = decide::plan(intent.target, machine.spec.boot_mode, power, resumed);
    info!(machine = %name, attempt, target = ?intent.target, ?power, resumed, ?steps, "applying boot intent");
    let mut expected = power;
    for step in steps {
        match step {
            Step::SetBoot(b) => {
                timed(ctx, driver, "set_boot_device", driver.set_boot_device(b)).await?
            }
            Step::Power(action) => {
                // Record before acting: a restart from here on never sends it twice. An
                // Off needs no record: sending it again cannot boot the machine twice.
                if !resumed && decide::needs_marker(action) {
                    let marker = BootApplying {
                        attempt,
                        since: Some(now()),
                    };
                    mark_applying(ctx, api, machine, power, driver.kind().as_str(), &marker)
                        .await?;
                    *applying = Some(marker);
                }
                send_power(ctx, driver, &name, attempt, action).await?;
                expected = match action {
                    crate::bmc::PowerAction::Off | crate::bmc::PowerAction::GracefulOff => {
                        PowerState::Off
                    }
                    _ => PowerState::On,
                };
            }
        }
    }
    ctx.config.metrics.intents_applied.inc();
    let at = now();
    Ok((
        status::power(expected, at.clone()),
        Some(BootApplied {
            attempt,
            applied_at: Some(at),
        }),
    ))
}

/// Sends `action`. A ramdisk that just finished powers its machine off on its own; if that
/// happened between the power read and a cycle, the BMC refuses to restart a machine that
/// is off. Then the machine is powered on instead (still one boot for the attempt). If it
/// was shutting down as the cycle arrived, the BMC may accept the cycle and the machine
/// still end up off: the power read `cycle_settle` later catches that and powers it on.
async fn send_power(
    ctx: &Ctx,
    driver: &dyn PowerDriver,
    name: &str,
    attempt: i64,
    action: crate::bmc::PowerAction,
) -> Result<(), BmcError> {
    let sent = timed(ctx, driver, "set_power", driver.set_power(action)).await;
    if action != crate::bmc::PowerAction::Cycle {
        return sent;
    }
    if sent.is_ok() {
        tokio::time::sleep(ctx.config.cycle_settle).await;
    }
    let off = matches!(
        timed(ctx, driver, "power_state", driver.power_state()).await,
        Ok(PowerState::Off)
    );
    if !off {
        return sent;
    }
    info!(machine = %name, attempt, accepted = sent.is_ok(), "the machine is off after the power cycle (it turned itself off as the cycle came); powering it on");
    timed(
        ctx,
        driver,
        "set_power",
        driver.set_power(crate::bmc::PowerAction::On),
    )
    .await
}

/// Writes the in-flight marker into status (with the power just read and the condition,
/// so the apply carries every field this manager owns).
async fn mark_applying(
    ctx: &Ctx,
    api: &Api<Machine>,
    machine: &Machine,
    power: PowerState,
    driver: &str,
    marker: &BootApplying,
) -> Result<(), BmcError> {
    let existing = machine.status.as_ref();
    let applied = existing.and_then(|s| s.boot_applied.as_ref());
    let r = Reachability::reachable(driver);
    let condition = status::condition(machine, &r, now());
    ctx.config.metrics.status_writes.inc();
    let pp = PatchParams::apply(&ctx.config.field_manager).force();
    api.patch_status(
        &machine.name_any(),
        &pp,
        &Patch::Apply(status::patch(
            Some(status::power(power, now())),
            applied,
            Some(marker),
            condition,
        )),
    )
    .await
    .map(drop)
    // Not a BMC failure, but it must stop the action: report it as setup.
    .map_err(|e| BmcError::Setup(format!("cannot record the attempt before acting: {e}")))
}

/// The marker status holds, kept by writes that record no new attempt.
fn existing_marker(machine: &Machine) -> Option<&BootApplying> {
    let st = machine.status.as_ref()?;
    status::still_applying(st.boot_applying.as_ref(), st.boot_applied.as_ref())
}

/// Removes the applying-attempt annotation an older agent left (a merge patch: it
/// removes the key whichever manager set it).
async fn clear_annotation(api: &Api<Machine>, name: &str) -> Result<(), PowerError> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(status::annotation_removal()),
    )
    .await?;
    Ok(())
}

async fn write_status(
    ctx: &Ctx,
    api: &Api<Machine>,
    machine: &Machine,
    power: Option<ironpool_crds::machine::PowerStatus>,
    applied: Option<&BootApplied>,
    applying: Option<&BootApplying>,
    r: &Reachability,
) -> Result<(), PowerError> {
    let existing = machine.status.as_ref();
    let power = power.or_else(|| existing.and_then(|s| s.power.clone()));
    let applied = applied.or_else(|| existing.and_then(|s| s.boot_applied.as_ref()));
    let condition = status::condition(machine, r, now());
    if status::unchanged(machine, power.as_ref(), applied, applying, &condition) {
        return Ok(());
    }
    ctx.config.metrics.status_writes.inc();
    let pp = PatchParams::apply(&ctx.config.field_manager).force();
    api.patch_status(
        &machine.name_any(),
        &pp,
        &Patch::Apply(status::patch(power, applied, applying, condition)),
    )
    .await?;
    Ok(())
}

/// Backs off per machine: exponential, capped, jittered.
pub fn error_policy(machine: Arc<Machine>, error: &PowerError, ctx: Arc<Ctx>) -> Action {
    let key = format!(
        "{}/{}",
        machine.namespace().unwrap_or_default(),
        machine.name_any()
    );
    ctx.config.metrics.failure(error.metric_label());
    let delay = ctx.failed(&key);
    warn!(machine = %key, reason = error.metric_label(), error = %error, retry_in = ?delay, "power reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmc::PowerAction::{Cycle, On};
    use crate::bmc::fake::FakeBmc;

    fn ctx() -> Ctx {
        // Never called: send_power talks to the BMC only.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        Ctx::new(
            kube::Client::try_from(config).unwrap(),
            super::super::Config {
                cycle_settle: std::time::Duration::from_millis(10),
                ..Default::default()
            },
        )
    }

    #[tokio::test]
    async fn an_accepted_cycle_that_leaves_the_machine_off_is_followed_by_a_power_on() {
        let ctx = ctx();
        let bmc = FakeBmc::new();
        bmc.state().power = Some(PowerState::On);
        // The machine was shutting down as the restart arrived: accepted, and off after.
        bmc.state().cycle_ends_off = true;
        send_power(&ctx, &bmc, "m", 4, Cycle).await.unwrap();
        assert_eq!(bmc.state().actions, vec![Cycle, On]);
        assert_eq!(bmc.state().power, Some(PowerState::On));
    }

    #[tokio::test]
    async fn a_refused_cycle_of_a_machine_that_turned_off_becomes_one_power_on() {
        let ctx = ctx();
        let bmc = FakeBmc::new();
        // The ramdisk powered the machine off after the controller read On; the BMC
        // refuses to restart a machine that is off, as real ones do.
        bmc.state().refuse_cycle_when_off = true;
        send_power(&ctx, &bmc, "m", 3, Cycle).await.unwrap();
        assert_eq!(bmc.state().actions, vec![On]);
        assert_eq!(bmc.state().power, Some(PowerState::On));
    }

    #[tokio::test]
    async fn other_refusals_are_errors_and_send_nothing_else() {
        let ctx = ctx();
        let bmc = FakeBmc::new();
        bmc.state().power = Some(PowerState::On);
        send_power(&ctx, &bmc, "m", 1, Cycle).await.unwrap();
        assert_eq!(
            bmc.state().actions,
            vec![Cycle],
            "a cycle of a running machine is a cycle"
        );
        // Refused while the machine is on: the error stands, no power on is sent.
        bmc.state().fail_with = Some(|| BmcError::Unsupported {
            host: "fake".into(),
            what: "ForceRestart".into(),
            offered: "On".into(),
        });
        assert!(send_power(&ctx, &bmc, "m", 2, Cycle).await.is_err());
        bmc.state().fail_with = None;
        assert_eq!(bmc.state().actions, vec![Cycle]);
        // A refused power on of a machine that is off is not retried as anything else.
        bmc.state().power = Some(PowerState::Off);
        bmc.state().refuse_cycle_when_off = true;
        bmc.state().fail_with = Some(|| BmcError::Unsupported {
            host: "fake".into(),
            what: "On".into(),
            offered: "On".into(),
        });
        assert!(send_power(&ctx, &bmc, "m", 3, On).await.is_err());
        bmc.state().fail_with = None;
        assert_eq!(bmc.state().actions, vec![Cycle]);
    }
}
