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
    ironpool_e2e::argocd::health_check(kind).unwrap_or_else(|error| panic!("{error:#}"))
}
