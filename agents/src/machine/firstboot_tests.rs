use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::sync::mpsc;

use super::*;

const META: &str = "instance-id: lab-web-1-3\nlocal-hostname: web-1\n\
    ironpool-checkin-url: http://10.0.2.2:8080/api/v1/machines/52-54-00-12-34-56/booted\n\
    ironpool-checkin-token: tok.abc\n";

#[test]
fn meta_data_keys_and_missing_ones_named() {
    let m = parse_meta_data(META).unwrap();
    assert_eq!(m.instance_id, "lab-web-1-3");
    assert_eq!(m.local_hostname.as_deref(), Some("web-1"));
    assert!(m.checkin_url.ends_with("/booted"));
    assert_eq!(m.checkin_token, "tok.abc");
    // Numbers are text; unknown keys and nested maps are ignored.
    let m = parse_meta_data(
        "instance-id: 42\nironpool-checkin-url: http://h/x\nironpool-checkin-token: t\n\
         public-keys:\n  a: b\n",
    )
    .unwrap();
    assert_eq!((m.instance_id.as_str(), m.local_hostname), ("42", None));
    let err = parse_meta_data("instance-id: x\nironpool-checkin-url: http://h/\n").unwrap_err();
    assert!(
        err.to_string().contains("'ironpool-checkin-token:'"),
        "{err}"
    );
    let err = parse_meta_data("- a\n- b\n").unwrap_err();
    assert!(err.to_string().contains("not a YAML map"), "{err}");
}

#[test]
fn user_data_kinds() {
    assert_eq!(parse_user_data("").unwrap(), UserData::None);
    assert_eq!(parse_user_data(" \n").unwrap(), UserData::None);
    assert_eq!(
        parse_user_data("#!/bin/sh\necho hi\n").unwrap(),
        UserData::Script("#!/bin/sh\necho hi\n".into())
    );
    assert_eq!(
        parse_user_data("#cloud-config\n").unwrap(),
        UserData::CloudConfig(CloudConfig::default())
    );
    let err = parse_user_data("Content-Type: multipart/mixed\n").unwrap_err();
    assert!(err.to_string().contains("'#cloud-config'"), "{err}");
}

#[test]
fn cloud_config_keys_in_detail() {
    let text = r#"#cloud-config
hostname: db-7
packages: [nginx]
users: []
write_files:
  - path: /etc/motd
    content: |
      hello
      world
    permissions: '0600'
  - path: /srv/blob
    encoding: b64
    content: aGk=
    append: true
    owner: root:root
runcmd:
  - echo one && echo two
  - [ls, -l, /etc/motd]
  - [sleep, 1]
"#;
    let UserData::CloudConfig(cc) = parse_user_data(text).unwrap() else {
        panic!("not a cloud-config")
    };
    assert_eq!(cc.hostname.as_deref(), Some("db-7"));
    assert_eq!(cc.ignored, vec!["packages", "users"]);
    assert_eq!(cc.write_files.len(), 2);
    assert_eq!(cc.write_files[0].content, b"hello\nworld\n");
    assert_eq!(cc.write_files[0].mode, Some(0o600));
    assert!(!cc.write_files[0].append);
    assert_eq!(cc.write_files[1].content, b"hi");
    assert_eq!(
        (cc.write_files[1].mode, cc.write_files[1].append),
        (None, true)
    );
    assert_eq!(
        cc.runcmd,
        vec![
            RunCmd::Shell("echo one && echo two".into()),
            RunCmd::Argv(vec!["ls".into(), "-l".into(), "/etc/motd".into()]),
            RunCmd::Argv(vec!["sleep".into(), "1".into()]),
        ]
    );
    for (bad, says) in [
        (
            "#cloud-config\nwrite_files:\n  - path: rel/x\n",
            "not absolute",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 'rw'\n",
            "not an octal mode",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: /x\n    encoding: gzip\n",
            "encoding 'gzip'",
        ),
        (
            "#cloud-config\nwrite_files:\n  - path: /x\n    contents: y\n",
            "contents",
        ),
        ("#cloud-config\nruncmd: echo\n", "not a list"),
        ("#cloud-config\nruncmd:\n  - []\n", "runcmd[0]"),
    ] {
        let err = parse_user_data(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
    assert_eq!(parse_mode("0644"), Some(0o644));
    assert_eq!(parse_mode("0o755"), Some(0o755));
    assert_eq!(parse_mode("9"), None);
}

fn quiet() -> impl FnMut(&str) {
    |l: &str| eprintln!("{l}")
}

#[test]
fn script_runs_with_its_output_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let ud = parse_user_data("#!/bin/sh\necho out\necho err >&2\nexit 3\n").unwrap();
    let r = run_user_data(&ud, dir.path(), &mut quiet()).unwrap();
    assert_eq!((r.kind.as_str(), r.exit_code), ("script", Some(3)));
    assert_eq!(r.output, "out\nerr\n");
    let none = run_user_data(&UserData::None, dir.path(), &mut quiet()).unwrap();
    assert_eq!((none.kind.as_str(), none.exit_code), ("none", None));
    assert!(none.output.is_empty());
}

#[test]
fn cloud_config_writes_files_then_runs_commands() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("etc/greeting");
    let text = format!(
        "#cloud-config\nbootcmd: [x]\nwrite_files:\n  - path: {p}\n    content: hello\n    \
         permissions: '0640'\n  - path: {p}\n    content: ' again'\n    append: true\n\
         runcmd:\n  - cat {p}\n  - [sh, -c, 'echo to-stderr >&2; exit 5']\n  - 'true'\n",
        p = f.display()
    );
    let r = run_user_data(&parse_user_data(&text).unwrap(), dir.path(), &mut quiet()).unwrap();
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "hello again");
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    assert_eq!(r.kind, "cloud-config");
    assert_eq!(r.exit_code, Some(5), "the last failing command's code");
    assert_eq!(r.output, "ignored: bootcmd\nhello againto-stderr\n");
    // A command that cannot start is 127 with the reason; the output keeps only its tail.
    let big = "#cloud-config\nruncmd:\n  - [/nonexistent/cmd]\n  - head -c 10000 /dev/zero | tr '\\0' x\n  - printf END\n";
    let r = run_user_data(&parse_user_data(big).unwrap(), dir.path(), &mut quiet()).unwrap();
    assert_eq!(r.exit_code, Some(127));
    assert_eq!(r.output.len(), OUTPUT_TAIL);
    assert!(r.output.ends_with("xxxEND"), "{}", &r.output[4000..]);
}

/// A check-in server: answers each connection with the next of `answers`; sends each
/// request (head, body) back through the channel.
fn server(answers: Vec<&'static str>) -> (String, mpsc::Receiver<(String, String)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/api/v1/machines/m/booted",
        listener.local_addr().unwrap()
    );
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for answer in answers {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            let mut len = 0;
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            (&s).write_all(answer.as_bytes()).unwrap();
            tx.send((head, String::from_utf8(body).unwrap())).unwrap();
        }
    });
    (url, rx)
}

/// A `/proc` with a host name, kernel release and uptime.
fn fake_proc(dir: &Path) -> PathBuf {
    let p = dir.join("proc");
    std::fs::create_dir_all(p.join("sys/kernel")).unwrap();
    std::fs::write(p.join("sys/kernel/hostname"), "localhost\n").unwrap();
    std::fs::write(p.join("sys/kernel/osrelease"), "6.1.0-test-amd64\n").unwrap();
    std::fs::write(p.join("uptime"), "7.25 12.00\n").unwrap();
    p
}

fn host(dir: &Path) -> Host {
    Host {
        proc_dir: fake_proc(dir),
        work_dir: dir.join("work"),
        retry_every: Duration::from_millis(20),
        retry_for: Duration::from_secs(5),
    }
}

/// A seed directory under `dir` whose meta-data checks in at `url`.
fn seed_with_meta_data(dir: &Path, url: &str) -> PathBuf {
    let seed = dir.join("seed");
    std::fs::create_dir_all(&seed).unwrap();
    std::fs::write(
        seed.join("meta-data"),
        META.replace(
            "http://10.0.2.2:8080/api/v1/machines/52-54-00-12-34-56/booted",
            url,
        ),
    )
    .unwrap();
    seed
}

#[test]
fn first_boot_runs_user_data_and_checks_in_after_a_503() {
    let dir = tempfile::tempdir().unwrap();
    let (url, rx) = server(vec![
        "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy",
        "HTTP/1.1 204 No Content\r\n\r\n",
    ]);
    let seed = seed_with_meta_data(dir.path(), &url);
    let file = dir.path().join("hello.txt");
    std::fs::write(
        seed.join("user-data"),
        format!(
            "#cloud-config\nwrite_files:\n  - path: {p}\n    content: from-user-data\nruncmd:\n  - cat {p}\n",
            p = file.display()
        ),
    )
    .unwrap();
    let h = host(dir.path());
    let mut lines = Vec::new();
    let summary = first_boot(&seed, &h, &mut |l: &str| lines.push(l.to_string())).unwrap();
    assert!(
        summary.contains("HTTP 204") && summary.contains("exit 0"),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_to_string(h.proc_dir.join("sys/kernel/hostname")).unwrap(),
        "web-1"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("check-in try 1 failed (HTTP 503: busy)")),
        "{lines:?}"
    );
    let (_, first) = rx.recv().unwrap();
    let (head, body) = rx.recv().unwrap();
    assert_eq!(first, body, "the retry sends the same check-in");
    assert!(
        head.starts_with("POST /api/v1/machines/m/booted HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("Authorization: Bearer tok.abc\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: application/json\r\n"),
        "{head}"
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "instanceId": "lab-web-1-3",
            "hostname": "web-1",
            "kernel": "6.1.0-test-amd64",
            "uptimeSeconds": 7.25,
            "userData": {"kind": "cloud-config", "exitCode": 0, "output": "from-user-data"},
        })
    );
}

#[test]
fn check_in_stops_on_4xx_and_gives_up_when_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let h = host(dir.path());
    let (url, _rx) = server(vec![
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 13\r\n\r\nwrong token\r\n",
    ]);
    let mut meta = parse_meta_data(META).unwrap();
    meta.checkin_url = url;
    let body = CheckIn {
        instance_id: "i".into(),
        hostname: "h".into(),
        kernel: "k".into(),
        uptime_seconds: 0.0,
        user_data: UserDataResult {
            kind: "none".into(),
            exit_code: None,
            output: String::new(),
        },
    };
    let err = check_in(&meta, &h, &body, &mut quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("HTTP 401: wrong token"), "{err}");
    // Nobody listens: retried until the deadline, then the last reason.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    meta.checkin_url = format!("http://127.0.0.1:{port}/x");
    let short = Host {
        retry_for: Duration::from_millis(200),
        ..h
    };
    let mut tries = 0;
    let err = check_in(&meta, &short, &body, &mut |_: &str| tries += 1)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no successful check-in") && err.contains("connect"),
        "{err}"
    );
    assert!(tries >= 3, "retried {tries} times");
}

#[test]
fn cloud_init_result_reads_the_verdict_and_the_output_tail() {
    let dir = tempfile::tempdir().unwrap();
    let files = CloudInitFiles {
        result: dir.path().join("result.json"),
        output: dir.path().join("cloud-init-output.log"),
    };
    // Not finished: no result.json; says so, exit unknown.
    let r = cloud_init_result("#cloud-config\nruncmd: [true]\n", &files);
    assert_eq!((r.kind.as_str(), r.exit_code), ("cloud-config", None));
    assert!(
        r.output.contains("has not finished, or did not run"),
        "{}",
        r.output
    );
    std::fs::write(
        &files.output,
        format!("{}runcmd said hi\n", "x".repeat(9000)),
    )
    .unwrap();
    std::fs::write(
        &files.result,
        r#"{"v1": {"datasource": "DataSourceNoCloud [seed=/dev/vda3]", "errors": []}}"#,
    )
    .unwrap();
    let r = cloud_init_result("#!/bin/sh\necho hi\n", &files);
    assert_eq!((r.kind.as_str(), r.exit_code), ("script", Some(0)));
    assert_eq!(r.output.len(), OUTPUT_TAIL);
    assert!(
        r.output.ends_with("runcmd said hi\n"),
        "{}",
        &r.output[4000..]
    );
    // Errors: exit 1, listed at the end.
    std::fs::write(
        &files.result,
        r#"{"v1": {"errors": ["('scripts_user', RuntimeError('Runparts: 1 failures'))"]}}"#,
    )
    .unwrap();
    let r = cloud_init_result("", &files);
    assert_eq!((r.kind.as_str(), r.exit_code), ("none", Some(1)));
    assert!(
        r.output
            .ends_with("cloud-init errors: ('scripts_user', RuntimeError('Runparts: 1 failures'))"),
        "{}",
        r.output
    );
    std::fs::write(&files.result, "{}").unwrap();
    assert_eq!(cloud_init_result("", &files).exit_code, Some(1));
    assert_eq!(
        user_data_kind("## template: jinja\n#cloud-config\n"),
        "jinja"
    );
    assert_eq!(user_data_kind("Content-Type: multipart/mixed\n"), "other");
}

#[test]
fn after_cloud_init_checks_in_with_the_host_name_cloud_init_set() {
    let dir = tempfile::tempdir().unwrap();
    let (url, rx) = server(vec!["HTTP/1.1 204 No Content\r\n\r\n"]);
    let seed = seed_with_meta_data(dir.path(), &url);
    // Nothing is run: a user-data that would leave a file leaves none.
    let marker = dir.path().join("ran");
    std::fs::write(
        seed.join("user-data"),
        format!("#!/bin/sh\ntouch {}\n", marker.display()),
    )
    .unwrap();
    let files = CloudInitFiles {
        result: dir.path().join("result.json"),
        output: dir.path().join("out.log"),
    };
    std::fs::write(&files.result, r#"{"v1": {"errors": []}}"#).unwrap();
    std::fs::write(&files.output, "Cloud-init v. 22.4.2 finished\n").unwrap();
    let h = host(dir.path());
    std::fs::write(h.proc_dir.join("sys/kernel/hostname"), "web-1\n").unwrap();
    let summary = after_cloud_init(&seed, &h, &files, &mut |_| {}).unwrap();
    assert!(
        summary.contains("HTTP 204") && summary.contains("cloud-init exit 0"),
        "{summary}"
    );
    assert!(!marker.exists(), "the user-data is cloud-init's to run");
    let (head, body) = rx.recv().unwrap();
    assert!(head.contains("Authorization: Bearer tok.abc\r\n"), "{head}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "instanceId": "lab-web-1-3",
            "hostname": "web-1",
            "kernel": "6.1.0-test-amd64",
            "uptimeSeconds": 7.25,
            "userData": {"kind": "script", "exitCode": 0, "output": "Cloud-init v. 22.4.2 finished\n"},
        })
    );
}
