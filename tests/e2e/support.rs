//! Helpers shared by the end-to-end tests.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `sendense-hub` binary under test.
pub(crate) fn hub() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sendense-hub"))
}

/// The `sendense-client` binary under test.
pub(crate) fn client() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sendense-client"))
}

/// Folder (inside the hub's data folder) of the client certificate [`client_tls`] issues.
pub(crate) const CLIENT_TLS_DIR: &str = "e2e-client-tls";

/// An NBD client certificate folder (QEMU layout: `ca-cert.pem`, `client-cert.pem`,
/// `client-key.pem`) for the hub whose data folder is `data`, issued once with
/// `sendense-hub cert issue` (the hub must have started once, so its CA exists). The hub
/// requires such a certificate on its NBD port by default (issue #11).
pub(crate) fn client_tls(data: &Path) -> PathBuf {
    let out = data.join(CLIENT_TLS_DIR);
    if !out.join("client-cert.pem").exists() {
        ok(&hub()
            .args([
                "cert",
                "issue",
                "e2e-client",
                "--data-dir",
                s(data),
                "--out",
                s(&out),
            ])
            .output()
            .unwrap());
    }
    out
}

/// [`client_tls`] without a subprocess, for tests that run the hub in-process.
pub(crate) fn client_tls_in_process(data: &Path) -> PathBuf {
    let out = data.join(CLIENT_TLS_DIR);
    if !out.join("client-cert.pem").exists() {
        sendense_hub::tls::issue_client_folder(&data.join("tls"), "e2e-client", &out).unwrap();
    }
    out
}

/// Runs `qemu-img`; panics with a clear message when it is not installed.
pub(crate) fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("qemu-img is required ({e}); install qemu-utils (scripts/test.sh does)")
        })
}

/// Asserts a command exited 0 and returns its stdout.
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {}: {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes `len` deterministic pseudo-random bytes at `offset` of `path`.
pub(crate) fn write_random(path: &Path, offset: u64, len: usize, seed: u64) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .unwrap();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; len];
    for chunk in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    file.write_all_at(&buf, offset).unwrap();
}

/// The path as `&str` (temp paths are UTF-8).
pub(crate) fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Reads a child's stderr on a thread, one JSON value per line (a line that is not JSON as a
/// string), until EOF; the receiver may be dropped, the thread keeps draining so the child never
/// blocks on a full pipe.
pub(crate) fn log_lines(
    stderr: impl std::io::Read + Send + 'static,
) -> std::sync::mpsc::Receiver<serde_json::Value> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
            let _ = tx.send(value);
        }
    });
    rx
}

/// How long [`wait_log`] waits for a log line before the test fails.
pub(crate) const LOG_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Waits (blocking, bounded by [`LOG_DEADLINE`]) for a log line matching `want`; fails the test
/// naming `what` and every line seen otherwise.
pub(crate) fn wait_log(
    log: &std::sync::mpsc::Receiver<serde_json::Value>,
    what: &str,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LOG_DEADLINE;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match log.recv_timeout(left) {
            Ok(line) if want(&line) => return line,
            Ok(line) => seen.push(line.to_string()),
            Err(e) => panic!("no log line {what} ({e}); saw:\n{}", seen.join("\n")),
        }
    }
}

/// [`wait_log`] for a line whose message is `message`.
pub(crate) fn wait_message(
    log: &std::sync::mpsc::Receiver<serde_json::Value>,
    message: &str,
) -> serde_json::Value {
    wait_log(log, &format!("{message:?}"), |line| {
        line["fields"]["message"] == message
    })
}

/// A log line's message (`fields.message`), empty when it has none.
pub(crate) fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// Sends `signal` (a name such as `TERM`) to `pid` with the `kill` command.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}: {status}");
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub(crate) struct Proc(pub(crate) std::process::Child);

impl Proc {
    /// The child's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends `name` (such as `TERM`) to the child.
    pub(crate) fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// SIGKILL, then waits for the exit.
    pub(crate) fn kill(&mut self) {
        // Already exited is fine: the kill is only there to be sure.
        let _ = self.0.kill();
        self.0.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already exited is fine: the kill is only there to be sure.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `sendense-hub serve` on 127.0.0.1 with OS-chosen ports and JSON logs; killed
/// when dropped. Every test file's hub wrapper is built on this one.
pub(crate) struct Serve {
    /// The hub process.
    pub(crate) proc: Proc,
    /// Its data folder.
    pub(crate) data: PathBuf,
    /// `https://HOST:PORT` of the REST API, as the hub logged it.
    pub(crate) api: String,
    /// `nbds://HOST:PORT` of the NBD port, as the hub logged it.
    pub(crate) nbd: String,
    /// Log lines after `hub ready`, parsed (a line that is not JSON as a string).
    pub(crate) log: std::sync::mpsc::Receiver<serde_json::Value>,
    /// Every log line so far, as written.
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Serve {
    /// Starts `sendense-hub serve` on `data` (created on first start) with `extra` arguments
    /// and `RUST_LOG=rust_log`, and waits (bounded by [`LOG_DEADLINE`]) until it logs
    /// `hub ready`.
    pub(crate) fn start(data: &Path, extra: &[&str], rust_log: &str) -> Self {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = hub()
            .args(["serve", "--data-dir", s(data)])
            .args(["--api", "127.0.0.1:0", "--nbd", "127.0.0.1:0"])
            .args(["--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let proc = Proc(child);
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&lines);
        let (tx, log) = std::sync::mpsc::channel();
        // Drains the pipe until EOF (the receiver may be dropped) so the hub never blocks.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::Value::String(line.clone()));
                keep.lock().unwrap().push(line);
                let _ = tx.send(value);
            }
        });
        let ready = wait_message(&log, "hub ready");
        let field = |name: &str| ready["fields"][name].as_str().unwrap().to_owned();
        Self {
            proc,
            data: data.to_owned(),
            api: field("api"),
            nbd: field("nbd"),
            log,
            lines,
        }
    }

    /// The API token file.
    pub(crate) fn token(&self) -> PathBuf {
        self.data.join("api.token")
    }

    /// `sendense-client SUBCOMMAND --hub … --tls-dir … --token-file …` against this hub.
    pub(crate) fn client_to(&self, subcommand: &str) -> Command {
        let mut cmd = client();
        cmd.args([subcommand, "--hub", &self.api])
            .args(["--tls-dir", s(&self.tls_dir())])
            .args(["--token-file", s(&self.token())]);
        cmd
    }

    /// The client certificate folder (`--tls-dir`) this hub issued.
    pub(crate) fn tls_dir(&self) -> PathBuf {
        client_tls(&self.data)
    }

    /// The repository file of one disk of one backup.
    pub(crate) fn image(&self, vm: &str, key: u32, backup_id: &str) -> PathBuf {
        self.data
            .join(format!("repository/{vm}/disk-{key}/{backup_id}.qcow2"))
    }

    /// Options of a REST client of this hub, trusting its issued certificate folder.
    pub(crate) fn options(&self) -> sendense_client::hub::HubOptions {
        sendense_client::hub::HubOptions::with_tls_dir(&self.api, &self.tls_dir(), &self.token())
    }

    /// Runs a REST call through the client library on a small runtime.
    pub(crate) fn rest<T, F: Future<Output = T>>(
        &self,
        call: impl FnOnce(sendense_client::hub::HubClient) -> F,
    ) -> T {
        let hub = sendense_client::hub::HubClient::new(&self.options()).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(call(hub))
    }

    /// A REST call with the token through plain reqwest (any body, any answer): the status
    /// and the body as text.
    pub(crate) fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, String) {
        let tls = sendense_client::hub::tls_config(&self.data.join("tls/ca-cert.pem")).unwrap();
        let token = std::fs::read_to_string(self.token()).unwrap();
        let url = format!("{}{path}", self.api);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let http = reqwest::Client::builder()
                    .use_preconfigured_tls((*tls).clone())
                    .build()
                    .unwrap();
                let mut req = http.request(method, url).bearer_auth(token.trim());
                if let Some(body) = body {
                    req = req.json(&body);
                }
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                (status, resp.text().await.unwrap())
            })
    }

    /// Every log line so far, as written, one a line.
    pub(crate) fn all_lines(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// How many log lines so far have the message `message`.
    pub(crate) fn count(&self, message: &str) -> usize {
        let needle = format!("\"message\":\"{message}\"");
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

/// Every file under `dir`, recursively, sorted.
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Declares a suite's own hub wrapper `struct $name(Serve)` that derefs to [`Serve`], so the
/// suite adds its helpers to it and reads `data`, `api`, `log`... through it.
macro_rules! serve_wrapper {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        struct $name($crate::support::Serve);

        impl std::ops::Deref for $name {
            type Target = $crate::support::Serve;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }
    };
}
pub(crate) use serve_wrapper;

/// `qemu-img compare` must find `image` (format `fmt`) identical to `source` (format
/// `source_fmt`); fails naming both and what qemu-img said.
pub(crate) fn assert_same(image: &Path, fmt: &str, source: &Path, source_fmt: &str) {
    let out = qemu_img(&["compare", "-f", fmt, "-F", source_fmt, s(image), s(source)]);
    assert!(
        out.status.success(),
        "qemu-img compare {} {}: exit {}: {}{}",
        image.display(),
        source.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `qemu-img check` must find no errors and no leaks in the qcow2 `image`.
pub(crate) fn assert_check_clean(image: &Path) {
    ok(&qemu_img(&["check", "-f", "qcow2", s(image)]));
}
