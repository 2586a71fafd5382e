//! A real Prometheus server for tests: built from its Go module by
//! `e2e/scripts/build-prometheus.sh`, scraping static targets every second, with small
//! helpers over its HTTP API (instant queries, metric names, target health).
//!
//! ```no_run
//! # fn demo(dir: &std::path::Path) -> anyhow::Result<()> {
//! use ironpool_e2e::prometheus::{Prometheus, ScrapeJob};
//! let job = ScrapeJob::new("operator", &["127.0.0.1:8080"]);
//! let prometheus = Prometheus::start(dir, &[job])?;
//! prometheus.wait_for_targets(std::time::Duration::from_secs(30))?;
//! let names = prometheus.series_names("ironpool_")?;
//! # let _ = names;
//! # Ok(())
//! # }
//! ```
//!
//! The API is plain HTTP on loopback, so a few lines over `std::net::TcpStream` talk to it
//! (HTTP/1.0, so the answer is neither chunked nor kept alive); no HTTP client crate.

use std::{
    collections::BTreeSet,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::process::{Server, Watchdog, free_ports};

/// How long a new Prometheus gets to answer `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one API request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of its log quoted when Prometheus fails.
const LOG_TAIL: usize = 30;
/// Start attempts, for a port taken between picking and binding it.
const START_ATTEMPTS: usize = 3;

/// How Prometheus reaches a job's targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS without verifying the target's certificate (test servers use throwaway
    /// self-signed certificates).
    Https,
}

/// One scrape job of static targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeJob {
    /// The job name (the `job` label).
    pub name: String,
    /// `host:port` of each target (not URLs: see `scheme` and `metrics_path`).
    pub targets: Vec<String>,
    /// HTTP or HTTPS.
    pub scheme: Scheme,
    /// The path scraped, e.g. `/metrics`.
    pub metrics_path: String,
}

impl ScrapeJob {
    /// Job `name` scraping `http://<target>/metrics` for each target.
    pub fn new(name: &str, targets: &[&str]) -> ScrapeJob {
        ScrapeJob {
            name: name.to_owned(),
            targets: targets.iter().map(|t| (*t).to_owned()).collect(),
            scheme: Scheme::Http,
            metrics_path: "/metrics".to_owned(),
        }
    }
}

/// The Prometheus binary: `$IRONPOOL_PROMETHEUS` when set, else what
/// `e2e/scripts/build-prometheus.sh` builds (once, cached under
/// `${IRONPOOL_CACHE:-~/.cache/ironpool}`; about ten minutes cold on 2 cores). Remembered for
/// the life of the process.
pub fn binary() -> Result<PathBuf> {
    static CACHED: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cached = CACHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = cached.as_ref() {
        return Ok(found.clone());
    }
    let found = match std::env::var_os("IRONPOOL_PROMETHEUS") {
        Some(path) => PathBuf::from(path),
        None => {
            let script = crate::repo_dir().join("e2e/scripts/build-prometheus.sh");
            let stdout = crate::binaries::run_build_script(&script)?;
            parse_script_output(&stdout)
                .with_context(|| format!("reading the output of {}", script.display()))?
        }
    };
    if !found.is_file() {
        bail!(
            "Prometheus binary {} is missing; unset IRONPOOL_PROMETHEUS or run \
             e2e/scripts/build-prometheus.sh",
            found.display()
        );
    }
    *cached = Some(found.clone());
    Ok(found)
}

fn parse_script_output(stdout: &str) -> Result<PathBuf> {
    stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("PROMETHEUS="))
        .map(PathBuf::from)
        .with_context(|| format!("no PROMETHEUS= line in {stdout:?}"))
}

/// A running Prometheus. Its configuration, TSDB and log are in `<dir>/prometheus/`; dropping
/// it kills the process and keeps that directory (the caller owns `dir`). If the test
/// process dies instead, a watchdog kills Prometheus and removes `<dir>/prometheus/`.
pub struct Prometheus {
    server: Server,
    watchdog: Option<Watchdog>,
    dir: PathBuf,
    address: SocketAddr,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("dir", &self.dir)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Prometheus {
    /// Writes a `prometheus.yml` scraping `jobs` every second, starts Prometheus on a free
    /// loopback port with its TSDB under `<dir>/prometheus/`, and waits until `/-/ready`
    /// answers 200. Builds the binary first if needed (see [`binary`]).
    pub fn start(dir: &Path, jobs: &[ScrapeJob]) -> Result<Prometheus> {
        Self::start_program(&binary()?, dir, jobs)
    }

    fn start_program(program: &Path, dir: &Path, jobs: &[ScrapeJob]) -> Result<Prometheus> {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, render_config(jobs)?)
            .with_context(|| format!("writing {}", config.display()))?;
        let started = Instant::now();
        for attempt in 1..=START_ATTEMPTS {
            let mut prometheus = Self::spawn(program, &dir, &config)?;
            let Err(error) = prometheus.wait_ready() else {
                eprintln!(
                    "ironpool-e2e: Prometheus ready on {} in {:.1?} ({})",
                    prometheus.address,
                    started.elapsed(),
                    dir.display()
                );
                return Ok(prometheus);
            };
            let taken = prometheus.server.log_contains("address already in use");
            let tail = prometheus.server.log_tail(LOG_TAIL);
            drop(prometheus);
            if !(taken && attempt < START_ATTEMPTS) {
                return Err(error.context(format!(
                    "Prometheus did not start (config {}); its log says why:\n{tail}",
                    config.display()
                )));
            }
        }
        bail!("Prometheus could not bind a free port in {START_ATTEMPTS} attempts")
    }

    fn spawn(program: &Path, dir: &Path, config: &Path) -> Result<Prometheus> {
        let [port] = free_ports::<1>()?;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut watchdog = Watchdog::spawn(dir)?;
        let mut command = Command::new(program);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            // Hidden upstream flag (default 5s): how often the scrape manager takes in new
            // targets, so also the delay before the first scrape. 1s keeps tests short.
            .arg("--scrape.discovery-reload-interval=1s");
        let server = Server::spawn_command("prometheus", command, &[], dir, &mut watchdog)?;
        Ok(Prometheus {
            server,
            watchdog: Some(watchdog),
            dir: dir.to_path_buf(),
            address,
        })
    }

    /// Polls `/-/ready` until it answers 200, while the process keeps running.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.server.exited()? {
                bail!("prometheus exited ({status}) before it was ready");
            }
            if matches!(http_get(self.address, "/-/ready"), Ok((200, _))) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "http://{}/-/ready did not answer 200 within {READY_TIMEOUT:?}",
                    self.address
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The base URL of the web API, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The directory with `prometheus.yml`, `data/` and `prometheus.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An instant query (`/api/v1/query`); returns the answer's `data`
    /// (`{"resultType": ..., "result": [...]}`).
    pub fn query(&self, promql: &str) -> Result<Value> {
        self.api(&format!("/api/v1/query?query={}", percent_encode(promql)))
            .with_context(|| format!("querying {promql:?}"))
    }

    /// The metric names that start with `prefix` (from `/api/v1/label/__name__/values`).
    pub fn series_names(&self, prefix: &str) -> Result<BTreeSet<String>> {
        parse_label_values(&self.api("/api/v1/label/__name__/values")?, prefix)
    }

    /// Every active target as `(job, instance, up, lastError)` (from `/api/v1/targets`);
    /// `up` is false until the first scrape succeeds.
    pub fn targets_up(&self) -> Result<Vec<(String, String, bool, String)>> {
        parse_targets(&self.api("/api/v1/targets?state=active")?)
    }

    /// Waits until there is at least one target and every target is up; the error lists
    /// each target with its last scrape error.
    pub fn wait_for_targets(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.targets_up()?;
            if !targets.is_empty() && targets.iter().all(|(_, _, up, _)| *up) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let listed: Vec<String> = targets
                    .iter()
                    .map(|(job, instance, up, error)| {
                        let state = if *up { "up" } else { "down" };
                        format!("  job {job} instance {instance}: {state} {error}")
                    })
                    .collect();
                bail!(
                    "Prometheus targets not all up after {timeout:?} (is each /metrics served, \
                     and on the address the job names?):\n{}",
                    if listed.is_empty() {
                        "  (no targets: the config has no static targets)".to_owned()
                    } else {
                        listed.join("\n")
                    }
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// GET `path` and unwrap the API's `{"status": "success", "data": ...}` envelope.
    fn api(&self, path: &str) -> Result<Value> {
        let (status, body) = http_get(self.address, path).with_context(|| {
            format!(
                "GET {}{path}\n{}",
                self.url(),
                self.server.log_tail(LOG_TAIL)
            )
        })?;
        parse_envelope(status, &body).with_context(|| format!("GET {}{path}", self.url()))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.server.kill();
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.disarm();
        }
    }
}

/// `prometheus.yml`: every job scraped every second, static targets only.
fn render_config(jobs: &[ScrapeJob]) -> Result<String> {
    let mut names = BTreeSet::new();
    let mut scrape_configs = Vec::new();
    for job in jobs {
        if job.name.is_empty() || !names.insert(job.name.as_str()) {
            bail!(
                "scrape job names must be non-empty and distinct; got {:?}",
                job.name
            );
        }
        if let Some(target) = job
            .targets
            .iter()
            .find(|t| t.contains("://") || !t.contains(':'))
        {
            bail!(
                "scrape job {:?}: target {target:?} must be host:port (set scheme and \
                 metrics_path for the rest of the URL)",
                job.name
            );
        }
        let mut config = json!({
            "job_name": job.name,
            "scheme": match job.scheme { Scheme::Http => "http", Scheme::Https => "https" },
            "metrics_path": job.metrics_path,
            "static_configs": [{ "targets": job.targets }],
        });
        if job.scheme == Scheme::Https {
            config["tls_config"] = json!({ "insecure_skip_verify": true });
        }
        scrape_configs.push(config);
    }
    let config = json!({
        "global": {
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
        },
        "scrape_configs": scrape_configs,
    });
    serde_saphyr::to_string(&config).context("rendering prometheus.yml")
}

/// The `data` of a successful API answer, or the API's own error.
fn parse_envelope(status: u16, body: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(body).with_context(|| {
        format!(
            "HTTP {status}, not a JSON API answer: {:?}",
            body.chars().take(300).collect::<String>()
        )
    })?;
    match value["status"].as_str() {
        Some("success") => Ok(value["data"].clone()),
        _ => bail!(
            "HTTP {status}: Prometheus answered {}: {}",
            value["errorType"].as_str().unwrap_or("an error"),
            value["error"].as_str().unwrap_or(body)
        ),
    }
}

fn parse_label_values(data: &Value, prefix: &str) -> Result<BTreeSet<String>> {
    let values = data
        .as_array()
        .with_context(|| format!("label values are not a list: {data}"))?;
    Ok(values
        .iter()
        .filter_map(Value::as_str)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}

fn parse_targets(data: &Value) -> Result<Vec<(String, String, bool, String)>> {
    let targets = data["activeTargets"]
        .as_array()
        .with_context(|| format!("no activeTargets list in {data}"))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Ok(targets
        .iter()
        .map(|t| {
            (
                text(&t["labels"]["job"]),
                text(&t["labels"]["instance"]),
                t["health"] == "up",
                text(&t["lastError"]),
            )
        })
        .collect())
}

/// `s` with everything but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// One HTTP/1.0 GET on `address`; returns the status code and the body.
fn http_get(address: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {address}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {address}"))?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| {
        format!(
            "no end of headers in {:?}",
            text.chars().take(200).collect::<String>()
        )
    })?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status code in {:?}", head.lines().next()))?;
    Ok((status, body.to_owned()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn renders_a_static_config_scraped_every_second() {
        let mut agent = ScrapeJob::new("agent", &["10.0.0.2:9443"]);
        agent.scheme = Scheme::Https;
        agent.metrics_path = "/internal/metrics".to_owned();
        let operator = ScrapeJob::new("operator", &["127.0.0.1:8080", "127.0.0.1:8081"]);
        let yaml = render_config(&[operator, agent]).unwrap();
        let parsed: Value = serde_saphyr::from_str(&yaml).unwrap();
        let expected = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "operator",
                    "scheme": "http",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": ["127.0.0.1:8080", "127.0.0.1:8081"]}],
                },
                {
                    "job_name": "agent",
                    "scheme": "https",
                    "metrics_path": "/internal/metrics",
                    "static_configs": [{"targets": ["10.0.0.2:9443"]}],
                    "tls_config": {"insecure_skip_verify": true},
                },
            ],
        });
        assert_eq!(parsed, expected, "{yaml}");
    }

    #[test]
    fn rejects_urls_and_duplicate_jobs() {
        let url = ScrapeJob::new("operator", &["http://127.0.0.1:8080/metrics"]);
        let error = render_config(&[url]).unwrap_err().to_string();
        assert!(error.contains("must be host:port"), "{error}");
        let job = ScrapeJob::new("operator", &["127.0.0.1:8080"]);
        let error = render_config(&[job.clone(), job]).unwrap_err().to_string();
        assert!(error.contains("distinct"), "{error}");
    }

    #[test]
    fn parses_targets() {
        let body = r#"{"status":"success","data":{"activeTargets":[
            {"discoveredLabels":{"__address__":"127.0.0.1:8080"},
             "labels":{"instance":"127.0.0.1:8080","job":"operator"},
             "scrapePool":"operator","scrapeUrl":"http://127.0.0.1:8080/metrics",
             "lastError":"","lastScrape":"2026-12-06T10:00:00Z","lastScrapeDuration":0.002,
             "health":"up","scrapeInterval":"1s","scrapeTimeout":"1s"},
            {"labels":{"instance":"127.0.0.1:1","job":"agent"},
             "lastError":"Get \"http://127.0.0.1:1/metrics\": dial tcp 127.0.0.1:1: connect: connection refused",
             "health":"down"},
            {"labels":{"instance":"127.0.0.1:2","job":"agent"},"lastError":"","health":"unknown"}
        ],"droppedTargets":[]}}"#;
        let targets = parse_targets(&parse_envelope(200, body).unwrap()).unwrap();
        assert_eq!(targets.len(), 3);
        assert_eq!(
            targets[0],
            (
                "operator".into(),
                "127.0.0.1:8080".into(),
                true,
                String::new()
            )
        );
        assert!(!targets[1].2 && targets[1].3.contains("connection refused"));
        assert!(!targets[2].2, "unknown (not scraped yet) is not up");
    }

    #[test]
    fn parses_label_values_by_prefix() {
        let body =
            r#"{"status":"success","data":["go_goroutines","ironpool_a_total","ironpool_b","up"]}"#;
        let names = parse_label_values(&parse_envelope(200, body).unwrap(), "ironpool_").unwrap();
        assert_eq!(
            names.into_iter().collect::<Vec<_>>(),
            ["ironpool_a_total", "ironpool_b"]
        );
    }

    #[test]
    fn reports_api_errors() {
        let body = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error: unexpected end of input"}"#;
        let error = parse_envelope(400, body).unwrap_err().to_string();
        assert!(
            error.contains("HTTP 400") && error.contains("bad_data"),
            "{error}"
        );
        assert!(error.contains("parse error"), "{error}");
        let error = parse_envelope(404, "404 page not found\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not a JSON API answer"), "{error}");
    }

    #[test]
    fn parses_http_responses_and_encodes_queries() {
        let raw = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"a\":1}";
        assert_eq!(
            parse_http_response(raw).unwrap(),
            (200, "{\"a\":1}".to_owned())
        );
        assert!(parse_http_response(b"HTTP/1.0 200 OK\r\n").is_err());
        assert_eq!(
            percent_encode(r#"rate(x{job="a b"}[1m])"#),
            "rate%28x%7Bjob%3D%22a%20b%22%7D%5B1m%5D%29"
        );
        assert_eq!(
            parse_script_output("X=1\nPROMETHEUS=/c/p\n").unwrap(),
            PathBuf::from("/c/p")
        );
        assert!(parse_script_output("").is_err());
    }

    #[test]
    fn a_prometheus_that_exits_is_reported_with_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-prometheus");
        std::fs::write(
            &script,
            "#!/bin/sh\necho \"err: bad flag $1\" >&2\nexit 3\n",
        )
        .unwrap();
        let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
        std::fs::set_permissions(&script, executable).unwrap();
        let job = ScrapeJob::new("operator", &["127.0.0.1:8080"]);
        let error = Prometheus::start_program(&script, dir.path(), &[job]).unwrap_err();
        let error = format!("{error:#}");
        assert!(error.contains("Prometheus did not start"), "{error}");
        assert!(error.contains("exited (exit status: 3)"), "{error}");
        assert!(error.contains("err: bad flag --config.file="), "{error}");
    }

    /// A tiny /metrics endpoint on loopback serving `body` (text exposition format).
    fn serve_metrics(body: &'static str) -> String {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        address
    }

    #[test]
    fn real_prometheus_scrapes_a_metrics_endpoint() {
        if let Err(error) = binary() {
            eprintln!("SKIPPED: the Prometheus binary cannot be built: {error:#}");
            return;
        }
        let up = serve_metrics(
            "# HELP ironpool_test_total A test counter.\n# TYPE ironpool_test_total counter\n\
             ironpool_test_total 1\n",
        );
        let [closed] = free_ports::<1>().unwrap();
        let down = format!("127.0.0.1:{closed}");
        let dir = tempfile::tempdir().unwrap();
        let jobs = [
            ScrapeJob::new("exporter", &[&up]),
            ScrapeJob::new("nothing", &[&down]),
        ];
        let prometheus = Prometheus::start(dir.path(), &jobs).unwrap();

        // The closed port never comes up, and the error says why, per target.
        let error = prometheus
            .wait_for_targets(Duration::from_secs(4))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(&format!("job nothing instance {down}: down")),
            "{error}"
        );
        assert!(error.contains("connection refused"), "{error}");
        let targets = prometheus.targets_up().unwrap();
        assert!(
            targets.contains(&("exporter".into(), up.clone(), true, String::new())),
            "{targets:?}"
        );

        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let names = prometheus.series_names("ironpool_").unwrap();
            if names.contains("ironpool_test_total") {
                assert_eq!(names.len(), 1, "{names:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no ironpool_test_total yet: {names:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let data = prometheus
            .query(r#"ironpool_test_total{job="exporter"}"#)
            .unwrap();
        assert_eq!(data["resultType"], "vector", "{data}");
        assert_eq!(data["result"][0]["value"][1], "1", "{data}");
        assert_eq!(
            data["result"][0]["metric"]["instance"],
            up.as_str(),
            "{data}"
        );
        let error = prometheus.query("sum(").unwrap_err();
        assert!(format!("{error:#}").contains("bad_data"), "{error:#}");
    }
}
