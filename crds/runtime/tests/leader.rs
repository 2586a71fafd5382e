//! Leader election against a real kube-apiserver: one of two electors leads, a standby takes
//! over after a crash (lease expiry) or a release (at once), an overwritten Lease or a
//! partitioned leader loses leadership in time, and racing electors never overlap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ironpool_e2e::ControlPlane;
use ironpool_runtime::leader::{LeaderElector, LeaderTerm, LeaseConfig};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const LEASE: &str = "ironpool-operator";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_DEADLINE: Duration = Duration::from_secs(2);
const RETRY_PERIOD: Duration = Duration::from_millis(500);
/// Allowance for apiserver round trips on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(500);

fn config(namespace: &str, identity: &str) -> LeaseConfig {
    LeaseConfig {
        lease_duration: LEASE_DURATION,
        renew_deadline: RENEW_DEADLINE,
        retry_period: RETRY_PERIOD,
        ..LeaseConfig::new(namespace, LEASE, identity)
    }
}

async fn setup(prefix: &str) -> Result<(Client, String)> {
    let cp = ControlPlane::shared()?;
    Ok((cp.client().await?, cp.create_namespace(prefix).await?))
}

async fn acquire(client: &Client, namespace: &str, identity: &str) -> Result<LeaderTerm> {
    LeaderElector::new(client.clone(), config(namespace, identity))
        .acquire(&CancellationToken::new())
        .await?
        .context("acquire returned None without cancellation")
}

/// Starts an elector for `identity` in the background; the handle yields its term and when
/// it got it.
fn stand_by(
    client: &Client,
    namespace: &str,
    identity: &str,
) -> tokio::task::JoinHandle<(LeaderTerm, Instant)> {
    let elector = LeaderElector::new(client.clone(), config(namespace, identity));
    tokio::spawn(async move {
        let term = elector
            .acquire(&CancellationToken::new())
            .await
            .unwrap()
            .unwrap();
        (term, Instant::now())
    })
}

async fn lease(client: &Client, namespace: &str) -> Result<Lease> {
    Ok(Api::<Lease>::namespaced(client.clone(), namespace)
        .get(LEASE)
        .await?)
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

fn transitions(lease: &Lease) -> i32 {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_waits_then_takes_over_after_a_crash() -> Result<()> {
    let (client, ns) = setup("leader").await?;
    let a = acquire(&client, &ns, "a").await?;
    let created = lease(&client, &ns).await?;
    assert_eq!(holder(&created).as_deref(), Some("a"));
    let spec = created.spec.clone().unwrap();
    assert_eq!(spec.lease_duration_seconds, Some(3));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());
    let before = transitions(&created);

    let standby = stand_by(&client, &ns, "b");
    // Well past one lease duration: a renewing leader keeps the lease.
    tokio::time::sleep(LEASE_DURATION + 2 * RETRY_PERIOD).await;
    assert!(
        !standby.is_finished(),
        "the standby acquired a lease that was being renewed"
    );
    assert!(!a.lost().is_cancelled());
    let renewed = lease(&client, &ns).await?;
    assert_eq!(holder(&renewed).as_deref(), Some("a"));
    assert_ne!(renewed.spec.as_ref().unwrap().renew_time, spec.renew_time);

    let lost = a.lost();
    let crashed = Instant::now();
    drop(a); // a crash: no release, renewal stops
    assert!(lost.is_cancelled(), "dropping a term must cancel lost()");
    let (b, acquired) = standby.await?;
    let took = acquired - crashed;
    eprintln!("standby took over {took:?} after the crash");
    // The standby saw the last renewal at most one (jittered) retry after it was written,
    // and takes over at its first attempt one lease duration after that; the last renewal
    // was at most one retry before the crash.
    assert!(
        took >= LEASE_DURATION - RETRY_PERIOD.mul_f64(1.2) - SLACK / 5,
        "took over too early: {took:?}"
    );
    assert!(
        took <= LEASE_DURATION + RETRY_PERIOD.mul_f64(2.4) + SLACK,
        "took over too late: {took:?}"
    );
    let after = lease(&client, &ns).await?;
    assert_eq!(holder(&after).as_deref(), Some("b"));
    assert_eq!(transitions(&after), before + 1);
    assert_eq!(b.transitions(), before + 1);
    b.release().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_hands_over_within_a_retry_period() -> Result<()> {
    let (client, ns) = setup("leader").await?;
    let a = acquire(&client, &ns, "a").await?;
    let before = transitions(&lease(&client, &ns).await?);
    let standby = stand_by(&client, &ns, "b");
    tokio::time::sleep(3 * RETRY_PERIOD).await;
    assert!(!standby.is_finished());

    let lost = a.lost();
    let released = Instant::now();
    a.release().await?;
    assert!(lost.is_cancelled());
    let (b, acquired) = standby.await?;
    let took = acquired - released;
    eprintln!("standby took over {took:?} after the release");
    assert!(
        took <= RETRY_PERIOD.mul_f64(1.2) + SLACK,
        "took over too late: {took:?}"
    );
    let after = lease(&client, &ns).await?;
    assert_eq!(holder(&after).as_deref(), Some("b"));
    assert_eq!(transitions(&after), before + 1);

    // Releasing a term whose lease someone else holds leaves the lease alone.
    let b_lost = b.lost();
    overwrite_holder(&client, &ns, "c").await?;
    tokio::time::timeout(RENEW_DEADLINE, b_lost.cancelled()).await?;
    b.release().await?;
    assert_eq!(holder(&lease(&client, &ns).await?).as_deref(), Some("c"));
    Ok(())
}

/// Replaces the Lease's holder the way another client would (read, then update).
async fn overwrite_holder(client: &Client, namespace: &str, identity: &str) -> Result<()> {
    let api = Api::<Lease>::namespaced(client.clone(), namespace);
    let mut current = api.get(LEASE).await?;
    let spec = current.spec.as_mut().unwrap();
    spec.holder_identity = Some(identity.into());
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    api.replace(LEASE, &PostParams::default(), &current).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwritten_lease_ends_the_term_and_is_not_taken_back() -> Result<()> {
    let (client, ns) = setup("leader").await?;
    let a = acquire(&client, &ns, "a").await?;
    let lost = a.lost();
    let overwritten = Instant::now();
    overwrite_holder(&client, &ns, "intruder").await?;
    tokio::time::timeout(RENEW_DEADLINE, lost.cancelled())
        .await
        .context("lost() did not fire within renew_deadline")?;
    eprintln!(
        "lost() fired {:?} after the overwrite",
        overwritten.elapsed()
    );
    tokio::time::sleep(3 * RETRY_PERIOD).await;
    assert_eq!(
        holder(&lease(&client, &ns).await?).as_deref(),
        Some("intruder")
    );
    drop(a);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_before_the_standby_takes_over() -> Result<()> {
    let cp = ControlPlane::shared()?;
    let (client, ns) = setup("leader").await?;
    let (proxied, cut) = client_through_cuttable_proxy(cp).await?;
    let a = LeaderElector::new(proxied, config(&ns, "a"))
        .acquire(&CancellationToken::new())
        .await?
        .unwrap();
    let standby = stand_by(&client, &ns, "b");
    tokio::time::sleep(3 * RETRY_PERIOD).await;

    let lost = a.lost();
    let partitioned = Instant::now();
    cut.cancel();
    tokio::time::timeout(RENEW_DEADLINE + RETRY_PERIOD, lost.cancelled())
        .await
        .context("lost() did not fire although renewal failed for renew_deadline")?;
    let lost_after = partitioned.elapsed();
    let (b, acquired) = standby.await?;
    let taken_after = acquired - partitioned;
    eprintln!(
        "partitioned leader lost after {lost_after:?}; standby took over after {taken_after:?}"
    );
    assert!(lost_after <= RENEW_DEADLINE + SLACK / 5, "{lost_after:?}");
    assert!(
        taken_after > lost_after,
        "standby took over while the old leader still led"
    );
    assert!(taken_after <= LEASE_DURATION + RETRY_PERIOD.mul_f64(2.4) + SLACK);
    drop(a);
    b.release().await?;
    Ok(())
}

/// A client whose connections pass through a local proxy; cancelling the token drops every
/// connection and black-holes new ones (they connect but nothing ever answers).
async fn client_through_cuttable_proxy(cp: &ControlPlane) -> Result<(Client, CancellationToken)> {
    let upstream: SocketAddr = cp.server_url().trim_start_matches("https://").parse()?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let cut = CancellationToken::new();
    let proxy_cut = cut.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((inbound, _)) = listener.accept().await {
            if proxy_cut.is_cancelled() {
                held.push(inbound);
                continue;
            }
            let cut = proxy_cut.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = cut.cancelled() => {}
                    _ = pump(&inbound, &outbound) => {}
                    _ = pump(&outbound, &inbound) => {}
                }
            });
        }
    });
    let mut kubeconfig = Kubeconfig::read_from(cp.kubeconfig_path())?;
    for cluster in &mut kubeconfig.clusters {
        if let Some(cluster) = cluster.cluster.as_mut() {
            cluster.server = Some(format!("https://{address}"));
        }
    }
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok((Client::try_from(config)?, cut))
}

/// Copies bytes from `from` to `to` until either side closes or fails (this package's tokio
/// lacks `io-util`, so no `copy_bidirectional`).
async fn pump(from: &TcpStream, to: &TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if from.readable().await.is_err() {
            return;
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return,
        };
        let mut written = 0;
        while written < n {
            if to.writable().await.is_err() {
                return;
            }
            match to.try_write(&buf[written..n]) {
                Ok(k) => written += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    }
}

/// One racer's current term as the sampler sees it: identity and lost token.
type Slot = Arc<Mutex<Option<(String, CancellationToken)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_electors_never_lead_at_once() -> Result<()> {
    let (client, ns) = setup("leader-race").await?;
    let stop = CancellationToken::new();
    let slots: Vec<Slot> = (0..3).map(|_| Slot::default()).collect();
    let mut racers = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        racers.push(tokio::spawn(race(
            client.clone(),
            ns.clone(),
            i,
            slot.clone(),
            stop.clone(),
        )));
    }

    let api = Api::<Lease>::namespaced(client.clone(), &ns);
    let believers = || -> Vec<String> {
        slots
            .iter()
            .filter_map(|s| match &*s.lock().unwrap() {
                Some((id, lost)) if !lost.is_cancelled() => Some(id.clone()),
                _ => None,
            })
            .collect()
    };
    let (mut samples, mut checked_holder) = (0, 0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        let before = believers();
        assert!(before.len() <= 1, "two terms lead at once: {before:?}");
        let current = api.get_opt(LEASE).await?;
        let after = believers();
        assert!(after.len() <= 1, "two terms lead at once: {after:?}");
        // A term that led throughout the read must be the holder the read returned.
        if let (Some(b), Some(a), Some(lease)) = (before.first(), after.first(), &current)
            && a == b
        {
            assert_eq!(
                holder(lease).as_deref(),
                Some(b.as_str()),
                "a term leads without holding the lease"
            );
            checked_holder += 1;
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    let mut terms = 0;
    for racer in racers {
        terms += racer.await??;
    }
    eprintln!(
        "{samples} samples, {checked_holder} with a leader checked against the lease, {terms} terms"
    );
    assert!(
        terms >= 4,
        "only {terms} terms in 10 s: the race did not exercise handovers"
    );
    assert!(
        checked_holder > samples / 8,
        "{checked_holder} of {samples}"
    );
    Ok(())
}

/// Contends until `stop`; each term is held briefly, then released (mostly) or dropped as in
/// a crash. A crashed racer comes back as a new identity, like a restarted pod. Returns the
/// number of terms held.
async fn race(
    client: Client,
    ns: String,
    racer: usize,
    slot: Slot,
    stop: CancellationToken,
) -> Result<usize> {
    let mut terms = 0;
    let mut generation = 0;
    loop {
        let identity = format!("racer{racer}-{generation}");
        let elector = LeaderElector::new(client.clone(), config(&ns, &identity));
        let Some(term) = elector.acquire(&stop).await? else {
            return Ok(terms);
        };
        terms += 1;
        *slot.lock().unwrap() = Some((identity, term.lost()));
        let hold = Duration::from_millis(100 + random_below(600));
        let lost = term.lost();
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = lost.cancelled() => {}
            _ = stop.cancelled() => {}
        }
        *slot.lock().unwrap() = None;
        if random_below(5) == 0 {
            drop(term);
            generation += 1;
        } else {
            term.release().await?;
            // Give the others a chance; the releaser would otherwise win again at once.
            tokio::time::sleep(Duration::from_millis(random_below(600))).await;
        }
    }
}

/// A random number below `n` (no rand crate in this package).
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now()) % n
}
