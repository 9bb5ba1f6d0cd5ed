//! File-level restore end to end: disks partitioned by `sgdisk` (GPT) and `sfdisk` (MBR with
//! logical partitions), file systems made by `mkfs.ext4 -d`, `mkfs.fat` with `mcopy` and `mkntfs`
//! with `ntfs-3g`, backed up by the real `sendense-client` into a real `sendense-hub serve`, then
//! read back file by file through the restore point with `sendense-client files`: every file's
//! type, size, SHA-256 (and link target and modification time where the file system keeps
//! them) equal to the source tree; a file changed before an incremental shows its new content
//! only in the new point; bad input answers clear 4xx errors while the hub keeps serving.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::support::{Serve, client, ok, s, serve_wrapper, write_random};

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;

serve_wrapper!(
    /// A running `sendense-hub serve` (see [`Serve`]).
    Hub
);

impl Hub {
    fn start(data: &Path) -> Self {
        Self(Serve::start(data, &[], "info"))
    }

    /// `sendense-client backup` of one raw disk (key 2000); its backup id.
    fn backup(&self, vm: &str, disk: &Path, kind: &str, extra: &[&str]) -> String {
        let out = self
            .client_to("backup")
            .args(["--vm", vm])
            .args(["--type", kind, "--json", "--log-format", "json"])
            .arg("--disk")
            .arg(format!("2000={}", s(disk)))
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let summary: Value = serde_json::from_str(&ok(&out)).unwrap();
        summary["backup_id"].as_str().unwrap().to_owned()
    }

    /// `sendense-client files ARGS... --backup ID --disk 2000`, which must succeed; stdout.
    fn files(&self, backup: &str, args: &[&str]) -> String {
        ok(&self.files_output(backup, args))
    }

    fn files_output(&self, backup: &str, args: &[&str]) -> std::process::Output {
        let (sub, rest) = args.split_first().unwrap();
        client()
            .args([
                "files",
                sub,
                "--hub",
                &self.api,
                "--tls-dir",
                s(&self.tls_dir()),
            ])
            .args(["--token-file", s(&self.token()), "--backup", backup])
            .args(["--disk", "2000"])
            .args(rest)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `files get` of a folder, unpacked into a fresh folder; the unpacked folder.
    fn get_folder(&self, backup: &str, partition: u32, path: &str, into: &Path) -> PathBuf {
        let _ = std::fs::remove_dir_all(into);
        let out = self.files(
            backup,
            &[
                "get",
                "--partition",
                &partition.to_string(),
                path,
                "--to",
                s(into),
                "--json",
            ],
        );
        let summary: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(summary["kind"], "folder", "{out}");
        PathBuf::from(summary["written"].as_str().unwrap())
    }
}

/// Runs a tool that must exist and succeed.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} is required (scripts/test.sh installs e2fsprogs, dosfstools, mtools, ntfs-3g, gdisk, fdisk): {e}")
        });
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a tree holds, path by path (relative, `/`-separated): type, size, SHA-256 of a file,
/// link target, modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    size: u64,
    sha256: Option<String>,
    link: Option<String>,
    mtime: Option<i64>,
}

fn sha256(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Walks `root` (links not followed).
fn tree(root: &Path, with_mtime: bool) -> BTreeMap<String, Node> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mtime = with_mtime.then_some(meta.mtime());
            let node = if meta.file_type().is_symlink() {
                Node {
                    kind: "symlink",
                    size: 0,
                    sha256: None,
                    link: Some(std::fs::read_link(&path).unwrap().to_string_lossy().into()),
                    mtime: None,
                }
            } else if meta.is_dir() {
                todo.push(path.clone());
                Node {
                    kind: "directory",
                    size: 0,
                    sha256: None,
                    link: None,
                    mtime: None,
                }
            } else {
                Node {
                    kind: "file",
                    size: meta.len(),
                    sha256: Some(sha256(&path)),
                    link: None,
                    mtime,
                }
            };
            out.insert(rel, node);
        }
    }
    out
}

/// A source tree: small and random files, a sparse file, a 200-byte name, Unicode names,
/// folders `depth` deep, an empty folder, and (`links`) symbolic links.
fn make_tree(root: &Path, depth: usize, links: bool) {
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("hello.txt"), b"hello from the source\n").unwrap();
    std::fs::write(root.join("data/random.bin"), []).unwrap();
    write_random(&root.join("data/random.bin"), 0, 300 * 1024 + 17, 7);
    let sparse = std::fs::File::create(root.join("data/sparse.img")).unwrap();
    sparse.set_len(3 * MIB).unwrap();
    sparse
        .write_all_at(b"in the middle of nothing", MIB + 4096)
        .unwrap();
    std::fs::write(
        root.join(format!("{}.txt", "L".repeat(200))),
        b"long name\n",
    )
    .unwrap();
    std::fs::write(root.join("Ünïcødé-文件.txt"), "unicode ✓\n".as_bytes()).unwrap();
    let mut deep = root.join("deep");
    for level in 0..depth {
        deep = deep.join(format!("level{level}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("bottom.txt"), b"the bottom\n").unwrap();
    if links {
        std::os::unix::fs::symlink("hello.txt", root.join("link-to-hello")).unwrap();
        std::os::unix::fs::symlink("/etc/nowhere/at/all", root.join("dangling")).unwrap();
    }
    // Whole seconds, so that every file system keeps them exactly.
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for (path, node) in tree(root, false) {
        if node.kind == "file" {
            let f = std::fs::File::options()
                .write(true)
                .open(root.join(path))
                .unwrap();
            f.set_modified(when).unwrap();
        }
    }
}

/// A file-system image of `mib` MiB at `path` holding `tree`.
fn make_fs(kind: &str, path: &Path, mib: u64, tree: &Path, scratch: &Path) {
    let size = format!("{mib}M");
    match kind {
        "ext4" => {
            run(
                "mkfs.ext4",
                &["-q", "-F", "-d", s(tree), "-L", "rootfs", s(path), &size],
            );
        }
        "fat" => {
            std::fs::File::create(path)
                .unwrap()
                .set_len(mib * MIB)
                .unwrap();
            run("mkfs.fat", &["-F", "16", "-n", "SENDENSE", s(path)]);
            let items: Vec<PathBuf> = std::fs::read_dir(tree)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            let mut args = vec!["-i", s(path), "-s", "-p", "-m"];
            args.extend(items.iter().map(|p| s(p)));
            args.push("::/");
            run("mcopy", &args);
        }
        "ntfs" => {
            std::fs::File::create(path)
                .unwrap()
                .set_len(mib * MIB)
                .unwrap();
            run("mkntfs", &["-F", "-Q", "-q", "-L", "winvol", s(path)]);
            let mnt = scratch.join("ntfs-mnt");
            std::fs::create_dir_all(&mnt).unwrap();
            run("ntfs-3g", &[s(path), s(&mnt)]);
            let unmount = Unmount(mnt.clone());
            run("cp", &["-a", &format!("{}/.", s(tree)), s(&mnt)]);
            drop(unmount);
        }
        other => panic!("no such file system {other}"),
    }
}

/// Unmounts a FUSE mount when dropped (also when the test fails).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Copies a file-system image into the disk at byte `start`.
fn place(disk: &Path, start: u64, image: &Path) {
    let bytes = std::fs::read(image).unwrap();
    let f = std::fs::File::options().write(true).open(disk).unwrap();
    f.write_all_at(&bytes, start).unwrap();
    f.sync_all().unwrap();
}

/// The partitions `sfdisk --json` reads from `disk`: (start byte, size bytes) in table order.
fn partition_table(disk: &Path) -> Vec<(u64, u64)> {
    let json: Value = serde_json::from_str(&run("sfdisk", &["--json", s(disk)])).unwrap();
    json["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap() * SECTOR,
                p["size"].as_u64().unwrap() * SECTOR,
            )
        })
        .collect()
}

/// The tree a file system made from `source` shows: without links where it has none, without
/// modification times where it keeps local time.
fn expected(source: &Path, with_mtime: bool) -> BTreeMap<String, Node> {
    tree(source, with_mtime)
}

fn new_disk(path: &Path, mib: u64) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
}

#[test]
fn gpt_disk_with_ext4_and_fat_reads_back_file_by_file_and_an_incremental_change_shows_only_in_its_point()
 {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&dir.path().join("data"));
    let linux_tree = dir.path().join("linux-tree");
    make_tree(&linux_tree, 40, true);
    let fat_tree = dir.path().join("fat-tree");
    make_tree(&fat_tree, 12, false);

    // GPT by sgdisk: 1 = Linux ext4 (24 MiB), 2 = Microsoft basic data FAT16 (20 MiB).
    let disk = dir.path().join("disk.raw");
    new_disk(&disk, 64);
    run(
        "sgdisk",
        &[
            "-n",
            "1:2048:+24M",
            "-t",
            "1:8300",
            "-c",
            "1:linux-root",
            "-n",
            "2:0:+20M",
            "-t",
            "2:0700",
            "-c",
            "2:fat-data",
            s(&disk),
        ],
    );
    let parts = partition_table(&disk);
    assert_eq!(parts.len(), 2);
    let ext4 = dir.path().join("p1.ext4");
    make_fs("ext4", &ext4, 24, &linux_tree, dir.path());
    place(&disk, parts[0].0, &ext4);
    let fat = dir.path().join("p2.fat");
    make_fs("fat", &fat, 20, &fat_tree, dir.path());
    place(&disk, parts[1].0, &fat);

    let full = hub.backup("filesvm", &disk, "full", &[]);

    // The partition table as the hub reads it from the point.
    let table: Value = serde_json::from_str(&hub.files(&full, &["partitions", "--json"])).unwrap();
    assert_eq!(table["table"], "gpt", "{table}");
    let found: Vec<(u64, &str, u64, bool)> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["filesystem"].as_str().unwrap(),
                p["start"].as_u64().unwrap(),
                p["browsable"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![(1, "ext4", parts[0].0, true), (2, "fat", parts[1].0, true)]
    );
    assert_eq!(table["partitions"][0]["name"], "linux-root");
    let text = hub.files(&full, &["partitions"]);
    assert!(text.contains("gpt") && text.contains("ext4"), "{text}");

    // Every file of both file systems, unpacked from the hub's tar streams.
    let out = dir.path().join("out");
    let got = hub.get_folder(&full, 1, "/", &out.join("p1"));
    let mut got_tree = tree(&got, true);
    got_tree.remove("lost+found");
    assert_eq!(got_tree, expected(&linux_tree, true));
    let got = hub.get_folder(&full, 2, "/", &out.join("p2"));
    assert_eq!(tree(&got, false), expected(&fat_tree, false));

    // Listings: type, size, mode, mtime, link target.
    let listing: Value =
        serde_json::from_str(&hub.files(&full, &["ls", "--partition", "1", "/", "--json"]))
            .unwrap();
    let entry = |name: &str| {
        listing["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listing}"))
            .clone()
    };
    assert_eq!(entry("hello.txt")["type"], "file");
    assert_eq!(entry("hello.txt")["size"], 22);
    assert_eq!(entry("hello.txt")["mtime"], "2023-11-14T22:13:20Z");
    assert_eq!(entry("hello.txt")["mode"].as_u64().unwrap() & 0o777, 0o644);
    assert_eq!(entry("link-to-hello")["type"], "symlink");
    assert_eq!(entry("link-to-hello")["link_target"], "hello.txt");
    assert_eq!(entry("deep")["type"], "directory");
    assert_eq!(entry("Ünïcødé-文件.txt")["type"], "file");
    let text = hub.files(&full, &["ls", "--partition", "1", "/"]);
    assert!(text.contains("link-to-hello -> hello.txt"), "{text}");

    // find, one file with get, and a resumed download.
    let found = hub.files(
        &full,
        &[
            "find",
            "--partition",
            "1",
            "/",
            "--name",
            "bottom.*",
            "--type",
            "file",
        ],
    );
    let deep_path = format!(
        "/deep/{}/bottom.txt",
        (0..40)
            .map(|l| format!("level{l}"))
            .collect::<Vec<_>>()
            .join("/")
    );
    assert_eq!(found.trim(), deep_path);
    let one = dir.path().join("one.bin");
    hub.files(
        &full,
        &[
            "get",
            "--partition",
            "1",
            "/data/random.bin",
            "--to",
            s(&one),
        ],
    );
    assert_eq!(sha256(&one), sha256(&linux_tree.join("data/random.bin")));
    // A download cut after 1000 bytes resumes from its .partial file.
    let resumed = dir.path().join("resumed.bin");
    let source = std::fs::read(linux_tree.join("data/random.bin")).unwrap();
    std::fs::write(dir.path().join("resumed.bin.partial"), &source[..1000]).unwrap();
    let summary: Value = serde_json::from_str(&hub.files(
        &full,
        &[
            "get",
            "--partition",
            "1",
            "/data/random.bin",
            "--to",
            s(&resumed),
            "--resume",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(summary["resumed_from"], 1000);
    assert_eq!(std::fs::read(&resumed).unwrap(), source);
    // A file larger than one piece downloads in pieces on several streams (5 pieces here).
    let pieces = dir.path().join("pieces.bin");
    let piece_args = |to: &Path, more: &[&'static str]| {
        let mut args = vec![
            "get".to_owned(),
            "--partition".to_owned(),
            "1".to_owned(),
            "/data/random.bin".to_owned(),
            "--to".to_owned(),
            s(to).to_owned(),
            "--json".to_owned(),
        ];
        args.extend(more.iter().map(|a| (*a).to_owned()));
        args
    };
    let args = piece_args(&pieces, &["--piece-size", "64K", "--streams", "3"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let summary: Value = serde_json::from_str(&hub.files(&full, &args)).unwrap();
    assert_eq!(summary["bytes"], source.len());
    assert_eq!(std::fs::read(&pieces).unwrap(), source);
    assert!(!dir.path().join("pieces.bin.partial.pieces").exists());
    // A download in pieces cut off with pieces 0 and 2 complete (the rest never arrived, or
    // arrived in part): --resume fetches exactly the pieces its list does not name, with the
    // list's piece size.
    let cut = dir.path().join("cut.bin");
    let mut partial = vec![0xa5u8; source.len()];
    partial[..65536].copy_from_slice(&source[..65536]);
    partial[131_072..196_608].copy_from_slice(&source[131_072..196_608]);
    partial[70_000..80_000].copy_from_slice(&source[70_000..80_000]);
    std::fs::write(dir.path().join("cut.bin.partial"), &partial).unwrap();
    std::fs::write(
        dir.path().join("cut.bin.partial.pieces"),
        format!(
            r#"{{"size":{},"piece_bytes":65536,"done":[0,2]}}"#,
            source.len()
        ),
    )
    .unwrap();
    let args = piece_args(&cut, &["--resume", "--streams", "2"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let summary: Value = serde_json::from_str(&hub.files(&full, &args)).unwrap();
    assert_eq!(summary["resumed_from"], 131_072);
    assert_eq!(summary["bytes"], source.len() - 131_072);
    assert_eq!(std::fs::read(&cut).unwrap(), source);
    assert!(!dir.path().join("cut.bin.partial.pieces").exists());
    // Never overwrites.
    let again = hub.files_output(
        &full,
        &[
            "get",
            "--partition",
            "1",
            "/data/random.bin",
            "--to",
            s(&one),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // An incremental after a file changed in the ext4 file system (debugfs, no mount).
    let new_content = dir.path().join("new-random.bin");
    std::fs::write(&new_content, b"changed after the full backup\n").unwrap();
    let cmds = dir.path().join("debugfs.cmds");
    std::fs::write(
        &cmds,
        format!(
            "rm /data/random.bin\ncd /data\nwrite {} random.bin\n",
            s(&new_content)
        ),
    )
    .unwrap();
    run("debugfs", &["-w", "-f", s(&cmds), s(&ext4)]);
    place(&disk, parts[0].0, &ext4);
    let incremental = hub.backup("filesvm", &disk, "incremental", &["--base-backup", &full]);
    let changed = dir.path().join("changed.bin");
    hub.files(
        &incremental,
        &[
            "get",
            "--partition",
            "1",
            "/data/random.bin",
            "--to",
            s(&changed),
        ],
    );
    assert_eq!(
        std::fs::read(&changed).unwrap(),
        b"changed after the full backup\n"
    );
    let old = dir.path().join("old.bin");
    hub.files(
        &full,
        &[
            "get",
            "--partition",
            "1",
            "/data/random.bin",
            "--to",
            s(&old),
        ],
    );
    assert_eq!(std::fs::read(&old).unwrap(), source);
}

#[test]
fn mbr_disk_with_logical_partitions_ntfs_ext4_and_fat_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&dir.path().join("data"));
    let src = dir.path().join("tree");
    make_tree(&src, 16, false);
    let linux_tree = dir.path().join("linux-tree");
    make_tree(&linux_tree, 8, true);

    // MBR by sfdisk: 1 = NTFS primary, 2 = extended holding 5 = ext4 and 6 = FAT16.
    let disk = dir.path().join("disk.raw");
    new_disk(&disk, 96);
    let script = "label: dos\nsize=32M, type=7\ntype=5\nsize=24M, type=83\nsize=20M, type=6\n";
    let mut child = Command::new("sfdisk")
        .args(["--quiet", s(&disk)])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("sfdisk is required (scripts/test.sh installs fdisk)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let parts = partition_table(&disk);
    assert_eq!(parts.len(), 4, "{parts:?}");
    let images = [
        ("ntfs", 32, &src, parts[0].0),
        ("ext4", 24, &linux_tree, parts[2].0),
        ("fat", 20, &src, parts[3].0),
    ];
    for (i, (kind, mib, tree, start)) in images.iter().enumerate() {
        let image = dir.path().join(format!("part{i}.{kind}"));
        make_fs(kind, &image, *mib, tree, dir.path());
        place(&disk, *start, &image);
    }
    let full = hub.backup("mbrvm", &disk, "full", &[]);

    let table: Value = serde_json::from_str(&hub.files(&full, &["partitions", "--json"])).unwrap();
    assert_eq!(table["table"], "mbr", "{table}");
    let found: Vec<(u64, String)> = table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["browsable"] == true)
        .map(|p| {
            (
                p["index"].as_u64().unwrap(),
                p["filesystem"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![(1, "ntfs".into()), (5, "ext4".into()), (6, "fat".into())]
    );

    let out = dir.path().join("out");
    let ntfs = hub.get_folder(&full, 1, "/", &out.join("p1"));
    let mut ntfs_tree = tree(&ntfs, true);
    ntfs_tree.retain(|path, _| !path.starts_with('$') && path != "System Volume Information");
    assert_eq!(ntfs_tree, expected(&src, true));
    let ext4 = hub.get_folder(&full, 5, "/", &out.join("p5"));
    let mut ext4_tree = tree(&ext4, true);
    ext4_tree.remove("lost+found");
    assert_eq!(ext4_tree, expected(&linux_tree, true));
    let fat = hub.get_folder(&full, 6, "/data", &out.join("p6"));
    assert_eq!(tree(&fat, false), expected(&src.join("data"), false));
}

#[test]
fn bad_input_gets_clear_4xx_answers_and_the_hub_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(&dir.path().join("data"));
    let src = dir.path().join("tree");
    make_tree(&src, 2, true);
    // A whole-disk ext4 (no table) and, on another VM, a disk of swap.
    let disk = dir.path().join("disk.raw");
    make_fs("ext4", &disk, 16, &src, dir.path());
    let id = hub.backup("plainvm", &disk, "full", &[]);
    let swap = dir.path().join("swap.raw");
    new_disk(&swap, 8);
    run("mkswap", &[s(&swap)]);
    let swap_id = hub.backup("swapvm", &swap, "full", &[]);

    let files = |id: &str, query: &str| format!("/api/v1/backups/{id}/disks/2000/files{query}");
    let content =
        |id: &str, query: &str| format!("/api/v1/backups/{id}/disks/2000/files/content{query}");
    let get = |path: &str| hub.raw(reqwest::Method::GET, path, None);
    let code = |(status, body): (u16, String)| -> (u16, String) {
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status, v["error"].as_str().unwrap_or(&body).to_owned())
    };
    assert_eq!(code(get(&files(&id, "?path=/../etc"))).0, 400);
    assert_eq!(code(get(&files(&id, "?path=etc"))).0, 400);
    assert_eq!(
        code(get(&files(&id, "?path=/no/such/folder"))),
        (404, "not_found".to_owned())
    );
    assert_eq!(code(get(&files(&id, "?path=/hello.txt"))).0, 400);
    assert_eq!(code(get(&files(&id, "?partition=9&path=/"))).0, 404);
    assert_eq!(
        code(get(&format!(
            "/api/v1/backups/{id}/disks/2001/files?path=/"
        )))
        .0,
        404
    );
    let (status, body) = get(&files(&swap_id, "?path=/"));
    assert_eq!(status, 422, "{body}");
    assert!(
        body.contains("swap"),
        "the answer names what was found: {body}"
    );
    let (status, body) = get(&format!("/api/v1/backups/{swap_id}/disks/2000/partitions"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"filesystem\":\"swap\""), "{body}");
    assert_eq!(code(get(&content(&id, "?path=/link-to-hello"))).0, 400);

    // Ranges: 206 with Content-Range; 416 outside the file.
    let (tls, token) = (
        sendense_client::hub::tls_config(&hub.data.join("tls/ca-cert.pem")).unwrap(),
        std::fs::read_to_string(hub.token()).unwrap(),
    );
    let url = format!("{}{}", hub.api, content(&id, "?path=/data/random.bin"));
    let source = std::fs::read(src.join("data/random.bin")).unwrap();
    let (partial, range, unsatisfiable) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let http = reqwest::Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .build()
                .unwrap();
            let resp = http
                .get(&url)
                .bearer_auth(token.trim())
                .header("Range", "bytes=1000-1999")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status().as_u16(), 206);
            let range = resp.headers()["content-range"].to_str().unwrap().to_owned();
            let partial = resp.bytes().await.unwrap();
            let resp = http
                .get(&url)
                .bearer_auth(token.trim())
                .header("Range", format!("bytes={}-", source.len()))
                .send()
                .await
                .unwrap();
            (partial, range, resp.status().as_u16())
        });
    assert_eq!(&partial[..], &source[1000..2000]);
    assert_eq!(range, format!("bytes 1000-1999/{}", source.len()));
    assert_eq!(unsatisfiable, 416);

    // Random bytes as a disk: a clear answer, and the hub still serves the good point.
    let junk = dir.path().join("junk.raw");
    new_disk(&junk, 4);
    write_random(&junk, 0, 4 * MIB as usize, 99);
    let junk_id = hub.backup("junkvm", &junk, "full", &[]);
    let (status, body) = get(&files(&junk_id, "?path=/"));
    assert!((400..500).contains(&status), "{status} {body}");
    let (status, body) = get(&files(&id, "?path=/"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("hello.txt"));
}
