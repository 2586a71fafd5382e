//! Output: kubectl-style tables, or the verb's result as JSON or YAML (`-o`).

use std::io::Write;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// `-o`: how a verb prints its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Columns for people.
    Table,
    /// The result as one JSON document.
    Json,
    /// The result as one YAML document.
    Yaml,
}

/// Writes `value` as JSON or YAML; false for [`Format::Table`] (the caller prints a table).
pub fn structured(
    format: Format,
    value: &impl Serialize,
    out: &mut impl Write,
) -> anyhow::Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)?;
            Ok(true)
        }
        Format::Yaml => {
            let text = serde_saphyr::to_string(value)?;
            out.write_all(text.as_bytes())?;
            Ok(true)
        }
    }
}

/// Columns padded to their widest cell, three spaces apart, headers in capitals, as
/// `kubectl get` prints them. The last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(c);
            if i + 1 < n {
                let pad = widths[i].saturating_sub(c.chars().count()) + 3;
                s.extend(std::iter::repeat_n(' ', pad));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// How long ago `t` was, as kubectl's AGE column says it (`45s`, `12m`, `3h`, `2d`).
pub fn age(t: Timestamp, now: Timestamp) -> String {
    let s = now.duration_since(t).as_secs().max(0);
    duration(s)
}

/// `s` seconds the way kubectl prints ages.
pub fn duration(s: i64) -> String {
    match s {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Bytes for people: `512.0 MiB`.
pub fn bytes(n: i64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up_like_kubectl() {
        let t = table(
            &["NAME", "PHASE", "MESSAGE"],
            &[
                vec!["r1-u07".into(), "Ready".into(), "".into()],
                vec![
                    "m2".into(),
                    "FailedDeployment".into(),
                    "checksum mismatch".into(),
                ],
            ],
        );
        assert_eq!(
            t,
            "NAME     PHASE              MESSAGE\n\
             r1-u07   Ready\n\
             m2       FailedDeployment   checksum mismatch\n"
        );
    }

    #[test]
    fn ages_and_sizes_read_as_kubectl_and_people_say_them() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(600), "10m");
        assert_eq!(duration(3 * 3600), "3h");
        assert_eq!(duration(5 * 86400), "5d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
    }
}
