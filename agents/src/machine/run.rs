//! The ramdisk's work for one boot: report the inventory, fetch the plan, carry it out
//! (erase or deploy), report progress every second and the result. Calls to the agent are
//! retried while it says "retry" (409/503 with Retry-After) or cannot be reached.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ironpool_crds::deployment::StorageLayout;
use ironpool_crds::machine::{BootPurpose, FailureReason, Hardware, ProvisioningStep};
use serde::Serialize;

use super::client::{self, Response};
use super::{BootArgs, MachineError, disks, erase, image, inventory, rescue};
use crate::http::{Plan, ProgressReport, ResultReport};

/// How long to keep retrying one call before giving up.
const RETRY_FOR: Duration = Duration::from_secs(30 * 60);

/// The agent's machine API for this boot.
pub struct Api<'a> {
    args: &'a BootArgs,
}

impl<'a> Api<'a> {
    /// The API of the agent named on the command line.
    pub fn new(args: &'a BootArgs) -> Self {
        Self { args }
    }

    fn url(&self, what: &str) -> String {
        format!(
            "{}/api/v1/machines/{}/{what}",
            self.args.url,
            self.args.mac.dashed()
        )
    }

    /// Calls until the answer is final (2xx or a refusal that retrying cannot fix).
    fn call(&self, method: &str, url: &str, body: Option<&[u8]>) -> Result<Response, MachineError> {
        let deadline = Instant::now() + RETRY_FOR;
        let mut delay = Duration::from_secs(1);
        loop {
            let attempt = client::request(
                method,
                url,
                Some(&self.args.token),
                body.map(|b| ("application/json", b)),
            );
            let wait = match attempt {
                Ok(r) if (200..300).contains(&r.status) => return Ok(r),
                Ok(r) if matches!(r.status, 409 | 503) => {
                    let secs = r.retry_after.unwrap_or(5).clamp(1, 60);
                    let status = r.status;
                    tracing::info!(url, status, message = %r.text(), "agent says retry");
                    Duration::from_secs(secs)
                }
                Ok(r) => {
                    let status = r.status;
                    let permanent =
                        r.failure.as_deref() == Some(FailureReason::ChecksumMismatch.as_str());
                    let message = format!("HTTP {status}: {}", r.text());
                    return Err(if permanent {
                        MachineError::ChecksumMismatch(format!("agent {url}: {message}"))
                    } else {
                        MachineError::Http {
                            url: url.to_string(),
                            message,
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "agent unreachable; retrying");
                    delay = (delay * 2).min(Duration::from_secs(15));
                    delay
                }
            };
            if Instant::now() + wait > deadline {
                return Err(MachineError::Http {
                    url: url.to_string(),
                    message: format!("still not answering after {}s", RETRY_FOR.as_secs()),
                });
            }
            std::thread::sleep(wait);
        }
    }

    fn post<T: Serialize>(&self, what: &str, body: &T) -> Result<(), MachineError> {
        let json = serde_json::to_vec(body).map_err(|e| MachineError::Image(e.to_string()))?;
        self.call("POST", &self.url(what), Some(&json)).map(|_| ())
    }

    /// `POST .../inventory`.
    pub fn inventory(&self, hw: &Hardware) -> Result<(), MachineError> {
        self.post("inventory", hw)
    }

    /// `GET .../plan`.
    pub fn plan(&self) -> Result<Plan, MachineError> {
        let url = self.url("plan");
        let r = self.call("GET", &url, None)?;
        let text = r.text();
        serde_json::from_str(&text).map_err(|e| MachineError::Http {
            url,
            message: format!("unreadable plan ({e}): {text}"),
        })
    }

    /// `POST .../progress`, once; a failure is only logged (the next one may pass).
    pub fn progress(&self, report: &ProgressReport) {
        let Ok(json) = serde_json::to_vec(report) else {
            return;
        };
        match client::request(
            "POST",
            &self.url("progress"),
            Some(&self.args.token),
            Some(("application/json", &json)),
        ) {
            Ok(r) if r.status == 204 || r.status == 200 => {}
            Ok(r) => {
                let status = r.status;
                tracing::warn!(status, message = %r.text(), "progress refused");
            }
            Err(e) => tracing::warn!(error = %e, "progress not sent"),
        }
    }

    /// `POST .../result`; `reason` marks a failure that another boot cannot fix.
    pub fn result(
        &self,
        ok: bool,
        message: String,
        reason: Option<FailureReason>,
    ) -> Result<(), MachineError> {
        let step = if ok {
            ProvisioningStep::Succeeded
        } else {
            ProvisioningStep::Failed
        };
        self.post(
            "result",
            &ResultReport {
                attempt: self.args.attempt,
                step,
                message: Some(message),
                reason,
            },
        )
    }

    /// Opens the image stream, waiting while the agent's cache fetches it.
    pub fn image(&self, url: &str) -> Result<Response, MachineError> {
        self.call("GET", url, None)
    }
}

/// Runs `work` while a thread posts `step` progress (`done` of `total`) every second.
fn with_progress<T>(
    api: &Api<'_>,
    step: ProvisioningStep,
    total: Option<u64>,
    done: &AtomicU64,
    work: impl FnOnce() -> T,
) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += Duration::from_secs(1);
                    api.progress(&ProgressReport {
                        step,
                        bytes_written: i64::try_from(done.load(Ordering::Relaxed)).ok(),
                        bytes_total: total.and_then(|t| i64::try_from(t).ok()),
                        message: None,
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let out = work();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// The whole boot's work under `root` (`/` in the ramdisk). Returns the summary line on
/// success; the error has been reported as the result (when the purpose has one).
pub fn run(args: &BootArgs, root: &Path) -> Result<String, MachineError> {
    let api = Api::new(args);
    if args.purpose == BootPurpose::Rescue {
        // No inventory: rescue reads and writes nothing of the machine's own.
        let plan = api.plan()?;
        if plan.purpose == BootPurpose::Rescue {
            return report(&api, rescue::start(&plan.ssh_authorized_keys, root));
        }
        tracing::warn!(plan = ?plan.purpose, "booted for rescue but the plan says otherwise; following the plan");
    }
    let hw = inventory::collect(root);
    tracing::info!(
        cores = hw.cpu.as_ref().and_then(|c| c.cores),
        memory = hw.memory.as_deref(),
        disks = hw.disks.len(),
        nics = hw.nics.len(),
        "inventory taken"
    );
    api.inventory(&hw)?;
    let plan = api.plan()?;
    if plan.attempt != args.attempt || plan.purpose != args.purpose {
        tracing::warn!(plan = ?plan.purpose, attempt = plan.attempt, "the plan differs from the command line; following the plan");
    }
    let outcome = match plan.purpose {
        BootPurpose::Enlist => return Ok("inventory reported for enlistment".to_string()),
        BootPurpose::Commission => Ok(format!(
            "inventory reported: {} cores, {}, {} disks, {} NICs",
            hw.cpu.as_ref().and_then(|c| c.cores).unwrap_or(0),
            hw.memory.as_deref().unwrap_or("unknown memory"),
            hw.disks.len(),
            hw.nics.len()
        )),
        BootPurpose::Erase => erase_disks(&api, &plan, &hw, root),
        BootPurpose::Deploy => deploy(&api, &plan, &hw, root),
        BootPurpose::Rescue => rescue::start(&plan.ssh_authorized_keys, root),
        other => Err(MachineError::Image(format!(
            "the plan's purpose {other:?} is not ramdisk work"
        ))),
    };
    report(&api, outcome)
}

/// Reports `outcome` as the attempt's result and returns it.
fn report(api: &Api<'_>, outcome: Result<String, MachineError>) -> Result<String, MachineError> {
    match outcome {
        Ok(summary) => {
            api.result(true, summary.clone(), None)?;
            Ok(summary)
        }
        Err(e) => {
            api.result(false, e.to_string(), e.reason())?;
            Err(e)
        }
    }
}

fn erase_disks(
    api: &Api<'_>,
    plan: &Plan,
    hw: &Hardware,
    root: &Path,
) -> Result<String, MachineError> {
    let policy = plan.erase.unwrap_or_default();
    let total: i64 = hw.disks.iter().map(|d| d.size_bytes).sum();
    let done = AtomicU64::new(0);
    let results = with_progress(
        api,
        ProvisioningStep::Erasing,
        u64::try_from(total).ok(),
        &done,
        || erase::erase_all(&hw.disks, policy, root, &done),
    );
    let summary = erase::summary(&results);
    if results.iter().any(|r| r.outcome.is_err()) {
        return Err(MachineError::Io {
            what: format!("erase ({policy:?})"),
            message: summary,
        });
    }
    Ok(format!("erased ({policy:?}): {summary}"))
}

fn deploy(api: &Api<'_>, plan: &Plan, hw: &Hardware, root: &Path) -> Result<String, MachineError> {
    let img = plan
        .image
        .as_ref()
        .ok_or_else(|| MachineError::Image("the Deploy plan names no image".to_string()))?;
    let checksum = image::Checksum::parse(&img.checksum)?;
    let mut resp = api.image(&img.url)?;
    let checksum = checksum.for_download(resp.repr_digest.as_deref())?;
    let total = resp.content_length.ok_or_else(|| {
        MachineError::Image(format!("{} was sent without a Content-Length", img.url))
    })?;
    let min = if img.format == ironpool_crds::deployment::ImageFormat::Raw {
        total
    } else {
        0
    };
    let disk = disks::choose(&hw.disks, plan.root_device_hints.as_ref(), min)?;
    let dev_path = root.join("dev").join(&disk.name);
    let dev = erase::open(&dev_path)?;
    let size = u64::try_from(disk.size_bytes).unwrap_or(0);
    tracing::info!(disk = %disk.name, total, format = ?img.format, "writing the image");
    let done = AtomicU64::new(0);
    let written = with_progress(
        api,
        ProvisioningStep::WritingImage,
        Some(total),
        &done,
        || {
            image::write_image(
                &mut resp.body,
                total,
                img.format,
                &checksum,
                &dev,
                size,
                &done,
            )
        },
    )?;
    let secs = written.elapsed.as_secs_f64().max(1e-3);
    let seed = match &plan.cloud_init {
        Some(ci) => {
            api.progress(&ProgressReport {
                step: ProvisioningStep::WritingConfig,
                bytes_written: None,
                bytes_total: None,
                message: Some("writing the cloud-init NoCloud seed".to_string()),
            });
            let grow = plan.layout != Some(StorageLayout::AsImage);
            write_seed(&dev, size, written.disk_bytes, ci, grow).inspect_err(|_| {
                // A disk without its first-boot data must not look deployed.
                let _ = image::wipe_ends(&dev, size);
            })?
        }
        None => "no cloud-init seed".to_string(),
    };
    Ok(format!(
        "wrote {} ({} image bytes, {:?}) to /dev/{} in {:.1}s ({:.1} MiB/s), verified with {}; {seed}",
        inventory::human_bytes(i64::try_from(written.disk_bytes).unwrap_or(0)),
        written.bytes_read,
        img.format,
        disk.name,
        secs,
        written.bytes_read as f64 / secs / f64::from(1 << 20),
        checksum.describe()
    ))
}

/// Adds the seed partition after the image (which ends at byte `image_end` of the
/// `disk_size`-byte disk) and writes the `CIDATA` filesystem into it; returns a summary.
/// `grow` is the GrowRoot layout: the image's last partition is grown up to the seed (the
/// OS grows its filesystem). Without it (AsImage) the seed also carries a `vendor-data`
/// that turns off cloud-init's own growpart and resize_rootfs, so the image's partitions
/// stay as they are.
pub fn write_seed(
    dev: &std::fs::File,
    disk_size: u64,
    image_end: u64,
    ci: &crate::http::CloudInitSeed,
    grow: bool,
) -> Result<String, MachineError> {
    let part = super::partition::add_seed_partition(dev, disk_size / 512, image_end, grow)?;
    let start = part.start;
    let hidden = u32::try_from(start)
        .map_err(|_| MachineError::NoDisk(format!("seed sector {start} is beyond 2 TiB")))?;
    let mut files = super::seed::files(ci);
    if !grow {
        files.push(("vendor-data", super::seed::AS_IMAGE_VENDOR_DATA.as_bytes()));
    }
    let fs = super::seed::fat12(&files, hidden)?;
    std::os::unix::fs::FileExt::write_all_at(dev, &fs, start * 512)
        .and_then(|()| dev.sync_all())
        .map_err(|e| MachineError::io("write the cloud-init seed", &e))?;
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let grown = part.grown.map_or(String::new(), |(n, old, new)| {
        format!(
            "; partition {n} grown from {} to {} (GrowRoot)",
            inventory::human_bytes(i64::try_from(old * 512).unwrap_or(0)),
            inventory::human_bytes(i64::try_from(new * 512).unwrap_or(0))
        )
    });
    Ok(format!(
        "cloud-init seed CIDATA ({}) at sector {start}{grown}",
        names.join(", ")
    ))
}
