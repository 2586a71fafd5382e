//! The simulated part of each boot-storm server: its BMC, a minimal Redfish service (one
//! listener per server, as each real server has its own BMC) that the agent's real Redfish
//! driver talks to over HTTP. It answers the service root (no SessionService, so basic
//! auth), the ComputerSystem (PowerState, Boot, the Reset action), PATCH of the boot
//! override, and Reset, which powers the simulated server on, off or through a cycle.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use base64::Engine as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What a Reset asks of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// On, ForceOn: boot if off.
    On,
    /// ForceOff, GracefulShutdown.
    Off,
    /// ForceRestart, PowerCycle: boot again now.
    Cycle,
}

/// The server behind a BMC.
pub trait Machine: Send + Sync + 'static {
    /// Whether it is powered on.
    fn is_on(&self) -> bool;
    /// Carries out a reset.
    fn power(&self, what: Power);
}

const SYSTEM: &str = "/redfish/v1/Systems/1";

/// Serves the BMC of `machine` on `listener` until the task is aborted; `auth` is the
/// expected `Authorization` value (`Basic ...`).
pub async fn serve(listener: TcpListener, machine: Arc<dyn Machine>, auth: Arc<String>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (m, a) = (machine.clone(), auth.clone());
        tokio::spawn(async move {
            let _ = connection(stream, m.as_ref(), &a).await;
        });
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// The address the agent is given: `redfish+http://<addr>/redfish/v1/Systems/1`.
pub fn address(addr: SocketAddr) -> String {
    format!("redfish+http://{addr}{SYSTEM}")
}

async fn connection(stream: TcpStream, m: &dyn Machine, auth: &str) -> Result<()> {
    let mut r = BufReader::new(stream);
    loop {
        let (_, headers) = match super::http::read_head(&mut r).await {
            Ok(h) => h,
            Err(_) => return Ok(()),
        };
        let line = headers.first().map(|(_, v)| v.clone()).unwrap_or_default();
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").trim_end_matches('/').to_string(),
        );
        let get = |name: &str| {
            headers
                .iter()
                .skip(1)
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let len: usize = get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len.min(1 << 16)];
        r.read_exact(&mut body).await?;
        let (status, answer) = if get("authorization").as_deref() != Some(auth) {
            (401, json!({"error": "unauthorized"}))
        } else {
            route(m, &method, &path, &body)
        };
        let text = answer.to_string();
        let reason = match status {
            200 => "OK",
            204 => "No Content",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let head = if status == 204 {
            format!("HTTP/1.1 204 {reason}\r\n\r\n")
        } else {
            format!(
                "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
                text.len()
            )
        };
        r.get_mut().write_all(head.as_bytes()).await?;
    }
}

fn route(m: &dyn Machine, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let reset_target = format!("{SYSTEM}/Actions/ComputerSystem.Reset");
    match (method, path) {
        ("GET", "/redfish/v1") => (
            200,
            json!({"@odata.id": "/redfish/v1/", "Id": "RootService",
                   "Systems": {"@odata.id": "/redfish/v1/Systems"}}),
        ),
        ("GET", "/redfish/v1/Systems") => (
            200,
            json!({"Members": [{"@odata.id": SYSTEM}], "Members@odata.count": 1}),
        ),
        ("GET", p) if p == SYSTEM => (
            200,
            json!({
                "@odata.id": SYSTEM, "Id": "1", "Name": "boot-storm server",
                "PowerState": if m.is_on() { "On" } else { "Off" },
                "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous",
                         "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd"]},
                "Actions": {"#ComputerSystem.Reset": {"target": reset_target,
                    "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart"]}}
            }),
        ),
        ("PATCH", p) if p == SYSTEM => (204, json!({})),
        ("POST", p) if p == reset_target => {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            match v["ResetType"].as_str().unwrap_or("") {
                "On" | "ForceOn" => m.power(Power::On),
                "ForceOff" | "GracefulShutdown" => m.power(Power::Off),
                "ForceRestart" | "PowerCycle" => m.power(Power::Cycle),
                other => return (400, json!({"error": format!("ResetType {other}")})),
            }
            (204, json!({}))
        }
        _ => (404, json!({"error": format!("{method} {path}")})),
    }
}
