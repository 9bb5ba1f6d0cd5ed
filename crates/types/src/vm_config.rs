//! A VM's configuration as captured at backup (DESIGN.md "Restore"), and what a restore into
//! vCenter is asked to do.
//!
//! - [`VmConfig`]: the hardware a whole-VM restore rebuilds: guest OS, firmware, CPUs, memory,
//!   controllers, disks (controller, unit, provisioning), NICs (adapter, network, MAC) and the
//!   annotation. Captured from the backup snapshot's configuration by the client or agent,
//!   stored with the backup by the hub (`PUT /api/v1/backups/{id}/vm_config`) and answered as
//!   `vm_config` by `GET /api/v1/backups/{id}`. Versioned by [`VM_CONFIG_VERSION`].
//! - [`RestoreRequest`]: the body of `POST /api/v1/backups/{id}/restore`.
//! - [`RestoreJob`]: what the hub hands the agent that runs a `restore` job.
//!
//! Everything is validated while it is deserialized: strings are bounded and printable, counts
//! are bounded, device keys are unique and every disk names a controller of the same config.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::api::{MAX_CAPACITY_BYTES, MAX_DISKS, SECTOR_SIZE, check_text};
use crate::error::TypesError;
use crate::names::{BackupId, CredentialName, DiskKey};

/// The version of [`VmConfig`] this code writes. A stored config of a later version is refused
/// by a restore (never guessed at).
pub const VM_CONFIG_VERSION: u32 = 1;
/// Most NICs one config may hold (vSphere allows 10 per VM).
pub const MAX_NICS: usize = 64;
/// Most storage controllers one config may hold.
pub const MAX_CONTROLLERS: usize = 64;
/// Most virtual CPUs (vSphere 8 allows 768).
pub const MAX_CPUS: u32 = 4096;
/// Most memory, in MiB (24 TiB, vSphere 8's limit).
pub const MAX_MEMORY_MB: u64 = 24 * 1024 * 1024;
/// Longest annotation, in bytes (vCenter keeps up to 64 KiB).
pub const MAX_ANNOTATION_LEN: usize = 64 * 1024;
/// Longest name, path, guest id or network name, in bytes.
pub const MAX_CONFIG_TEXT_LEN: usize = 1024;
/// Largest serialized [`VmConfig`] the hub accepts, in bytes.
pub const MAX_VM_CONFIG_BYTES: usize = 1024 * 1024;

/// [`lowercase_enum`] plus string serde for a unit enum.
macro_rules! named_enum {
    ($ty:ident, $field:literal, $expected:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        lowercase_enum!($ty, $field, $expected, { $($variant => $name),+ });

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// How the VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// Legacy BIOS (vSphere `bios`).
    Bios,
    /// UEFI (vSphere `efi`).
    Efi,
}

named_enum!(Firmware, "firmware", "bios or efi", { Bios => "bios", Efi => "efi" });

/// The kind of a storage controller, named after the vSphere device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ControllerKind {
    /// `VirtualIDEController`.
    Ide,
    /// `VirtualAHCIController` (SATA).
    Sata,
    /// `VirtualNVMEController`.
    Nvme,
    /// `VirtualLsiLogicController` (LSI Logic parallel).
    LsiLogic,
    /// `VirtualLsiLogicSASController`.
    LsiLogicSas,
    /// `ParaVirtualSCSIController` (PVSCSI).
    Pvscsi,
    /// `VirtualBusLogicController`.
    BusLogic,
}

named_enum!(ControllerKind, "controllers.kind", "ide, sata, nvme, lsilogic, lsilogic-sas, pvscsi or buslogic", {
    Ide => "ide",
    Sata => "sata",
    Nvme => "nvme",
    LsiLogic => "lsilogic",
    LsiLogicSas => "lsilogic-sas",
    Pvscsi => "pvscsi",
    BusLogic => "buslogic",
});

impl ControllerKind {
    /// The vSphere device type (`xsi:type`) of this controller.
    #[must_use]
    pub const fn vsphere_type(self) -> &'static str {
        match self {
            Self::Ide => "VirtualIDEController",
            Self::Sata => "VirtualAHCIController",
            Self::Nvme => "VirtualNVMEController",
            Self::LsiLogic => "VirtualLsiLogicController",
            Self::LsiLogicSas => "VirtualLsiLogicSASController",
            Self::Pvscsi => "ParaVirtualSCSIController",
            Self::BusLogic => "VirtualBusLogicController",
        }
    }

    /// The kind of a vSphere controller device type, if it is one we rebuild.
    #[must_use]
    pub fn from_vsphere_type(name: &str) -> Option<Self> {
        [
            Self::Ide,
            Self::Sata,
            Self::Nvme,
            Self::LsiLogic,
            Self::LsiLogicSas,
            Self::Pvscsi,
            Self::BusLogic,
        ]
        .into_iter()
        .find(|kind| kind.vsphere_type() == name)
    }

    /// Most devices on one bus of this kind (IDE 2, SATA 30, NVMe 15, SCSI 16 with unit 7
    /// reserved for the controller itself).
    #[must_use]
    pub const fn max_units(self) -> u32 {
        match self {
            Self::Ide => 2,
            Self::Sata => 30,
            Self::Nvme => 15,
            Self::LsiLogic | Self::LsiLogicSas | Self::Pvscsi | Self::BusLogic => 16,
        }
    }
}

/// How a disk's space is allocated on its datastore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provisioning {
    /// Thin: grows as the guest writes.
    Thin,
    /// Thick, zeroed lazily.
    ThickLazy,
    /// Thick, zeroed eagerly (needed for some clustering).
    ThickEager,
}

named_enum!(Provisioning, "disks.provisioning", "thin, thick-lazy or thick-eager", {
    Thin => "thin",
    ThickLazy => "thick-lazy",
    ThickEager => "thick-eager",
});

/// The adapter type of a NIC, named after the vSphere device class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NicAdapter {
    /// `VirtualVmxnet3`.
    Vmxnet3,
    /// `VirtualVmxnet2`.
    Vmxnet2,
    /// `VirtualE1000`.
    E1000,
    /// `VirtualE1000e`.
    E1000e,
    /// `VirtualPCNet32`.
    Pcnet32,
}

named_enum!(NicAdapter, "nics.adapter_type", "vmxnet3, vmxnet2, e1000, e1000e or pcnet32", {
    Vmxnet3 => "vmxnet3",
    Vmxnet2 => "vmxnet2",
    E1000 => "e1000",
    E1000e => "e1000e",
    Pcnet32 => "pcnet32",
});

impl NicAdapter {
    /// The vSphere device type (`xsi:type`) of this adapter.
    #[must_use]
    pub const fn vsphere_type(self) -> &'static str {
        match self {
            Self::Vmxnet3 => "VirtualVmxnet3",
            Self::Vmxnet2 => "VirtualVmxnet2",
            Self::E1000 => "VirtualE1000",
            Self::E1000e => "VirtualE1000e",
            Self::Pcnet32 => "VirtualPCNet32",
        }
    }

    /// The adapter of a vSphere NIC device type, if it is one we rebuild.
    #[must_use]
    pub fn from_vsphere_type(name: &str) -> Option<Self> {
        [
            Self::Vmxnet3,
            Self::Vmxnet2,
            Self::E1000,
            Self::E1000e,
            Self::Pcnet32,
        ]
        .into_iter()
        .find(|kind| kind.vsphere_type() == name)
    }
}

/// One storage controller of a [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// Its device key in the captured VM (e.g. 1000); disks name it in `controller_key`.
    pub key: i32,
    /// Its kind.
    pub kind: ControllerKind,
    /// Its bus number among controllers of its kind (0, 1, ...).
    pub bus_number: u32,
}

/// One virtual disk of a [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The VMware disk key (2000, 2001, ...): the same key as the backup's disk.
    pub key: DiskKey,
    /// Its capacity in bytes.
    pub capacity_bytes: u64,
    /// The device key of its controller (a [`ControllerConfig::key`]).
    pub controller_key: i32,
    /// Its unit number on the controller's bus.
    pub unit_number: u32,
    /// Thin or thick.
    pub provisioning: Provisioning,
    /// Its backing file when captured, `[datastore] folder/disk.vmdk` (for the record only).
    #[serde(default)]
    pub file_name: Option<String>,
}

/// One network adapter of a [`VmConfig`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NicConfig {
    /// Its device key in the captured VM (e.g. 4000).
    pub key: i32,
    /// The adapter type.
    pub adapter_type: NicAdapter,
    /// The name of the network (port group) it was connected to.
    pub network: String,
    /// Its MAC address, `00:50:56:xx:xx:xx` (lowercase hex, colons).
    pub mac_address: String,
    /// The MAC was set by hand (`addressType = manual`) rather than generated by vCenter.
    pub mac_manual: bool,
    /// Connected when the VM powers on.
    #[serde(default = "yes")]
    pub start_connected: bool,
}

const fn yes() -> bool {
    true
}

/// A VM's configuration, captured from its backup snapshot. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "VmConfigWire", into = "VmConfigWire")]
pub struct VmConfig {
    /// The format version, [`VM_CONFIG_VERSION`] when written by this code.
    pub version: u32,
    /// The VM's name in vCenter when captured.
    pub name: String,
    /// The guest OS id, e.g. `ubuntu64Guest`, `windows2019srv_64Guest`.
    pub guest_id: String,
    /// The virtual hardware version, e.g. `vmx-19`, if known.
    pub hardware_version: Option<String>,
    /// BIOS or UEFI.
    pub firmware: Firmware,
    /// UEFI secure boot on (only meaningful with [`Firmware::Efi`]).
    pub secure_boot: bool,
    /// Virtual CPUs.
    pub num_cpus: u32,
    /// Cores per socket (divides `num_cpus`).
    pub cores_per_socket: u32,
    /// Memory in MiB.
    pub memory_mb: u64,
    /// The VM's notes.
    pub annotation: String,
    /// Its storage controllers.
    pub controllers: Vec<ControllerConfig>,
    /// Its virtual disks, ordered by key.
    pub disks: Vec<DiskConfig>,
    /// Its network adapters.
    pub nics: Vec<NicConfig>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfigWire {
    version: u32,
    name: String,
    guest_id: String,
    #[serde(default)]
    hardware_version: Option<String>,
    firmware: Firmware,
    #[serde(default)]
    secure_boot: bool,
    num_cpus: u32,
    cores_per_socket: u32,
    memory_mb: u64,
    #[serde(default)]
    annotation: String,
    controllers: Vec<ControllerConfig>,
    disks: Vec<DiskConfig>,
    #[serde(default)]
    nics: Vec<NicConfig>,
}

impl TryFrom<VmConfigWire> for VmConfig {
    type Error = TypesError;

    fn try_from(w: VmConfigWire) -> Result<Self, Self::Error> {
        let config = Self {
            version: w.version,
            name: w.name,
            guest_id: w.guest_id,
            hardware_version: w.hardware_version,
            firmware: w.firmware,
            secure_boot: w.secure_boot,
            num_cpus: w.num_cpus,
            cores_per_socket: w.cores_per_socket,
            memory_mb: w.memory_mb,
            annotation: w.annotation,
            controllers: w.controllers,
            disks: w.disks,
            nics: w.nics,
        };
        config.validate()?;
        Ok(config)
    }
}

impl From<VmConfig> for VmConfigWire {
    fn from(c: VmConfig) -> Self {
        Self {
            version: c.version,
            name: c.name,
            guest_id: c.guest_id,
            hardware_version: c.hardware_version,
            firmware: c.firmware,
            secure_boot: c.secure_boot,
            num_cpus: c.num_cpus,
            cores_per_socket: c.cores_per_socket,
            memory_mb: c.memory_mb,
            annotation: c.annotation,
            controllers: c.controllers,
            disks: c.disks,
            nics: c.nics,
        }
    }
}

fn invalid(field: &'static str, reason: &'static str) -> TypesError {
    TypesError::InvalidField { field, reason }
}

impl VmConfig {
    /// Checks every bound and cross-reference (deserialization calls this; call it after
    /// building a config by hand).
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), TypesError> {
        if self.version == 0 || self.version > VM_CONFIG_VERSION {
            return Err(invalid(
                "version",
                "is not a vm_config version this hub knows (1)",
            ));
        }
        check_text("name", &self.name, MAX_CONFIG_TEXT_LEN)?;
        check_text("guest_id", &self.guest_id, MAX_CONFIG_TEXT_LEN)?;
        if let Some(hw) = &self.hardware_version {
            check_text("hardware_version", hw, MAX_CONFIG_TEXT_LEN)?;
        }
        if self.secure_boot && self.firmware != Firmware::Efi {
            return Err(invalid("secure_boot", "needs firmware efi"));
        }
        if self.num_cpus == 0 || self.num_cpus > MAX_CPUS {
            return Err(invalid("num_cpus", "must be 1 to 4096"));
        }
        if self.cores_per_socket == 0 || !self.num_cpus.is_multiple_of(self.cores_per_socket) {
            return Err(invalid(
                "cores_per_socket",
                "must be at least 1 and divide num_cpus",
            ));
        }
        if self.memory_mb == 0 || self.memory_mb > MAX_MEMORY_MB {
            return Err(invalid("memory_mb", "must be 1 MiB to 24 TiB"));
        }
        if self.annotation.len() > MAX_ANNOTATION_LEN {
            return Err(invalid("annotation", "is longer than 64 KiB"));
        }
        self.validate_devices()
    }

    fn validate_devices(&self) -> Result<(), TypesError> {
        if self.controllers.len() > MAX_CONTROLLERS {
            return Err(invalid("controllers", "holds more than 64 controllers"));
        }
        if self.disks.len() > MAX_DISKS {
            return Err(invalid("disks", "holds more than 512 disks"));
        }
        if self.nics.len() > MAX_NICS {
            return Err(invalid("nics", "holds more than 64 NICs"));
        }
        let mut device_keys = BTreeSet::new();
        let mut buses = BTreeSet::new();
        for c in &self.controllers {
            if !device_keys.insert(c.key) {
                return Err(invalid("controllers.key", "is used by two devices"));
            }
            if !buses.insert((c.kind, c.bus_number)) {
                return Err(invalid(
                    "controllers.bus_number",
                    "two controllers of one kind share a bus number",
                ));
            }
        }
        let mut disk_keys = BTreeSet::new();
        let mut slots = BTreeSet::new();
        for d in &self.disks {
            if !disk_keys.insert(d.key) {
                return Err(invalid("disks.key", "two disks share one key"));
            }
            if d.capacity_bytes == 0
                || d.capacity_bytes > MAX_CAPACITY_BYTES
                || !d.capacity_bytes.is_multiple_of(SECTOR_SIZE)
            {
                return Err(invalid(
                    "disks.capacity_bytes",
                    "must be a non-zero multiple of 512 up to 64 TiB",
                ));
            }
            let Some(controller) = self.controllers.iter().find(|c| c.key == d.controller_key)
            else {
                return Err(invalid(
                    "disks.controller_key",
                    "names no controller of this config",
                ));
            };
            if d.unit_number >= controller.kind.max_units() {
                return Err(invalid(
                    "disks.unit_number",
                    "is beyond what the disk's controller holds",
                ));
            }
            if !slots.insert((d.controller_key, d.unit_number)) {
                return Err(invalid(
                    "disks.unit_number",
                    "two disks share one controller slot",
                ));
            }
            if let Some(file) = &d.file_name {
                check_text("disks.file_name", file, MAX_CONFIG_TEXT_LEN)?;
            }
        }
        for n in &self.nics {
            if !device_keys.insert(n.key) {
                return Err(invalid("nics.key", "is used by two devices"));
            }
            check_text("nics.network", &n.network, MAX_CONFIG_TEXT_LEN)?;
            if !is_mac(&n.mac_address) {
                return Err(invalid(
                    "nics.mac_address",
                    "must be six lowercase hex pairs joined by colons",
                ));
            }
        }
        Ok(())
    }

    /// The disk of this key, if the config has it.
    #[must_use]
    pub fn disk(&self, key: DiskKey) -> Option<&DiskConfig> {
        self.disks.iter().find(|d| d.key == key)
    }

    /// The controller of this device key, if the config has it.
    #[must_use]
    pub fn controller(&self, key: i32) -> Option<&ControllerConfig> {
        self.controllers.iter().find(|c| c.key == key)
    }

    /// The distinct networks the NICs connect to, sorted.
    #[must_use]
    pub fn networks(&self) -> BTreeSet<&str> {
        self.nics.iter().map(|n| n.network.as_str()).collect()
    }
}

/// `aa:bb:cc:dd:ee:ff`, lowercase hex.
fn is_mac(text: &str) -> bool {
    text.len() == 17
        && text.split(':').count() == 6
        && text.split(':').all(|pair| {
            pair.len() == 2
                && pair
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Where `POST /api/v1/backups/{id}/restore` puts the point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RestoreTarget {
    /// A new VM in vCenter, built from the point's `vm_config`, named `vm_name`.
    Vcenter,
    /// The point's disks added as new disks to the existing VM `vm_name` (never over its
    /// existing disks).
    ExistingVm,
}

named_enum!(RestoreTarget, "target", "vcenter or existing_vm", {
    Vcenter => "vcenter",
    ExistingVm => "existing_vm",
});

/// `POST /api/v1/backups/{id}/restore`: DESIGN.md's `{target: "vcenter", vm_name, datacenter,
/// folder, resource_pool, datastore, network_map, power_on}`, plus `credential` (which vCenter,
/// and so which agent, runs the restore), `host`, `keep_macs` and `disks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RestoreWire", into = "RestoreWire")]
pub struct RestoreRequest {
    /// New VM, or disks into an existing one.
    pub target: RestoreTarget,
    /// The new VM's name ([`RestoreTarget::Vcenter`]), or the existing VM's name or inventory
    /// path ([`RestoreTarget::ExistingVm`]).
    pub vm_name: String,
    /// The vCenter credential whose agent runs the restore; the hub may default it to the
    /// credential the VM was backed up with.
    pub credential: Option<CredentialName>,
    /// The datacenter, e.g. `dc1`.
    pub datacenter: String,
    /// The VM folder (inventory path below the datacenter, e.g. `vm/restored`); `None`: the
    /// datacenter's root VM folder.
    pub folder: Option<String>,
    /// The resource pool (inventory path); `None`: the host's or cluster's root pool.
    pub resource_pool: Option<String>,
    /// The host to place the VM on; `None`: vCenter chooses within the pool.
    pub host: Option<String>,
    /// The datastore the disks and the VM's files go to.
    pub datastore: String,
    /// Captured network name -> network to connect to. Every network of the config must be
    /// mapped or exist under the same name; a network that does neither is refused before
    /// anything is created.
    pub network_map: BTreeMap<String, String>,
    /// Power the new VM on once its disks are uploaded.
    pub power_on: bool,
    /// Keep the captured MAC addresses (default: vCenter generates new ones, so the restored
    /// VM can run beside the original).
    pub keep_macs: bool,
    /// Which disks to restore (default: all of the point's disks).
    pub disks: Option<Vec<DiskKey>>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreWire {
    target: RestoreTarget,
    vm_name: String,
    #[serde(default)]
    credential: Option<CredentialName>,
    datacenter: String,
    #[serde(default)]
    folder: Option<String>,
    #[serde(default)]
    resource_pool: Option<String>,
    #[serde(default)]
    host: Option<String>,
    datastore: String,
    #[serde(default)]
    network_map: BTreeMap<String, String>,
    #[serde(default)]
    power_on: bool,
    #[serde(default)]
    keep_macs: bool,
    #[serde(default)]
    disks: Option<Vec<DiskKey>>,
}

impl TryFrom<RestoreWire> for RestoreRequest {
    type Error = TypesError;

    fn try_from(w: RestoreWire) -> Result<Self, Self::Error> {
        let request = Self {
            target: w.target,
            vm_name: w.vm_name,
            credential: w.credential,
            datacenter: w.datacenter,
            folder: w.folder,
            resource_pool: w.resource_pool,
            host: w.host,
            datastore: w.datastore,
            network_map: w.network_map,
            power_on: w.power_on,
            keep_macs: w.keep_macs,
            disks: w.disks,
        };
        request.validate()?;
        Ok(request)
    }
}

impl From<RestoreRequest> for RestoreWire {
    fn from(r: RestoreRequest) -> Self {
        Self {
            target: r.target,
            vm_name: r.vm_name,
            credential: r.credential,
            datacenter: r.datacenter,
            folder: r.folder,
            resource_pool: r.resource_pool,
            host: r.host,
            datastore: r.datastore,
            network_map: r.network_map,
            power_on: r.power_on,
            keep_macs: r.keep_macs,
            disks: r.disks,
        }
    }
}

impl RestoreRequest {
    /// Checks bounds (deserialization calls this).
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), TypesError> {
        check_text("vm_name", &self.vm_name, MAX_CONFIG_TEXT_LEN)?;
        check_text("datacenter", &self.datacenter, MAX_CONFIG_TEXT_LEN)?;
        check_text("datastore", &self.datastore, MAX_CONFIG_TEXT_LEN)?;
        for (field, value) in [
            ("folder", &self.folder),
            ("resource_pool", &self.resource_pool),
            ("host", &self.host),
        ] {
            if let Some(value) = value {
                check_text(field, value, MAX_CONFIG_TEXT_LEN)?;
            }
        }
        if self.network_map.len() > MAX_NICS {
            return Err(invalid("network_map", "holds more than 64 networks"));
        }
        for (from, to) in &self.network_map {
            check_text("network_map", from, MAX_CONFIG_TEXT_LEN)?;
            check_text("network_map", to, MAX_CONFIG_TEXT_LEN)?;
        }
        if let Some(disks) = &self.disks {
            if disks.is_empty() || disks.len() > MAX_DISKS {
                return Err(invalid("disks", "must name 1 to 512 disks"));
            }
            if disks.iter().collect::<BTreeSet<_>>().len() != disks.len() {
                return Err(invalid("disks", "names a disk twice"));
            }
        }
        if self.target == RestoreTarget::ExistingVm && self.power_on {
            return Err(invalid(
                "power_on",
                "applies to a new VM only (target vcenter)",
            ));
        }
        Ok(())
    }

    /// The network a captured network is connected to after the restore: its mapping, or the
    /// same name.
    #[must_use]
    pub fn map_network<'a>(&'a self, captured: &'a str) -> &'a str {
        self.network_map
            .get(captured)
            .map_or(captured, String::as_str)
    }
}

/// One disk of a [`RestoreJob`]: where the agent reads it at the hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreJobDisk {
    /// The disk.
    pub disk_key: DiskKey,
    /// Its capacity in the point.
    pub capacity_bytes: u64,
}

/// What the hub hands the agent with a `restore` job ([`crate::AgentJob::restore`]): the point,
/// its captured configuration, the request, and the disks to upload. The agent opens the
/// point's read-only exports (`POST /api/v1/backups/{id}/exports`) to read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreJob {
    /// The restore point.
    pub backup_id: BackupId,
    /// Its captured configuration.
    pub vm_config: VmConfig,
    /// What was asked.
    pub request: RestoreRequest,
    /// The disks to upload, ordered by key.
    pub disks: Vec<RestoreJobDisk>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> VmConfig {
        VmConfig {
            version: VM_CONFIG_VERSION,
            name: "web01".into(),
            guest_id: "ubuntu64Guest".into(),
            hardware_version: Some("vmx-19".into()),
            firmware: Firmware::Efi,
            secure_boot: true,
            num_cpus: 4,
            cores_per_socket: 2,
            memory_mb: 8192,
            annotation: "web server\nrack 4".into(),
            controllers: vec![
                ControllerConfig {
                    key: 1000,
                    kind: ControllerKind::Pvscsi,
                    bus_number: 0,
                },
                ControllerConfig {
                    key: 15000,
                    kind: ControllerKind::Sata,
                    bus_number: 0,
                },
            ],
            disks: vec![
                DiskConfig {
                    key: DiskKey(2000),
                    capacity_bytes: 1 << 30,
                    controller_key: 1000,
                    unit_number: 0,
                    provisioning: Provisioning::Thin,
                    file_name: Some("[ds1] web01/web01.vmdk".into()),
                },
                DiskConfig {
                    key: DiskKey(16000),
                    capacity_bytes: 2 << 30,
                    controller_key: 15000,
                    unit_number: 0,
                    provisioning: Provisioning::ThickEager,
                    file_name: None,
                },
            ],
            nics: vec![NicConfig {
                key: 4000,
                adapter_type: NicAdapter::Vmxnet3,
                network: "VM Network".into(),
                mac_address: "00:50:56:aa:bb:cc".into(),
                mac_manual: false,
                start_connected: true,
            }],
        }
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = config();
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains(r#""firmware":"efi""#), "{json}");
        assert!(json.contains(r#""kind":"pvscsi""#), "{json}");
        assert!(json.contains(r#""provisioning":"thick-eager""#), "{json}");
        let back: VmConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
        assert_eq!(
            back.networks().into_iter().collect::<Vec<_>>(),
            ["VM Network"]
        );
    }

    #[test]
    fn config_refuses_what_vcenter_could_not_build() {
        type Change = fn(&mut VmConfig);
        let cases: Vec<(&str, Change)> = vec![
            ("version", |c| c.version = 2),
            ("secure_boot", |c| c.firmware = Firmware::Bios),
            ("num_cpus", |c| c.num_cpus = 0),
            ("cores_per_socket", |c| c.cores_per_socket = 3),
            ("memory_mb", |c| c.memory_mb = 0),
            ("disks.controller_key", |c| c.disks[0].controller_key = 7),
            ("disks.unit_number", |c| c.disks[0].unit_number = 16),
            ("disks.unit_number", |c| {
                c.disks[1].controller_key = 1000;
            }),
            ("disks.key", |c| c.disks[1].key = DiskKey(2000)),
            ("disks.capacity_bytes", |c| c.disks[0].capacity_bytes = 1000),
            ("nics.mac_address", |c| {
                c.nics[0].mac_address = "00:50:56:AA:BB:CC".into();
            }),
            ("nics.key", |c| c.nics[0].key = 1000),
            ("name", |c| c.name = "a\u{7}b".into()),
        ];
        for (field, change) in cases {
            let mut c = config();
            change(&mut c);
            let json = serde_json::to_string(&VmConfigWire::from(c)).unwrap();
            let err = serde_json::from_str::<VmConfig>(&json).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
    }

    #[test]
    fn config_refuses_unknown_fields() {
        let mut value = serde_json::to_value(config()).unwrap();
        value["cpus"] = 4.into();
        let err = serde_json::from_value::<VmConfig>(value).unwrap_err();
        assert!(err.to_string().contains("cpus"), "{err}");
    }

    #[test]
    fn controller_and_nic_types_map_both_ways() {
        for kind in ["VirtualLsiLogicSASController", "ParaVirtualSCSIController"] {
            let k = ControllerKind::from_vsphere_type(kind).unwrap();
            assert_eq!(k.vsphere_type(), kind);
        }
        assert_eq!(
            ControllerKind::from_vsphere_type("VirtualUSBController"),
            None
        );
        assert_eq!(
            NicAdapter::from_vsphere_type("VirtualE1000e"),
            Some(NicAdapter::E1000e)
        );
    }

    #[test]
    fn restore_request_parses_design_shape_with_defaults() {
        let r: RestoreRequest = serde_json::from_str(
            r#"{"target":"vcenter","vm_name":"web01-restored","datacenter":"dc1",
                "folder":"vm/restored","resource_pool":null,"datastore":"ds2",
                "network_map":{"VM Network":"Restore Net"},"power_on":true}"#,
        )
        .unwrap();
        assert_eq!(r.target, RestoreTarget::Vcenter);
        assert!(r.power_on && !r.keep_macs);
        assert_eq!(r.disks, None);
        assert_eq!(r.map_network("VM Network"), "Restore Net");
        assert_eq!(r.map_network("Backup Net"), "Backup Net");
        let back: RestoreRequest =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn restore_request_refuses_bad_bodies() {
        for (body, field) in [
            (
                r#"{"target":"cloud","vm_name":"a","datacenter":"d","datastore":"s"}"#,
                "target",
            ),
            (
                r#"{"target":"vcenter","vm_name":"","datacenter":"d","datastore":"s"}"#,
                "vm_name",
            ),
            (
                r#"{"target":"existing_vm","vm_name":"a","datacenter":"d","datastore":"s","power_on":true}"#,
                "power_on",
            ),
            (
                r#"{"target":"vcenter","vm_name":"a","datacenter":"d","datastore":"s","disks":[2000,2000]}"#,
                "disks",
            ),
            (
                r#"{"target":"vcenter","vm_name":"a","datacenter":"d","datastore":"s","colour":1}"#,
                "colour",
            ),
        ] {
            let err = serde_json::from_str::<RestoreRequest>(body).unwrap_err();
            assert!(err.to_string().contains(field), "{body}: {err}");
        }
    }
}
