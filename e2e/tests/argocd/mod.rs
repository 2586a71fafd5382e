//! The Argo CD health checks documented in `charts/ironpool/README.md`, run with Lua 5.1
//! (Argo CD runs them in gopher-lua, a Lua 5.1) on objects as the apiserver returns them.

use std::io::Write as _;
use std::process::{Command, Stdio};

/// Runs the README's health check for `kind` with `obj` as the global `obj`; returns
/// (status, message).
pub fn health(kind: &str, obj: &serde_json::Value) -> (String, String) {
    let script = script(kind);
    let wrapper = format!(
        "local cjson = require('cjson')\n\
         obj = cjson.decode(io.read('*a'))\n\
         local check = assert(loadstring({script:?}))\n\
         local hs = check()\n\
         io.write(hs.status, '\\n', hs.message or '')\n"
    );
    let mut child = Command::new("lua5.1")
        .args(["-e", &wrapper])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lua5.1 runs (Debian packages lua5.1 and lua-cjson; e2e/run installs them)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(obj.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the {kind} health check failed on {obj}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

/// The Lua of `resource.customizations.health.metal.ironpool.dev_<kind>` from the README's
/// `argocd-cm` block.
fn script(kind: &str) -> String {
    let readme =
        std::fs::read_to_string(ironpool_e2e::repo_dir().join("charts/ironpool/README.md"))
            .unwrap();
    let start = readme
        .find("```yaml\ndata:\n")
        .expect("the README has the argocd-cm block")
        + "```yaml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let doc: serde_json::Value = serde_saphyr::from_str(&readme[start..end]).unwrap();
    doc["data"][format!("resource.customizations.health.metal.ironpool.dev_{kind}")]
        .as_str()
        .unwrap_or_else(|| panic!("no health check for {kind} in the README"))
        .to_string()
}
