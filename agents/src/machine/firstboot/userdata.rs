//! The seed as the first boot reads it: cloud-init NoCloud meta-data, and user-data as a
//! `#!` script or a `#cloud-config` (`hostname`, `write_files`, `runcmd`), parsed into
//! plain types (pure); and what running it did, as the check-in reports it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::machine::MachineError;

/// How much of the user-data's output the check-in carries (its last bytes).
pub const OUTPUT_TAIL: usize = 4096;

/// The meta-data keys the first-boot step uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaData {
    /// `instance-id`.
    pub instance_id: String,
    /// `local-hostname`, if set.
    pub local_hostname: Option<String>,
    /// `ironpool-checkin-url`.
    pub checkin_url: String,
    /// `ironpool-checkin-token`.
    pub checkin_token: String,
    /// Every scalar key, for `## template: jinja` user-data ([`template::render`]).
    pub values: BTreeMap<String, String>,
}

pub(crate) fn seed_error(what: &str, message: impl std::fmt::Display) -> MachineError {
    MachineError::Image(format!("cloud-init seed {what}: {message}"))
}

/// A YAML scalar as text (numbers and booleans as written); `None` for maps, lists, null.
fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Parses `meta-data` (YAML). `instance-id`, `ironpool-checkin-url` and
/// `ironpool-checkin-token` are required; other keys are ignored.
pub fn parse_meta_data(text: &str) -> Result<MetaData, MachineError> {
    let map: BTreeMap<String, serde_json::Value> = if text.trim().is_empty() {
        BTreeMap::new()
    } else {
        serde_saphyr::from_str(text).map_err(|e| seed_error("meta-data is not a YAML map", e))?
    };
    let get = |k: &str| map.get(k).and_then(scalar).filter(|s| !s.trim().is_empty());
    let need = |k: &str| {
        get(k).ok_or_else(|| {
            seed_error(
                "meta-data",
                format!("no '{k}:' key (the machine agent writes it when it deploys the OS)"),
            )
        })
    };
    Ok(MetaData {
        instance_id: need("instance-id")?,
        local_hostname: get("local-hostname"),
        checkin_url: need("ironpool-checkin-url")?,
        checkin_token: need("ironpool-checkin-token")?,
        values: map
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), scalar(v)?)))
            .collect(),
    })
}

/// One `write_files` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteFile {
    /// Absolute path.
    pub path: PathBuf,
    /// The bytes to write (decoded when `encoding: b64`).
    pub content: Vec<u8>,
    /// Mode bits (`permissions: '0644'`), if given.
    pub mode: Option<u32>,
    /// Append instead of replacing.
    pub append: bool,
}

/// One `runcmd` item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunCmd {
    /// A string, run by `/bin/sh -c`.
    Shell(String),
    /// A list, run as argv.
    Argv(Vec<String>),
}

/// The supported part of a `#cloud-config`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloudConfig {
    /// `hostname`.
    pub hostname: Option<String>,
    /// `write_files`.
    pub write_files: Vec<WriteFile>,
    /// `runcmd`.
    pub runcmd: Vec<RunCmd>,
    /// Top-level keys this step does not carry out, sorted.
    pub ignored: Vec<String>,
}

/// What the user-data asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserData {
    /// Empty: nothing runs.
    None,
    /// A `#!` script.
    Script(String),
    /// A `#cloud-config` document.
    CloudConfig(CloudConfig),
}

impl UserData {
    /// `none`, `script` or `cloud-config`, as the check-in names it.
    pub fn kind(&self) -> &'static str {
        match self {
            UserData::None => "none",
            UserData::Script(_) => "script",
            UserData::CloudConfig(_) => "cloud-config",
        }
    }
}

/// Parses `user-data`: empty, a `#!` script or a `#cloud-config` YAML document; anything
/// else is refused with what is supported.
pub fn parse_user_data(text: &str) -> Result<UserData, MachineError> {
    if text.trim().is_empty() {
        return Ok(UserData::None);
    }
    if text.starts_with("#!") {
        return Ok(UserData::Script(text.to_string()));
    }
    let first = text.lines().next().unwrap_or("").trim_end();
    if first != "#cloud-config" {
        return Err(seed_error(
            "user-data",
            format!(
                "starts with '{}'; supported are a script starting with '#!' and a YAML \
                 document starting with '#cloud-config'",
                first.chars().take(40).collect::<String>()
            ),
        ));
    }
    let map: BTreeMap<String, serde_json::Value> = match serde_saphyr::from_str(text) {
        Ok(m) => m,
        // A #cloud-config with nothing after the comment line.
        Err(_) if text.lines().skip(1).all(|l| l.trim().is_empty()) => BTreeMap::new(),
        Err(e) => return Err(seed_error("user-data #cloud-config is not a YAML map", e)),
    };
    cloud_config(&map)
}

fn cloud_config(map: &BTreeMap<String, serde_json::Value>) -> Result<UserData, MachineError> {
    let mut cc = CloudConfig::default();
    for (key, value) in map {
        match key.as_str() {
            "hostname" => {
                cc.hostname = match value {
                    serde_json::Value::Null => None,
                    v => Some(
                        scalar(v)
                            .ok_or_else(|| seed_error("user-data", "'hostname' is not a string"))?,
                    ),
                };
            }
            "write_files" => cc.write_files = write_files(value)?,
            "runcmd" => cc.runcmd = runcmd(value)?,
            other => cc.ignored.push(other.to_string()),
        }
    }
    Ok(UserData::CloudConfig(cc))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireFile {
    path: String,
    #[serde(default)]
    content: Option<serde_json::Value>,
    #[serde(default)]
    permissions: Option<serde_json::Value>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    append: bool,
    // Accepted and not carried out: the OS runs as root only.
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    defer: bool,
}

/// Parses an octal mode: `'0644'`, `'644'`, `'0o644'`.
pub fn parse_mode(text: &str) -> Option<u32> {
    let t = text.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    u32::from_str_radix(digits, 8).ok().filter(|m| *m <= 0o7777)
}

fn write_files(value: &serde_json::Value) -> Result<Vec<WriteFile>, MachineError> {
    let wire: Vec<WireFile> = serde_json::from_value(value.clone())
        .map_err(|e| seed_error("user-data write_files", e))?;
    let mut out = Vec::new();
    for (i, w) in wire.into_iter().enumerate() {
        let bad = |m: String| seed_error(&format!("user-data write_files[{i}]"), m);
        if !w.path.starts_with('/') {
            return Err(bad(format!("path '{}' is not absolute", w.path)));
        }
        let text = match &w.content {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(v) => scalar(v).ok_or_else(|| bad("content is not a string".to_string()))?,
        };
        let content = match w.encoding.as_deref() {
            None | Some("text/plain") => text.into_bytes(),
            Some("b64" | "base64") => {
                use base64::Engine as _;
                let compact: String = text.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .map_err(|e| bad(format!("content is not base64: {e}")))?
            }
            Some(other) => {
                return Err(bad(format!(
                    "encoding '{other}' is not supported (use b64, or none for text)"
                )));
            }
        };
        let mode = match &w.permissions {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let s = scalar(v).unwrap_or_default();
                Some(parse_mode(&s).ok_or_else(|| {
                    bad(format!(
                        "permissions '{s}' is not an octal mode; quote it: '0644'"
                    ))
                })?)
            }
        };
        let _ = (&w.owner, w.defer);
        out.push(WriteFile {
            path: PathBuf::from(w.path),
            content,
            mode,
            append: w.append,
        });
    }
    Ok(out)
}

fn runcmd(value: &serde_json::Value) -> Result<Vec<RunCmd>, MachineError> {
    let items = match value {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(items) => items,
        _ => return Err(seed_error("user-data", "'runcmd' is not a list")),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            serde_json::Value::Array(argv) => {
                let argv: Option<Vec<String>> = argv.iter().map(scalar).collect();
                match argv {
                    Some(a) if !a.is_empty() => Ok(RunCmd::Argv(a)),
                    _ => Err(seed_error(
                        "user-data",
                        format!("runcmd[{i}] must be a non-empty list of strings"),
                    )),
                }
            }
            other => scalar(other).map(RunCmd::Shell).ok_or_else(|| {
                seed_error(
                    "user-data",
                    format!("runcmd[{i}] is neither a string nor a list"),
                )
            }),
        })
        .collect()
}

/// What running the user-data did, as the check-in reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserDataResult {
    /// `none`, `script` or `cloud-config`.
    pub kind: String,
    /// The script's exit code, or the last failing step's (0 when all passed); `null`
    /// when nothing ran.
    pub exit_code: Option<i32>,
    /// The last [`OUTPUT_TAIL`] bytes of stdout and stderr (and of this step's notes).
    pub output: String,
}
