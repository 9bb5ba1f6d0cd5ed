//! Running the hub as a service: `sendense-hub serve --config FILE` as the unit starts it, the
//! systemd units and the Debian package definition of `packaging/`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sendense_hub::cli::ServeOptions;

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

/// The repository's root folder.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A unit file of `packaging/`.
fn unit(name: &str) -> String {
    std::fs::read_to_string(root().join("packaging").join(name)).unwrap()
}

/// The values of `key=` lines in a unit, in order.
fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

/// `systemd-analyze verify` on both units, their `ExecStart` pointed at the binaries under
/// test (verify insists that the command exists).
#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    for (name, binary, built) in [
        (
            "sendense-hub.service",
            "/usr/bin/sendense-hub",
            env!("CARGO_BIN_EXE_sendense-hub"),
        ),
        (
            "sendense-agent.service",
            "/usr/bin/sendense-client",
            env!("CARGO_BIN_EXE_sendense-client"),
        ),
    ] {
        let text = unit(name);
        assert!(text.contains(&format!("ExecStart={binary} ")), "{name}");
        std::fs::write(dir.path().join(name), text.replace(binary, built)).unwrap();
    }

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("sendense-hub.service"))
        .arg(dir.path().join("sendense-agent.service"))
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (apt-get install systemd): {e}"));

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn systemd_units_are_hardened_and_run_as_the_sendense_user() {
    for (name, data) in [
        ("sendense-hub.service", "/var/lib/sendense"),
        ("sendense-agent.service", "/var/lib/sendense-agent"),
    ] {
        let text = unit(name);
        for (key, value) in [
            ("User", "sendense"),
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("CapabilityBoundingSet", ""),
            ("AmbientCapabilities", ""),
            ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
            ("SystemCallFilter", "@system-service"),
            ("Restart", "on-failure"),
            ("KillSignal", "SIGTERM"),
            ("ReadWritePaths", data),
        ] {
            assert!(
                values(&text, key).contains(&value),
                "{name}: no {key}={value}"
            );
        }
    }
    assert_eq!(
        values(&unit("sendense-agent.service"), "ExecStart"),
        ["/usr/bin/sendense-client agent run --state-dir /var/lib/sendense-agent"]
    );
    assert_eq!(
        values(&unit("sendense-hub.service"), "ExecStart"),
        ["/usr/bin/sendense-hub serve --config /etc/sendense/hub.toml"]
    );
}

/// systemd must not SIGKILL a hub that is still inside its own bounded shutdown.
#[test]
fn hub_unit_stop_timeout_covers_the_shutdown_limit() {
    let text = unit("sendense-hub.service");
    let timeout = values(&text, "TimeoutStopSec");

    let seconds: u64 = timeout[0].strip_suffix('s').unwrap().parse().unwrap();

    assert_eq!(timeout.len(), 1);
    assert!(
        Duration::from_secs(seconds)
            > sendense_hub::daemon::SHUTDOWN_LIMIT + Duration::from_secs(5),
        "TimeoutStopSec={seconds}s"
    );
}

/// The example configuration the package installs is one the hub takes, over the folder the
/// unit lets it write.
#[test]
fn example_hub_config_is_valid_and_matches_the_unit() {
    let options = ServeOptions::from_file(&root().join("packaging/hub.toml")).unwrap();

    let config = options.into_config().unwrap();

    assert_eq!(config.data_dir, Path::new("/var/lib/sendense"));
    assert_eq!(config.api_listen.port(), 8443);
    assert!(config.webhook.is_none());
    assert!(
        values(&unit("sendense-hub.service"), "ReadWritePaths")
            .contains(&config.data_dir.to_str().unwrap())
    );
}

/// What `cargo deb` packs: every asset is in the repository (or is a binary of this package
/// under target/release/), the maintainer scripts are executable, the config is a conffile.
#[test]
fn deb_package_assets_exist() {
    let manifest: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let bins: Vec<&str> = manifest["bin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    let assets = deb["assets"].as_array().unwrap();

    let mut installed = Vec::new();
    for asset in assets {
        let asset = asset.as_array().unwrap();
        let (source, dest) = (asset[0].as_str().unwrap(), asset[1].as_str().unwrap());
        match source.strip_prefix("target/release/") {
            Some(bin) => assert!(bins.contains(&bin), "{source} is no binary of the package"),
            None => assert!(root().join(source).is_file(), "{source} missing"),
        }
        installed.push(format!("/{dest}"));
    }
    for binary in ["sendense-hub", "sendense-client"] {
        assert!(
            assets
                .iter()
                .any(|a| a[0].as_str() == Some(&format!("target/release/{binary}"))),
            "{binary} not packed"
        );
    }
    for conf in deb["conf-files"].as_array().unwrap() {
        assert!(
            installed.contains(&conf.as_str().unwrap().to_owned()),
            "{conf:?}"
        );
    }
    let scripts = root().join(deb["maintainer-scripts"].as_str().unwrap());
    for script in ["postinst", "prerm", "postrm"] {
        let mode = std::fs::metadata(scripts.join(script))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
    }
    let postinst = std::fs::read_to_string(scripts.join("postinst")).unwrap();
    assert!(
        postinst.contains("adduser --system"),
        "postinst creates no user"
    );
}
