//! Benchmark of the TFTP server: one file (30 MiB by default) fetched from the agent's TFTP
//! server and, in the same run, from `in.tftpd` (tftpd-hpa) serving the same directory, each
//! server in its own network namespace pinned to core 1, the client in a second namespace
//! across a veth pair pinned to core 0. The client is this program (`get`): lockstep with
//! blksize 1468, and windowsize 16 (RFC 7440; tftpd-hpa has no windowsize, so that row is
//! ours only). It checks every byte against the file and prints MB/s and the ratios.
//!
//! `tftp-bench [size_mb] [rounds] [transfers]` (defaults 30, 2, 3; each row is the median of
//! `transfers` fetches). Needs root (`ip netns`). Subcommands used by the orchestration:
//! `serve <root> <addr:port>` and `get <server_ip> <file> <blksize> <windowsize> <path>`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ironpool_agents::tftp::packet::{self, Packet};
use ironpool_agents::tftp::{TftpMetrics, TftpServer};
use ironpool_e2e::netlab::{NetnsPair as Pair, NsChild, have};
use tokio_util::sync::CancellationToken;

const SERVER_IP: &str = "10.65.0.1";
const FILE: &str = "bench.img";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let root = args.get(2).context("serve <root> <addr:port>")?;
            let addr: SocketAddr = args.get(3).context("serve <root> <addr:port>")?.parse()?;
            serve(PathBuf::from(root), addr)
        }
        Some("get") => {
            let a = args
                .get(2..7)
                .context("get <ip> <file> <blksize> <window> <path>")?;
            let expected = std::fs::read(&a[4])?;
            let server: SocketAddr = format!("{}:69", a[0]).parse()?;
            let took = fetch(server, &a[1], a[2].parse()?, a[3].parse()?, &expected)?;
            println!("{}", took.as_secs_f64());
            Ok(())
        }
        _ => orchestrate(args.get(1..).unwrap_or_default()),
    }
}

/// Serves `root` on `addr` with the agent's TFTP server.
fn serve(root: PathBuf, addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let socket = tokio::net::UdpSocket::bind(addr).await?;
        let server = TftpServer::new(root, TftpMetrics::default())?;
        println!("listening on {}", socket.local_addr()?);
        server.serve(socket, CancellationToken::new()).await?;
        Ok(())
    })
}

/// Fetches `file` from `server` with the given options, checks it against `expected`, and
/// returns the time from the request to the last ACK.
fn fetch(
    server: SocketAddr,
    file: &str,
    blksize: usize,
    window: u16,
    expected: &[u8],
) -> Result<Duration> {
    let sock = UdpSocket::bind("0.0.0.0:0")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let (bs, ws) = (blksize.to_string(), window.to_string());
    let mut opts = vec![("blksize", bs.as_str())];
    if window > 1 {
        opts.push(("windowsize", ws.as_str()));
    }
    let started = Instant::now();
    sock.send_to(&packet::rrq(file, &opts), server)?;
    let mut buf = vec![0u8; 65536];
    // The first answer: an OACK (options accepted), or DATA 1 from a server without options.
    let (n, peer) = sock
        .recv_from(&mut buf)
        .context("no answer to the read request")?;
    sock.connect(peer)?;
    let (mut blksize, mut window) = (512usize, 1u16);
    let mut got = 0usize;
    let mut next: u64 = 1;
    match packet::parse(buf.get(..n).unwrap_or(&[]))? {
        Packet::Oack(o) => {
            for (k, v) in o {
                match k.to_ascii_lowercase().as_str() {
                    "blksize" => blksize = v.parse()?,
                    "windowsize" => window = v.parse()?,
                    _ => {}
                }
            }
            sock.send(&packet::ack(0))?;
        }
        Packet::Data(1, d) => {
            got = check(expected, 0, d)?;
            next = 2;
            sock.send(&packet::ack(1))?;
            if d.len() < blksize {
                return Ok(started.elapsed());
            }
        }
        other => bail!("unexpected first packet {other:?}"),
    }
    let mut in_window = 0u16;
    let mut timeouts = 0;
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                timeouts += 1;
                if timeouts > 5 {
                    bail!("transfer stalled at block {next}");
                }
                sock.send(&packet::ack(((next - 1) & 0xffff) as u16))?;
                in_window = 0;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let Packet::Data(wire, d) = packet::parse(buf.get(..n).unwrap_or(&[]))? else {
            bail!("unexpected packet during the transfer");
        };
        if wire != (next & 0xffff) as u16 {
            // Out of order or a duplicate: acknowledge what we have so the server restarts.
            sock.send(&packet::ack(((next - 1) & 0xffff) as u16))?;
            in_window = 0;
            continue;
        }
        got += check(expected, got, d)?;
        let last = d.len() < blksize;
        in_window += 1;
        if last || in_window >= window {
            sock.send(&packet::ack(wire))?;
            in_window = 0;
        }
        if last {
            break;
        }
        next += 1;
    }
    if got != expected.len() {
        bail!("got {got} bytes, want {}", expected.len());
    }
    Ok(started.elapsed())
}

fn check(expected: &[u8], at: usize, data: &[u8]) -> Result<usize> {
    if expected.get(at..at + data.len()) != Some(data) {
        bail!("wrong bytes at offset {at}");
    }
    Ok(data.len())
}

/// One measured configuration.
struct Row {
    server: &'static str,
    blksize: usize,
    window: u16,
    mbps: Vec<f64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn get(pair: &Pair, me: &Path, path: &Path, blksize: usize, window: u16) -> Result<f64> {
    let out = pair
        .client
        .cmd_on_core("0", me)
        .args([
            "get",
            SERVER_IP,
            FILE,
            &blksize.to_string(),
            &window.to_string(),
        ])
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!("tftp get: {}", String::from_utf8_lossy(&out.stderr));
    }
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    let size = std::fs::metadata(path)?.len() as f64;
    Ok(size / secs / 1e6)
}

fn wait_port(pair: &Pair, me: &Path, path: &Path) -> Result<()> {
    for _ in 0..50 {
        if get(pair, me, path, 1468, 1).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the TFTP server did not answer within 5 s")
}

fn orchestrate(args: &[String]) -> Result<()> {
    let size_mb: usize = args.first().map_or(Ok(30), |s| s.parse())?;
    let rounds: usize = args.get(1).map_or(Ok(2), |s| s.parse())?;
    let transfers: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    for prog in ["in.tftpd", "ip"] {
        if !have(prog) {
            bail!("{prog} is missing: run e2e/scripts/install-net-tools.sh");
        }
    }
    let me = std::env::current_exe()?;
    let work = tempfile::tempdir()?;
    let root = work.path().join("root");
    std::fs::create_dir(&root)?;
    let path = root.join(FILE);
    let mut rng = fastrand::Rng::with_seed(7);
    let data: Vec<u8> = (0..size_mb << 20).map(|_| rng.u8(..)).collect();
    std::fs::write(&path, &data)?;
    drop(data);
    let pair = Pair::new("tftp", &format!("{SERVER_IP}/24"), "10.65.0.2/24")?;
    println!(
        "{size_mb} MiB file over a veth pair; servers on core 1, client on core 0; median of {transfers}"
    );
    let mut rows = vec![
        Row {
            server: "ironpool",
            blksize: 1468,
            window: 1,
            mbps: vec![],
        },
        Row {
            server: "tftpd-hpa",
            blksize: 1468,
            window: 1,
            mbps: vec![],
        },
        Row {
            server: "ironpool",
            blksize: 1468,
            window: 16,
            mbps: vec![],
        },
    ];
    for round in 0..rounds {
        for server in ["ironpool", "tftpd-hpa"] {
            let proc = start(server, &pair, &me, &root, work.path())?;
            wait_port(&pair, &me, &path)?;
            for row in rows.iter_mut().filter(|r| r.server == server) {
                let mut runs = (0..transfers)
                    .map(|_| get(&pair, &me, &path, row.blksize, row.window))
                    .collect::<Result<Vec<_>>>()?;
                let m = median(&mut runs);
                println!(
                    "round {round} {:>9} blksize {} windowsize {:>2}: {m:6.1} MB/s",
                    row.server, row.blksize, row.window
                );
                row.mbps.push(m);
            }
            proc.stop(Duration::from_secs(2));
        }
    }
    println!("\n| server | blksize | windowsize | MB/s |");
    println!("|---|---|---|---|");
    let range = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    for r in &rows {
        let (lo, hi) = range(&r.mbps);
        println!(
            "| {} | {} | {} | {lo:.1}–{hi:.1} |",
            r.server, r.blksize, r.window
        );
    }
    let per_round = |a: usize, b: usize| -> Vec<f64> {
        rows[a]
            .mbps
            .iter()
            .zip(&rows[b].mbps)
            .map(|(x, y)| x / y)
            .collect()
    };
    let (lo, hi) = range(&per_round(0, 1));
    println!("ironpool / tftpd-hpa, lockstep: {lo:.2}–{hi:.2}x (goal >= 1)");
    let (lo, hi) = range(&per_round(2, 0));
    println!("ironpool windowsize 16 / lockstep: {lo:.2}–{hi:.2}x (goal >= 3)");
    Ok(())
}

fn start(server: &str, pair: &Pair, me: &Path, root: &Path, work: &Path) -> Result<NsChild> {
    let log = work.join(format!("{server}.log"));
    let cmd = if server == "ironpool" {
        let mut c = pair.server.cmd_on_core("1", me);
        c.arg("serve").arg(root).arg(format!("{SERVER_IP}:69"));
        c
    } else {
        // -L: foreground, -s: chroot into the root, -B: allow large blocks.
        let mut c = pair.server.cmd_on_core("1", "in.tftpd");
        c.args(["-L", "-s", "-B", "65464", "-a", &format!("{SERVER_IP}:69")]);
        c.arg(root);
        c
    };
    NsChild::spawn(server, cmd, &log)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The client against the agent's server on loopback at a tiny size, lockstep and
    /// windowed, with a file that ends on a block boundary and one that does not.
    #[test]
    fn client_fetches_from_our_server() {
        let dir = tempfile::tempdir().unwrap();
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        drop(sock);
        let root = dir.path().to_path_buf();
        std::thread::spawn(move || serve(root, addr));
        std::thread::sleep(Duration::from_millis(300));
        for size in [1468 * 20, 100_000] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.path().join(FILE), &data).unwrap();
            for window in [1, 16] {
                fetch(addr, FILE, 1468, window, &data).unwrap();
            }
            assert!(
                fetch(addr, FILE, 1468, 1, &data[1..]).is_err(),
                "wrong bytes fail"
            );
        }
    }
}
