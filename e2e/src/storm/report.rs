//! The whole benchmark run and its Markdown report: one server alone, then N at once (both
//! to Ready), then the serving half of N fresh servers against the Ironpool agent (operator
//! stopped) and against dnsmasq + nginx.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use super::bench::{self, Full, Serve};
use super::env::{self, Env};
use super::peers;

/// Everything measured.
pub struct Results {
    /// One server alone.
    pub alone: Full,
    /// N at once.
    pub storm: Full,
    /// Serving half against the agent (None with `--full-only`).
    pub agent_serve: Option<Serve>,
    /// Serving half against dnsmasq + nginx (None with `--full-only`).
    pub peer_serve: Option<Serve>,
}

/// Checks what the correctness test asserts: every server Ready, on a Machine with its
/// MAC, one Machine per MAC, a lease for every server, no failed boot.
pub fn check(f: &Full) -> Result<()> {
    let n = f.servers as usize;
    if f.ready.len() != n {
        bail!("{} of {n} Ready", f.ready.len());
    }
    let dup: Vec<_> = f.machines.iter().filter(|(_, v)| v.len() != 1).collect();
    if !dup.is_empty() {
        bail!("MACs on more than one Machine: {dup:?}");
    }
    for mac in f.ready.keys() {
        let names = f.machines.get(mac).cloned().unwrap_or_default();
        let want = format!("enlisted-{}", mac.replace(':', "-"));
        if names != [want.clone()] {
            bail!("{mac} booted but its Machine is {names:?}, not {want}");
        }
        if f.leases.get(mac).is_none_or(|l| l.is_empty()) {
            bail!("{mac} is Ready but the fleet saw no lease for it");
        }
    }
    if !f.failures.is_empty() {
        bail!("failed boots: {:?}", f.failures);
    }
    Ok(())
}

/// Runs everything with `n` servers; `exe` is the `boot-storm` binary (for `fleet`).
/// `full_only` stops after the two runs to Ready (no serving-half comparison).
pub async fn run(
    exe: &Path,
    dir: &Path,
    n: u32,
    release: bool,
    full_only: bool,
) -> Result<Results> {
    let mut env = Env::start(dir, release)?;
    let timeout = Duration::from_secs(1200);
    eprintln!("[boot-storm] 1 server alone");
    let (alone, fleet_a) = bench::full(&env, exe, 0, 1, timeout).await?;
    check(&alone)?;
    eprintln!(
        "[boot-storm] 1 alone: Ready in {:.2}s; now {n} at once",
        alone.wall.as_secs_f64()
    );
    let (storm, fleet_b) = bench::full(&env, exe, 1000, n, timeout).await?;
    let (alone, storm) = with_stats(alone, fleet_a, storm, fleet_b)?;
    check(&storm)?;
    eprintln!(
        "[boot-storm] {n}: all Ready in {:.2}s",
        storm.wall.as_secs_f64()
    );
    if full_only {
        return Ok(Results {
            alone,
            storm,
            agent_serve: None,
            peer_serve: None,
        });
    }
    eprintln!("[boot-storm] serving half against the agent");
    env.stop_operator()?;
    let pids: Vec<_> = bench::ironpool_pids(&env)
        .into_iter()
        .filter(|(n, _)| n == "agent")
        .collect();
    let agent_serve = bench::serve(&env, exe, 3000, n, &pids, timeout)?;
    env.stop_agent()?;
    eprintln!("[boot-storm] serving half against dnsmasq + nginx");
    let net = peers::Network {
        server_ip: env::SERVER_IP.into(),
        bridge: "br0".into(),
        range: (
            env::RANGE.0.into(),
            env::RANGE.1.into(),
            env::RANGE.2.into(),
        ),
        http_port: 8080,
    };
    let p = peers::start(
        &env.srv,
        &net,
        &env.dir.join("peers"),
        &env.tftp,
        &env.assets,
    )?;
    let pids = vec![
        ("dnsmasq".to_string(), p.dnsmasq.pid()),
        ("nginx".to_string(), p.nginx.pid()),
    ];
    let peer_serve = bench::serve(&env, exe, 5000, n, &pids, timeout)?;
    Ok(Results {
        alone,
        storm,
        agent_serve: Some(agent_serve),
        peer_serve: Some(peer_serve),
    })
}

fn with_stats(
    mut a: Full,
    fa: bench::FleetProc,
    mut b: Full,
    fb: bench::FleetProc,
) -> Result<(Full, Full)> {
    b.stats = fb.finish(Duration::from_secs(30))?;
    a.stats = fa.finish(Duration::from_secs(30))?;
    Ok((a, b))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn count(v: &serde_json::Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or(0)
}

fn milestone_table(s: &mut String, a: &Full, b: &Full) {
    let n = b.servers;
    let _ = writeln!(
        s,
        "\n| where the time goes (s since power-on) | alone | {n} at once: p50 | p90 | last |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for ((name, one), (_, many)) in a.milestones.iter().zip(&b.milestones) {
        let (mut one, mut many) = (one.clone(), many.clone());
        let _ = writeln!(
            s,
            "| {name} | {:.2} | {:.2} | {:.2} | {:.2} |",
            percentile(&mut one, 0.5),
            percentile(&mut many, 0.5),
            percentile(&mut many, 0.9),
            percentile(&mut many, 1.0)
        );
    }
}

impl Results {
    /// The one-alone run's writes by resource, on one line.
    fn alone_writes_line(&self) -> Option<String> {
        let w = &self.alone.writes;
        (!w.is_empty()).then(|| {
            let parts: Vec<String> = w.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
            format!(
                "\napiserver writes of the one-alone run: {}.",
                parts.join(", ")
            )
        })
    }
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let (a, b) = (&r.alone, &r.storm);
    let n = b.servers;
    let ratio = b.wall.as_secs_f64() / a.wall.as_secs_f64().max(1e-9);
    let mut t: Vec<f64> = b.ready.values().copied().collect();
    let _ = writeln!(
        s,
        "| run | servers | power-on to all Ready | p50 / p90 Ready | DHCP retransmits | TFTP timeouts / gaps | boots (overtaken) | apiserver writes per server |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (name, f) in [("alone", a), ("storm", b)] {
        let mut t: Vec<f64> = f.ready.values().copied().collect();
        let writes: f64 = f
            .writes
            .iter()
            .filter(|(k, _)| !k.contains("(HTTP"))
            .map(|(_, v)| v)
            .sum();
        let _ = writeln!(
            s,
            "| {name} | {} | {:.2} s | {:.2} / {:.2} s | {} | {} / {} | {} ({}) | {:.1} |",
            f.servers,
            f.wall.as_secs_f64(),
            percentile(&mut t, 0.5),
            percentile(&mut t, 0.9),
            count(&f.stats, "dhcpRetransmits"),
            count(&f.stats, "tftpTimeouts"),
            count(&f.stats, "tftpGaps"),
            count(&f.stats, "boots"),
            f.overtaken,
            writes / f64::from(f.servers)
        );
    }
    let _ = writeln!(
        s,
        "\nRatio {n} at once / 1 alone: **{ratio:.2}x** (p50 Ready {:.2} s).",
        percentile(&mut t, 0.5)
    );
    milestone_table(&mut s, a, b);
    let _ = writeln!(
        s,
        "\napiserver writes during the {n}-server run, per server:"
    );
    for (k, v) in &b.writes {
        let _ = writeln!(s, "- {k}: {:.2}", v / f64::from(n));
    }
    let _ = writeln!(
        s,
        "\nLoad average (1 min) at the start and end of the {n}-server run: {} / {}.",
        b.load.0, b.load.1
    );
    let _ = writeln!(
        s,
        "\nCPU seconds during the {n}-server run (of {:.1} s wall x 2 cores):",
        b.wall.as_secs_f64()
    );
    for (k, v) in &b.cpu {
        let _ = writeln!(s, "- {k}: {v:.2} s");
    }
    for (k, v) in &b.rss {
        let _ = writeln!(s, "- {k} peak RSS: {v:.1} MiB");
    }
    if let Some(x) = &r.alone_writes_line() {
        let _ = writeln!(s, "{x}");
    }
    let serves: Vec<(&str, &Serve)> = [
        ("Ironpool agent", r.agent_serve.as_ref()),
        ("dnsmasq + nginx", r.peer_serve.as_ref()),
    ]
    .into_iter()
    .filter_map(|(n, x)| Some((n, x?)))
    .collect();
    if !serves.is_empty() {
        let _ = writeln!(
            s,
            "\n| serving half, {n} servers | wall | DHCP retransmits | TFTP timeouts / gaps | server CPU | failed |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
    }
    for (name, x) in serves.iter().copied() {
        let cpu: Vec<String> = x.cpu.iter().map(|(k, v)| format!("{k} {v:.2} s")).collect();
        let _ = writeln!(
            s,
            "| {name} | {:.2} s | {} | {} / {} | {} | {} |",
            x.wall.as_secs_f64(),
            count(&x.stats, "dhcpRetransmits"),
            count(&x.stats, "tftpTimeouts"),
            count(&x.stats, "tftpGaps"),
            cpu.join(", "),
            x.failures.len()
        );
    }
    let none = Vec::new();
    for (name, f) in [
        ("storm", &b.failures),
        (
            "Ironpool serving half",
            r.agent_serve.as_ref().map_or(&none, |x| &x.failures),
        ),
        (
            "dnsmasq + nginx",
            r.peer_serve.as_ref().map_or(&none, |x| &x.failures),
        ),
    ] {
        if !f.is_empty() {
            let _ = writeln!(s, "\nFailed boots, {name} ({}), first 5:", f.len());
            for x in f.iter().take(5) {
                let _ = writeln!(s, "- {x}");
            }
        }
    }
    s
}
