//! The web console (issue #17) in a real browser: Debian's headless `chromium`, driven over
//! WebDriver by `chromedriver` (started here on a free loopback port, killed on drop) from Rust
//! with `fantoccini`, against a real `sendense-hub serve`. Users are made with `sendense-hub ctl
//! user add`; jobs run through a real agent against the vCenter simulator; files come from a
//! real ext4 file system backed up by `sendense-client`.
//!
//! Every page visited is saved as a PNG in `target/console-screenshots/` (the test artifacts).
//! A missing `chromium` or `chromedriver` fails the test naming the package.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::support::{Proc, Serve, client, hub, ok, s};

/// How long any wait on the browser or the hub may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(90);
/// The admin every test signs in with.
const ADMIN: (&str, &str) = ("root-admin", "admin password 1");

/// Where screenshots go: `target/console-screenshots/`.
fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `chromedriver` on a free loopback port in a process group of its own, which is killed
/// whole when dropped: the Chromium browsers it started go with it, even when a test fails
/// before closing its session.
struct Driver {
    proc: Proc,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.proc.0.id());
        // Best effort: the group may already be gone.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Driver {
    fn start() -> Self {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is required for the console's browser tests: install Debian's \
                 chromium and chromium-driver (scripts/test.sh does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/chromedriver")
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start chromedriver ({e}): install chromium-driver"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {url}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            proc: Proc(child),
            url,
        }
    }
}

/// A headless Chromium session at 1280×800 that trusts the hub's self-signed certificate and
/// downloads into `downloads`.
struct Browser {
    c: Client,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn open(driver: &Driver, base: &str, downloads: &Path) -> Self {
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,800", "--lang=en-US"],
                "prefs": {
                    "download.default_directory": s(downloads),
                    "download.prompt_for_download": false,
                },
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let c = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("chromedriver could not start chromium: {e}"));
        c.set_window_size(1280, 800).await.unwrap();
        Self {
            c,
            base: base.to_owned(),
            shots: screenshot_dir(),
        }
    }

    async fn go(&self, path: &str) {
        self.c.goto(&format!("{}{path}", self.base)).await.unwrap();
    }

    async fn shot(&self, name: &str) {
        let png = self.c.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.c
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .text()
            .await
            .unwrap()
    }

    async fn body(&self) -> String {
        self.text("body").await
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.c.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.c
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
            .click()
            .await
            .unwrap();
    }

    /// Clicks `css` and waits (bounded) until the next page has replaced this one.
    async fn click_and_load(&self, css: &str) {
        self.c
            .execute("document.body.dataset.stale = '1';", vec![])
            .await
            .unwrap();
        self.click(css).await;
        self.until(
            "the next page",
            "document.body && !document.body.dataset.stale && document.readyState === 'complete'",
        )
        .await;
    }

    /// Signs in with the keyboard only: the name field has focus, Tab to the password, Enter.
    async fn sign_in(&self, name: &str, password: &str) {
        self.go("/login").await;
        let field = self.c.find(Locator::Css("#name")).await.unwrap();
        field.clear().await.unwrap();
        field
            .send_keys(&format!("{name}\u{E004}{password}\u{E007}"))
            .await
            .unwrap();
        self.c
            .wait()
            .at_most(DEADLINE)
            .for_element(Locator::Css("main"))
            .await
            .unwrap();
    }

    /// Waits (bounded) until `script` (a JS expression) is truthy.
    async fn until(&self, what: &str, script: &str) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let v = self
                .c
                .execute(&format!("return !!({script});"), vec![])
                .await
                .unwrap();
            if v == Value::Bool(true) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn path(&self) -> String {
        self.c.current_url().await.unwrap().path().to_owned()
    }
}

/// A hub with the console's admin (made with `ctl user add`), and more users as asked.
fn hub_with_users(data: &Path, users: &[(&str, &str, &str)]) -> Serve {
    let serve = Serve::start(data, &[], "info");
    for (name, role, password) in std::iter::once(&(ADMIN.0, "admin", ADMIN.1)).chain(users) {
        add_user(&serve, name, role, password);
    }
    serve
}

/// `sendense-hub ctl user add NAME --role ROLE --password-file -` (the password on stdin).
fn add_user(serve: &Serve, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = hub()
        .args(["ctl", "--hub", &serve.api, "--data-dir", s(&serve.data)])
        .args(["user", "add", name, "--role", role, "--password-file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = ok(&child.wait_with_output().unwrap());
    assert!(
        out.contains(&format!("User {name} ({role}) added")),
        "{out}"
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn console_sign_in_wrong_password_refused_then_rate_limited_and_users_made_with_ctl() {
    let data = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let serve = hub_with_users(data.path(), &[("victim", "viewer", "victim password")]);
    let driver = Driver::start();
    let (users, _) = serve.raw(reqwest::Method::GET, "/api/v1/users", None);
    assert_eq!(users, 200);

    runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.go("/").await;
        assert_eq!(
            b.path().await,
            "/login",
            "signed out: / leads to the sign-in page"
        );
        b.shot("login").await;

        let mut refusals = Vec::new();
        for _ in 0..5 {
            b.sign_in("victim", "not the password").await;
            refusals.push(b.text("#login-error").await);
        }
        b.shot("login-wrong-password").await;
        b.sign_in("victim", "victim password").await;
        let throttled = b.text("#login-error").await;
        b.shot("login-rate-limited").await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        let landed = b.path().await;
        let who = b.text("header .who span").await;
        b.shot("dashboard").await;

        assert!(
            refusals.iter().all(|r| r == "Wrong user name or password."),
            "{refusals:?}"
        );
        assert!(
            throttled.starts_with("Too many failed sign-ins for user victim")
                && throttled.contains("try again in 15 minutes"),
            "{throttled}"
        );
        assert_eq!(landed, "/");
        assert_eq!(who, format!("{} (admin)", ADMIN.0));
    });
    // The passwords are in no answer and no log line.
    let (_, listed) = serve.raw(reqwest::Method::GET, "/api/v1/users", None);
    assert!(
        listed.contains("\"victim\"") && !listed.contains("victim password"),
        "{listed}"
    );
    assert!(!listed.contains("argon2"), "{listed}");
    let log = serve.all_lines();
    assert!(!log.contains("victim password") && !log.contains(ADMIN.1));
    assert!(log.contains("console sign-in refused: too many failures"));
}

#[test]
fn console_form_without_csrf_token_is_refused_403_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let serve = hub_with_users(data.path(), &[]);
    let driver = Driver::start();

    runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        b.go("/users").await;
        b.shot("users").await;
        b.fill("#user-name", "mallory").await;
        b.fill("#user-password", "mallory password").await;
        // The form as another site would post it: everything but the token.
        b.c.execute(
            "document.querySelector('form[action=\"/users\"] input[name=csrf]').remove();",
            vec![],
        )
        .await
        .unwrap();
        b.click_and_load("#add-user").await;
        let refused = b.body().await;
        b.shot("csrf-refused").await;
        let status: Value = b
            .c
            .execute_async(
                "const done = arguments[0];
                 fetch('/users', {method: 'POST', headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                   body: 'name=mallory&role=admin&password=mallory+password'})
                 .then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();

        assert!(
            refused.contains("did not carry this page's security token"),
            "{refused}"
        );
        assert_eq!(status, json!(403));
    });
    let (_, listed) = serve.raw(reqwest::Method::GET, "/api/v1/users", None);
    assert!(!listed.contains("mallory"), "{listed}");
}

/// The vCenter simulator with `vm1` (two small disks holding data), an agent enrolled with
/// the binary and running, a credential `vc1` naming it (as tests/e2e/agent.rs builds it).
struct World {
    sim: sendense_vsphere_sim::Simulator,
    serve: Serve,
    _agent: Proc,
    _dir: tempfile::TempDir,
}

impl World {
    fn start(users: &[(&str, &str, &str)]) -> Self {
        use sendense_types::{CredentialRequest, VcenterTrust};
        use sendense_vsphere_sim::{DiskSpec, SIM_PASSWORD, SIM_USER, Simulator, VmSpec};

        const MIB: u64 = 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let sim_dir = dir.path().join("sim");
        std::fs::create_dir(&sim_dir).unwrap();
        let sim = Simulator::start_blocking(&sim_dir).unwrap();
        let vm = sim
            .add_vm(&VmSpec {
                name: "vm1".to_owned(),
                cbt_enabled: true,
                disks: vec![DiskSpec::flat(4 * MIB), DiskSpec::flat(2 * MIB)],
            })
            .unwrap();
        sim.write_disk(&vm, 2000, 0, &[0x11; 300 * 1024]).unwrap();
        sim.write_disk(&vm, 2001, 512 * 1024, &[0x22; 64 * 1024])
            .unwrap();
        let data = dir.path().join("data");
        let serve = hub_with_users(&data, users);
        let created = serve.rest(|h| async move {
            h.request(
                reqwest::Method::POST,
                "/api/v1/agents",
                Some(&json!({"name": "appliance-1"})),
            )
            .await
            .unwrap()
        });
        let token_file = dir.path().join("enroll.token");
        std::fs::write(&token_file, created["enrollment_token"].as_str().unwrap()).unwrap();
        let credential = CredentialRequest::new(
            "vc1".parse().unwrap(),
            sim.address(),
            SIM_USER.to_owned(),
            SIM_PASSWORD.to_owned(),
            VcenterTrust::ca_pem(String::from_utf8(sim.ca_pem()).unwrap()).unwrap(),
        )
        .unwrap()
        .with_agent(Some("appliance-1".parse().unwrap()));
        serve.rest(|h| async move { h.put_credential(&credential).await.unwrap() });
        let state = dir.path().join("agent");
        ok(&client()
            .args(["agent", "enroll", "--hub", &serve.api])
            .args(["--ca", s(&data.join("tls/ca-cert.pem"))])
            .args(["--name", "appliance-1"])
            .args(["--enrollment-token-file", s(&token_file)])
            .args(["--state-dir", s(&state)])
            .output()
            .unwrap());
        let agent = client()
            .args(["--log-format", "json", "agent", "run"])
            .args(["--state-dir", s(&state), "--slots", "2"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self {
            sim,
            serve,
            _agent: Proc(agent),
            _dir: dir,
        }
    }
}

#[test]
fn console_viewer_cannot_start_a_job_even_with_a_forged_form() {
    use sendense_types::{CredentialRequest, VcenterTrust};

    let data = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let serve = hub_with_users(data.path(), &[("watcher", "viewer", "watcher password")]);
    let credential = CredentialRequest::new(
        "vc1".parse().unwrap(),
        "vcenter.invalid".to_owned(),
        "backup".to_owned(),
        "vcenter password".to_owned(),
        VcenterTrust::Insecure,
    )
    .unwrap();
    serve.rest(|h| async move { h.put_credential(&credential).await.unwrap() });
    let (created, _) = serve.raw(
        reqwest::Method::POST,
        "/api/v1/policies",
        Some(json!({"name": "nightly", "schedule": "daily", "credential": "vc1", "vms": ["vm1"]})),
    );
    assert_eq!(created, 201);
    let driver = Driver::start();

    runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in("watcher", "watcher password").await;
        b.go("/policies").await;
        let offered = b
            .c
            .find_all(Locator::Css("form[action$='/run']"))
            .await
            .unwrap()
            .len();
        b.shot("policies-as-viewer").await;
        // A well-formed "run now" with the viewer's own CSRF token, posted anyway.
        b.c.execute(
            "const f = document.createElement('form'); f.method = 'post'; f.action = '/policies/nightly/run';
             const i = document.createElement('input'); i.type = 'hidden'; i.name = 'csrf';
             i.value = document.querySelector('input[name=csrf]').value; f.append(i);
             document.body.append(f); f.submit();",
            vec![],
        )
        .await
        .unwrap();
        b.until("the refusal page", "document.querySelector('.error')").await;
        let refused = b.body().await;
        b.shot("viewer-refused").await;

        assert_eq!(offered, 0, "a viewer is offered no run button");
        assert!(
            refused.contains("Your role (viewer) may look but not run policies"),
            "{refused}"
        );
    });
    let (_, jobs) = serve.raw(reqwest::Method::GET, "/api/v1/jobs", None);
    assert_eq!(
        serde_json::from_str::<Value>(&jobs).unwrap()["jobs"],
        json!([])
    );
}

#[test]
fn console_policy_created_and_run_progress_reaches_100_and_job_turns_green() {
    let world = World::start(&[]);
    let downloads = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    // Reads wait at the simulator's gate: the job is seen running before it completes.
    world.sim.hold_reads(true);

    runtime().block_on(async {
        let b = Browser::open(&driver, &world.serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        b.go("/policies").await;
        b.click("#new-policy").await;
        b.fill("#policy-name", "nightly").await;
        b.fill("#policy-schedule", "mon..fri 22:00").await;
        b.until(
            "the schedule preview",
            "document.querySelector('#next-runs').textContent.includes('22:00')",
        )
        .await;
        let preview = b.text("#next-runs").await;
        b.fill("#policy-vms", "vm1").await;
        b.shot("policy-new").await;
        b.click("#save-policy").await;
        b.until("the policy's page", "location.pathname === '/policies/nightly'")
            .await;
        let saved = b.body().await;
        b.shot("policy-saved").await;
        b.click("#run-now").await;
        b.until("the job's page", "location.pathname.startsWith('/jobs/job-')")
            .await;
        b.until(
            "the job running",
            "document.querySelector('#job-live .status-running')",
        )
        .await;
        let running = b.text("#progress-text").await;
        b.shot("job-running").await;
        world.sim.hold_reads(false);
        b.until(
            "the progress bar at 100% and the job green",
            "document.querySelector('#job-live svg[role=progressbar]').getAttribute('aria-valuenow') === '100'
             && document.querySelector('#job-live .status-completed')",
        )
        .await;
        let done = b.text("#progress-text").await;
        let colour: Value = b
            .c
            .execute(
                "return getComputedStyle(document.querySelector('#job-live .status-completed')).color;",
                vec![],
            )
            .await
            .unwrap();
        b.shot("job-completed").await;

        for (path, name) in [
            ("/", "dashboard-after-run"),
            ("/jobs", "jobs"),
            ("/vms", "vms"),
            ("/vms/vm1", "vm-chain"),
            ("/policies", "policies"),
            ("/restore", "restore-points"),
            ("/credentials", "credentials"),
        ] {
            b.go(path).await;
            b.until("the page", "document.querySelector('main h1')").await;
            b.shot(name).await;
        }
        b.go("/agents").await;
        b.fill("#agent-name", "appliance-2").await;
        b.click("form[action='/agents'] button").await;
        let command = b.text("#enroll-command").await;
        b.shot("agents-enroll").await;
        b.c.set_window_size(390, 844).await.unwrap();
        b.go("/").await;
        b.shot("dashboard-phone").await;
        b.go("/jobs").await;
        b.shot("jobs-phone").await;

        assert!(preview.starts_with("Next runs (hub time):"), "{preview}");
        assert!(saved.contains("Policy nightly created."), "{saved}");
        assert!(running.contains("% ·"), "{running}");
        assert!(done.starts_with("100% ·"), "{done}");
        assert_eq!(colour, json!("rgb(26, 127, 55)"), "completed is green");
        assert!(
            command.contains("sendense-client agent enroll --hub https://127.0.0.1:")
                && command.contains("--name appliance-2"),
            "{command}"
        );
    });
    let (_, jobs) = world
        .serve
        .raw(reqwest::Method::GET, "/api/v1/jobs?kind=backup", None);
    let jobs: Value = serde_json::from_str(&jobs).unwrap();
    assert_eq!(jobs["jobs"][0]["status"], "completed");
    assert_eq!(jobs["jobs"][0]["policy"], "nightly");
}

/// A full backup of `disk` (a raw file, as disk 2000 of `vm`) by `sendense-client backup`;
/// its point's id.
fn client_backup(serve: &Serve, vm: &str, disk: &Path) -> String {
    let summary = ok(&serve
        .client_to("backup")
        .args(["--vm", vm])
        .args(["--type", "full", "--json", "--log-format", "json"])
        .arg("--disk")
        .arg(format!("2000={}", s(disk)))
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let backup: Value = serde_json::from_str(&summary).unwrap();
    backup["backup_id"].as_str().unwrap().to_owned()
}

/// Runs `program args`; fails naming the package when it is missing.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required ({e}); scripts/test.sh installs it"));
    ok(&out);
}

#[test]
fn console_file_browser_downloads_a_file_from_a_point_with_its_bytes() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let serve = hub_with_users(data.path(), &[]);
    // A 16 MiB disk: GPT, one ext4 partition at 1 MiB holding etc/motd and a 300 KiB file.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), b"hello from the restore point\n").unwrap();
    let payload: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(tree.join("etc/blob.bin"), &payload).unwrap();
    let disk = work.path().join("disk.raw");
    let part = work.path().join("part.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    run("sgdisk", &["-n", "1:2048:+12M", "-t", "1:8300", s(&disk)]);
    run("mkfs.ext4", &["-q", "-F", "-d", s(&tree), s(&part), "12M"]);
    {
        use std::os::unix::fs::FileExt;
        let bytes = std::fs::read(&part).unwrap();
        let out = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
        out.write_all_at(&bytes, 1 << 20).unwrap();
    }
    let backup_id = client_backup(&serve, "fsvm", &disk);
    let driver = Driver::start();

    runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        b.go("/restore").await;
        b.click(&format!("a[href='/restore/{backup_id}']")).await;
        b.until("the point's page", "document.querySelector('main h1')")
            .await;
        b.shot("restore-point").await;
        b.click("a[href*='/files?partition=1']").await;
        b.until("the root folder", "document.querySelector('#files')")
            .await;
        b.shot("files-root").await;
        b.click("#files a[href$='path=%2Fetc']").await;
        b.until(
            "the etc folder",
            "document.querySelector('#folder').textContent === '/etc'",
        )
        .await;
        let listing = b.text("#files").await;
        b.shot("files-etc").await;
        b.click("#files a[download='blob.bin']").await;

        assert!(
            listing.contains("motd") && listing.contains("300.0 KiB"),
            "{listing}"
        );
        // Waited for while the browser is still open: closing its session (when `b` is
        // dropped) ends Chromium, and with it a download still in progress. Chromium writes
        // `blob.bin.crdownload` first and renames it when complete.
        let got = downloads.path().join("blob.bin");
        let deadline = Instant::now() + DEADLINE;
        while !got.exists() {
            assert!(
                Instant::now() < deadline,
                "no download in {}",
                downloads.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let got = downloads.path().join("blob.bin");
    assert_eq!(std::fs::read(&got).unwrap(), payload);
}

#[test]
fn console_dashboard_first_paint_with_500_vms_and_10000_jobs_is_measured() {
    use sendense_catalog::{Catalog, JobRecord};
    use sendense_types::{DiskKey, DiskSpec, JobKind, JobStatus, RegisterVmRequest, Timestamp};

    // The catalog is seeded before the hub starts, on tmpfs: 10,500 commits on a disk would
    // measure the disk, not the console.
    let data = tempfile::tempdir_in("/dev/shm").unwrap();
    let downloads = tempfile::tempdir().unwrap();
    {
        let catalog = Catalog::open_in(data.path()).unwrap();
        let now = Timestamp::now();
        for i in 0..500 {
            let spec = RegisterVmRequest::new(
                format!("vm-{i:03}").parse().unwrap(),
                vec![DiskSpec {
                    key: DiskKey(2000),
                    capacity_bytes: 1 << 30,
                }],
            )
            .unwrap();
            catalog.upsert_vm(&spec, now).unwrap();
        }
        for i in 0..10_000u64 {
            let mut job = JobRecord::queued(JobKind::Backup);
            job.vm_name = Some(format!("vm-{:03}", i % 500).parse().unwrap());
            let job = catalog.create_job(job).unwrap();
            let ago = i64::try_from(i * 17 % 86_000).unwrap();
            catalog
                .update_job::<sendense_catalog::CatalogError>(&job.job_id, |r| {
                    r.status = if i % 10 == 0 {
                        JobStatus::Failed
                    } else {
                        JobStatus::Completed
                    };
                    r.started_at = Some(now.saturating_add_seconds(-ago - 60));
                    r.finished_at = Some(now.saturating_add_seconds(-ago));
                    r.progress.bytes_done = 64 << 20;
                    r.progress.bytes_total = 64 << 20;
                    Ok(())
                })
                .unwrap();
        }
    }
    let serve = hub_with_users(data.path(), &[]);
    let driver = Driver::start();

    runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        let mut paints = Vec::new();
        for _ in 0..3 {
            b.go("/").await;
            b.until("the chart", "document.querySelector('svg.chart')")
                .await;
            // First contentful paint, from a buffered observer (the entry may come after
            // `load`), with the navigation's own marks.
            let timing: Value =
                b.c.execute_async(
                    "const done = arguments[0];
                     const n = performance.getEntriesByType('navigation')[0];
                     const answer = (fcp) => done({response_end_ms: n.responseEnd,
                       dom_content_loaded_ms: n.domContentLoadedEventEnd, load_ms: n.loadEventEnd,
                       first_contentful_paint_ms: fcp});
                     new PerformanceObserver((list) => {
                       const e = list.getEntriesByName('first-contentful-paint')[0];
                       if (e) { answer(e.startTime); }
                     }).observe({type: 'paint', buffered: true});",
                    vec![],
                )
                .await
                .unwrap();
            paints.push(timing);
        }
        b.shot("dashboard-500-vms-10000-jobs").await;
        let counts = b.text(".counts").await;
        b.go("/vms").await;
        b.until("the VM table", "document.querySelector('main table')")
            .await;
        b.shot("vms-500").await;

        // The figure for the report; no timed assertion (the machine is shared).
        eprintln!("console dashboard, 500 VMs and 10,000 jobs: navigation timing {paints:?}");
        assert!(
            paints
                .iter()
                .all(|t| t["first_contentful_paint_ms"].as_f64().is_some()),
            "{paints:?}"
        );
        assert!(
            counts.contains("9000") && counts.contains("1000"),
            "{counts}"
        );
    });
}

/// Posts a form built in the page (as a forger would, with the signed-in user's own CSRF
/// token) to `action`, and waits for the answer page.
async fn forge_post(b: &Browser, action: &str) {
    b.c.execute(
        "const f = document.createElement('form'); f.method = 'post'; f.action = arguments[0];
         const i = document.createElement('input'); i.type = 'hidden'; i.name = 'csrf';
         i.value = document.querySelector('input[name=csrf]').value; f.append(i);
         document.body.append(f); f.submit();",
        vec![json!(action)],
    )
    .await
    .unwrap();
    b.until(
        "the answer page",
        &format!("location.pathname === {action:?} && document.readyState === 'complete'"),
    )
    .await;
}

/// Counts the elements matching `css`.
async fn count(b: &Browser, css: &str) -> usize {
    b.c.find_all(Locator::Css(css)).await.unwrap().len()
}

#[test]
fn console_session_survives_a_hub_restart_and_sign_out_revokes_it() {
    let data = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let serve = hub_with_users(data.path(), &[]);
    let driver = Driver::start();
    let rt = runtime();
    let b = rt.block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        assert_eq!(b.path().await, "/");
        b
    });
    // A clean stop, then the same data folder again (on new ports: cookies do not care).
    serve.proc.signal("TERM");
    let mut serve = serve;
    serve.proc.0.wait().unwrap();
    let serve = Serve::start(data.path(), &[], "info");

    rt.block_on(async {
        let b = Browser {
            base: serve.api.clone(),
            ..b
        };
        b.go("/jobs").await;
        let after_restart = b.path().await;
        let who = b.text("header .who span").await;
        b.shot("jobs-after-restart").await;
        // A change needs the CSRF token kept with the session: it still matches.
        b.go("/users").await;
        b.fill("#user-name", "made-after-restart").await;
        b.fill("#user-password", "a password 123").await;
        b.click_and_load("#add-user").await;
        let added = b.text(".flash").await;
        let cookie = b.c.get_named_cookie("sendense_session").await.unwrap();
        b.click("form[action='/logout'] button").await;
        b.until("the sign-in page", "location.pathname === '/login'")
            .await;
        // The old cookie put back by hand is worth nothing now.
        b.c.add_cookie(cookie).await.unwrap();
        b.go("/").await;
        let after_sign_out = b.path().await;

        assert_eq!(after_restart, "/jobs", "still signed in after the restart");
        assert_eq!(who, format!("{} (admin)", ADMIN.0));
        assert_eq!(added, "User made-after-restart (viewer) added.");
        assert_eq!(after_sign_out, "/login", "sign-out ended the session");
    });
    // The catalog holds no cookie value: the session table is keyed by the token's SHA-256.
    let (_, users) = serve.raw(reqwest::Method::GET, "/api/v1/users", None);
    assert!(users.contains("made-after-restart"), "{users}");
}

#[test]
fn console_admin_changes_roles_and_deletes_while_a_viewer_sees_no_buttons_and_is_refused() {
    use sendense_types::{CredentialRequest, VcenterTrust};

    let data = tempfile::tempdir().unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let serve = hub_with_users(
        data.path(),
        &[
            ("watcher", "viewer", "watcher password"),
            ("promoted", "viewer", "promoted password"),
            ("leaver", "operator", "leaver password"),
        ],
    );
    for agent in ["old-agent", "busy-agent"] {
        let (status, _) = serve.raw(
            reqwest::Method::POST,
            "/api/v1/agents",
            Some(json!({"name": agent})),
        );
        assert_eq!(status, 201);
    }
    for (name, agent) in [("vc-old", None), ("vc-busy", Some("busy-agent"))] {
        let credential = CredentialRequest::new(
            name.parse().unwrap(),
            "vcenter.invalid".to_owned(),
            "backup".to_owned(),
            "vcenter password".to_owned(),
            VcenterTrust::Insecure,
        )
        .unwrap()
        .with_agent(agent.map(|a| a.parse().unwrap()));
        serve.rest(|h| async move { h.put_credential(&credential).await.unwrap() });
    }
    let driver = Driver::start();

    runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;
        b.go("/users").await;
        let role =
            b.c.find(Locator::Css("form[action='/users/promoted/role'] select"))
                .await
                .unwrap();
        role.select_by_value("operator").await.unwrap();
        b.click_and_load("form[action='/users/promoted/role'] button")
            .await;
        let promoted = b.text(".flash").await;
        b.click_and_load("form[action='/users/leaver/delete'] button")
            .await;
        let deleted = b.text(".flash").await;
        let own_role_forms = count(&b, &format!("form[action='/users/{}/role']", ADMIN.0)).await;
        b.shot("users-admin").await;
        b.go("/credentials").await;
        b.click_and_load("form[action='/credentials/vc-old/delete'] button")
            .await;
        let credential_deleted = b.text(".flash").await;
        b.shot("credentials-admin").await;
        b.go("/agents").await;
        b.click_and_load("form[action='/agents/busy-agent/delete'] button")
            .await;
        b.until("the refusal", "document.querySelector('.error')")
            .await;
        let agent_refused = b.text(".error").await;
        b.shot("agent-delete-refused").await;
        b.go("/agents").await;
        b.click_and_load("form[action='/agents/old-agent/delete'] button")
            .await;
        let agent_deleted = b.text(".flash").await;
        b.shot("agents-admin").await;
        b.c.set_window_size(390, 844).await.unwrap();
        for (path, name) in [
            ("/users", "users-phone"),
            ("/credentials", "credentials-phone"),
            ("/agents", "agents-phone"),
        ] {
            b.go(path).await;
            b.shot(name).await;
        }
        b.c.set_window_size(1280, 800).await.unwrap();
        b.click("form[action='/logout'] button").await;

        b.sign_in("watcher", "watcher password").await;
        b.go("/credentials").await;
        let viewer_credential_buttons = count(&b, "form[action$='/delete']").await;
        b.shot("credentials-as-viewer").await;
        forge_post(&b, "/credentials/vc-busy/delete").await;
        let credential_refused = b.body().await;
        b.go("/agents").await;
        let viewer_agent_buttons = count(&b, "form[action$='/delete']").await;
        forge_post(&b, "/agents/busy-agent/delete").await;
        let agent_refused_viewer = b.body().await;
        b.go("/agents").await;
        forge_post(&b, "/users/promoted/role").await;
        let role_refused = b.body().await;
        b.go("/credentials").await;
        let status: Value =
            b.c.execute_async(
                "const done = arguments[0];
                 const csrf = document.querySelector('input[name=csrf]').value;
                 fetch('/credentials/vc-busy/delete', {method: 'POST',
                   headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                   body: 'csrf=' + encodeURIComponent(csrf)}).then(r => done(r.status));",
                vec![],
            )
            .await
            .unwrap();

        assert_eq!(promoted, "promoted is now operator.");
        assert_eq!(deleted, "User leaver deleted.");
        assert_eq!(own_role_forms, 0, "an admin cannot demote themself");
        assert_eq!(credential_deleted, "Credential vc-old deleted.");
        assert!(
            agent_refused.contains("Agent busy-agent is still in use")
                && agent_refused.contains("credentials vc-busy send their jobs to it"),
            "{agent_refused}"
        );
        assert_eq!(
            agent_deleted,
            "Agent old-agent deleted: its token no longer works."
        );
        assert_eq!((viewer_credential_buttons, viewer_agent_buttons), (0, 0));
        assert!(
            credential_refused.contains("Only admins may delete credentials; your role is viewer."),
            "{credential_refused}"
        );
        assert!(
            agent_refused_viewer.contains("Only admins may delete agents"),
            "{agent_refused_viewer}"
        );
        assert!(
            role_refused.contains("Only admins may manage users"),
            "{role_refused}"
        );
        assert_eq!(status, json!(403));
    });
    let (_, users) = serve.raw(reqwest::Method::GET, "/api/v1/users", None);
    let users: Value = serde_json::from_str(&users).unwrap();
    let roles: Vec<(String, String)> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["name"].as_str().unwrap().to_owned(),
                u["role"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        [
            ("promoted".to_owned(), "operator".to_owned()),
            (ADMIN.0.to_owned(), "admin".to_owned()),
            ("watcher".to_owned(), "viewer".to_owned()),
        ]
    );
    let (_, credentials) = serve.raw(reqwest::Method::GET, "/api/v1/credentials", None);
    assert!(
        !credentials.contains("vc-old") && credentials.contains("vc-busy"),
        "{credentials}"
    );
    let (_, agents) = serve.raw(reqwest::Method::GET, "/api/v1/agents", None);
    assert!(
        !agents.contains("old-agent") && agents.contains("busy-agent"),
        "{agents}"
    );
}

/// Waits (bounded) until job `id` has ended; its answer.
fn wait_job(serve: &Serve, id: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, job) = serve.raw(reqwest::Method::GET, &format!("/api/v1/jobs/{id}"), None);
        let job: Value = serde_json::from_str(&job).unwrap();
        if job["status"] != "queued" && job["status"] != "running" {
            return job;
        }
        assert!(Instant::now() < deadline, "job not ended in time: {job}");
        let _ = serve.log.recv_timeout(Duration::from_millis(200));
    }
}

#[test]
fn console_restores_a_vm_into_vcenter_runs_and_discards_an_instant_recovery_and_says_why_not() {
    let world = World::start(&[]);
    let serve = &world.serve;
    let downloads = tempfile::tempdir().unwrap();
    // A point of vm1 taken by the agent (its configuration captured from the snapshot).
    let (status, queued) = serve.raw(
        reqwest::Method::POST,
        "/api/v1/vms/vm1/backup",
        Some(json!({"backup_type": "full", "credential": "vc1"})),
    );
    assert_eq!(status, 202, "{queued}");
    let queued: Value = serde_json::from_str(&queued).unwrap();
    let job = wait_job(serve, queued["job_id"].as_str().unwrap());
    assert_eq!(job["status"], "completed", "{job}");
    let vm1_point = job["backup_id"].as_str().unwrap().to_owned();
    // A point taken by a plain `sendense-client backup` of a disk file: no configuration.
    let disk = world._dir.path().join("plain.raw");
    std::fs::write(&disk, vec![0x42u8; 1 << 20]).unwrap();
    let plain_point = client_backup(serve, "plainvm", &disk);
    let driver = Driver::start();

    let (restore_job, failed_job) = runtime().block_on(async {
        let b = Browser::open(&driver, &serve.api, downloads.path()).await;
        b.sign_in(ADMIN.0, ADMIN.1).await;

        // No configuration: the form warns, and the hub's refusal comes back in words.
        b.go(&format!("/restore/{plain_point}")).await;
        let warning = b.text("#no-vm-config").await;
        b.fill("#restore-datacenter", "dc1").await;
        b.fill("#restore-datastore", "ds1").await;
        b.click("#restore-start").await;
        b.until("the refusal", "document.querySelector('.error')")
            .await;
        let refused = b.text(".error").await;
        b.shot("restore-refused-no-config").await;

        // Instant recovery: start, see the NBD URI ready to copy, discard.
        b.go(&format!("/restore/{plain_point}")).await;
        b.click("#instant-start").await;
        b.until(
            "the instant recovery",
            "document.querySelector('#instants code.uri')",
        )
        .await;
        let started = b.text(".flash").await;
        let uri = b.text("#instants code.uri").await;
        let copy_targets =
            b.c.execute(
                "return [...document.querySelectorAll('#instants [data-copy]')]
                   .every(btn => document.getElementById(btn.dataset.copy));",
                vec![],
            )
            .await
            .unwrap();
        b.shot("instant-started").await;
        b.go("/restore").await;
        let listed = b.text("#instants").await;
        b.shot("restore-points-with-instant").await;
        b.click_and_load("#instants form[action$='/discard'] button")
            .await;
        let discarded = b.text(".flash").await;
        let left = b.text("#instants").await;

        // A whole-VM restore into the simulator, its job followed live.
        b.go(&format!("/restore/{vm1_point}")).await;
        b.fill("#restore-name", "vm1-restored").await;
        b.fill("#restore-datacenter", "dc1").await;
        b.fill("#restore-datastore", "ds1").await;
        b.fill("input[name='host']", sendense_vsphere_sim::SIM_HOST)
            .await;
        b.fill("input[name='net:Backup Net']", "Restore Net").await;
        b.shot("restore-form").await;
        // Submitted from the keyboard: Enter in the last field typed.
        b.c.find(Locator::Css("input[name='net:Backup Net']"))
            .await
            .unwrap()
            .send_keys("\u{E007}")
            .await
            .unwrap();
        b.until(
            "the job's page",
            "location.pathname.startsWith('/jobs/job-')",
        )
        .await;
        let queued_flash = b.text(".flash").await;
        b.until(
            "the restore job green",
            "document.querySelector('#job-live .status-completed')",
        )
        .await;
        b.until(
            "the hub's log lines of the job",
            "document.querySelector('#job-log').textContent.includes('job finished')",
        )
        .await;
        let log = b.text("#job-log").await;
        let restore_job = b.path().await.trim_start_matches("/jobs/").to_owned();
        b.shot("restore-job-completed").await;
        b.c.set_window_size(390, 844).await.unwrap();
        b.shot("restore-job-phone").await;
        b.go(&format!("/restore/{vm1_point}")).await;
        b.shot("restore-point-phone").await;
        b.c.set_window_size(1280, 800).await.unwrap();

        // A network vCenter does not have: the agent refuses before creating anything, and
        // the job says why.
        b.fill("#restore-name", "vm1-lab").await;
        b.fill("#restore-datacenter", "dc1").await;
        b.fill("#restore-datastore", "ds1").await;
        b.fill("input[name='host']", sendense_vsphere_sim::SIM_HOST)
            .await;
        b.fill("input[name='net:Backup Net']", "Lab Net").await;
        b.click("#restore-start").await;
        b.until(
            "the job's page",
            "location.pathname.startsWith('/jobs/job-')",
        )
        .await;
        b.until(
            "the restore job failed",
            "document.querySelector('#job-live .status-failed')",
        )
        .await;
        let failure = b.text("#job-live .error").await;
        let failed_job = b.path().await.trim_start_matches("/jobs/").to_owned();
        b.shot("restore-job-unknown-network").await;

        assert!(
            warning.contains("no captured VM configuration"),
            "{warning}"
        );
        assert!(
            refused.starts_with("The restore was not queued.")
                && refused.contains("has no captured VM configuration"),
            "{refused}"
        );
        assert!(started.starts_with("Instant recovery inst"), "{started}");
        assert!(uri.starts_with("nbds://"), "{uri}");
        assert_eq!(copy_targets, json!(true));
        assert!(
            listed.contains(&plain_point) && listed.contains(&uri),
            "{listed}"
        );
        assert!(discarded.contains("discarded"), "{discarded}");
        assert!(left.contains("None is running."), "{left}");
        assert!(
            queued_flash.starts_with("Restore job job-"),
            "{queued_flash}"
        );
        assert!(
            log.contains("restore job queued") && log.contains("job handed out"),
            "{log}"
        );
        assert!(failure.contains("Backup Net"), "{failure}");
        (restore_job, failed_job)
    });
    assert!(world.sim.vm_by_name("vm1-restored").is_some());
    assert!(world.sim.vm_by_name("vm1-lab").is_none());
    let (_, instants) = serve.raw(reqwest::Method::GET, "/api/v1/instant", None);
    assert_eq!(
        serde_json::from_str::<Value>(&instants).unwrap()["instants"],
        json!([])
    );
    let (_, job) = serve.raw(
        reqwest::Method::GET,
        &format!("/api/v1/jobs/{restore_job}"),
        None,
    );
    let job: Value = serde_json::from_str(&job).unwrap();
    assert_eq!(
        (job["kind"].as_str(), job["status"].as_str()),
        (Some("restore"), Some("completed"))
    );
    let (_, failed) = serve.raw(
        reqwest::Method::GET,
        &format!("/api/v1/jobs/{failed_job}"),
        None,
    );
    assert!(failed.contains("\"failed\""), "{failed}");
}
