//! crdgen: prints the Ironpool CRDs, writes them into the repository, or checks that the
//! committed copies are current.
//!
//! ```text
//! crdgen            print every CRD as one YAML stream
//! crdgen --write    write crds/yaml/<name>.yaml (and the chart's copy, when the chart exists)
//! crdgen --check    exit 1 and name each committed file that differs from the generated one
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn targets() -> Vec<PathBuf> {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![crate_dir.join("yaml")];
    let chart = crate_dir.join("../charts/ironpool");
    if chart.is_dir() {
        dirs.push(chart.join("crds"));
    }
    dirs
}

fn main() -> ExitCode {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let mut docs = Vec::new();
    for crd in ironpool_crds::crds() {
        match ironpool_crds::crd_yaml(&crd) {
            Ok(y) => docs.push((ironpool_crds::crd_file_name(&crd), y)),
            Err(e) => {
                eprintln!(
                    "crdgen: cannot serialize {}: {e}",
                    ironpool_crds::crd_file_name(&crd)
                );
                return ExitCode::FAILURE;
            }
        }
    }
    match mode.as_str() {
        "" => {
            for (_, y) in &docs {
                print!("{y}");
            }
            ExitCode::SUCCESS
        }
        "--write" => write(&docs),
        "--check" => check(&docs),
        other => {
            eprintln!("crdgen: unknown argument {other:?}; use no argument, --write or --check");
            ExitCode::from(2)
        }
    }
}

fn write(docs: &[(String, String)]) -> ExitCode {
    for dir in targets() {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            eprintln!("crdgen: cannot create {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        for (name, yaml) in docs {
            let path = dir.join(name);
            if let Err(e) = std::fs::write(&path, yaml) {
                eprintln!("crdgen: cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            println!("wrote {}", path.display());
        }
    }
    ExitCode::SUCCESS
}

fn check(docs: &[(String, String)]) -> ExitCode {
    let mut stale = 0;
    for dir in targets() {
        for (name, yaml) in docs {
            let path = dir.join(name);
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!("crdgen: {} is out of date", path.display());
                stale += 1;
            }
        }
    }
    if stale > 0 {
        eprintln!(
            "crdgen: run `cargo run -p ironpool-crds --bin crdgen -- --write` and commit the result"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
