//! Session, lookup, SOAP faults, XML bounds, timeouts, datastore reads.

use std::time::Duration;

use sendense_vsphere::{
    ALL_ALLOCATED, ConnectOptions, DatastoreFile, DatastorePath, ErrorKind, FaultKind, Session,
    TlsMode, VsphereError, changed_areas,
};
use sendense_vsphere_sim::SIM_USER;

use crate::support::{MIB, env, options, session};

/// The file `name` in vm1's folder on datastore `ds1` of `dc1`, read through `s`.
fn vm1_file(s: &Session, name: &str) -> DatastoreFile {
    DatastoreFile::new(
        s.clone(),
        "dc1",
        &DatastorePath::parse(&format!("[ds1] vm1/{name}")).unwrap(),
    )
}

#[tokio::test]
async fn connect_valid_credentials_logs_in() {
    let e = env().await;
    let _s = session(&e.sim).await;
    assert_eq!(e.sim.stats().logins, 1);
}

#[tokio::test]
async fn connect_wrong_password_is_authentication_error() {
    let e = env().await;
    let mut o = options(&e.sim);
    o.login = sendense_vsphere::Login::password(SIM_USER, "wrong");
    let err = Session::connect(o).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication);
}

#[tokio::test]
async fn connect_untrusted_certificate_fails() {
    let e = env().await;
    let other = env().await;
    let mut o = options(&e.sim);
    o.tls = TlsMode::CaPem(other.sim.ca_pem());
    let err = Session::connect(o).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn connect_insecure_accepts_self_signed() {
    let e = env().await;
    let mut o = options(&e.sim);
    o.tls = TlsMode::Insecure;
    assert!(Session::connect(o).await.is_ok());
}

#[tokio::test]
async fn find_vm_by_name_and_path_agree() {
    let e = env().await;
    let s = session(&e.sim).await;
    let by_name = s.find_vm("vm1").await.unwrap();
    let by_path = s.find_vm("dc1/vm/vm1").await.unwrap();
    assert_eq!(
        (by_name.value.as_str(), by_path),
        (e.vm.as_str(), by_name.clone())
    );
}

#[tokio::test]
async fn list_vms_names_every_vm_with_its_inventory_path() {
    let e = env().await;
    e.sim
        .add_vm(&sendense_vsphere_sim::VmSpec {
            name: "alpha".to_owned(),
            cbt_enabled: false,
            disks: vec![sendense_vsphere_sim::DiskSpec::flat(MIB)],
        })
        .unwrap();
    let s = session(&e.sim).await;

    let vms = s.list_vms().await.unwrap();

    let listed: Vec<(&str, &str)> = vms
        .iter()
        .map(|v| (v.name.as_str(), v.path.as_str()))
        .collect();
    assert_eq!(listed, [("alpha", "dc1/vm/alpha"), ("vm1", "dc1/vm/vm1")]);
    assert_eq!(s.find_vm(&vms[1].path).await.unwrap(), vms[1].vm);
}

#[tokio::test]
async fn find_vm_missing_is_not_found() {
    let e = env().await;
    let s = session(&e.sim).await;
    let by_name = s.find_vm("nope").await.unwrap_err();
    let by_path = s.find_vm("dc1/vm/nope").await.unwrap_err();
    assert_eq!(
        (by_name.kind(), by_path.kind()),
        (ErrorKind::NotFound, ErrorKind::NotFound)
    );
}

#[tokio::test]
async fn vm_info_two_disks_reports_keys_capacities_and_cbt() {
    let e = env().await;
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    let info = s.vm_info(&vm).await.unwrap();
    let disks: Vec<(i32, u64, bool)> = info
        .disks
        .iter()
        .map(|d| (d.key, d.capacity, d.backing.change_id.is_some()))
        .collect();
    assert_eq!(
        (info.cbt_enabled, disks),
        (true, vec![(2000, 2 * MIB, true), (2001, 3 * MIB, true)])
    );
}

#[tokio::test]
async fn datacenter_path_is_datacenter_name() {
    let e = env().await;
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    assert_eq!(s.datacenter_path(&vm).await.unwrap(), "dc1");
}

#[tokio::test]
async fn session_expired_call_relogs_in_and_succeeds() {
    let e = env().await;
    let s = session(&e.sim).await;
    e.sim.expire_sessions();
    let vm = s.find_vm("vm1").await.unwrap();
    assert_eq!((vm.value, e.sim.stats().logins), (e.vm.clone(), 2));
}

#[tokio::test]
async fn session_expiring_every_few_calls_still_completes_work() {
    let e = env().await;
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    let before = s.vm_info(&vm).await.unwrap();
    e.sim.expire_sessions_after(Some(3));
    for _ in 0..5 {
        // The work done across renewed sessions is the same work: the same answer each time.
        assert_eq!(s.vm_info(&vm).await.unwrap(), before);
    }
    assert!(e.sim.stats().logins >= 3);
}

#[tokio::test]
async fn malformed_xml_response_is_clear_error() {
    let e = env().await;
    let s = session(&e.sim).await;
    e.sim
        .answer_next_raw(b"<soapenv:Envelope><soapenv:Body><x></y>".to_vec());
    let err = s.find_vm("dc1/vm/vm1").await.unwrap_err();
    assert!(matches!(err, VsphereError::Xml { .. }), "{err:?}");
}

#[tokio::test]
async fn huge_xml_response_is_rejected_by_size() {
    let e = env().await;
    let s = session(&e.sim).await;
    let mut body = b"<soapenv:Envelope><soapenv:Body><r>".to_vec();
    body.resize(17 * 1024 * 1024, b'a');
    e.sim.answer_next_raw(body);
    let err = s.find_vm("dc1/vm/vm1").await.unwrap_err();
    assert!(matches!(err, VsphereError::XmlLimit { .. }), "{err:?}");
}

#[tokio::test]
async fn non_soap_response_is_clear_error() {
    let e = env().await;
    let s = session(&e.sim).await;
    e.sim
        .answer_next_raw(b"<html><body>proxy error</body></html>".to_vec());
    let err = s.find_vm("dc1/vm/vm1").await.unwrap_err();
    assert!(
        matches!(err, VsphereError::UnexpectedResponse { .. }),
        "{err:?}"
    );
}

// The timeout runs on the paused clock: no real wait.
#[tokio::test(start_paused = true)]
async fn hung_vcenter_times_out() {
    let e = env().await;
    let mut o = options(&e.sim);
    o.request_timeout = Duration::from_millis(300);
    let s = Session::connect(o).await.unwrap();
    e.sim.set_hang(true);
    let err = s.find_vm("vm1").await.unwrap_err();
    assert!(matches!(err, VsphereError::Timeout { .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_vcenter_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let o = ConnectOptions::new(&addr.to_string(), SIM_USER, "x", TlsMode::Insecure);
    let err = Session::connect(o).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
}

#[tokio::test]
async fn changed_areas_small_pages_are_queried_until_capacity() {
    let e = env().await;
    e.sim.set_change_page(256 * 1024);
    e.sim
        .write_disk(&e.vm, 2000, 1024 * 1024 + 512, &[7u8; 4096])
        .unwrap();
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    let snap = s
        .create_snapshot(&vm, "sendense-t", "", false)
        .await
        .unwrap();
    let areas = changed_areas(&s, &vm, &snap, 2000, 2 * MIB, ALL_ALLOCATED)
        .await
        .unwrap();
    s.remove_snapshot(&snap).await.unwrap();
    assert_eq!(
        (areas.calls, areas.extents, e.sim.stats().change_queries),
        (8, vec![crate::support::ext(1024 * 1024, 64 * 1024)], 8)
    );
}

#[tokio::test]
async fn query_changed_disk_areas_beyond_capacity_is_invalid_argument() {
    let e = env().await;
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    let snap = s
        .create_snapshot(&vm, "sendense-t", "", false)
        .await
        .unwrap();
    let err = s
        .query_changed_disk_areas(&vm, &snap, 2000, 2 * MIB, ALL_ALLOCATED)
        .await
        .unwrap_err();
    s.remove_snapshot(&snap).await.unwrap();
    assert_eq!(err.fault_kind(), Some(&FaultKind::InvalidArgument));
}

#[tokio::test]
async fn task_running_for_several_polls_is_waited_for() {
    let e = env().await;
    e.sim.set_task_polls(3);
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    let snap = s
        .create_snapshot(&vm, "sendense-t", "", false)
        .await
        .unwrap();
    s.remove_snapshot(&snap).await.unwrap();
    assert!(e.sim.snapshot_names(&e.vm).is_empty());
}

// The timeout runs on the paused clock: no real wait.
#[tokio::test(start_paused = true)]
async fn task_exceeding_timeout_is_task_timeout() {
    let e = env().await;
    e.sim.set_task_polls(1_000_000);
    let mut o = options(&e.sim);
    o.task_timeout = Duration::from_millis(50);
    let s = Session::connect(o).await.unwrap();
    let vm = s.find_vm("vm1").await.unwrap();
    let err = s.enable_cbt(&vm).await.unwrap_err();
    assert!(matches!(err, VsphereError::TaskTimeout { .. }), "{err:?}");
}

#[tokio::test]
async fn datastore_read_busy_storm_is_retried() {
    let e = env().await;
    let data: Vec<u8> = (0..8192u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    e.sim.write_disk(&e.vm, 2000, 4096, &data).unwrap();
    let s = session(&e.sim).await;
    let file = vm1_file(&s, "vm1-flat.vmdk");
    e.sim.set_busy_storm(3);
    let mut buf = vec![0u8; 8192];
    file.read_at(4096, &mut buf).await.unwrap();
    assert_eq!((buf, e.sim.stats().busy_answers), (data, 3));
}

#[tokio::test]
async fn datastore_read_endless_busy_fails_after_bounded_attempts() {
    let e = env().await;
    let s = session(&e.sim).await;
    let file = vm1_file(&s, "vm1-flat.vmdk");
    e.sim.set_busy_storm(1000);
    let mut buf = vec![0u8; 512];
    let err = file.read_at(0, &mut buf).await.unwrap_err();
    assert!(
        matches!(err, VsphereError::DatastoreBusy { attempts: 8, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn datastore_read_large_buffer_uses_bounded_parallel_pages() {
    let e = env().await;
    let mut o = options(&e.sim);
    o.max_read_bytes = 64 * 1024;
    let s = Session::connect(o).await.unwrap();
    let file = vm1_file(&s, "vm1_1-flat.vmdk");
    let mut buf = vec![1u8; usize::try_from(3 * MIB).unwrap()];
    file.read_at(0, &mut buf).await.unwrap();
    let st = e.sim.stats();
    assert_eq!(
        (
            buf.iter().all(|&b| b == 0),
            st.folder_reads,
            st.max_reads_in_flight <= 4
        ),
        (true, 48, true)
    );
}

#[tokio::test]
async fn datastore_read_missing_file_is_http_status() {
    let e = env().await;
    let s = session(&e.sim).await;
    let file = vm1_file(&s, "nope-flat.vmdk");
    let mut buf = vec![0u8; 512];
    let err = file.read_at(0, &mut buf).await.unwrap_err();
    assert!(
        matches!(err, VsphereError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn datastore_read_after_session_expiry_relogs_in() {
    let e = env().await;
    let s = session(&e.sim).await;
    let file = vm1_file(&s, "vm1-flat.vmdk");
    let data: Vec<u8> = (0..512u32)
        .map(|i| u8::try_from(i % 249).unwrap())
        .collect();
    e.sim.write_disk(&e.vm, 2000, 0, &data).unwrap();
    e.sim.expire_sessions();
    let mut buf = vec![0u8; 512];
    file.read_at(0, &mut buf).await.unwrap();
    assert_eq!(e.sim.stats().logins, 2);
    assert_eq!(
        buf, data,
        "the read after the new login returns the disk's bytes"
    );
}

fn change_info(start: u64, length: u64, areas: &[(u64, u64)]) -> Vec<u8> {
    let mut inner =
        format!("<returnval><startOffset>{start}</startOffset><length>{length}</length>");
    for (s, l) in areas {
        inner.push_str(&format!(
            "<changedArea><start>{s}</start><length>{l}</length></changedArea>"
        ));
    }
    format!(
        "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\"><soapenv:Body><QueryChangedDiskAreasResponse xmlns=\"urn:vim25\">{inner}</returnval></QueryChangedDiskAreasResponse></soapenv:Body></soapenv:Envelope>"
    )
    .into_bytes()
}

/// `changed_areas` of disk 2000 (2 MiB) of a fresh snapshot, vCenter answering `answer` (a raw
/// `QueryChangedDiskAreas` body) once: the error it must end in; the snapshot is removed.
async fn changed_areas_refusing(answer: Vec<u8>) -> VsphereError {
    let e = env().await;
    let s = session(&e.sim).await;
    let vm = s.find_vm("vm1").await.unwrap();
    let snap = s
        .create_snapshot(&vm, "sendense-t", "", false)
        .await
        .unwrap();
    e.sim.answer_next_raw(answer);
    let err = changed_areas(&s, &vm, &snap, 2000, 2 * MIB, ALL_ALLOCATED)
        .await
        .unwrap_err();
    s.remove_snapshot(&snap).await.unwrap();
    err
}

#[tokio::test]
async fn changed_areas_beyond_capacity_are_rejected() {
    let err = changed_areas_refusing(change_info(0, 2 * MIB, &[(2 * MIB - 512, 4096)])).await;
    assert!(
        matches!(err, VsphereError::InvalidChangedArea { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn changed_areas_page_that_does_not_advance_is_rejected() {
    let err = changed_areas_refusing(change_info(0, 0, &[])).await;
    assert!(
        matches!(err, VsphereError::ChangedAreasStalled { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn changed_areas_overlapping_is_rejected() {
    let err = changed_areas_refusing(change_info(0, 2 * MIB, &[(0, 4096), (512, 512)])).await;
    assert!(
        matches!(err, VsphereError::InvalidChangedArea { .. }),
        "{err:?}"
    );
}

#[test]
fn simulator_on_own_runtime_serves_a_blocking_caller() {
    let dir = tempfile::tempdir().unwrap();
    let sim = sendense_vsphere_sim::Simulator::start_blocking(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let logged_in = rt.block_on(Session::connect(options(&sim))).is_ok();
    assert!(logged_in && sim.stats().logins == 1);
}

/// An issuer that logs in to the simulator with the password itself (as the hub does) and
/// counts how often it was asked.
#[derive(Debug)]
struct CountingIssuer {
    options: ConnectOptions,
    issued: std::sync::atomic::AtomicU32,
}

impl sendense_vsphere::SessionIssuer for CountingIssuer {
    fn issue(&self) -> sendense_vsphere::IssueFuture<'_> {
        Box::pin(async move {
            self.issued
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let s = Session::connect(self.options.clone()).await?;
            Ok(s.session_cookie().unwrap())
        })
    }

    fn describe(&self) -> String {
        "test issuer".to_owned()
    }
}

fn issued_options(
    sim: &sendense_vsphere_sim::Simulator,
) -> (ConnectOptions, std::sync::Arc<CountingIssuer>) {
    let issuer = std::sync::Arc::new(CountingIssuer {
        options: options(sim),
        issued: std::sync::atomic::AtomicU32::new(0),
    });
    let mut o = options(sim);
    o.login = sendense_vsphere::Login::Issued(issuer.clone());
    (o, issuer)
}

#[tokio::test]
async fn issued_login_session_is_reused_for_every_call() {
    let e = env().await;
    let (o, issuer) = issued_options(&e.sim);

    let s = Session::connect(o).await.unwrap();
    s.find_vm("vm1").await.unwrap();
    s.find_vm("dc1/vm/vm1").await.unwrap();

    assert_eq!(
        (
            issuer.issued.load(std::sync::atomic::Ordering::SeqCst),
            e.sim.stats().logins
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn issued_login_expired_session_asks_the_issuer_again() {
    let e = env().await;
    let (o, issuer) = issued_options(&e.sim);
    let s = Session::connect(o).await.unwrap();
    e.sim.expire_sessions();

    let vm = s.find_vm("vm1").await.unwrap();

    assert_eq!(
        (
            vm.value,
            issuer.issued.load(std::sync::atomic::Ordering::SeqCst)
        ),
        (e.vm.clone(), 2)
    );
}

#[tokio::test]
async fn session_cookie_is_the_value_vcenter_set() {
    let e = env().await;
    let s = session(&e.sim).await;

    let cookie = s.session_cookie().unwrap();

    assert!(
        cookie.starts_with('"') && cookie.len() > 10 && !cookie.contains("vmware_soap_session"),
        "{cookie}"
    );
}

#[tokio::test]
async fn connect_options_debug_hides_password_of_login() {
    let o = ConnectOptions::new("h", "u", "hunter2", TlsMode::Insecure);

    assert!(!format!("{o:?}").contains("hunter2"));
}
