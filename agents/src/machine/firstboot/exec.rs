//! Running the user-data: a `#!` script written to the work directory and executed, or a
//! `#cloud-config`'s `write_files` then `runcmd` items (strings through `/bin/sh -c`,
//! lists as argv). Each command's stdout and stderr go to one file, so the output keeps
//! their interleaving; the check-in carries its tail.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::userdata::{CloudConfig, OUTPUT_TAIL, RunCmd, UserData, UserDataResult, WriteFile};
use crate::machine::MachineError;

/// Runs `user_data` with its files in `work`; `log` gets a line per step and per output
/// line. Only a work directory that cannot be written is an error: a failing command is
/// reported in the result.
pub fn run_user_data(
    user_data: &UserData,
    work: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<UserDataResult, MachineError> {
    std::fs::create_dir_all(work)
        .map_err(|e| MachineError::io(format!("create {}", work.display()), &e))?;
    let mut out = Vec::new();
    let exit_code = match user_data {
        UserData::None => None,
        UserData::Script(text) => {
            let path = work.join("user-data.script");
            std::fs::write(&path, text)
                .and_then(|()| std::fs::set_permissions(&path, PermissionsExt::from_mode(0o700)))
                .map_err(|e| MachineError::io(format!("write {}", path.display()), &e))?;
            Some(run(
                Command::new(&path),
                "user-data script",
                work,
                &mut out,
                log,
            )?)
        }
        UserData::CloudConfig(cc) => Some(cloud_config(cc, work, &mut out, log)?),
    };
    let tail = &out[out.len().saturating_sub(OUTPUT_TAIL)..];
    Ok(UserDataResult {
        kind: user_data.kind().to_string(),
        exit_code,
        output: String::from_utf8_lossy(tail).into_owned(),
    })
}

fn note(out: &mut Vec<u8>, log: &mut dyn FnMut(&str), line: &str) {
    log(line);
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}

/// `write_files`, then `runcmd`; the exit code is the last failing step's, or 0.
fn cloud_config(
    cc: &CloudConfig,
    work: &Path,
    out: &mut Vec<u8>,
    log: &mut dyn FnMut(&str),
) -> Result<i32, MachineError> {
    let mut code = 0;
    if !cc.ignored.is_empty() {
        note(out, log, &format!("ignored: {}", cc.ignored.join(", ")));
    }
    for f in &cc.write_files {
        match write_file(f) {
            Ok(()) => log(&format!(
                "write_files: {} ({} bytes{})",
                f.path.display(),
                f.content.len(),
                if f.append { ", appended" } else { "" }
            )),
            Err(e) => {
                note(out, log, &format!("write_files: {}: {e}", f.path.display()));
                code = 1;
            }
        }
    }
    for (i, c) in cc.runcmd.iter().enumerate() {
        let cmd = match c {
            RunCmd::Shell(s) => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c").arg(s);
                cmd
            }
            RunCmd::Argv(argv) => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..]);
                cmd
            }
        };
        let rc = run(cmd, &format!("runcmd[{i}]"), work, out, log)?;
        if rc != 0 {
            code = rc;
        }
    }
    Ok(code)
}

fn write_file(f: &WriteFile) -> std::io::Result<()> {
    if let Some(dir) = f.path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = OpenOptions::new();
    opts.create(true).mode(f.mode.unwrap_or(0o644));
    if f.append {
        opts.append(true);
    } else {
        opts.write(true).truncate(true);
    }
    let mut file = opts.open(&f.path)?;
    file.write_all(&f.content)?;
    if let Some(mode) = f.mode {
        file.set_permissions(PermissionsExt::from_mode(mode))?;
    }
    file.sync_all()
}

/// Runs `cmd` with stdout and stderr into one file; appends that output to `out` and
/// returns the exit code (128 + signal when killed, 127 when it could not start).
fn run(
    mut cmd: Command,
    what: &str,
    work: &Path,
    out: &mut Vec<u8>,
    log: &mut dyn FnMut(&str),
) -> Result<i32, MachineError> {
    let path = work.join("output");
    let status = (0..20).find_map(|attempt| {
        let spawned = std::fs::File::create(&path).and_then(|file| {
            cmd.stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .status()
        });
        match spawned {
            // A just-written script can be "busy" while another thread's fork still holds
            // its write descriptor; try again shortly.
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempt < 19 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                None
            }
            other => Some(other),
        }
    });
    let code = match status {
        Some(Ok(s)) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
        Some(Err(e)) => {
            note(out, log, &format!("{what}: cannot run: {e}"));
            return Ok(127);
        }
        None => 127,
    };
    let text = std::fs::read(&path)
        .map_err(|e| MachineError::io(format!("read {}", path.display()), &e))?;
    for line in String::from_utf8_lossy(&text).lines() {
        log(&format!("{what}| {line}"));
    }
    out.extend_from_slice(&text);
    log(&format!("{what} exited with code {code}"));
    Ok(code)
}
