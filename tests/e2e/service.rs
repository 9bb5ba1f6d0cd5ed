//! Running the hub as a service: `sendense-hub serve --config FILE` as a unit starts it.

use std::process::Stdio;

use crate::support::{Proc, hub, log_lines, s, wait_message};

/// The whole setting from the file alone, JSON log lines included (`log_format`), as the
/// systemd unit runs it.
#[test]
fn serve_takes_every_setting_from_its_config_file_and_logs_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\napi = \"127.0.0.1:0\"\nnbd = \"127.0.0.1:0\"\n\
             public_host = \"localhost\"\nnbd_client_certs = \"optional\"\nlog_format = \"json\"\n",
            s(&data)
        ),
    )
    .unwrap();

    let mut child = hub()
        .args(["serve", "--config", s(&config)])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = log_lines(child.stderr.take().unwrap());
    let mut proc = Proc(child);
    // Only a line that parsed as JSON has `fields.message`.
    let ready = wait_message(&log, "hub ready");

    assert!(
        ready["fields"]["api"]
            .as_str()
            .unwrap()
            .starts_with("https://localhost:"),
        "{ready}"
    );
    assert_eq!(ready["fields"]["nbd_client_certs"], "Optional", "{ready}");
    assert_eq!(ready["fields"]["data_dir"], s(&data), "{ready}");
    assert!(data.join("api.token").exists());
    proc.kill();
}

#[test]
fn serve_refuses_a_config_file_with_an_unknown_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"0.0.0.0:1\"\n",
            s(&dir.path().join("data"))
        ),
    )
    .unwrap();

    let out = hub()
        .args(["serve", "--config", s(&config)])
        .stdin(Stdio::null())
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("unknown key \"listen\""), "{stderr}");
    assert!(stderr.contains(s(&config)), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing is made");
}
