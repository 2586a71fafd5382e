//! What the boot storm measures besides time: CPU and peak RSS of processes (from
//! `/proc/<pid>/stat` and `status`) and the apiserver's write requests (from its own
//! `/metrics`, `apiserver_request_total` by verb and resource).

use std::collections::BTreeMap;

use anyhow::Result;

/// CPU seconds (user + system) of `pid` and of its live children (nginx workers).
pub fn cpu_seconds(pid: u32) -> f64 {
    let ticks = |pid: u32| -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return 0.0;
        };
        // Fields after the parenthesised command: state is field 3; utime 14, stime 15.
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        n(11) + n(12)
    };
    let mut total = ticks(pid);
    for child in children(pid) {
        total += ticks(child);
    }
    total / clock_ticks()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Peak resident set (VmHWM) of `pid` and its live children, in MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let hwm = |pid: u32| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut kib = hwm(pid);
    for child in children(pid) {
        kib += hwm(child);
    }
    kib / 1024.0
}

/// Write requests (POST, PUT, PATCH, DELETE, and APPLY, as the apiserver counts a
/// server-side-apply PATCH) the apiserver has served, by resource.
pub async fn apiserver_writes(client: &kube::Client) -> Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    Ok(writes_by_resource(&text))
}

/// Sums `apiserver_request_total` samples of write verbs by their `resource` label (and
/// subresource); refused writes (409 conflicts and the like) also under `<key> (HTTP <code>)`.
pub fn writes_by_resource(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_string())
            })
        };
        let verb = label("verb").unwrap_or_default();
        if !matches!(verb.as_str(), "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY") {
            continue;
        }
        let resource = label("resource").unwrap_or_default();
        let sub = label("subresource").unwrap_or_default();
        let key = if sub.is_empty() {
            resource
        } else {
            format!("{resource}/{sub}")
        };
        let n = value.trim().parse::<f64>().unwrap_or(0.0);
        let code = label("code").unwrap_or_default();
        if code.starts_with('4') || code.starts_with('5') {
            *out.entry(format!("{key} (HTTP {code})")).or_insert(0.0) += n;
        }
        *out.entry(key).or_insert(0.0) += n;
    }
    out
}

/// `after - before`, per resource, dropping zeros.
pub fn diff(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_verbs_are_summed_by_resource() {
        let text = r#"apiserver_request_total{code="201",component="apiserver",dry_run="",group="metal.ironpool.dev",resource="machines",scope="resource",subresource="",verb="POST",version="v1alpha1"} 3
apiserver_request_total{code="200",component="apiserver",dry_run="",group="metal.ironpool.dev",resource="machines",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 5
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="machines",scope="resource",subresource="",verb="GET",version="v1"} 9
"#;
        let w = writes_by_resource(text);
        assert_eq!(w.get("machines"), Some(&3.0));
        assert_eq!(w.get("machines/status"), Some(&5.0));
        assert_eq!(w.len(), 2);
    }
}
