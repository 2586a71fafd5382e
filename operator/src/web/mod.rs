//! The fleet web view (off by default, `--web-listen`): a read-only page of the machine
//! table, machine pages and Subnet pages, live over Server-Sent Events from the view's own
//! watches, behind the apiserver's authentication (`auth.rs`). Plain HTML and one small
//! script, embedded in the binary.

pub mod auth;
pub mod fleet;
pub mod view;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use futures::Stream;
use ironpool_crds::MachineInventory;
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use self::auth::{Auth, COOKIE_NAME, Verdict};
use self::fleet::{Change, Fleet};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
/// Events shown on a machine page at most (the newest).
const EVENTS_SHOWN: usize = 50;
/// An open stream ends after this and the browser reconnects, so that a token whose
/// access was revoked stops receiving within this time.
const STREAM_LIFETIME: Duration = Duration::from_secs(600);

struct Shared {
    client: Client,
    fleet: Fleet,
    auth: Auth,
}

type S = State<Arc<Shared>>;

/// Binds `addr` and serves the view of `namespace` (None = all) until `stop` fires.
pub async fn serve(
    addr: SocketAddr,
    client: Client,
    namespace: Option<String>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let fleet = Fleet::start(&client, namespace.as_deref(), stop.clone());
    let shared = Arc::new(Shared {
        auth: Auth::new(client.clone(), namespace),
        client,
        fleet,
    });
    let protected = Router::new()
        .route("/", get(|| async { page(INDEX) }))
        .route(
            "/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route("/api/fleet", get(fleet_json))
        .route("/api/machines/{ns}/{name}", get(machine_json))
        .route("/api/subnets/{ns}/{name}", get(subnet_json))
        .route("/api/stream", get(stream))
        .route_layer(middleware::from_fn_with_state(shared.clone(), require));
    let app = Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", axum::routing::post(logout))
        .route("/app.css", get(|| async { asset(APP_CSS, "text/css") }))
        .merge(protected)
        .with_state(shared);
    ironpool_runtime::http::serve_router(addr, app, stop, "web view server").await
}

fn page(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn asset(body: &'static str, kind: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The login page, with `problem` said above the form.
fn login_page(status: StatusCode, problem: &str, scope: &str) -> Response {
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Ironpool fleet: sign in</title>
<link rel="stylesheet" href="/app.css"></head><body class="login"><main>
<h1>Ironpool fleet</h1><p class="problem" id="problem">{problem}</p>
<p>This view needs a Kubernetes bearer token of a user allowed to <code>{scope}</code>.
Get one with <code>kubectl create token &lt;serviceaccount&gt; -n &lt;namespace&gt;</code>
(or your own, e.g. from <code>kubectl config view --raw</code>), paste it here, or send it
as <code>Authorization: Bearer &lt;token&gt;</code>.</p>
<form method="post" action="/login"><label>Token <input type="password" name="token" id="token" autocomplete="off" required></label>
<button type="submit" id="signin">Sign in</button></form></main></body></html>"#,
        problem = escape(problem),
        scope = escape(scope),
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn refusal(verdict: &Verdict, scope: &str) -> Option<Response> {
    match verdict {
        Verdict::Allowed { .. } => None,
        Verdict::Unauthenticated { reason } => Some(login_page(
            StatusCode::UNAUTHORIZED,
            &format!("Not signed in: {reason}."),
            scope,
        )),
        Verdict::Forbidden { user, reason } => {
            let why = if reason.is_empty() {
                String::new()
            } else {
                format!(" ({reason})")
            };
            Some(login_page(
                StatusCode::FORBIDDEN,
                &format!(
                    "{user} may not {scope}{why}. Ask for a RoleBinding to a role with that \
                     verb, or sign in as another user."
                ),
                scope,
            ))
        }
    }
}

fn unavailable(e: &kube::Error) -> Response {
    tracing::warn!(error = %e, "web view cannot check a token");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot check the token with the apiserver: {e}; try again"),
    )
        .into_response()
}

/// Middleware of every protected route: 401 without a valid token, 403 without access.
async fn require(State(s): S, req: Request, next: Next) -> Response {
    let token = auth::token(req.headers());
    match s.auth.check(token.as_deref()).await {
        Ok(v) => match refusal(&v, &s.auth.scope()) {
            Some(r) => r,
            None => next.run(req).await,
        },
        Err(e) => unavailable(&e),
    }
}

async fn login_form(State(s): S, headers: HeaderMap) -> Response {
    let token = auth::token(&headers);
    match s.auth.check(token.as_deref()).await {
        Ok(Verdict::Allowed { .. }) => Redirect::to("/").into_response(),
        _ => login_page(StatusCode::OK, "", &s.auth.scope()),
    }
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(s): S, Form(form): Form<LoginForm>) -> Response {
    let token = form.token.trim().to_string();
    let verdict = match s
        .auth
        .check(Some(&token).filter(|t| !t.is_empty()).map(|t| t.as_str()))
        .await
    {
        Ok(v) => v,
        Err(e) => return unavailable(&e),
    };
    if let Some(r) = refusal(&verdict, &s.auth.scope()) {
        return r;
    }
    // HttpOnly: the page's script never sees the token. SameSite=Strict: no other site's
    // page can make the browser send it. Secure is left to the TLS terminator in front.
    let cookie = format!("{COOKIE_NAME}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age=3600");
    match HeaderValue::from_str(&cookie) {
        Ok(v) => ([(header::SET_COOKIE, v)], Redirect::to("/")).into_response(),
        Err(_) => login_page(
            StatusCode::UNAUTHORIZED,
            "That is not a token.",
            &s.auth.scope(),
        ),
    }
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE_NAME}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

fn subnets(s: &Shared) -> Vec<Arc<ironpool_crds::Subnet>> {
    let mut all = s.fleet.subnets.state();
    all.sort_by_key(|x| view::key(x.as_ref()));
    all
}

fn snapshot(s: &Shared) -> Value {
    let subnets = subnets(s);
    let mut machines = s.fleet.machines.state();
    machines.sort_by_key(|m| view::key(m.as_ref()));
    json!({
        "machines": machines.iter().map(|m| view::row(m, &subnets)).collect::<Vec<_>>(),
        "subnets": subnets.iter().map(|x| view::subnet_row(x)).collect::<Vec<_>>(),
    })
}

async fn fleet_json(State(s): S) -> Response {
    if !s.fleet.ready(Duration::from_secs(10)).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the view's caches are still filling",
        )
            .into_response();
    }
    Json(snapshot(&s)).into_response()
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("{what} not found")).into_response()
}

async fn machine_json(State(s): S, Path((ns, name)): Path<(String, String)>) -> Response {
    s.fleet.ready(Duration::from_secs(10)).await;
    let Some(m) = s.fleet.machines.get(&ObjectRef::new(&name).within(&ns)) else {
        return not_found(&format!("Machine {ns}/{name}"));
    };
    let deployment = m
        .status
        .as_ref()
        .and_then(|st| st.deployment_ref.as_ref())
        .and_then(|d| {
            s.fleet
                .deployments
                .get(&ObjectRef::new(&d.name).within(&ns))
        });
    let selector = format!("involvedObject.kind=Machine,involvedObject.name={name}");
    let events = match Api::<Event>::namespaced(s.client.clone(), &ns)
        .list(&ListParams::default().fields(&selector))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            tracing::warn!(error = %e, machine = name, "web view cannot list events");
            Vec::new()
        }
    };
    // The disks are in the MachineInventory (the status keeps their count and sizes).
    let disks = match m.status.as_ref().and_then(|st| st.inventory.as_ref()) {
        Some(summary) => match Api::<MachineInventory>::namespaced(s.client.clone(), &ns)
            .get_opt(&summary.inventory_ref.name)
            .await
        {
            Ok(inv) => inv.map(|i| i.spec.hardware.disks).unwrap_or_default(),
            Err(e) => {
                tracing::warn!(error = %e, machine = name, "web view cannot read the inventory");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    let mut page = view::machine_page(&m, deployment.as_deref(), &subnets(&s), &events);
    page["disks"] = json!(disks);
    if let Some(list) = page["events"].as_array_mut() {
        let drop = list.len().saturating_sub(EVENTS_SHOWN);
        list.drain(..drop);
    }
    Json(page).into_response()
}

async fn subnet_json(State(s): S, Path((ns, name)): Path<(String, String)>) -> Response {
    s.fleet.ready(Duration::from_secs(10)).await;
    let Some(subnet) = s.fleet.subnets.get(&ObjectRef::new(&name).within(&ns)) else {
        return not_found(&format!("Subnet {ns}/{name}"));
    };
    let all = subnets(&s);
    let mut machines: Vec<Value> = s
        .fleet
        .machines
        .state()
        .iter()
        .filter(|m| {
            view::subnets_of(m, &all).contains(&name)
                && m.metadata.namespace.as_deref() == Some(&ns)
        })
        .map(|m| view::row(m, &all))
        .collect();
    machines.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Json(view::subnet_page(&subnet, &machines)).into_response()
}

/// The SSE events for a batch of changes (deduplicated, in a stable order).
fn events_for(s: &Shared, changes: BTreeSet<Change>) -> Vec<SseEvent> {
    if changes.contains(&Change::Resync) {
        return vec![sse("snapshot", &snapshot(s))];
    }
    let subnets = subnets(s);
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for c in changes {
        match c {
            Change::Machine(key) => {
                let Some((ns, name)) = key.split_once('/') else {
                    continue;
                };
                match s.fleet.machines.get(&ObjectRef::new(name).within(ns)) {
                    Some(m) => rows.push(view::row(&m, &subnets)),
                    None => out.push(sse("gone", &json!(key))),
                }
            }
            Change::MachineGone(key) => out.push(sse("gone", &json!(key))),
            Change::Subnet(key) => {
                let row = key
                    .split_once('/')
                    .and_then(|(ns, name)| s.fleet.subnets.get(&ObjectRef::new(name).within(ns)));
                match row {
                    Some(x) => out.push(sse("subnet", &view::subnet_row(&x))),
                    None => out.push(sse("subnet-gone", &json!(key))),
                }
            }
            Change::Deployment(machine) => out.push(sse("deployment", &json!(machine))),
            Change::Resync => {}
        }
    }
    if !rows.is_empty() {
        out.insert(0, sse("rows", &Value::Array(rows)));
    }
    out
}

fn sse(name: &str, data: &Value) -> SseEvent {
    SseEvent::default().event(name).data(data.to_string())
}

/// `/api/stream`: a snapshot, then every change as it happens. Changes that arrive
/// together go out as one batch; a page that falls behind gets a new snapshot.
async fn stream(State(s): S) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.fleet.subscribe();
    s.fleet.ready(Duration::from_secs(10)).await;
    let first = vec![sse("snapshot", &snapshot(&s))];
    let deadline = tokio::time::Instant::now() + STREAM_LIFETIME;
    let state = (s, rx, first);
    let events = futures::stream::unfold(state, move |(s, mut rx, mut pending)| async move {
        loop {
            if let Some(ev) = pending.pop() {
                return Some((Ok(ev), (s, rx, pending)));
            }
            let first = tokio::select! {
                r = rx.recv() => r,
                () = tokio::time::sleep_until(deadline) => return None,
            };
            let mut batch = BTreeSet::new();
            match first {
                Ok(c) => {
                    batch.insert(c);
                }
                Err(RecvError::Lagged(_)) => {
                    batch.insert(Change::Resync);
                }
                Err(RecvError::Closed) => return None,
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => {
                        batch.insert(c);
                    }
                    Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                        batch.insert(Change::Resync);
                    }
                    Err(_) => break,
                }
            }
            pending = events_for(&s, batch);
            pending.reverse();
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
