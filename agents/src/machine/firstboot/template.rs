//! cloud-init's `## template: jinja` user-data, in the small part Cluster API bootstrap
//! data uses: `{{ ds.meta_data.<key> }}` and `{{ v1.<key> }}` replaced by meta-data values
//! (a key's `-` may be written `_`, as cloud-init allows). Anything else inside `{{ }}` is
//! refused with the variables the seed offers, so a template never runs half-rendered.

use std::collections::BTreeMap;

use super::userdata::seed_error;
use crate::machine::MachineError;

/// The first line that marks a cloud-init jinja template.
pub const JINJA_HEADER: &str = "## template: jinja";

/// `text` rendered with `meta`, or `text` unchanged when it is not a jinja template.
pub fn render(text: &str, meta: &BTreeMap<String, String>) -> Result<String, MachineError> {
    let Some(rest) = text
        .strip_prefix(JINJA_HEADER)
        .and_then(|r| r.strip_prefix('\n').or(r.strip_prefix("\r\n")))
    else {
        return Ok(text.to_string());
    };
    let lookup = |var: &str| {
        let key = var
            .strip_prefix("ds.meta_data.")
            .or_else(|| var.strip_prefix("v1."))?;
        meta.get(key)
            .or_else(|| meta.get(&key.replace('_', "-")))
            .cloned()
    };
    let mut out = String::with_capacity(rest.len());
    let mut left = rest;
    while let Some(open) = left.find("{{") {
        out.push_str(&left[..open]);
        let after = &left[open + 2..];
        let close = after.find("}}").ok_or_else(|| {
            seed_error("user-data jinja template", "a '{{' is never closed by '}}'")
        })?;
        let var = after[..close].trim();
        let value = lookup(var).ok_or_else(|| {
            let keys: Vec<String> = meta.keys().map(|k| k.replace('-', "_")).collect();
            seed_error(
                "user-data jinja template",
                format!(
                    "'{{{{ {var} }}}}' is not supported; use ds.meta_data.<key> or v1.<key> with \
                     a meta-data key: {}",
                    keys.join(", ")
                ),
            )
        })?;
        out.push_str(&value);
        left = &after[close + 2..];
    }
    out.push_str(left);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("local-hostname".to_string(), "c1-md-0-x".to_string()),
            ("provider_id".to_string(), "ironpool://lab/r1".to_string()),
        ])
    }

    #[test]
    fn cluster_api_bootstrap_data_renders() {
        let text = "## template: jinja\n#cloud-config\nwrite_files:\n- path: /run/j.yaml\n  \
                    content: |\n    name: '{{ ds.meta_data.local_hostname }}'\n    \
                    value: '{{ds.meta_data.provider_id}}' {{ v1.local_hostname }}\n";
        let out = render(text, &meta()).unwrap();
        assert!(out.starts_with("#cloud-config\n"), "{out}");
        assert!(out.contains("name: 'c1-md-0-x'"), "{out}");
        assert!(
            out.contains("value: 'ironpool://lab/r1' c1-md-0-x"),
            "{out}"
        );
    }

    #[test]
    fn other_user_data_is_left_alone() {
        let text = "#cloud-config\nruncmd: [echo '{{ not a template }}']\n";
        assert_eq!(render(text, &meta()).unwrap(), text);
    }

    #[test]
    fn unknown_variables_and_unclosed_braces_are_refused() {
        let e = render("## template: jinja\n{{ ds.meta_data.zone }}\n", &meta()).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ds.meta_data.zone") && msg.contains("local_hostname"),
            "{msg}"
        );
        let e = render("## template: jinja\n{{ ds.meta_data.provider_id\n", &meta()).unwrap_err();
        assert!(e.to_string().contains("never closed"), "{e}");
    }
}
