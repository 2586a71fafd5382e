//! Operator configuration from flags and environment variables.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::lifecycle::Policy;

/// Parses `500ms`, `15s`, `30m`, `2h` (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write it like 500ms, 15s, 30m or 2h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => {
            return Err(format!(
                "{s:?} has unknown unit {unit:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The Ironpool controller manager.
#[derive(Parser, Debug, Clone)]
#[command(name = "ironpool-operator", version, about)]
pub struct Config {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "IRONPOOL_WATCH_NAMESPACE")]
    pub namespace: Option<String>,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "ironpool-system")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "ironpool-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: the host name and process id).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long the Lease stays valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader retries renewal before it steps down.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// Interval between renewals and between a standby's attempts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "IRONPOOL_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Serve the read-only fleet web view on this address (off when unset). Every
    /// request needs a bearer token the apiserver accepts (TokenReview) for a user who may
    /// list Machines in the watched namespace (SubjectAccessReview).
    #[arg(long, env = "IRONPOOL_WEB_LISTEN")]
    pub web_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "IRONPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Reconciles running at once per controller.
    #[arg(long, default_value_t = 16)]
    pub concurrency: u16,
    /// Do not commission New machines until a person asks.
    #[arg(long)]
    pub no_auto_commission: bool,
    /// Time allowed for commissioning (boot to inventory).
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    pub commission_timeout: Duration,
    /// Time allowed for writing the image.
    #[arg(long, default_value = "60m", value_parser = parse_duration)]
    pub deploy_timeout: Duration,
    /// Time allowed for the deployed OS to boot and check in.
    #[arg(long, default_value = "20m", value_parser = parse_duration)]
    pub boot_timeout: Duration,
    /// Time allowed for erasing disks on release.
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub erase_timeout: Duration,
    /// Time allowed for a power-off.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub power_timeout: Duration,
    /// Time from power-on to the ramdisk or the deployed OS checking in before a
    /// Deployment's status says the boot stalled, and at which step.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub checkin_deadline: Duration,
    /// Retries after the first attempt of commission, deploy and erase.
    #[arg(long, default_value_t = 2)]
    pub retries: i32,

    /// Also run the Cluster API infrastructure provider (IronpoolCluster and
    /// IronpoolMachine controllers). Needs Cluster API's CRDs installed (clusterctl init)
    /// and read access to the bootstrap Secrets of Cluster API Machines.
    #[arg(long, env = "IRONPOOL_CAPI")]
    pub capi: bool,
}

impl Config {
    /// The lifecycle policy these flags describe.
    pub fn policy(&self) -> Policy {
        Policy {
            auto_commission: !self.no_auto_commission,
            commission_timeout: self.commission_timeout,
            deploy_timeout: self.deploy_timeout,
            boot_timeout: self.boot_timeout,
            erase_timeout: self.erase_timeout,
            power_timeout: self.power_timeout,
            checkin_deadline: self.checkin_deadline,
            retries: self.retries,
        }
    }

    /// The identity, defaulting to `<hostname>-<pid>`.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "operator".into());
            format!("{}-{}", host.trim(), std::process::id())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn flags_and_defaults() {
        let c = Config::parse_from([
            "ironpool-operator",
            "--lease-duration",
            "3s",
            "--no-auto-commission",
        ]);
        assert_eq!(c.lease_duration, Duration::from_secs(3));
        assert!(!c.policy().auto_commission);
        assert_eq!(c.policy().retries, 2);
        assert_eq!(c.web_listen, None, "the web view is off by default");
    }
}
