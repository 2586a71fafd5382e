//! The serving half's real peers from Debian, configured as Metal3's Ironic image runs
//! them: dnsmasq for DHCP (PXE by client architecture, the iPXE user class answered with
//! an http:// script URL) and TFTP of the same iPXE binaries, and nginx serving the same
//! script, kernel and initrd files.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netlab::{Netns, NsChild};

/// Where the peers serve: DHCP range, server address, HTTP port.
#[derive(Clone, Debug)]
pub struct Network {
    /// The server's address on the bridge.
    pub server_ip: String,
    /// The bridge.
    pub bridge: String,
    /// First and last dynamic address, and the netmask.
    pub range: (String, String, String),
    /// nginx's port.
    pub http_port: u16,
}

/// dnsmasq's configuration: no DNS, DHCP on the bridge only, PXE by architecture.
pub fn dnsmasq_conf(net: &Network, tftp_root: &Path, leases: &Path) -> String {
    let (start, end, mask) = &net.range;
    format!(
        "port=0\nlog-facility=-\ninterface={bridge}\nbind-interfaces\nno-resolv\nno-hosts\n\
         dhcp-range={start},{end},{mask},10m\ndhcp-authoritative\ndhcp-leasefile={leases}\n\
         dhcp-userclass=set:ipxe,iPXE\ndhcp-match=set:efi64,option:client-arch,7\n\
         dhcp-boot=tag:ipxe,http://{ip}:{port}/boot.ipxe\n\
         dhcp-boot=tag:!ipxe,tag:efi64,ipxe.efi,,{ip}\n\
         dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe,,{ip}\n\
         enable-tftp\ntftp-root={root}\n",
        bridge = net.bridge,
        ip = net.server_ip,
        port = net.http_port,
        leases = leases.display(),
        root = tftp_root.display(),
    )
}

/// nginx's configuration: one worker (as root: the files are under the cache directory,
/// which its default user may not traverse), sendfile, static files under `www`.
pub fn nginx_conf(net: &Network, dir: &Path, www: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
           default_type application/octet-stream;\n\
           client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
           fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n\
           scgi_temp_path {d}/nginx-scgi;\n\
           server {{ listen {ip}:{port}; root {www}; }}\n}}\n",
        ip = net.server_ip,
        port = net.http_port,
        www = www.display(),
    )
}

/// The script nginx serves: the same kernel and initrd, by URL on nginx.
pub fn script(net: &Network) -> String {
    let base = format!("http://{}:{}", net.server_ip, net.http_port);
    format!(
        "#!ipxe\necho boot-storm peer script\nkernel {base}/assets/vmlinuz initrd=initramfs console=ttyS0\n\
         initrd {base}/assets/initramfs\nboot\n"
    )
}

/// Running dnsmasq and nginx.
pub struct Peers {
    /// dnsmasq (one process).
    pub dnsmasq: NsChild,
    /// nginx master (its worker is its child).
    pub nginx: NsChild,
}

impl Drop for Peers {
    /// Stops nginx with SIGTERM first: its master then stops its worker, which a SIGKILL
    /// of the master (what dropping an [`NsChild`] sends) would leave running.
    fn drop(&mut self) {
        if self.nginx.signal("TERM").is_ok() {
            let _ = self.nginx.wait_exit(Duration::from_secs(5));
        }
    }
}

/// Starts both in `ns`, serving `tftp_root` and `assets` (vmlinuz, initramfs).
pub fn start(
    ns: &Netns,
    net: &Network,
    dir: &Path,
    tftp_root: &Path,
    assets: &Path,
) -> Result<Peers> {
    std::fs::create_dir_all(dir)?;
    let www = dir.join("www");
    std::fs::create_dir_all(www.join("assets"))?;
    for f in ["vmlinuz", "initramfs"] {
        let to = www.join("assets").join(f);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(assets.join(f), &to).with_context(|| format!("copying {f}"))?;
    }
    std::fs::write(www.join("boot.ipxe"), script(net))?;
    let conf = dir.join("dnsmasq.conf");
    std::fs::write(
        &conf,
        dnsmasq_conf(net, tftp_root, &dir.join("dnsmasq.leases")),
    )?;
    let mut cmd = ns.cmd("dnsmasq");
    cmd.arg("--keep-in-foreground")
        .arg("--user=root")
        .arg(format!("--conf-file={}", conf.display()));
    let dnsmasq = NsChild::spawn("dnsmasq", cmd, &dir.join("dnsmasq.log"))?;
    let nconf = dir.join("nginx.conf");
    std::fs::write(&nconf, nginx_conf(net, dir, &www))?;
    let mut cmd = ns.cmd("nginx");
    cmd.arg("-c").arg(&nconf).arg("-p").arg(dir);
    let nginx = NsChild::spawn("nginx", cmd, &dir.join("nginx.log"))?;
    // Both bind at once; give them a moment and check they are still running.
    std::thread::sleep(Duration::from_millis(500));
    let mut p = Peers { dnsmasq, nginx };
    for c in [&mut p.dnsmasq, &mut p.nginx] {
        if !c.running() {
            anyhow::bail!("a peer exited at start\n{}", c.tail(20));
        }
    }
    Ok(p)
}
