//! Request handlers: thin glue from HTTP to the pure decisions (script rendering, token
//! check, plan) and to the report sink, the asset directory and the image cache. Every
//! failure is an answer with a status and a message that says what to do; never a panic.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ironpool_crds::machine::{
    BootPurpose, BootStep, FailureReason, Hardware, ProvisioningReport, ProvisioningStep,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;

use super::api::{self, Caller, ProgressReport, ResultReport};
use super::cache::{CacheKey, Lookup};
use super::files::{FileReply, boot_file, file_reply, open_confined};
use super::source::SecretKey;
use super::state::HttpServer;
use super::{BootEvent, MacAddr, MachineView, TokenKey, render_script};

type St = State<Arc<HttpServer>>;

/// A refusal ready to send (boxed: a `Response` is large).
type Refusal = Box<Response>;

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn retry_later(status: StatusCode, message: String) -> Response {
    let mut resp = text(status, message);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}

/// Fallback for unknown paths.
pub async fn not_found(uri: Uri) -> Response {
    text(
        StatusCode::NOT_FOUND,
        format!(
            "no route {}; this agent serves /boot/<mac>.ipxe, /assets/<name>, /images/<checksum> \
             and /api/v1/machines/<mac>/{{inventory,progress,result,plan}}",
            uri.path()
        ),
    )
}

/// `GET /boot/<mac>.ipxe`: the iPXE script for the machine's boot intent. Any other
/// `/boot/<file>` is an iPXE binary for UEFI HTTP boot ([`boot_file`]).
pub async fn boot_script(State(s): St, Path(file): Path<String>, headers: HeaderMap) -> Response {
    if !file.ends_with(".ipxe") {
        let dir = s.config.boot_files_dir.as_deref();
        return boot_file(dir, &file, &headers, s.metrics.bytes_served.clone()).await;
    }
    let Some(mac) = file
        .strip_suffix(".ipxe")
        .and_then(|m| m.parse::<MacAddr>().ok())
    else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("'{file}' is not <mac>.ipxe; ask for e.g. /boot/3c-ec-ef-12-34-56.ipxe"),
        );
    };
    let machine = s.source.machine_by_mac(&mac);
    let rendered = render_script(&s.config.script, &s.keys, &mac, machine.as_ref());
    tracing::info!(mac = %mac, summary = %rendered.summary, "iPXE script served");
    s.record(BootEvent {
        mac,
        step: BootStep::ScriptFetched,
        detail: format!("/boot/{}.ipxe: {}", mac.dashed(), rendered.summary),
        known: machine.is_some(),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        rendered.script,
    )
        .into_response()
}

/// `GET /boot/<mac>/<file>`: an iPXE binary for UEFI HTTP boot firmware, at the URL the
/// DHCP server offered that MAC. A whole-file GET is a flight-recorder step (with the
/// status when it failed); the firmware's HEAD (size) and Range requests are not.
pub async fn boot_file_for_mac(
    State(s): St,
    method: axum::http::Method,
    Path((mac, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("'{mac}' is not a MAC address; UEFI HTTP boot URLs are /boot/<mac>/<file>"),
        );
    };
    let dir = s.config.boot_files_dir.as_deref();
    let resp = boot_file(dir, &file, &headers, s.metrics.bytes_served.clone()).await;
    if method == axum::http::Method::GET && !headers.contains_key(header::RANGE) {
        let status = resp.status();
        let detail = if status == StatusCode::OK {
            let len = resp
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            format!("/boot/{file} over UEFI HTTP boot ({len} bytes)")
        } else {
            format!("/boot/{file} over UEFI HTTP boot failed: HTTP {status}")
        };
        s.record(BootEvent {
            mac,
            step: BootStep::AssetFetched,
            detail,
            known: s.source.machine_by_mac(&mac).is_some(),
        });
    }
    resp
}

/// The `mac` query parameter the rendered scripts add to asset URLs.
fn query_mac(uri: &Uri) -> Option<MacAddr> {
    uri.query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("mac="))
        .and_then(|m| m.parse().ok())
}

/// `GET /assets/<name>`: a boot asset, confined to the assets directory, with Range.
pub async fn asset(
    State(s): St,
    Path(name): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    match asset_file(&s, &name, &uri, &headers).await {
        Ok(reply) => reply.into_response(s.metrics.bytes_served.clone()),
        Err(resp) => *resp,
    }
}

/// The answer to `GET /assets/<name>`: the file to send, or the response to send instead.
/// An un-ranged fetch with `?mac=` is a flight-recorder step. Shared by the handler and
/// the zero-copy path.
pub async fn asset_file(
    s: &HttpServer,
    name: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<FileReply, Refusal> {
    let root = s.config.assets_dir.clone();
    let lookup = name.to_string();
    let opened = tokio::task::spawn_blocking(move || open_confined(&root, &lookup)).await;
    let Ok(Some((file, len))) = opened else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!("no asset '{name}' in this agent's assets directory"),
        )));
    };
    if let Some(mac) = query_mac(uri)
        && !headers.contains_key(header::RANGE)
    {
        let known = s.source.machine_by_mac(&mac).is_some();
        let detail = format!("/assets/{name} ({len} bytes)");
        s.record(BootEvent {
            mac,
            step: BootStep::AssetFetched,
            detail,
            known,
        });
    }
    file_reply(file, len, headers, ())
}

/// `GET /images/<algo>-<hex>`: a verified image from the cache, with Range.
pub async fn image(State(s): St, Path(key): Path<String>, headers: HeaderMap) -> Response {
    match image_file(&s, &key, &headers) {
        Ok(reply) => reply.into_response(s.metrics.bytes_served.clone()),
        Err(resp) => *resp,
    }
}

/// The answer to `GET /images/<key>`: the cached file to send (holding a reader guard so
/// eviction leaves it alone), or the response to send instead. Shared with the zero-copy path.
pub fn image_file(s: &HttpServer, key: &str, headers: &HeaderMap) -> Result<FileReply, Refusal> {
    let Some(key) = CacheKey::from_file_name(key) else {
        return Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!("'{key}' is not an image address; use sha256-<hex> or sha512-<hex>"),
        )));
    };
    match s.cache.lookup(&key) {
        Lookup::Ready(file, len, digest, guard) => {
            let mut reply = file_reply(file, len, headers, guard)?;
            // RFC 9530: the digest of the whole image, also on a range answer.
            if let Some(v) = digest.and_then(|d| HeaderValue::from_str(&d).ok()) {
                reply.headers.insert(super::reprdigest::NAME, v);
            }
            Ok(reply)
        }
        Lookup::Fetching => Err(Box::new(retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "image {} is being fetched from upstream and verified; retry",
                key.file_name()
            ),
        ))),
        Lookup::Failed(e) => {
            let mut resp = text(StatusCode::BAD_GATEWAY, e.to_string());
            if matches!(e, super::HttpError::ChecksumMismatch { .. }) {
                resp.headers_mut().insert(
                    api::FAILURE_HEADER,
                    HeaderValue::from_static(FailureReason::ChecksumMismatch.as_str()),
                );
            }
            Err(Box::new(resp))
        }
        Lookup::Unknown => Err(Box::new(text(
            StatusCode::NOT_FOUND,
            format!(
                "image {} is not in this agent's cache and no plan asked for it",
                key.file_name()
            ),
        ))),
    }
}

/// Parses the MAC and checks the bearer token; the error is the response to send.
fn authorize(s: &HttpServer, mac: &str, headers: &HeaderMap) -> Result<Caller, Refusal> {
    check_token(
        s,
        mac,
        headers,
        api::authenticate,
        "machine API call refused",
    )
}

/// Parses the MAC, reads the bearer token and hands both to `check` (ramdisk or OS
/// tokens); a refusal is a 400 for a bad MAC or a 401 with the reason.
fn check_token<T>(
    s: &HttpServer,
    mac: &str,
    headers: &HeaderMap,
    check: impl FnOnce(&TokenKey, &MacAddr, Option<MachineView>, Option<&str>) -> Result<T, String>,
    refused: &str,
) -> Result<T, Refusal> {
    let Ok(mac) = mac.parse::<MacAddr>() else {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            format!("'{mac}' is not a MAC address; write it like 3c-ec-ef-12-34-56"),
        ));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    check(&s.keys, &mac, s.source.machine_by_mac(&mac), bearer).map_err(|msg| {
        tracing::info!(mac = %mac, reason = %msg, "{refused}");
        let mut resp = text(StatusCode::UNAUTHORIZED, msg);
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Box::new(resp)
    })
}

fn parse<T: DeserializeOwned>(what: &str, body: &Bytes) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("malformed {what} JSON: {e}"),
        )
    })
}

fn machine_only(caller: Caller) -> Result<(Box<super::MachineView>, i64), Refusal> {
    match caller {
        Caller::Machine {
            machine, attempt, ..
        } => Ok((machine, attempt)),
        Caller::Enlisting(mac) => Err(refuse(
            StatusCode::FORBIDDEN,
            format!("MAC {mac} is enlisting: it may only send its inventory and read its plan"),
        )),
    }
}

fn sink_failed(e: super::HttpError) -> Refusal {
    Box::new(retry_later(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{e}; retry"),
    ))
}

fn refuse(status: StatusCode, message: impl Into<String>) -> Refusal {
    Box::new(text(status, message))
}

/// `POST /api/v1/machines/<mac>/inventory`.
pub async fn inventory(
    State(s): St,
    Path(mac): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let caller = match authorize(&s, &mac, &headers) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let hw: Hardware = match parse("inventory", &body) {
        Ok(hw) => hw,
        Err(resp) => return *resp,
    };
    let detail = format!(
        "inventory: {} cores, {} disks, {} NICs",
        hw.cpu.as_ref().and_then(|c| c.cores).unwrap_or(0),
        hw.disks.len(),
        hw.nics.len()
    );
    let (mac, machine) = match &caller {
        Caller::Machine { machine, .. } => (machine.mac, Some(machine.as_ref())),
        Caller::Enlisting(mac) => (*mac, None),
    };
    if let Err(e) = s.sink.inventory(mac, machine, hw).await {
        return *sink_failed(e);
    }
    s.record(BootEvent {
        mac,
        step: BootStep::RamdiskCheckIn,
        detail,
        known: machine.is_some(),
    });
    StatusCode::NO_CONTENT.into_response()
}

/// `POST /api/v1/machines/<mac>/progress`.
pub async fn progress(
    State(s): St,
    Path(mac): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let (machine, attempt) = machine_only(authorize(&s, &mac, &headers)?)?;
        let p: ProgressReport = parse("progress", &body)?;
        if matches!(
            p.step,
            ProvisioningStep::Succeeded | ProvisioningStep::Failed
        ) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "Succeeded and Failed are results: POST them to .../result",
            ));
        }
        let report = ProvisioningReport {
            attempt,
            step: p.step,
            bytes_written: p.bytes_written,
            bytes_total: p.bytes_total,
            message: api::clip(p.message),
            reason: None,
            updated_at: Some(Time(Timestamp::now())),
        };
        s.sink
            .provisioning(&machine, report)
            .await
            .map_err(sink_failed)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    result.await.unwrap_or_else(|resp| *resp)
}

/// `POST /api/v1/machines/<mac>/result`.
pub async fn result(
    State(s): St,
    Path(mac): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let caller = authorize(&s, &mac, &headers)?;
        let rescue = matches!(
            caller,
            Caller::Machine {
                purpose: BootPurpose::Rescue,
                ..
            }
        );
        let (machine, attempt) = machine_only(caller)?;
        let r: ResultReport = parse("result", &body)?;
        if !matches!(
            r.step,
            ProvisioningStep::Succeeded | ProvisioningStep::Failed
        ) {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "a result's step is Succeeded or Failed; progress goes to .../progress",
            ));
        }
        if r.attempt != attempt {
            return Err(refuse(
                StatusCode::CONFLICT,
                format!(
                    "result is for attempt {} but this token is for attempt {attempt}",
                    r.attempt
                ),
            ));
        }
        let detail = format!("result: {:?} for attempt {attempt}", r.step);
        let report = ProvisioningReport {
            attempt,
            step: r.step,
            bytes_written: None,
            bytes_total: None,
            message: api::clip(r.message),
            reason: r.reason.filter(|_| r.step == ProvisioningStep::Failed),
            updated_at: Some(Time(Timestamp::now())),
        };
        let written = if rescue {
            s.sink.rescue(&machine, report).await
        } else {
            s.sink.provisioning(&machine, report).await
        };
        written.map_err(sink_failed)?;
        s.record(BootEvent {
            mac: machine.mac,
            step: BootStep::RamdiskCheckIn,
            detail,
            known: true,
        });
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    result.await.unwrap_or_else(|resp| *resp)
}

/// `POST /api/v1/machines/<mac>/booted`: the deployed OS checked in from its own disk.
/// Recorded as the flight-recorder step OSBooted, which moves the Machine to Deployed.
pub async fn booted(
    State(s): St,
    Path(mac): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (machine, attempt) = match check_token(
        &s,
        &mac,
        &headers,
        api::authenticate_os,
        "OS check-in refused",
    ) {
        Ok(ok) => ok,
        Err(resp) => return *resp,
    };
    let mac = machine.mac;
    let checkin: api::OsCheckIn = match parse("check-in", &body) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let detail = checkin.summary(attempt);
    tracing::info!(
        machine = %format!("{}/{}", machine.namespace, machine.name),
        instance = %checkin.instance_id,
        "{detail}"
    );
    s.record(BootEvent {
        mac,
        step: BootStep::OsBooted,
        detail,
        known: true,
    });
    StatusCode::NO_CONTENT.into_response()
}

/// Fills a Deploy caller's user-data and network-config from the Deployment's Secrets.
async fn read_cloud_init(s: &HttpServer, mut caller: Caller) -> Result<Caller, Refusal> {
    let Caller::Machine {
        machine,
        purpose: BootPurpose::Deploy,
        ..
    } = &mut caller
    else {
        return Ok(caller);
    };
    let namespace = machine.namespace.clone();
    let Some(d) = machine.deploy.as_mut() else {
        return Ok(caller);
    };
    let wanted = [
        (d.user_data_secret.take(), &mut d.user_data),
        (d.network_data_secret.take(), &mut d.network_data),
    ];
    for (secret, slot) in wanted {
        let Some(SecretKey { name, key }) = secret else {
            continue;
        };
        match s.source.secret_value(&namespace, &name, &key).await {
            Ok(Some(v)) => *slot = Some(v),
            Ok(None) => {
                return Err(Box::new(retry_later(
                    StatusCode::CONFLICT,
                    format!(
                        "the Deployment names Secret {namespace}/{name} but it has no key \
                         '{key}' (or does not exist); create it, the ramdisk retries"
                    ),
                )));
            }
            Err(e) => return Err(sink_failed(e)),
        }
    }
    Ok(caller)
}

/// `GET /api/v1/machines/<mac>/plan`.
pub async fn plan(State(s): St, Path(mac): Path<String>, headers: HeaderMap) -> Response {
    let caller = match authorize(&s, &mac, &headers) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let caller = match read_cloud_init(&s, caller).await {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let plan = match api::plan(&caller, s.config.script.base_url(), &s.keys) {
        Ok(p) => p,
        Err(msg) => return retry_later(StatusCode::CONFLICT, msg),
    };
    if let Caller::Machine { machine, .. } = &caller
        && let (Some(d), Some(_)) = (&machine.deploy, &plan.image)
    {
        s.cache.prefetch(&d.image);
    }
    let (mac, known) = match &caller {
        Caller::Machine { machine, .. } => (machine.mac, true),
        Caller::Enlisting(mac) => (*mac, false),
    };
    let detail = format!("plan: {:?} attempt {}", plan.purpose, plan.attempt);
    s.record(BootEvent {
        mac,
        step: BootStep::RamdiskCheckIn,
        detail,
        known,
    });
    match serde_json::to_vec(&plan) {
        Ok(json) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            json,
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the plan: {e}"),
        ),
    }
}
