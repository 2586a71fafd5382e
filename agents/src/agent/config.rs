//! Agent configuration in two layers: [`Cli`] (clap flags, each with an environment
//! variable) and the validated [`AgentConfig`] built from it by a pure `TryFrom`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use super::AgentError;
use crate::dhcp::config::parse_duration;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The Ironpool network agent: DHCP, TFTP and HTTP boot for the Subnets this node serves.
#[derive(Parser, Debug, Clone)]
#[command(name = "ironpool-agent", version)]
pub struct Cli {
    /// This node's name (the Lease identity and `servedBy.agent`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Watch Subnets, Machines and Deployments in this namespace only (all when unset).
    #[arg(long, env = "IRONPOOL_NAMESPACE")]
    pub namespace: Option<String>,
    /// Provisioning interface the DHCP server binds to (SO_BINDTODEVICE), e.g. eno2.
    #[arg(long, env = "IRONPOOL_DHCP_INTERFACE")]
    pub dhcp_interface: Option<String>,
    /// This node's IPv4 address on the provisioning network (DHCP server id, next-server).
    #[arg(long, env = "IRONPOOL_SERVER_IP")]
    pub server_ip: Option<Ipv4Addr>,
    /// DHCP listen address.
    #[arg(long, env = "IRONPOOL_DHCP_LISTEN", default_value = "0.0.0.0:67")]
    pub dhcp_listen: SocketAddrV4,
    /// Do not serve DHCP (Lease election and servedBy still run).
    #[arg(long, env = "IRONPOOL_NO_DHCP")]
    pub no_dhcp: bool,
    /// DHCP lease journal (dynamic leases survive restarts).
    #[arg(
        long,
        env = "IRONPOOL_JOURNAL",
        default_value = "/var/lib/ironpool/dhcp-leases.journal"
    )]
    pub journal: PathBuf,
    /// Milliseconds to wait for an ICMP echo reply before offering a dynamic address
    /// (RFC 2131 §4.4.1); an address that answers is quarantined. 0 turns probing off.
    /// Probing is what keeps a standby that takes a Subnet over from offering addresses
    /// the dead holder's clients still use.
    #[arg(long, env = "IRONPOOL_DHCP_PROBE_MS", default_value_t = 500)]
    pub dhcp_probe_ms: u64,
    /// TFTP listen address.
    #[arg(long, env = "IRONPOOL_TFTP_LISTEN", default_value = "0.0.0.0:69")]
    pub tftp_listen: SocketAddr,
    /// The iPXE binaries (Debian's `ipxe` package): the TFTP root, also served over HTTP
    /// as /boot/<file> for UEFI HTTP boot. Symlinks in it are followed; one that leads
    /// outside it must end at a world-readable file (Debian's ipxe.efi -> /boot/ipxe.efi).
    #[arg(long, env = "IRONPOOL_TFTP_ROOT", default_value = "/usr/lib/ipxe")]
    pub tftp_root: PathBuf,
    /// Do not serve TFTP.
    #[arg(long, env = "IRONPOOL_NO_TFTP")]
    pub no_tftp: bool,
    /// HTTP boot server listen address.
    #[arg(long, env = "IRONPOOL_HTTP_LISTEN", default_value = "0.0.0.0:8080")]
    pub http_listen: SocketAddr,
    /// Base URL machines use to reach this agent's HTTP server
    /// (default http://<server-ip>:<http port>).
    #[arg(long, env = "IRONPOOL_HTTP_BASE_URL")]
    pub http_base_url: Option<String>,
    /// Do not serve HTTP boot.
    #[arg(long, env = "IRONPOOL_NO_HTTP")]
    pub no_http: bool,
    /// Boot assets (ramdisk kernel and initrd), served under /assets/.
    #[arg(
        long,
        env = "IRONPOOL_ASSETS_DIR",
        default_value = "/var/lib/ironpool/assets"
    )]
    pub assets_dir: PathBuf,
    /// Image cache directory.
    #[arg(
        long,
        env = "IRONPOOL_IMAGE_CACHE_DIR",
        default_value = "/var/cache/ironpool/images"
    )]
    pub image_cache_dir: PathBuf,
    /// Largest total size of the image cache, bytes.
    #[arg(long, env = "IRONPOOL_IMAGE_CACHE_LIMIT", default_value_t = 50 << 30)]
    pub image_cache_limit: u64,
    /// Extra kernel arguments for the ramdisk.
    #[arg(long, env = "IRONPOOL_KERNEL_ARGS", default_value = "")]
    pub kernel_args: String,
    /// File holding the secret that derives per-machine API tokens.
    #[arg(long, env = "IRONPOOL_TOKEN_SECRET_FILE")]
    pub token_secret_file: Option<PathBuf>,
    /// The token secret itself (prefer the file).
    #[arg(long, env = "IRONPOOL_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "IRONPOOL_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "IRONPOOL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Do not run the BMC power controller.
    #[arg(long, env = "IRONPOOL_NO_POWER")]
    pub no_power: bool,
    /// Label selector of the Secrets the power controller watches for BMC credential
    /// changes, e.g. `ironpool.dev/bmc-credentials=true` (every Secret in the watched
    /// namespaces when unset). A Machine's `credentialsSecretRef` is read by name either
    /// way; only changes to matching Secrets are picked up without a restart.
    #[arg(long, env = "IRONPOOL_SECRET_SELECTOR")]
    pub secret_selector: Option<String>,
    /// Subnet Lease duration (a standby takes over within it), e.g. 15s.
    #[arg(long, env = "IRONPOOL_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: String,
    /// How long a holder retries renewal before it stops serving, e.g. 10s.
    #[arg(long, env = "IRONPOOL_RENEW_DEADLINE", default_value = "10s")]
    pub renew_deadline: String,
    /// Renewal and standby retry interval, e.g. 2s.
    #[arg(long, env = "IRONPOOL_RETRY_PERIOD", default_value = "2s")]
    pub retry_period: String,
    /// Enlistments (Machine creates for unknown MACs) per minute at most.
    #[arg(long, env = "IRONPOOL_ENLIST_PER_MINUTE", default_value_t = 10)]
    pub enlist_per_minute: u32,
    /// Time allowed for in-flight work after SIGTERM, e.g. 10s.
    #[arg(long, env = "IRONPOOL_DRAIN", default_value = "10s")]
    pub drain: String,
}

/// Validated agent settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Node name: Lease identity and `servedBy.agent`.
    pub node_name: String,
    /// Namespace to watch; all when None.
    pub namespace: Option<String>,
    /// DHCP settings; None when DHCP is disabled.
    pub dhcp: Option<DhcpSettings>,
    /// TFTP listen address and root; None when disabled.
    pub tftp: Option<(SocketAddr, PathBuf)>,
    /// HTTP settings; None when disabled.
    pub http: Option<HttpSettings>,
    /// Metrics/health listen address.
    pub metrics_listen: SocketAddr,
    /// Log format.
    pub log_format: LogFormat,
    /// Power controller settings; None when it does not run.
    pub power: Option<PowerSettings>,
    /// Lease timing: duration, renew deadline, retry period.
    pub lease: (Duration, Duration, Duration),
    /// Enlistments per minute.
    pub enlist_per_minute: u32,
    /// Bounded drain on shutdown.
    pub drain: Duration,
}

/// DHCP settings.
#[derive(Clone, Debug)]
pub struct DhcpSettings {
    /// Listen address.
    pub listen: SocketAddrV4,
    /// Interface bound with SO_BINDTODEVICE.
    pub interface: Option<String>,
    /// The agent's address on the provisioning network.
    pub server_ip: Ipv4Addr,
    /// Lease journal.
    pub journal: PathBuf,
    /// ICMP probe timeout before offers (None: no probing).
    pub probe: Option<Duration>,
}

/// HTTP boot settings.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// Base URL machines use.
    pub base_url: String,
    /// Boot assets.
    pub assets_dir: PathBuf,
    /// The iPXE binaries (the TFTP root), for UEFI HTTP boot.
    pub boot_files_dir: PathBuf,
    /// Image cache directory and size limit.
    pub cache: (PathBuf, u64),
    /// Extra ramdisk kernel arguments.
    pub kernel_args: String,
    /// Token secret (bytes), from the file or the flag.
    pub token_secret: TokenSecret,
}

/// Power controller settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerSettings {
    /// Label selector of the watched credentials Secrets; all Secrets when None.
    pub secret_selector: Option<String>,
}

/// Where the token secret comes from (read at start, outside the pure conversion).
#[derive(Clone, Debug)]
pub enum TokenSecret {
    /// Read from this file.
    File(PathBuf),
    /// Given inline.
    Inline(String),
}

fn secs(flag: &str, text: &str) -> Result<Duration, AgentError> {
    parse_duration(text)
        .map(|s| Duration::from_secs(u64::from(s)))
        .map_err(|_| AgentError::Config(format!("--{flag} '{text}' is not a duration like 15s")))
}

impl TryFrom<&Cli> for AgentConfig {
    type Error = AgentError;

    fn try_from(cli: &Cli) -> Result<Self, Self::Error> {
        let bad = |m: &str| Err(AgentError::Config(m.to_string()));
        if cli.node_name.trim().is_empty() {
            return bad("--node-name (NODE_NAME) is empty; set it from spec.nodeName");
        }
        let needs_ip = !cli.no_dhcp || (!cli.no_http && cli.http_base_url.is_none());
        let server_ip = match (cli.server_ip, needs_ip) {
            (Some(ip), _) => ip,
            (None, false) => Ipv4Addr::UNSPECIFIED,
            (None, true) => {
                return bad(
                    "--server-ip (IRONPOOL_SERVER_IP) is required for DHCP and for the default \
                     HTTP base URL: this node's address on the provisioning network",
                );
            }
        };
        let dhcp = (!cli.no_dhcp).then(|| DhcpSettings {
            listen: cli.dhcp_listen,
            interface: cli.dhcp_interface.clone(),
            server_ip,
            journal: cli.journal.clone(),
            probe: (cli.dhcp_probe_ms > 0).then(|| Duration::from_millis(cli.dhcp_probe_ms)),
        });
        let http = if cli.no_http {
            None
        } else {
            let token_secret = match (&cli.token_secret_file, &cli.token_secret) {
                (Some(f), _) => TokenSecret::File(f.clone()),
                (None, Some(s)) if !s.is_empty() => TokenSecret::Inline(s.clone()),
                _ => {
                    return bad(
                        "the HTTP server needs a token secret: set --token-secret-file \
                         (IRONPOOL_TOKEN_SECRET_FILE) to a file of random bytes",
                    );
                }
            };
            let base_url = cli
                .http_base_url
                .clone()
                .unwrap_or_else(|| format!("http://{server_ip}:{}", cli.http_listen.port()));
            Some(HttpSettings {
                listen: cli.http_listen,
                base_url,
                assets_dir: cli.assets_dir.clone(),
                boot_files_dir: cli.tftp_root.clone(),
                cache: (cli.image_cache_dir.clone(), cli.image_cache_limit),
                kernel_args: cli.kernel_args.clone(),
                token_secret,
            })
        };
        let lease = (
            secs("lease-duration", &cli.lease_duration)?,
            secs("renew-deadline", &cli.renew_deadline)?,
            secs("retry-period", &cli.retry_period)?,
        );
        if !(lease.2 < lease.1 && lease.1 < lease.0) {
            return bad("Lease timing must satisfy retry-period < renew-deadline < lease-duration");
        }
        if cli.enlist_per_minute == 0 {
            return bad("--enlist-per-minute must be at least 1");
        }
        Ok(AgentConfig {
            node_name: cli.node_name.clone(),
            namespace: cli.namespace.clone().filter(|n| !n.is_empty()),
            dhcp,
            tftp: (!cli.no_tftp).then(|| (cli.tftp_listen, cli.tftp_root.clone())),
            http,
            metrics_listen: cli.metrics_listen,
            log_format: cli.log_format,
            power: (!cli.no_power).then(|| PowerSettings {
                secret_selector: cli
                    .secret_selector
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            }),
            lease,
            enlist_per_minute: cli.enlist_per_minute,
            drain: secs("drain", &cli.drain)?,
        })
    }
}

impl AgentConfig {
    /// The power controller's config (None when it does not run): the watched namespace
    /// and Secret selector from the flags, `metrics` registered by the caller, the rest
    /// the controller's defaults.
    pub fn power_config(&self, metrics: crate::power::Metrics) -> Option<crate::power::Config> {
        let power = self.power.as_ref()?;
        Some(crate::power::Config {
            namespace: self.namespace.clone(),
            secret_selector: power.secret_selector.clone(),
            metrics,
            ..Default::default()
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        let mut v = vec!["ironpool-agent", "--node-name", "n1"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_need_server_ip_and_secret() {
        assert!(AgentConfig::try_from(&cli(&[])).is_err());
        let c = cli(&["--server-ip", "10.0.0.2", "--token-secret", "s3cret"]);
        let cfg = AgentConfig::try_from(&c).unwrap();
        assert_eq!(cfg.http.unwrap().base_url, "http://10.0.0.2:8080");
        assert_eq!(cfg.tftp.unwrap().1, PathBuf::from("/usr/lib/ipxe"));
        assert_eq!(cfg.lease.0, Duration::from_secs(15));
    }

    #[test]
    fn servers_can_be_disabled() {
        let c = cli(&["--no-dhcp", "--no-http", "--no-tftp", "--no-power"]);
        let cfg = AgentConfig::try_from(&c).unwrap();
        assert!(cfg.dhcp.is_none() && cfg.http.is_none() && cfg.tftp.is_none());
        assert!(cfg.power.is_none());
        assert!(cfg.power_config(Default::default()).is_none());
    }

    #[test]
    fn secret_selector_reaches_the_power_controller() {
        let base = ["--no-dhcp", "--no-http", "--namespace", "dc-a"];
        let with = |extra: &[&'static str]| {
            let args: Vec<&str> = base.iter().chain(extra).copied().collect();
            let cfg = AgentConfig::try_from(&cli(&args)).unwrap();
            cfg.power_config(Default::default()).unwrap()
        };
        let power = with(&["--secret-selector", "ironpool.dev/bmc-credentials=true"]);
        assert_eq!(
            power.secret_selector.as_deref(),
            Some("ironpool.dev/bmc-credentials=true")
        );
        assert_eq!(power.namespace.as_deref(), Some("dc-a"));
        // Unset or blank (the chart's default value): every Secret.
        assert_eq!(with(&[]).secret_selector, None);
        assert_eq!(with(&["--secret-selector", " "]).secret_selector, None);
        // The other settings stay the controller's defaults.
        let defaults = crate::power::Config::default();
        assert_eq!(power.sync_interval, defaults.sync_interval);
        assert_eq!(power.max_concurrent, defaults.max_concurrent);
    }

    #[test]
    fn rejects_unsafe_lease_timing() {
        let c = cli(&["--no-dhcp", "--no-http", "--lease-duration", "5s"]);
        assert!(AgentConfig::try_from(&c).is_err());
    }
}
