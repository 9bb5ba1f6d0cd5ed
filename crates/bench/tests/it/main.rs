//! Smoke test of the benchmark harness: every scenario at a tiny size produces a row per case,
//! every side measured (the peers are installed on the test machines: a missing one fails).
//! Timings are never asserted.

#[cfg(test)]
mod smoke {
    use std::path::PathBuf;
    use std::process::Command;

    use sendense_bench::{Options, Outcome, Scenario};

    /// The folder of this test's profile (`target/debug`), with our binaries freshly built in it.
    fn bin_dir() -> PathBuf {
        let exe = std::env::current_exe().expect("no test executable path");
        let dir = exe
            .parent()
            .and_then(std::path::Path::parent)
            .expect("no target folder")
            .to_path_buf();
        let profile = dir
            .file_name()
            .and_then(|n| n.to_str())
            .expect("no profile folder name")
            .to_owned();
        let profile = if profile == "debug" {
            "dev".to_owned()
        } else {
            profile
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "sendense",
                "--bin",
                "sendense-hub",
                "--bin",
                "sendense-client",
                "--profile",
            ])
            .arg(&profile)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build sendense-hub and sendense-client");
        assert!(
            status.success(),
            "building sendense-hub and sendense-client failed"
        );
        dir
    }

    #[test]
    fn bench_every_scenario_tiny_size_reports_measured_rows() {
        let mut opts = Options::new(32 << 20);
        opts.bin_dir = Some(bin_dir());
        opts.sparse_virtual = 256 << 20;
        opts.instant_runtime_secs = 1;

        let report = sendense_bench::run(&opts).unwrap();

        let scenarios: Vec<&str> = report.rows.iter().map(|r| r.scenario.as_str()).collect();
        let not_measured: Vec<String> = report
            .rows
            .iter()
            .flat_map(|r| [(&r.scenario, &r.ours), (&r.scenario, &r.peer)])
            .filter(|(_, o)| !matches!(o, Outcome::Measured(_)))
            .map(|(s, o)| format!("{s}: {o:?}"))
            .collect();
        assert_eq!(
            scenarios,
            [
                "qcow2",
                "qcow2",
                "serve",
                "serve",
                "memory",
                "memory",
                "nbd-tls-cost",
                "instant",
                "instant",
                "instant",
                "ingest",
                "incremental",
                "restore",
                "merge",
                "merge",
                "verify",
                "sparse",
                "files",
                "files",
                "nbd-source",
                "vm-restore",
                "object",
                "object"
            ],
            "{}",
            report.render()
        );
        assert!(
            not_measured.is_empty(),
            "{not_measured:#?}\n{}",
            report.render()
        );
        assert!(report.rows.iter().all(|r| r.ratio.is_some()));
        assert_eq!(Scenario::ALL.len(), 15);
    }

    #[test]
    fn bench_in_process_nbd_scenarios_tiny_size_report_measured_rows_as_json() {
        let mut opts = Options::new(16 << 20);
        opts.bin_dir = Some(bin_dir());
        opts.scenarios = vec![Scenario::NbdTlsCost, Scenario::Memory];

        let report = sendense_bench::run(&opts).unwrap();

        let json = serde_json::to_value(&report).unwrap();
        let rows: Vec<(String, String, String)> = json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["scenario"].as_str().unwrap_or_default().to_owned(),
                    r["ours"]["status"].as_str().unwrap_or_default().to_owned(),
                    r["peer"]["status"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let measured = |s: &str| (s.to_owned(), "measured".to_owned(), "measured".to_owned());
        assert_eq!(
            rows,
            [
                measured("memory"),
                measured("memory"),
                measured("nbd-tls-cost")
            ],
            "{}",
            report.render()
        );
        assert!(report.rows.iter().all(|r| r.ratio.is_some()));
    }

    #[test]
    fn bench_sparse_tiny_disk_reports_verified_small_image_and_cleans_up() {
        let parent = tempfile::tempdir().unwrap();
        let mut opts = Options::new(8 << 20);
        opts.bin_dir = Some(bin_dir());
        opts.dir = Some(parent.path().to_path_buf());
        opts.sparse_virtual = 256 << 20;
        opts.scenarios = vec![Scenario::Sparse];

        let report = sendense_bench::run(&opts).unwrap();

        let rendered = report.render();
        let json = serde_json::to_value(&report).unwrap();
        let row = &json["rows"][0];
        let figures = &row["sparse"];
        let left: Vec<_> = std::fs::read_dir(parent.path()).unwrap().collect();
        assert_eq!(
            (
                json["rows"].as_array().map(Vec::len),
                row["scenario"].as_str(),
                row["ours"]["status"].as_str(),
                row["peer"]["status"].as_str(),
                row["ours"]["bytes"].as_u64(),
                figures["virtual_bytes"].as_u64(),
                figures["sparse"]["verified"].as_bool(),
                figures["dense"]["verified"].as_bool(),
            ),
            (
                Some(1),
                Some("sparse"),
                Some("measured"),
                Some("measured"),
                Some(8 << 20),
                Some(256 << 20),
                Some(true),
                Some(true),
            ),
            "{rendered}"
        );
        let allocated = figures["sparse"]["image_allocated_bytes"].as_u64().unwrap();
        assert!(
            allocated < 16 << 20,
            "the sparse disk's image occupies {allocated} bytes for 8 MiB of data\n{rendered}"
        );
        assert!(report.rows[0].ratio.is_some(), "{rendered}");
        assert!(left.is_empty(), "the run left {left:?} behind");
    }
}
