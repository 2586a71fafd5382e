//! The deployed OS's first-boot step (`ironpool-machine-agent first-boot --seed DIR`): reads
//! the cloud-init NoCloud seed the machine agent wrote ([`super::seed`]), sets the host
//! name, runs the user-data (a `#!` script, or the `hostname`, `write_files` and `runcmd`
//! keys of a `#cloud-config`, in cloud-init's order, rendered first when it is a
//! `## template: jinja` as Cluster API bootstrap data is) and checks in with the network agent
//! (`POST <ironpool-checkin-url>` with the bearer token from the meta-data), retrying while
//! the agent cannot be reached or answers 5xx.
//!
//! Parsing is pure ([`userdata`]); running commands ([`exec`]) and the HTTP call ([`super::client`]) are the I/O.
//! The paths the step touches on the running system are in [`Host`], so tests run it in a
//! temporary directory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::MachineError;
use super::client;
use userdata::seed_error;

/// The check-in body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckIn {
    /// meta-data `instance-id`.
    pub instance_id: String,
    /// The host name set.
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// Seconds since the kernel started.
    pub uptime_seconds: f64,
    /// What the user-data did.
    pub user_data: UserDataResult,
}

/// The paths of the running system the step reads and writes.
#[derive(Clone, Debug)]
pub struct Host {
    /// `/proc` (host name, kernel release, uptime).
    pub proc_dir: PathBuf,
    /// Where the user-data script and command output files go (`/run/ironpool`).
    pub work_dir: PathBuf,
    /// How often and how long to retry the check-in.
    pub retry_every: Duration,
    /// See `retry_every`.
    pub retry_for: Duration,
}

impl Default for Host {
    fn default() -> Self {
        Self {
            proc_dir: PathBuf::from("/proc"),
            work_dir: PathBuf::from("/run/ironpool"),
            retry_every: Duration::from_secs(3),
            retry_for: Duration::from_secs(600),
        }
    }
}

mod exec;
pub mod template;
pub mod userdata;
pub use exec::run_user_data;
pub use userdata::{
    CloudConfig, MetaData, OUTPUT_TAIL, RunCmd, UserData, UserDataResult, WriteFile,
    parse_meta_data, parse_mode, parse_user_data,
};

/// A file of the seed in `seed_dir`.
fn read_seed(seed_dir: &Path, name: &str) -> Result<String, MachineError> {
    std::fs::read_to_string(seed_dir.join(name))
        .map_err(|e| MachineError::io(format!("read {}/{name}", seed_dir.display()), &e))
}

/// A `/proc` value (`sys/kernel/hostname`, ...), trimmed; empty when unreadable.
fn proc_text(proc_dir: &Path, name: &str) -> String {
    std::fs::read_to_string(proc_dir.join(name))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The whole step: read the seed in `seed_dir`, set the host name, run the user-data,
/// check in. Returns a summary; `log` receives a line for each thing done.
pub fn first_boot(
    seed_dir: &Path,
    host: &Host,
    log: &mut dyn FnMut(&str),
) -> Result<String, MachineError> {
    let read = |name: &str| read_seed(seed_dir, name);
    let meta = parse_meta_data(&read("meta-data")?)?;
    let user_data = match read("user-data") {
        Ok(text) => parse_user_data(&template::render(&text, &meta.values)?)?,
        Err(_) if !seed_dir.join("user-data").exists() => UserData::None,
        Err(e) => return Err(e),
    };
    log(&format!(
        "instance {}: user-data {}",
        meta.instance_id,
        user_data.kind()
    ));
    let wanted = match &user_data {
        UserData::CloudConfig(CloudConfig {
            hostname: Some(h), ..
        }) => Some(h.clone()),
        _ => meta.local_hostname.clone(),
    };
    let hostname_file = host.proc_dir.join("sys/kernel/hostname");
    if let Some(name) = &wanted {
        std::fs::write(&hostname_file, name)
            .map_err(|e| MachineError::io(format!("set the host name to '{name}'"), &e))?;
        log(&format!("host name set to {name}"));
    }
    let proc_text = |name: &str| proc_text(&host.proc_dir, name);
    let result = run_user_data(&user_data, &host.work_dir, log)?;
    let checkin = CheckIn {
        instance_id: meta.instance_id.clone(),
        hostname: wanted.unwrap_or_else(|| proc_text("sys/kernel/hostname")),
        kernel: proc_text("sys/kernel/osrelease"),
        uptime_seconds: 0.0,
        user_data: result,
    };
    let started = Instant::now();
    let status = check_in(&meta, host, &checkin, log)?;
    Ok(format!(
        "checked in as {} (HTTP {status} after {:.1}s); user-data {} exit {}",
        meta.instance_id,
        started.elapsed().as_secs_f64(),
        checkin.user_data.kind,
        checkin
            .user_data
            .exit_code
            .map_or("-".to_string(), |c| c.to_string())
    ))
}

/// Where real cloud-init leaves its verdict and its output, for [`after_cloud_init`].
#[derive(Clone, Debug)]
pub struct CloudInitFiles {
    /// `/run/cloud-init/result.json`: written when cloud-init's last stage finished, with
    /// the errors of every stage (`{"v1": {"datasource": ..., "errors": [...]}}`).
    pub result: PathBuf,
    /// `/var/log/cloud-init-output.log`: what the modules and `runcmd` printed.
    pub output: PathBuf,
}

impl Default for CloudInitFiles {
    fn default() -> Self {
        Self {
            result: PathBuf::from("/run/cloud-init/result.json"),
            output: PathBuf::from("/var/log/cloud-init-output.log"),
        }
    }
}

/// The kind of a user-data text as cloud-init tells them apart by the first line.
pub fn user_data_kind(text: &str) -> &'static str {
    let first = text.lines().next().unwrap_or("").trim_end();
    match first {
        _ if text.trim().is_empty() => "none",
        _ if first.starts_with("#!") => "script",
        "#cloud-config" => "cloud-config",
        "## template: jinja" => "jinja",
        _ => "other",
    }
}

/// What cloud-init did, as the check-in reports it: exit 0 when `result.json` lists no
/// error, 1 when it lists some (they end the output), none when cloud-init has not
/// finished (no `result.json`); the output is the tail of cloud-init's output log.
pub fn cloud_init_result(user_data: &str, files: &CloudInitFiles) -> UserDataResult {
    let mut output = std::fs::read(&files.output)
        .map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(OUTPUT_TAIL)..]).into_owned())
        .unwrap_or_default();
    let exit_code = match std::fs::read_to_string(&files.result) {
        Ok(text) => {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let errors: Vec<String> = v["v1"]["errors"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e.as_str().map_or(e.to_string(), str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if v["v1"].is_null() {
                output.push_str(&format!(
                    "\n{} is not cloud-init's result (no v1)",
                    files.result.display()
                ));
                Some(1)
            } else if errors.is_empty() {
                Some(0)
            } else {
                output.push_str(&format!("\ncloud-init errors: {}", errors.join("; ")));
                Some(1)
            }
        }
        Err(e) => {
            output.push_str(&format!(
                "\ncloud-init left no {} ({e}): it has not finished, or did not run",
                files.result.display()
            ));
            None
        }
    };
    let keep = output.len().saturating_sub(OUTPUT_TAIL);
    let start = (keep..=output.len())
        .find(|&i| output.is_char_boundary(i))
        .unwrap_or(0);
    UserDataResult {
        kind: user_data_kind(user_data).to_string(),
        exit_code,
        output: output[start..].to_string(),
    }
}

/// The step for an image with real cloud-init (`first-boot --cloud-init`): cloud-init has
/// set the host name and run the user-data; this reads its verdict ([`cloud_init_result`])
/// and checks in with it, using the URL and token of the seed's meta-data.
pub fn after_cloud_init(
    seed_dir: &Path,
    host: &Host,
    files: &CloudInitFiles,
    log: &mut dyn FnMut(&str),
) -> Result<String, MachineError> {
    let read = |name: &str| read_seed(seed_dir, name);
    let meta = parse_meta_data(&read("meta-data")?)?;
    let user_data = read("user-data").unwrap_or_default();
    let result = cloud_init_result(&user_data, files);
    log(&format!(
        "instance {}: cloud-init ran the user-data ({}), exit {}",
        meta.instance_id,
        result.kind,
        result
            .exit_code
            .map_or("- (not finished)".to_string(), |c| c.to_string())
    ));
    let proc_text = |name: &str| proc_text(&host.proc_dir, name);
    let checkin = CheckIn {
        instance_id: meta.instance_id.clone(),
        hostname: proc_text("sys/kernel/hostname"),
        kernel: proc_text("sys/kernel/osrelease"),
        uptime_seconds: 0.0,
        user_data: result,
    };
    let status = check_in(&meta, host, &checkin, log)?;
    Ok(format!(
        "checked in as {} (HTTP {status}); cloud-init exit {}",
        meta.instance_id,
        checkin
            .user_data
            .exit_code
            .map_or("-".to_string(), |c| c.to_string())
    ))
}

/// Seconds since boot from `/proc/uptime`.
fn uptime(proc_dir: &Path) -> f64 {
    std::fs::read_to_string(proc_dir.join("uptime"))
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Posts `body` to the check-in URL until it answers 2xx (returns the status) or 4xx (an
/// error with the answer); connection errors and 5xx are retried every
/// `host.retry_every` for `host.retry_for`.
pub fn check_in(
    meta: &MetaData,
    host: &Host,
    body: &CheckIn,
    log: &mut dyn FnMut(&str),
) -> Result<u16, MachineError> {
    let url = &meta.checkin_url;
    let deadline = Instant::now() + host.retry_for;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let mut body = body.clone();
        body.uptime_seconds = uptime(&host.proc_dir);
        let json = serde_json::to_vec(&body).map_err(|e| seed_error("check-in body", e))?;
        let why = match client::request(
            "POST",
            url,
            Some(&meta.checkin_token),
            Some(("application/json", &json)),
        ) {
            Ok(r) if (200..300).contains(&r.status) => return Ok(r.status),
            Ok(r) if r.status >= 500 => {
                let status = r.status;
                format!("HTTP {status}: {}", r.text())
            }
            Ok(mut r) => {
                let mut text = String::new();
                let _ = (&mut r.body).take(4096).read_to_string(&mut text);
                return Err(MachineError::Http {
                    url: url.clone(),
                    message: format!("check-in refused: HTTP {}: {}", r.status, text.trim()),
                });
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() + host.retry_every > deadline {
            return Err(MachineError::Http {
                url: url.clone(),
                message: format!(
                    "no successful check-in after {tries} tries in {}s; last: {why}",
                    host.retry_for.as_secs()
                ),
            });
        }
        log(&format!(
            "check-in try {tries} failed ({why}); retrying in {:?}",
            host.retry_every
        ));
        std::thread::sleep(host.retry_every);
    }
}

#[cfg(test)]
#[path = "firstboot_tests.rs"]
mod tests;
