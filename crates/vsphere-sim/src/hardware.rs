//! The simulated VMs' hardware and the restore side of the simulator: the inventory a restore
//! places a VM in (datacenter `dc1`, host folder with cluster `cluster1`, host `esx1.sim`, its
//! root resource pool, datastore `ds1`, networks [`SIM_NETWORKS`]), `CreateVM_Task`,
//! `ReconfigVM_Task` adding and removing devices, `Destroy_Task`, `DeleteDatastoreFile_Task`,
//! and `/folder` PUT uploads written into the datastore's files (streamed: memory stays
//! bounded; an upload that is no VM's disk is refused above [`MAX_PUT_BYTES`]).
//!
//! Every VM gets realistic hardware ([`Hardware::default_for`]): UEFI with secure boot, 4 vCPUs
//! in 2 sockets, two IDE controllers (as vCenter always adds), a PVSCSI and a SATA controller,
//! its first disk on the PVSCSI controller and its second on the SATA one, and two NICs on two
//! networks, the second with a MAC set by hand.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use sendense_io::AlignedBuf;
use sendense_vsphere::xml::{Element, escape};

use crate::{
    Resp, SIM_DATACENTER, SIM_DATASTORE, SimDisk, SimVm, Simulator, SnapDisk, State, lock, object,
    percent_decode, prop_mo, prop_str, random_hex, response, text,
};

/// The datacenter's root VM folder.
pub(crate) const ROOT_VM_FOLDER: &str = "group-v1";
/// Key of the default VMs' PVSCSI controller.
pub(crate) const PVSCSI_KEY: i32 = 1000;
/// Key of the default VMs' SATA controller.
const SATA_KEY: i32 = 15000;
/// The simulated ESXi host.
pub const SIM_HOST: &str = "esx1.sim";
/// The cluster's root resource pool, as an inventory path below the datacenter.
pub const SIM_RESOURCE_POOL: &str = "host/cluster1/Resources";
/// The networks (standard port groups) of the datacenter.
pub const SIM_NETWORKS: [&str; 3] = ["VM Network", "Backup Net", "Restore Net"];
/// Largest `/folder` PUT of a file that is no VM's disk.
pub const MAX_PUT_BYTES: u64 = 1 << 30;

/// A storage controller of a simulated VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerView {
    /// Device key.
    pub key: i32,
    /// vSphere device type, e.g. `ParaVirtualSCSIController`.
    pub kind: String,
    /// Bus number.
    pub bus: u32,
}

/// A NIC of a simulated VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicView {
    /// Device key.
    pub key: i32,
    /// vSphere device type, e.g. `VirtualVmxnet3`.
    pub kind: String,
    /// The network's name.
    pub network: String,
    /// MAC address, lowercase.
    pub mac: String,
    /// `manual`, `generated` or `assigned`.
    pub address_type: String,
    /// Connected at power on.
    pub start_connected: bool,
}

/// Everything of a simulated VM but its disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardware {
    /// Guest OS id.
    pub guest_id: String,
    /// Hardware version, `vmx-19`.
    pub version: String,
    /// `bios` or `efi`.
    pub firmware: String,
    /// UEFI secure boot.
    pub secure_boot: bool,
    /// Virtual CPUs.
    pub num_cpus: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// Memory, MiB.
    pub memory_mb: u64,
    /// Notes.
    pub annotation: String,
    /// Storage controllers.
    pub controllers: Vec<ControllerView>,
    /// NICs.
    pub nics: Vec<NicView>,
}

impl Hardware {
    /// The hardware every VM added with [`Simulator::add_vm`] gets (see the module docs).
    #[must_use]
    pub fn default_for(name: &str) -> Self {
        Self {
            guest_id: "ubuntu64Guest".to_owned(),
            version: "vmx-19".to_owned(),
            firmware: "efi".to_owned(),
            secure_boot: true,
            num_cpus: 4,
            cores_per_socket: 2,
            memory_mb: 4096,
            annotation: format!("{name}: simulated VM\nowner <ops> & friends"),
            controllers: vec![
                controller(200, "VirtualIDEController", 0),
                controller(201, "VirtualIDEController", 1),
                controller(PVSCSI_KEY, "ParaVirtualSCSIController", 0),
                controller(SATA_KEY, "VirtualAHCIController", 0),
            ],
            nics: vec![
                NicView {
                    key: 4000,
                    kind: "VirtualVmxnet3".to_owned(),
                    network: SIM_NETWORKS[0].to_owned(),
                    mac: generated_mac(),
                    address_type: "assigned".to_owned(),
                    start_connected: true,
                },
                NicView {
                    key: 4001,
                    kind: "VirtualE1000e".to_owned(),
                    network: SIM_NETWORKS[1].to_owned(),
                    mac: "00:50:56:3f:00:01".to_owned(),
                    address_type: "manual".to_owned(),
                    start_connected: false,
                },
            ],
        }
    }
}

fn controller(key: i32, kind: &str, bus: u32) -> ControllerView {
    ControllerView {
        key,
        kind: kind.to_owned(),
        bus,
    }
}

fn generated_mac() -> String {
    format!("00:50:56:{}", random_hex(3, ":"))
}

/// A disk of a simulated VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskView {
    /// Device key.
    pub key: i32,
    /// Its controller's key.
    pub controller_key: i32,
    /// Its unit number.
    pub unit: u32,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Thin provisioned.
    pub thin: bool,
    /// Thick, eagerly zeroed.
    pub eager: bool,
    /// Its descriptor, `[ds1] vm/vm.vmdk`.
    pub file: String,
    /// The local file holding its data (the flat extent).
    pub local: PathBuf,
}

/// A simulated VM as a test reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmView {
    /// Managed object id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Inventory path, `dc1/vm/[folder/]name`.
    pub path: String,
    /// Powered on.
    pub powered_on: bool,
    /// Its hardware.
    pub hardware: Hardware,
    /// Its disks, by key.
    pub disks: Vec<DiskView>,
}

impl Simulator {
    /// A VM by name, as it is now.
    #[must_use]
    pub fn vm_by_name(&self, name: &str) -> Option<VmView> {
        let st = lock(&self.state);
        st.vms.iter().find(|v| v.name == name).map(|v| view(&st, v))
    }

    /// Every VM, as they are now.
    #[must_use]
    pub fn vms(&self) -> Vec<VmView> {
        let st = lock(&self.state);
        st.vms.iter().map(|v| view(&st, v)).collect()
    }

    /// Every file of the datastore, `[ds1] folder/file`, sorted: each VM's `.vmx`, disk
    /// descriptors and flat extents, and uploaded files.
    #[must_use]
    pub fn datastore_files(&self) -> Vec<String> {
        let st = lock(&self.state);
        let mut out: Vec<String> = st.files.keys().cloned().collect();
        for v in &st.vms {
            out.push(format!("[{SIM_DATASTORE}] {0}/{0}.vmx", v.name));
            for d in &v.disks {
                out.push(d.ds_file());
                out.push(format!("[{SIM_DATASTORE}] {}", d.flat_path()));
            }
        }
        out.sort();
        out
    }

    /// Replace a VM's hardware (its disks stay).
    pub fn set_hardware(&self, vm: &str, hardware: Hardware) {
        if let Some(v) = lock(&self.state).vm_mut(vm) {
            v.hw = hardware;
        }
    }

    /// Power a VM on or off.
    pub fn set_powered_on(&self, vm: &str, on: bool) {
        if let Some(v) = lock(&self.state).vm_mut(vm) {
            v.powered_on = on;
        }
    }

    /// Add a VM folder below the datacenter's root VM folder (`dc1/vm/NAME`); its id.
    pub fn add_folder(&self, name: &str) -> String {
        let mut st = lock(&self.state);
        let id = st.id("group-v");
        st.folders.push((id.clone(), name.to_owned()));
        id
    }

    /// The next `/folder` PUT fails with HTTP 500 once it has received `bytes` bytes (its body
    /// is no longer read); `None` clears it.
    pub fn fail_put_after(&self, bytes: Option<u64>) {
        lock(&self.state).fail_put_after = bytes;
    }
}

fn view(st: &State, v: &SimVm) -> VmView {
    let folder = st
        .folders
        .iter()
        .find(|(id, _)| *id == v.folder)
        .map(|(_, n)| format!("{n}/"))
        .unwrap_or_default();
    VmView {
        id: v.id.clone(),
        name: v.name.clone(),
        path: format!("{SIM_DATACENTER}/vm/{folder}{}", v.name),
        powered_on: v.powered_on,
        hardware: v.hw.clone(),
        disks: v
            .disks
            .iter()
            .map(|d| DiskView {
                key: d.key,
                controller_key: d.controller_key,
                unit: d.unit,
                capacity: d.capacity,
                thin: d.thin,
                eager: d.eager,
                file: d.ds_file(),
                local: d.local.clone(),
            })
            .collect(),
    }
}

/// Controller and unit of the `index`-th disk of a default VM.
pub(crate) fn default_slot(index: usize) -> (i32, u32) {
    match index {
        0 => (PVSCSI_KEY, 0),
        1 => (SATA_KEY, 0),
        n => {
            let unit = u32::try_from(n - 1).unwrap_or(u32::MAX);
            (PVSCSI_KEY, if unit >= 7 { unit + 1 } else { unit })
        }
    }
}

fn max_units(kind: &str) -> u32 {
    match kind {
        "VirtualIDEController" => 2,
        "VirtualAHCIController" => 30,
        "VirtualNVMEController" => 15,
        _ => 16,
    }
}

fn is_scsi(kind: &str) -> bool {
    kind.contains("SCSI") || kind.contains("LsiLogic") || kind.contains("BusLogic")
}

/// The first free unit of a VM's controller.
pub(crate) fn free_slot(vm: &SimVm, controller_key: i32) -> Option<(i32, u32)> {
    let c = vm.hw.controllers.iter().find(|c| c.key == controller_key)?;
    (0..max_units(&c.kind))
        .filter(|u| !(is_scsi(&c.kind) && *u == 7))
        .find(|u| {
            !vm.disks
                .iter()
                .any(|d| d.controller_key == controller_key && d.unit == *u)
        })
        .map(|u| (controller_key, u))
}

/// The VM's disks as its current state reports them.
pub(crate) fn vm_snap_disks(vm: &SimVm) -> Vec<SnapDisk> {
    let depth = vm.snapshots.len();
    vm.disks
        .iter()
        .map(|d| {
            let (file, parent) = crate::disk_files(d, depth);
            SnapDisk {
                key: d.key,
                capacity: d.capacity,
                backing: d.backing.clone(),
                file,
                uuid: d.uuid.clone(),
                change_id: if vm.cbt_enabled { d.change_id() } else { None },
                seq: d.seq,
                epoch: d.epoch.clone(),
                parent,
                controller_key: d.controller_key,
                unit: d.unit,
                thin: d.thin,
                eager: d.eager,
            }
        })
        .collect()
}

fn backing_xml(d: &SnapDisk, file: &str, change_id: Option<&str>, tag: &str) -> String {
    let cid = change_id.map_or(String::new(), |c| {
        format!("<changeId>{}</changeId>", escape(c))
    });
    let parent = d
        .parent
        .as_deref()
        .filter(|_| tag == "backing")
        .map_or(String::new(), |p| backing_xml(d, p, None, "parent"));
    format!(
        "<{tag} xsi:type=\"{}\"><fileName>{}</fileName><datastore type=\"Datastore\">datastore-11</datastore><backingObjectId></backingObjectId><diskMode>persistent</diskMode><split>false</split><writeThrough>false</writeThrough><thinProvisioned>{}</thinProvisioned><eagerlyScrub>{}</eagerlyScrub><uuid>{}</uuid><contentId>{}</contentId>{cid}{parent}<digestEnabled>false</digestEnabled><sharing>sharingNone</sharing></{tag}>",
        d.backing,
        escape(file),
        d.thin,
        d.eager,
        d.uuid,
        random_hex(16, "")
    )
}

/// The device list of `hw` and `disks`, each device in a `tag` element.
pub(crate) fn devices_xml(hw: &Hardware, disks: &[SnapDisk], tag: &str) -> String {
    let mut out = String::new();
    for c in &hw.controllers {
        let extra = if is_scsi(&c.kind) {
            "<hotAddRemove>true</hotAddRemove><sharedBus>noSharing</sharedBus><scsiCtlrUnitNumber>7</scsiCtlrUnitNumber>"
        } else {
            ""
        };
        let devices: String = disks
            .iter()
            .filter(|d| d.controller_key == c.key)
            .map(|d| format!("<device>{}</device>", d.key))
            .collect();
        out.push_str(&format!(
            "<{tag} xsi:type=\"{}\"><key>{}</key><deviceInfo><label>{} {}</label><summary>{}</summary></deviceInfo><controllerKey>100</controllerKey><busNumber>{}</busNumber>{devices}{extra}</{tag}>",
            c.kind, c.key, c.kind, c.bus, c.kind, c.bus
        ));
    }
    for (i, d) in disks.iter().enumerate() {
        out.push_str(&format!(
            "<{tag} xsi:type=\"VirtualDisk\"><key>{}</key><deviceInfo><label>Hard disk {}</label><summary>{} KB</summary></deviceInfo>{}<controllerKey>{}</controllerKey><unitNumber>{}</unitNumber><capacityInKB>{}</capacityInKB><capacityInBytes>{}</capacityInBytes><shares><shares>1000</shares><level>normal</level></shares><storageIOAllocation><limit>-1</limit></storageIOAllocation><diskObjectId>1-{}</diskObjectId><nativeUnmanagedLinkedClone>false</nativeUnmanagedLinkedClone></{tag}>",
            d.key,
            i + 1,
            d.capacity / 1024,
            backing_xml(d, &d.file, d.change_id.as_deref(), "backing"),
            d.controller_key,
            d.unit,
            d.capacity / 1024,
            d.capacity,
            d.key
        ));
    }
    for n in &hw.nics {
        out.push_str(&format!(
            "<{tag} xsi:type=\"{}\"><key>{}</key><deviceInfo><label>Network adapter {}</label><summary>{}</summary></deviceInfo><backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\"><deviceName>{}</deviceName><useAutoDetect>false</useAutoDetect><network type=\"Network\">{}</network></backing><connectable><startConnected>{}</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected><status>untried</status></connectable><controllerKey>100</controllerKey><unitNumber>{}</unitNumber><addressType>{}</addressType><macAddress>{}</macAddress><wakeOnLanEnabled>true</wakeOnLanEnabled></{tag}>",
            n.kind,
            n.key,
            n.key - 3999,
            escape(&n.network),
            escape(&n.network),
            network_id(&n.network).unwrap_or("network-0"),
            n.start_connected,
            n.key - 3993,
            n.address_type,
            n.mac
        ));
    }
    out
}

/// The `config` property (`VirtualMachineConfigInfo`) of a VM or snapshot.
pub(crate) fn config_prop(name: &str, hw: &Hardware, disks: &[SnapDisk]) -> String {
    format!(
        "<propSet><name>config</name><val xsi:type=\"VirtualMachineConfigInfo\"><changeVersion>2026-12-07T00:00:00Z</changeVersion><modified>1970-01-01T00:00:00Z</modified><name>{}</name><guestFullName>Ubuntu Linux (64-bit)</guestFullName><version>{}</version><uuid>42{}</uuid><template>false</template><guestId>{}</guestId><alternateGuestName></alternateGuestName><annotation>{}</annotation><files><vmPathName>[{SIM_DATASTORE}] {}/{}.vmx</vmPathName></files><hardware><numCPU>{}</numCPU><numCoresPerSocket>{}</numCoresPerSocket><memoryMB>{}</memoryMB><virtualICH7MPresent>false</virtualICH7MPresent><virtualSMCPresent>false</virtualSMCPresent>{}</hardware><cpuAllocation><reservation>0</reservation></cpuAllocation><bootOptions><bootDelay>0</bootDelay><enterBIOSSetup>false</enterBIOSSetup><efiSecureBootEnabled>{}</efiSecureBootEnabled></bootOptions><firmware>{}</firmware></val></propSet>",
        escape(name),
        escape(&hw.version),
        random_hex(14, ""),
        escape(&hw.guest_id),
        escape(&hw.annotation),
        escape(name),
        escape(name),
        hw.num_cpus,
        hw.cores_per_socket,
        hw.memory_mb,
        devices_xml(hw, disks, "device"),
        hw.secure_boot,
        hw.firmware
    )
}

fn network_id(name: &str) -> Option<&'static str> {
    match SIM_NETWORKS.iter().position(|n| *n == name)? {
        0 => Some("network-1"),
        1 => Some("network-2"),
        _ => Some("network-3"),
    }
}

/// Static inventory objects: `(type, id, name, parent)`.
const INVENTORY: [(&str, &str, &str, (&str, &str)); 7] = [
    (
        "Datastore",
        "datastore-11",
        SIM_DATASTORE,
        ("Folder", "group-s1"),
    ),
    (
        "Network",
        "network-1",
        SIM_NETWORKS[0],
        ("Folder", "group-n1"),
    ),
    (
        "Network",
        "network-2",
        SIM_NETWORKS[1],
        ("Folder", "group-n1"),
    ),
    (
        "Network",
        "network-3",
        SIM_NETWORKS[2],
        ("Folder", "group-n1"),
    ),
    (
        "HostSystem",
        "host-1",
        SIM_HOST,
        ("ClusterComputeResource", "domain-c1"),
    ),
    (
        "ClusterComputeResource",
        "domain-c1",
        "cluster1",
        ("Folder", "group-h1"),
    ),
    (
        "ResourcePool",
        "resgroup-1",
        "Resources",
        ("ClusterComputeResource", "domain-c1"),
    ),
];

fn props_of(kind: &str, id: &str, name: &str, parent: (&str, &str), paths: &[&str]) -> Vec<String> {
    let mut props = Vec::new();
    for p in paths {
        match *p {
            "name" => props.push(prop_str("name", name)),
            "parent" => props.push(prop_mo("parent", parent.0, parent.1)),
            "resourcePool" if kind == "ClusterComputeResource" => {
                props.push(prop_mo("resourcePool", "ResourcePool", "resgroup-1"));
            }
            "summary.accessible" if kind == "Datastore" => props.push(
                "<propSet><name>summary.accessible</name><val xsi:type=\"xsd:boolean\">true</val></propSet>"
                    .to_owned(),
            ),
            _ => {}
        }
    }
    let _ = id;
    props
}

/// The objects of one type a container view of the root folder lists.
pub(crate) fn view_objects(kind: &str, paths: &[&str]) -> String {
    let wanted =
        |k: &str| k == kind || (kind == "ComputeResource" && k == "ClusterComputeResource");
    INVENTORY
        .iter()
        .filter(|(k, ..)| wanted(k))
        .map(|(k, id, name, parent)| object(k, id, &props_of(k, id, name, *parent, paths)))
        .collect()
}

/// Properties of a static inventory object.
pub(crate) fn inventory_props(kind: &str, id: &str, paths: &[&str]) -> Option<Vec<String>> {
    INVENTORY
        .iter()
        .find(|(k, i, ..)| *k == kind && *i == id)
        .map(|(k, i, name, parent)| props_of(k, i, name, *parent, paths))
}

/// `FindByInventoryPath`.
pub(crate) fn find_by_path(st: &State, path: &str) -> Option<(String, String)> {
    let found = |k: &str, v: &str| Some((k.to_owned(), v.to_owned()));
    let rest = path.strip_prefix(SIM_DATACENTER)?;
    if rest.is_empty() {
        return found("Datacenter", "datacenter-1");
    }
    let rest = rest.strip_prefix('/')?;
    match rest {
        "vm" => return found("Folder", ROOT_VM_FOLDER),
        "host" => return found("Folder", "group-h1"),
        "host/cluster1" => return found("ClusterComputeResource", "domain-c1"),
        "host/cluster1/Resources" => return found("ResourcePool", "resgroup-1"),
        _ => {}
    }
    if let Some(host) = rest.strip_prefix("host/cluster1/") {
        return (host == SIM_HOST).then(|| ("HostSystem".to_owned(), "host-1".to_owned()));
    }
    let in_vm = rest.strip_prefix("vm/")?;
    let (folder, name) = match in_vm.split_once('/') {
        Some((f, n)) => (st.folders.iter().find(|(_, name)| name == f)?.0.clone(), n),
        None => (ROOT_VM_FOLDER.to_owned(), in_vm),
    };
    if let Some(v) = st.vms.iter().find(|v| v.folder == folder && v.name == name) {
        return found("VirtualMachine", &v.id);
    }
    if folder == ROOT_VM_FOLDER
        && let Some((id, _)) = st.folders.iter().find(|(_, n)| n == name)
    {
        return found("Folder", id);
    }
    None
}

type Fault = (String, String);

fn bad(kind: &str, message: impl Into<String>) -> Fault {
    (kind.to_owned(), message.into())
}

fn num<T: std::str::FromStr>(el: &Element, field: &str) -> Result<T, Fault> {
    el.child_text(field)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| {
            bad(
                "InvalidArgument",
                format!("A specified parameter was not correct: {field}"),
            )
        })
}

/// The datastore of `[ds] path` (`path` may be empty).
fn datastore_of(file: &str) -> Option<(&str, &str)> {
    let rest = file.strip_prefix('[')?;
    let (ds, path) = rest.split_once(']')?;
    Some((ds, path.trim()))
}

/// One device change of a spec, applied to `vm` (a copy; nothing touches files here). Temporary
/// (negative) keys are mapped to the keys given.
fn apply_change(
    vm: &mut SimVm,
    change: &Element,
    keys: &mut BTreeMap<i32, i32>,
    new_files: &mut Vec<(PathBuf, u64)>,
    gone_files: &mut Vec<PathBuf>,
    dir: &Path,
) -> Result<(), Fault> {
    let op = text(change, "operation");
    let device = change
        .child("device")
        .ok_or_else(|| bad("InvalidArgument", "deviceChange without device"))?;
    let kind = device.xsi_type.clone().unwrap_or_default();
    let key: i32 = num(device, "key")?;
    let map = |keys: &BTreeMap<i32, i32>, k: i32| keys.get(&k).copied().unwrap_or(k);
    match (op, kind.as_str()) {
        ("remove", "VirtualDisk") => {
            let i = vm
                .disks
                .iter()
                .position(|d| d.key == key)
                .ok_or_else(|| bad("InvalidDeviceSpec", format!("no device {key}")))?;
            let d = vm.disks.remove(i);
            if text(change, "fileOperation") == "destroy" {
                gone_files.push(d.local);
            }
        }
        ("remove", _) => {
            if vm.disks.iter().any(|d| d.controller_key == key) {
                return Err(bad(
                    "InvalidDeviceSpec",
                    format!("controller {key} still has disks"),
                ));
            }
            let before = vm.hw.controllers.len() + vm.hw.nics.len();
            vm.hw.controllers.retain(|c| c.key != key);
            vm.hw.nics.retain(|n| n.key != key);
            if before == vm.hw.controllers.len() + vm.hw.nics.len() {
                return Err(bad("InvalidDeviceSpec", format!("no device {key}")));
            }
        }
        ("add", "VirtualDisk") => {
            let controller_key = map(keys, num(device, "controllerKey")?);
            let unit: u32 = num(device, "unitNumber")?;
            let c = vm
                .hw
                .controllers
                .iter()
                .find(|c| c.key == controller_key)
                .ok_or_else(|| {
                    bad(
                        "InvalidDeviceSpec",
                        format!("no controller {controller_key}"),
                    )
                })?;
            if unit >= max_units(&c.kind) || (is_scsi(&c.kind) && unit == 7) {
                return Err(bad(
                    "InvalidDeviceSpec",
                    format!("unit {unit} is not usable"),
                ));
            }
            if vm
                .disks
                .iter()
                .any(|d| d.controller_key == controller_key && d.unit == unit)
            {
                return Err(bad(
                    "InvalidDeviceSpec",
                    format!("unit {unit} of {controller_key} is taken"),
                ));
            }
            let capacity = match device.child_text("capacityInBytes") {
                Some(_) => num::<u64>(device, "capacityInBytes")?,
                None => num::<u64>(device, "capacityInKB")?.saturating_mul(1024),
            };
            if capacity == 0 || capacity % 512 != 0 {
                return Err(bad("InvalidDeviceSpec", "capacity"));
            }
            let backing = device
                .child("backing")
                .ok_or_else(|| bad("InvalidDeviceSpec", "disk without backing"))?;
            let (ds, _) = datastore_of(text(backing, "fileName"))
                .ok_or_else(|| bad("InvalidDeviceSpec", "backing fileName"))?;
            if ds != SIM_DATASTORE {
                return Err(bad("NotFound", format!("datastore {ds}")));
            }
            if text(change, "fileOperation") != "create" {
                return Err(bad("NotSupported", "the simulator only creates new disks"));
            }
            let real = vm
                .disks
                .iter()
                .map(|d| d.key + 1)
                .max()
                .unwrap_or(2000)
                .max(2000);
            let n = (0..)
                .find(|n| {
                    let name = if *n == 0 {
                        format!("{0}/{0}.vmdk", vm.name)
                    } else {
                        format!("{0}/{0}_{n}.vmdk", vm.name)
                    };
                    !vm.disks.iter().any(|d| d.descriptor == name)
                })
                .unwrap_or(0);
            let descriptor = if n == 0 {
                format!("{0}/{0}.vmdk", vm.name)
            } else {
                format!("{0}/{0}_{n}.vmdk", vm.name)
            };
            let local = dir.join(format!("{}-{real}-{}-flat.vmdk", vm.id, random_hex(4, "")));
            new_files.push((local.clone(), capacity));
            keys.insert(key, real);
            vm.disks.push(SimDisk {
                key: real,
                capacity,
                backing: sendense_vsphere::soap::FLAT_BACKING.to_owned(),
                descriptor,
                local,
                uuid: format!("6000c29{}", random_hex(12, "")),
                epoch: None,
                seq: 0,
                writes: Vec::new(),
                controller_key,
                unit,
                thin: text(backing, "thinProvisioned") == "true",
                eager: text(backing, "eagerlyScrub") == "true",
            });
        }
        ("add", k) if k.ends_with("Controller") => {
            let bus: u32 = num(device, "busNumber")?;
            if vm
                .hw
                .controllers
                .iter()
                .any(|c| c.kind == k && c.bus == bus)
            {
                return Err(bad("InvalidDeviceSpec", format!("{k} bus {bus} exists")));
            }
            let base = match k {
                "VirtualIDEController" => {
                    return Err(bad("InvalidDeviceSpec", "IDE controllers are fixed"));
                }
                "VirtualAHCIController" => 15000,
                "VirtualNVMEController" => 31000,
                _ => 1000,
            };
            let real = (base..)
                .find(|r| !vm.hw.controllers.iter().any(|c| c.key == *r))
                .unwrap_or(base);
            keys.insert(key, real);
            vm.hw.controllers.push(controller(real, k, bus));
        }
        ("add", k)
            if k.starts_with("Virtual")
                && (k.contains("Vmxnet") || k.contains("E1000") || k.contains("PCNet")) =>
        {
            let backing = device
                .child("backing")
                .ok_or_else(|| bad("InvalidDeviceSpec", "NIC without backing"))?;
            let network = text(backing, "deviceName").to_owned();
            if !SIM_NETWORKS.contains(&network.as_str()) {
                return Err(bad("NotFound", format!("network {network}")));
            }
            let (mac, address_type) = if text(device, "addressType") == "manual" {
                (text(device, "macAddress").to_ascii_lowercase(), "manual")
            } else {
                (generated_mac(), "assigned")
            };
            let real = (4000..)
                .find(|r| !vm.hw.nics.iter().any(|n| n.key == *r))
                .unwrap_or(4000);
            keys.insert(key, real);
            vm.hw.nics.push(NicView {
                key: real,
                kind: k.to_owned(),
                network,
                mac,
                address_type: address_type.to_owned(),
                start_connected: device
                    .path(&["connectable", "startConnected"])
                    .is_none_or(|s| s.text == "true"),
            });
        }
        (op, k) => return Err(bad("NotSupported", format!("{op} of {k}"))),
    }
    Ok(())
}

fn commit_files(new_files: &[(PathBuf, u64)], gone_files: &[PathBuf]) -> Result<(), Fault> {
    for (path, capacity) in new_files {
        File::create(path)
            .and_then(|f| f.set_len(*capacity))
            .map_err(|e| bad("FileFault", e.to_string()))?;
    }
    for path in gone_files {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// `CreateVM_Task` in folder `folder`: the new VM's id.
pub(crate) fn create_vm(st: &mut State, folder: &str, m: &Element) -> Result<String, Fault> {
    if folder != ROOT_VM_FOLDER && !st.folders.iter().any(|(id, _)| id == folder) {
        return Err(bad("ManagedObjectNotFound", format!("folder {folder}")));
    }
    let config = m
        .child("config")
        .ok_or_else(|| bad("InvalidArgument", "config"))?;
    if text(m, "pool") != "resgroup-1" {
        return Err(bad("ManagedObjectNotFound", "pool"));
    }
    if m.child("host").is_some_and(|h| h.text != "host-1") {
        return Err(bad("ManagedObjectNotFound", "host"));
    }
    let name = text(config, "name").to_owned();
    if name.is_empty() {
        return Err(bad("InvalidArgument", "name"));
    }
    if st.vms.iter().any(|v| v.folder == folder && v.name == name) {
        return Err(bad(
            "DuplicateName",
            format!("The name '{name}' already exists."),
        ));
    }
    let vm_path = config
        .path(&["files", "vmPathName"])
        .map(|e| e.text.as_str())
        .unwrap_or_default();
    if datastore_of(vm_path).map(|(ds, _)| ds) != Some(SIM_DATASTORE) {
        return Err(bad("InvalidDatastore", format!("vmPathName {vm_path}")));
    }
    let id = st.id("vm");
    let mut vm = SimVm {
        id: id.clone(),
        name,
        cbt_enabled: false,
        hw: Hardware {
            guest_id: text(config, "guestId").to_owned(),
            version: config.child_text("version").unwrap_or("vmx-19").to_owned(),
            firmware: config.child_text("firmware").unwrap_or("bios").to_owned(),
            secure_boot: config
                .path(&["bootOptions", "efiSecureBootEnabled"])
                .is_some_and(|e| e.text == "true"),
            num_cpus: num(config, "numCPUs")?,
            cores_per_socket: config
                .child_text("numCoresPerSocket")
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
            memory_mb: num(config, "memoryMB")?,
            annotation: text(config, "annotation").to_owned(),
            controllers: vec![
                controller(200, "VirtualIDEController", 0),
                controller(201, "VirtualIDEController", 1),
            ],
            nics: Vec::new(),
        },
        folder: folder.to_owned(),
        powered_on: false,
        disks: Vec::new(),
        snapshots: Vec::new(),
    };
    let mut keys = BTreeMap::new();
    let mut new_files = Vec::new();
    let mut gone_files = Vec::new();
    let dir = st.dir.clone();
    // Controllers first: disks name them by their temporary keys.
    let changes: Vec<&Element> = config.children_named("deviceChange").collect();
    let (controllers, others): (Vec<&Element>, Vec<&Element>) =
        changes.into_iter().partition(|c| {
            c.child("device")
                .and_then(|d| d.xsi_type.as_deref())
                .is_some_and(|k| k.ends_with("Controller"))
        });
    for change in controllers.into_iter().chain(others) {
        apply_change(
            &mut vm,
            change,
            &mut keys,
            &mut new_files,
            &mut gone_files,
            &dir,
        )?;
    }
    commit_files(&new_files, &gone_files)?;
    st.vms.push(vm);
    Ok(id)
}

/// `ReconfigVM_Task` with device changes, all or nothing.
pub(crate) fn reconfigure(st: &mut State, vm_id: &str, spec: &Element) -> Result<(), Fault> {
    let dir = st.dir.clone();
    let vm = st
        .vms
        .iter()
        .find(|v| v.id == vm_id)
        .ok_or_else(|| bad("ManagedObjectNotFound", vm_id))?;
    let mut copy = vm.clone();
    let mut keys = BTreeMap::new();
    let mut new_files = Vec::new();
    let mut gone_files = Vec::new();
    for change in spec.children_named("deviceChange") {
        apply_change(
            &mut copy,
            change,
            &mut keys,
            &mut new_files,
            &mut gone_files,
            &dir,
        )?;
    }
    commit_files(&new_files, &gone_files)?;
    if let Some(v) = st.vm_mut(vm_id) {
        *v = copy;
    }
    Ok(())
}

/// `Destroy_Task` of a VM: it and its files go.
pub(crate) fn destroy_vm(st: &mut State, vm_id: &str) -> Result<(), Fault> {
    let i = st
        .vms
        .iter()
        .position(|v| v.id == vm_id)
        .ok_or_else(|| bad("ManagedObjectNotFound", vm_id))?;
    if st.vms[i].powered_on {
        return Err(bad(
            "InvalidPowerState",
            "The attempted operation cannot be performed in the current state (Powered on).",
        ));
    }
    let vm = st.vms.remove(i);
    for d in &vm.disks {
        let _ = std::fs::remove_file(&d.local);
    }
    st.snapshots.retain(|_, s| s.vm != vm.id);
    Ok(())
}

/// `DeleteDatastoreFile_Task`: an uploaded file, or every uploaded file below a folder.
pub(crate) fn delete_file(st: &mut State, name: &str) -> Result<(), Fault> {
    let prefix = format!("{}/", name.trim_end_matches('/'));
    let gone: Vec<String> = st
        .files
        .keys()
        .filter(|k| k.as_str() == name || k.starts_with(&prefix))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Err(bad("FileNotFound", format!("File {name} was not found")));
    }
    for k in gone {
        if let Some(local) = st.files.remove(&k) {
            let _ = std::fs::remove_file(local);
        }
    }
    Ok(())
}

/// Where a PUT writes: a VM disk's flat file (its length must be the capacity), or an upload.
enum PutTarget {
    Disk { local: PathBuf, capacity: u64 },
    File { ds_path: String, local: PathBuf },
}

/// `PUT /folder/<path>?dcPath=dc1&dsName=ds1` with a `Content-Length`: the body, streamed into
/// the file.
pub(crate) async fn folder_put(
    state: &Mutex<State>,
    cookie: Option<&str>,
    req: Request<Incoming>,
) -> Resp {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let length = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let file = percent_decode(path.trim_start_matches("/folder/"));
    let (target, fail_after) = {
        let mut st = lock(state);
        if !cookie.is_some_and(|c| st.sessions.contains_key(c)) {
            return response(StatusCode::UNAUTHORIZED, String::new());
        }
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        if params.get("dcPath").map(String::as_str) != Some(SIM_DATACENTER)
            || params.get("dsName").map(String::as_str) != Some(SIM_DATASTORE)
            || file.split('/').any(|s| s.is_empty() || s == "..")
        {
            return response(StatusCode::NOT_FOUND, String::new());
        }
        let Some(length) = length else {
            return response(StatusCode::LENGTH_REQUIRED, String::new());
        };
        st.stats.uploads += 1;
        let disk = st
            .vms
            .iter()
            .flat_map(|v| v.disks.iter())
            .find(|d| d.flat_path() == file)
            .map(|d| (d.local.clone(), d.capacity));
        let target = match disk {
            Some((local, capacity)) if capacity == length => PutTarget::Disk { local, capacity },
            Some(_) => {
                return response(
                    StatusCode::BAD_REQUEST,
                    "length is not the disk's capacity".to_owned(),
                );
            }
            None if length > MAX_PUT_BYTES => {
                return response(StatusCode::PAYLOAD_TOO_LARGE, String::new());
            }
            None => {
                let id = st.id("upload");
                PutTarget::File {
                    ds_path: format!("[{SIM_DATASTORE}] {file}"),
                    local: st.dir.join(id),
                }
            }
        };
        (target, st.fail_put_after.take())
    };
    let (local, expected) = match &target {
        PutTarget::Disk { local, capacity } => (local.clone(), *capacity),
        PutTarget::File { local, .. } => (local.clone(), length.unwrap_or(0)),
    };
    let opened = match &target {
        PutTarget::Disk { .. } => OpenOptions::new().write(true).open(&local),
        PutTarget::File { .. } => File::create(&local),
    };
    let Ok(out) = opened else {
        return response(StatusCode::INTERNAL_SERVER_ERROR, String::new());
    };
    let mut writer = PutWriter::new(out, &local);
    let mut body = req.into_body();
    let mut at = 0u64;
    let mut result: io::Result<()> = loop {
        let Some(frame) = body.frame().await else {
            break Ok(());
        };
        let Ok(frame) = frame else {
            break Err(io::Error::other("body"));
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let len = data.len() as u64;
        if at.saturating_add(len) > expected {
            break Err(io::Error::other("body longer than Content-Length"));
        }
        if let Err(e) = writer.write(&data).await {
            break Err(e);
        }
        at += len;
        lock(state).stats.upload_bytes += len;
        if fail_after.is_some_and(|n| at >= n) {
            break Err(io::Error::other("injected failure"));
        }
    };
    let finished = writer.finish().await;
    if result.is_ok() {
        result = finished;
    }
    match (result, at == expected, target) {
        (Ok(()), true, PutTarget::File { ds_path, local }) => {
            lock(state).files.insert(ds_path, local);
            response(StatusCode::CREATED, String::new())
        }
        (Ok(()), true, PutTarget::Disk { .. }) => response(StatusCode::OK, String::new()),
        (_, _, PutTarget::File { local, .. }) => {
            let _ = std::fs::remove_file(local);
            response(StatusCode::INTERNAL_SERVER_ERROR, String::new())
        }
        _ => response(StatusCode::INTERNAL_SERVER_ERROR, String::new()),
    }
}

/// Bytes of a PUT body written at once.
const PUT_STAGE: usize = 4 * 1024 * 1024;
/// Stages being written at once (as a datastore takes several writes in parallel).
const PUT_WRITES: usize = 4;

/// Writes a PUT body into its file as a datastore would: off the async workers, several
/// writes at once, past the page cache. The body's frames (whatever sizes hyper hands out) are
/// gathered into page-aligned [`PUT_STAGE`] buffers, each written with `O_DIRECT` on tokio's
/// blocking pool (up to [`PUT_WRITES`] at once) while the next one fills; the last, partial
/// one goes through the page cache. A file system that refuses `O_DIRECT` (tmpfs) gets
/// buffered writes. A buffered write of fresh data costs this machine more CPU than the
/// network, and one write at a time waits for the disk's latency after every stage: either
/// would make an upload look slower than the client makes it.
struct PutWriter {
    file: Arc<File>,
    direct: Option<Arc<File>>,
    stage: AlignedBuf,
    /// Bytes of `stage` filled.
    filled: usize,
    /// File offset of `stage`.
    at: u64,
    /// Writes of earlier stages, oldest first, each handing its buffer back.
    pending: VecDeque<tokio::task::JoinHandle<(AlignedBuf, io::Result<()>)>>,
    /// Buffers whose writes are done.
    spare: Vec<AlignedBuf>,
}

impl PutWriter {
    fn new(file: File, path: &Path) -> Self {
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()
            .map(Arc::new);
        Self {
            file: Arc::new(file),
            direct,
            stage: AlignedBuf::zeroed(PUT_STAGE),
            filled: 0,
            at: 0,
            pending: VecDeque::new(),
            spare: Vec::new(),
        }
    }

    async fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(PUT_STAGE - self.filled);
            self.stage[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == PUT_STAGE {
                if self.pending.len() >= PUT_WRITES {
                    self.wait_oldest().await?;
                }
                let next = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| AlignedBuf::zeroed(PUT_STAGE));
                let full = std::mem::replace(&mut self.stage, next);
                let (file, direct, at) = (Arc::clone(&self.file), self.direct.clone(), self.at);
                self.pending.push_back(tokio::task::spawn_blocking(move || {
                    let r = write_stage(&file, direct.as_deref(), &full, at);
                    (full, r)
                }));
                self.at += PUT_STAGE as u64;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Waits for the oldest write in flight.
    async fn wait_oldest(&mut self) -> io::Result<()> {
        if let Some(write) = self.pending.pop_front() {
            let (buf, r) = write.await.map_err(io::Error::other)?;
            r?;
            self.spare.push(buf);
        }
        Ok(())
    }

    /// Writes what is left and waits for every write.
    async fn finish(mut self) -> io::Result<()> {
        let mut result = Ok(());
        while !self.pending.is_empty() {
            if let Err(e) = self.wait_oldest().await {
                result = result.and(Err(e));
            }
        }
        result?;
        if self.filled > 0 {
            self.file
                .write_all_at(&self.stage[..self.filled], self.at)?;
        }
        Ok(())
    }
}

fn write_stage(file: &File, direct: Option<&File>, buf: &[u8], at: u64) -> io::Result<()> {
    if let Some(d) = direct {
        match d.write_all_at(buf, at) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            other => return other,
        }
    }
    file.write_all_at(buf, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_writer_writes_frames_of_any_size_across_stages_and_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flat");
        let len = 2 * PUT_STAGE * PUT_WRITES + 12_345;
        std::fs::write(&path, vec![0xeeu8; len]).unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| u8::try_from(i * 31 % 251).unwrap())
            .collect();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();

        rt.block_on(async {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let mut w = PutWriter::new(file, &path);
            // Frames of odd sizes, as hyper hands them out.
            for piece in data.chunks(16_411) {
                w.write(piece).await.unwrap();
            }
            w.finish().await.unwrap();
        });

        assert!(std::fs::read(&path).unwrap() == data);
    }

    #[test]
    fn default_slot_skips_the_scsi_controller_unit() {
        let slots: Vec<_> = (0..10).map(default_slot).collect();
        assert_eq!(
            slots,
            [
                (1000, 0),
                (15000, 0),
                (1000, 1),
                (1000, 2),
                (1000, 3),
                (1000, 4),
                (1000, 5),
                (1000, 6),
                (1000, 8),
                (1000, 9)
            ]
        );
    }
}
