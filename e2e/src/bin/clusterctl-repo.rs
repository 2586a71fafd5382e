//! clusterctl-repo: writes Ironpool's clusterctl components file from the Helm chart, or
//! checks that the committed one is current.
//!
//! ```text
//! clusterctl-repo --write    write charts/clusterctl/infrastructure-ironpool/<v>/infrastructure-components.yaml
//! clusterctl-repo --check    exit 1 if the committed file differs from the chart's rendering
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let check = match std::env::args().nth(1).as_deref() {
        Some("--write") => false,
        Some("--check") => true,
        other => {
            eprintln!("clusterctl-repo: use --write or --check (got {other:?})");
            return ExitCode::from(2);
        }
    };
    match ironpool_e2e::clusterctl::write_or_check(check) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clusterctl-repo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
