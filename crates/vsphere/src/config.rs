//! A VM's configuration as vCenter reports it (`VirtualMachineConfigInfo`), read into
//! [`sendense_types::VmConfig`] for a whole-VM restore (DESIGN.md "Restore").
//!
//! The backup reads the **snapshot's** `config` (the hardware as it was when the disks were
//! frozen), so the configuration and the disks of a restore point match. Parsing is bounded by
//! the [`crate::xml`] limits and never trusts a number: counts come from the device list, which
//! the XML bounds cap, and every number is parsed with a typed error.
//!
//! What is kept: guest OS id, hardware version, firmware and secure boot, CPUs and cores per
//! socket, memory, annotation, the storage controllers (kind and bus), the virtual disks
//! (controller, unit, capacity, thin or thick, file) and the NICs (adapter type, network name,
//! MAC and whether it was set by hand, connected at power on). Devices a restore does not
//! rebuild (USB, CD-ROM, floppy, video, PCI passthrough, ...) are skipped; so are NICs whose
//! backing names no network (opaque NSX networks), with a log line.

use std::collections::BTreeSet;

use sendense_types::{
    ControllerConfig, ControllerKind, DiskConfig, DiskKey, Firmware, NicAdapter, NicConfig,
    Provisioning, VM_CONFIG_VERSION, VmConfig,
};
use tracing::warn;

use crate::error::VsphereError;
use crate::xml::Element;

/// A NIC's backing: what it connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicBacking {
    /// A standard port group (`VirtualEthernetCardNetworkBackingInfo`), by name.
    Network(String),
    /// A distributed port group (`VirtualEthernetCardDistributedVirtualPortBackingInfo`), by
    /// its key (the port group's managed object id) and its switch's UUID.
    Portgroup {
        /// `port.portgroupKey`.
        key: String,
        /// `port.switchUuid`.
        switch_uuid: String,
    },
    /// Anything else (opaque networks): not rebuilt.
    Other(String),
}

/// One storage controller of a device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerDevice {
    /// Device key.
    pub key: i32,
    /// Kind.
    pub kind: ControllerKind,
    /// Bus number.
    pub bus_number: u32,
}

/// One virtual disk of a device list, with its placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskDevice {
    /// Device key.
    pub key: i32,
    /// Its controller's key.
    pub controller_key: i32,
    /// Its unit number.
    pub unit_number: u32,
    /// Capacity in bytes.
    pub capacity: u64,
    /// Thin or thick (from the backing's `thinProvisioned` and `eagerlyScrub`).
    pub provisioning: Provisioning,
    /// The backing's file, `[ds] folder/disk.vmdk`.
    pub file_name: String,
}

/// One NIC of a device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicDevice {
    /// Device key.
    pub key: i32,
    /// Adapter type.
    pub adapter: NicAdapter,
    /// What it connects to.
    pub backing: NicBacking,
    /// Its MAC address, lowercase, if it has one yet.
    pub mac_address: Option<String>,
    /// `addressType = manual`.
    pub mac_manual: bool,
    /// `connectable.startConnected`.
    pub start_connected: bool,
}

/// The devices of a `config.hardware.device` list a restore cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hardware {
    /// Storage controllers we know how to rebuild.
    pub controllers: Vec<ControllerDevice>,
    /// Virtual disks.
    pub disks: Vec<DiskDevice>,
    /// NICs of a known adapter type.
    pub nics: Vec<NicDevice>,
    /// Every `(controllerKey, unitNumber)` taken by any device (disks, CD-ROMs, ...).
    pub occupied: BTreeSet<(i32, u32)>,
}

fn number<T: std::str::FromStr>(el: &Element, field: &'static str) -> Result<T, VsphereError> {
    let text = el
        .child_text(field)
        .ok_or(VsphereError::UnexpectedResponse { what: field })?;
    text.parse().map_err(|_| VsphereError::InvalidNumber {
        field,
        value: text.chars().take(64).collect(),
    })
}

fn optional_number<T: std::str::FromStr>(
    el: &Element,
    field: &'static str,
) -> Result<Option<T>, VsphereError> {
    if el.child(field).is_none() {
        return Ok(None);
    }
    number(el, field).map(Some)
}

fn flag(el: &Element, field: &str) -> Option<bool> {
    el.child_text(field).map(|t| t == "true" || t == "1")
}

/// The capacity of a disk device: `capacityInBytes`, else `capacityInKB` × 1024.
pub(crate) fn capacity(d: &Element) -> Result<u64, VsphereError> {
    if d.child("capacityInBytes").is_some() {
        return number(d, "capacityInBytes");
    }
    let kb: u64 = number(d, "capacityInKB")?;
    kb.checked_mul(1024).ok_or(VsphereError::InvalidNumber {
        field: "capacityInKB",
        value: kb.to_string(),
    })
}

/// Reads the devices of a device list: the children of an `ArrayOfVirtualDevice` value, or the
/// `device` children of a `hardware` element.
///
/// # Errors
/// [`VsphereError::InvalidNumber`] and [`VsphereError::UnexpectedResponse`] for devices whose
/// keys or numbers do not parse.
pub fn hardware<'a>(devices: impl Iterator<Item = &'a Element>) -> Result<Hardware, VsphereError> {
    let mut hw = Hardware::default();
    for d in devices {
        let kind = d.xsi_type.as_deref().unwrap_or_default();
        let key: i32 = number(d, "key")?;
        let controller_key: Option<i32> = optional_number(d, "controllerKey")?;
        let unit: Option<u32> = optional_number(d, "unitNumber")?;
        if let (Some(c), Some(u)) = (controller_key, unit) {
            hw.occupied.insert((c, u));
        }
        if let Some(kind) = ControllerKind::from_vsphere_type(kind) {
            hw.controllers.push(ControllerDevice {
                key,
                kind,
                bus_number: number(d, "busNumber")?,
            });
        } else if kind == "VirtualDisk" {
            let backing = d.child("backing");
            let thin = backing.and_then(|b| flag(b, "thinProvisioned")) == Some(true);
            let eager = backing.and_then(|b| flag(b, "eagerlyScrub")) == Some(true);
            let provisioning = match (thin, eager) {
                (true, _) => Provisioning::Thin,
                (false, true) => Provisioning::ThickEager,
                (false, false) => Provisioning::ThickLazy,
            };
            hw.disks.push(DiskDevice {
                key,
                controller_key: controller_key.ok_or(VsphereError::UnexpectedResponse {
                    what: "disk without controllerKey",
                })?,
                unit_number: unit.ok_or(VsphereError::UnexpectedResponse {
                    what: "disk without unitNumber",
                })?,
                capacity: capacity(d)?,
                provisioning,
                file_name: backing
                    .and_then(|b| b.child_text("fileName"))
                    .unwrap_or_default()
                    .to_owned(),
            });
        } else if let Some(adapter) = NicAdapter::from_vsphere_type(kind) {
            hw.nics.push(nic(d, key, adapter));
        }
    }
    Ok(hw)
}

fn nic(d: &Element, key: i32, adapter: NicAdapter) -> NicDevice {
    let backing = match d.child("backing") {
        Some(b) if b.xsi_type.as_deref() == Some("VirtualEthernetCardNetworkBackingInfo") => {
            NicBacking::Network(b.child_text("deviceName").unwrap_or_default().to_owned())
        }
        Some(b)
            if b.xsi_type.as_deref()
                == Some("VirtualEthernetCardDistributedVirtualPortBackingInfo") =>
        {
            let port = b.child("port");
            NicBacking::Portgroup {
                key: port
                    .and_then(|p| p.child_text("portgroupKey"))
                    .unwrap_or_default()
                    .to_owned(),
                switch_uuid: port
                    .and_then(|p| p.child_text("switchUuid"))
                    .unwrap_or_default()
                    .to_owned(),
            }
        }
        Some(b) => NicBacking::Other(b.xsi_type.clone().unwrap_or_default()),
        None => NicBacking::Other(String::new()),
    };
    let mac = d
        .child_text("macAddress")
        .filter(|m| !m.is_empty())
        .map(str::to_ascii_lowercase);
    NicDevice {
        key,
        adapter,
        backing,
        mac_address: mac,
        mac_manual: d.child_text("addressType") == Some("manual"),
        start_connected: d
            .child("connectable")
            .and_then(|c| flag(c, "startConnected"))
            .unwrap_or(true),
    }
}

/// Builds a [`VmConfig`] from a `VirtualMachineConfigInfo` element (the `config` property of a
/// VM or snapshot). `portgroup_name` names a distributed port group from its key (a property
/// read the caller does; `None` when unknown: that NIC is skipped with a log line).
///
/// # Errors
/// [`VsphereError::Config`] when the result is not a valid configuration (e.g. no CPU count);
/// parsing errors.
pub fn vm_config(
    config: &Element,
    portgroup_name: &dyn Fn(&str) -> Option<String>,
) -> Result<VmConfig, VsphereError> {
    let hw_el = config.child("hardware").ok_or(VsphereError::Config {
        reason: "the configuration has no hardware".to_owned(),
    })?;
    let hw = hardware(hw_el.children_named("device"))?;
    let num_cpus: u32 = number(hw_el, "numCPU")?;
    let cores = optional_number::<u32>(hw_el, "numCoresPerSocket")?
        .filter(|&c| c > 0 && num_cpus.is_multiple_of(c))
        .unwrap_or(1);
    let firmware = match config.child_text("firmware") {
        Some("efi") => Firmware::Efi,
        _ => Firmware::Bios,
    };
    let secure_boot = firmware == Firmware::Efi
        && config
            .child("bootOptions")
            .and_then(|b| flag(b, "efiSecureBootEnabled"))
            == Some(true);
    let controllers: Vec<ControllerConfig> = hw
        .controllers
        .iter()
        .map(|c| ControllerConfig {
            key: c.key,
            kind: c.kind,
            bus_number: c.bus_number,
        })
        .collect();
    let mut disks = Vec::with_capacity(hw.disks.len());
    for d in &hw.disks {
        let key = u32::try_from(d.key).map_err(|_| VsphereError::InvalidNumber {
            field: "key",
            value: d.key.to_string(),
        })?;
        disks.push(DiskConfig {
            key: DiskKey(key),
            capacity_bytes: d.capacity,
            controller_key: d.controller_key,
            unit_number: d.unit_number,
            provisioning: d.provisioning,
            file_name: (!d.file_name.is_empty()).then(|| d.file_name.clone()),
        });
    }
    disks.sort_by_key(|d| d.key);
    let mut nics = Vec::with_capacity(hw.nics.len());
    for n in &hw.nics {
        let network = match &n.backing {
            NicBacking::Network(name) if !name.is_empty() => name.clone(),
            NicBacking::Portgroup { key, .. } => {
                if let Some(name) = portgroup_name(key) {
                    name
                } else {
                    warn!(nic = n.key, portgroup = %key, "NIC on a distributed port group whose name is unknown; not captured");
                    continue;
                }
            }
            other => {
                warn!(nic = n.key, backing = ?other, "NIC without a named network; not captured");
                continue;
            }
        };
        nics.push(NicConfig {
            key: n.key,
            adapter_type: n.adapter,
            network,
            mac_address: n
                .mac_address
                .clone()
                .unwrap_or_else(|| "00:00:00:00:00:00".to_owned()),
            mac_manual: n.mac_manual,
            start_connected: n.start_connected,
        });
    }
    let config = VmConfig {
        version: VM_CONFIG_VERSION,
        name: config.child_text("name").unwrap_or_default().to_owned(),
        guest_id: config
            .child_text("guestId")
            .filter(|g| !g.is_empty())
            .unwrap_or("otherGuest64")
            .to_owned(),
        hardware_version: config
            .child_text("version")
            .filter(|v| !v.is_empty())
            .map(str::to_owned),
        firmware,
        secure_boot,
        num_cpus,
        cores_per_socket: cores,
        memory_mb: number(hw_el, "memoryMB")?,
        annotation: config
            .child_text("annotation")
            .unwrap_or_default()
            .to_owned(),
        controllers,
        disks,
        nics,
    };
    config.validate().map_err(|e| VsphereError::Config {
        reason: e.to_string(),
    })?;
    Ok(config)
}

/// The distributed port group keys the NICs of a `VirtualMachineConfigInfo` connect to.
#[must_use]
pub fn portgroup_keys(config: &Element) -> BTreeSet<String> {
    let Some(hw) = config.child("hardware") else {
        return BTreeSet::new();
    };
    hardware(hw.children_named("device"))
        .map(|hw| {
            hw.nics
                .into_iter()
                .filter_map(|n| match n.backing {
                    NicBacking::Portgroup { key, .. } => Some(key),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xml;

    const CONFIG: &str = r#"<val xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="VirtualMachineConfigInfo">
<name>web01</name><guestId>ubuntu64Guest</guestId><version>vmx-19</version><annotation>web &amp; db</annotation>
<hardware><numCPU>4</numCPU><numCoresPerSocket>2</numCoresPerSocket><memoryMB>8192</memoryMB>
<device xsi:type="VirtualIDEController"><key>200</key><busNumber>0</busNumber></device>
<device xsi:type="ParaVirtualSCSIController"><key>1000</key><busNumber>0</busNumber></device>
<device xsi:type="VirtualAHCIController"><key>15000</key><busNumber>0</busNumber></device>
<device xsi:type="VirtualCdrom"><key>16000</key><controllerKey>15000</controllerKey><unitNumber>1</unitNumber></device>
<device xsi:type="VirtualUSBController"><key>7000</key><busNumber>0</busNumber></device>
<device xsi:type="VirtualDisk"><key>2000</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web01/web01.vmdk</fileName><thinProvisioned>true</thinProvisioned></backing><controllerKey>1000</controllerKey><unitNumber>0</unitNumber><capacityInKB>1024</capacityInKB><capacityInBytes>1048576</capacityInBytes></device>
<device xsi:type="VirtualDisk"><key>2001</key><backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds1] web01/web01_1.vmdk</fileName><thinProvisioned>false</thinProvisioned><eagerlyScrub>true</eagerlyScrub></backing><controllerKey>15000</controllerKey><unitNumber>0</unitNumber><capacityInKB>2048</capacityInKB></device>
<device xsi:type="VirtualVmxnet3"><key>4000</key><backing xsi:type="VirtualEthernetCardNetworkBackingInfo"><deviceName>VM Network</deviceName></backing><connectable><startConnected>true</startConnected></connectable><addressType>assigned</addressType><macAddress>00:50:56:AA:BB:01</macAddress></device>
<device xsi:type="VirtualE1000e"><key>4001</key><backing xsi:type="VirtualEthernetCardDistributedVirtualPortBackingInfo"><port><switchUuid>50 1a</switchUuid><portgroupKey>dvportgroup-7</portgroupKey></port></backing><connectable><startConnected>false</startConnected></connectable><addressType>manual</addressType><macAddress>00:50:56:00:00:02</macAddress></device>
</hardware>
<bootOptions><efiSecureBootEnabled>true</efiSecureBootEnabled></bootOptions><firmware>efi</firmware></val>"#;

    #[test]
    fn vm_config_reads_hardware_controllers_disks_and_nics() {
        let el = xml::parse(CONFIG.as_bytes()).unwrap();
        let names = |key: &str| (key == "dvportgroup-7").then(|| "Backup DPG".to_owned());

        let c = vm_config(&el, &names).unwrap();

        assert_eq!(
            (
                c.guest_id.as_str(),
                c.hardware_version.as_deref(),
                c.firmware,
                c.secure_boot,
                c.num_cpus,
                c.cores_per_socket,
                c.memory_mb,
                c.annotation.as_str()
            ),
            (
                "ubuntu64Guest",
                Some("vmx-19"),
                Firmware::Efi,
                true,
                4,
                2,
                8192,
                "web & db"
            )
        );
        let kinds: Vec<_> = c.controllers.iter().map(|c| (c.key, c.kind)).collect();
        assert_eq!(
            kinds,
            [
                (200, ControllerKind::Ide),
                (1000, ControllerKind::Pvscsi),
                (15000, ControllerKind::Sata)
            ]
        );
        let disks: Vec<_> = c
            .disks
            .iter()
            .map(|d| {
                (
                    d.key.get(),
                    d.controller_key,
                    d.unit_number,
                    d.capacity_bytes,
                    d.provisioning,
                )
            })
            .collect();
        assert_eq!(
            disks,
            [
                (2000, 1000, 0, 1 << 20, Provisioning::Thin),
                (2001, 15000, 0, 2 << 20, Provisioning::ThickEager)
            ]
        );
        let nics: Vec<_> = c
            .nics
            .iter()
            .map(|n| {
                (
                    n.adapter_type,
                    n.network.as_str(),
                    n.mac_address.as_str(),
                    n.mac_manual,
                    n.start_connected,
                )
            })
            .collect();
        assert_eq!(
            nics,
            [
                (
                    NicAdapter::Vmxnet3,
                    "VM Network",
                    "00:50:56:aa:bb:01",
                    false,
                    true
                ),
                (
                    NicAdapter::E1000e,
                    "Backup DPG",
                    "00:50:56:00:00:02",
                    true,
                    false
                )
            ]
        );
    }

    #[test]
    fn vm_config_without_cpu_count_is_an_error() {
        let el = xml::parse(CONFIG.replace("<numCPU>4</numCPU>", "").as_bytes()).unwrap();
        assert!(matches!(
            vm_config(&el, &|_| None),
            Err(VsphereError::UnexpectedResponse { what: "numCPU" })
        ));
    }

    #[test]
    fn hardware_records_every_taken_slot() {
        let el = xml::parse(CONFIG.as_bytes()).unwrap();
        let hw = hardware(el.child("hardware").unwrap().children_named("device")).unwrap();
        assert_eq!(
            hw.occupied.into_iter().collect::<Vec<_>>(),
            [(1000, 0), (15000, 0), (15000, 1)]
        );
    }
}
