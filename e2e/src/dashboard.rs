//! The chart's Grafana dashboard (`charts/ironpool/dashboards/ironpool-fleet.json`) checked
//! against what the binaries really export: every query's `ironpool_*` metric must be a
//! family in a live `/metrics` text, with the sample suffix its type has (`_total` for a
//! counter, `_bucket`/`_sum`/`_count` for a histogram, none for a gauge).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

/// The dashboard file in the chart.
pub fn path() -> PathBuf {
    crate::chart::chart_dir().join("dashboards/ironpool-fleet.json")
}

/// The dashboard, parsed.
pub fn load() -> Result<Value> {
    let p = path();
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))
}

/// Every query of every panel (rows' nested panels included), as `(panel title, expr)`.
pub fn queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_string()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// `expr` with Grafana's interval variables replaced, as Prometheus can run it.
pub fn for_prometheus(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

/// The `ironpool_*` metric names `expr` reads.
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("ironpool_") {
        let start = i + at;
        let boundary = start == 0 || !is_name_byte(bytes[start - 1]);
        let end = start
            + expr[start..]
                .bytes()
                .take_while(|b| is_name_byte(*b))
                .count();
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// The metric families of a `/metrics` text: name -> type, from its `# TYPE` lines.
pub fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Whether sample name `name` belongs to one of `families` with a suffix its type has.
pub fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    let typed = |family: &str, kinds: &[&str]| {
        families
            .get(family)
            .is_some_and(|t| kinds.contains(&t.as_str()))
    };
    if typed(name, &["gauge", "unknown"]) {
        return true;
    }
    if let Some(f) = name.strip_suffix("_total")
        && typed(f, &["counter"])
    {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|s| {
        name.strip_suffix(s)
            .is_some_and(|f| typed(f, &["histogram"]))
    })
}

/// The queries of `dashboard` that read a metric `families` does not export, as
/// `panel: metric in expr`.
pub fn unexported(dashboard: &Value, families: &BTreeMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    for (title, expr) in queries(dashboard) {
        for name in metric_names(&expr) {
            if !exported(&name, families) {
                bad.push(format!("{title}: {name} in {expr}"));
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "# HELP ironpool_machines Machines per phase.\n\
        # TYPE ironpool_machines gauge\n\
        ironpool_machines{phase=\"Ready\"} 3\n\
        # TYPE ironpool_reconciles counter\n\
        ironpool_reconciles_total{controller=\"machine\"} 5\n\
        # TYPE ironpool_operation_duration_seconds histogram\n\
        # EOF\n";

    #[test]
    fn names_need_the_suffix_of_their_type() {
        let f = families(METRICS);
        assert_eq!(f.len(), 3);
        for ok in [
            "ironpool_machines",
            "ironpool_reconciles_total",
            "ironpool_operation_duration_seconds_bucket",
            "ironpool_operation_duration_seconds_count",
        ] {
            assert!(exported(ok, &f), "{ok}");
        }
        for bad in [
            "ironpool_machines_total",
            "ironpool_reconciles",
            "ironpool_operation_duration_seconds",
            "ironpool_nothing_total",
        ] {
            assert!(!exported(bad, &f), "{bad}");
        }
    }

    #[test]
    fn finds_every_metric_of_a_query() {
        let e = "histogram_quantile(0.9, sum by (le) (rate(ironpool_a_bucket{x=\"ironpool_no\"}[$__rate_interval]))) / ironpool_b";
        assert_eq!(
            metric_names(e).into_iter().collect::<Vec<_>>(),
            ["ironpool_a_bucket", "ironpool_b", "ironpool_no"]
        );
        assert!(for_prometheus(e).contains("[5m]"));
        assert!(metric_names("not_ironpool_x").is_empty());
    }

    #[test]
    fn the_chart_dashboard_has_queries_and_reports_what_is_missing() {
        let d = load().unwrap();
        let q = queries(&d);
        assert!(q.len() >= 20, "{q:?}");
        // Against a text exporting nothing, every query is reported.
        assert_eq!(
            unexported(&d, &BTreeMap::new()).len(),
            q.iter().map(|(_, e)| metric_names(e).len()).sum::<usize>()
        );
    }
}
