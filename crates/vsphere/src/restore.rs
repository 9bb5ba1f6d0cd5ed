//! Restores into vCenter (DESIGN.md "Restore"): a whole VM rebuilt from its captured
//! [`VmConfig`], or a point's disks added to an existing VM.
//!
//! [`restore`] runs in this order, so that a refusal creates nothing:
//! 1. check the inputs (the configuration's version, each disk's source size equals its
//!    captured capacity);
//! 2. find the datacenter, datastore, folder, resource pool or host by name or inventory path
//!    (a clear [`VsphereError::NotFound`] naming what is missing);
//! 3. **check every network** of the configuration maps ([`RestoreRequest::map_network`]) to a
//!    network of the datacenter ([`VsphereError::NetworkNotMapped`] names it and the
//!    `network_map` fix);
//! 4. create: `CreateVM_Task` with the controllers, disks (thin, thick lazy or thick eager as
//!    captured, created by vCenter in the VM's folder on the datastore), NICs (MACs generated
//!    by vCenter unless [`RestoreRequest::keep_macs`]), firmware, secure boot, CPUs, cores per
//!    socket, memory, guest id, hardware version and annotation; or, for an existing VM,
//!    `ReconfigVM_Task` adding new disks on free controller slots (never over an existing
//!    disk; a new controller of the captured kind when none is free);
//! 5. upload each disk's data into its flat extent ([`crate::upload`], all disks at once);
//! 6. power the new VM on when asked.
//!
//! **Cleanup**: if any step after 4 fails or the restore is cancelled, what step 4 made is
//! removed before the error is returned: the new VM with `Destroy_Task` (its files go with it),
//! or the added disks with `ReconfigVM_Task` `remove` + `fileOperation destroy` (their files)
//! and any controller added for them. Step 4 itself is not interrupted half-way (a VM created
//! by a dropped task would be left): a cancel waits for it, then cleans up.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::pin::pin;
use std::sync::Arc;

use sendense_io::join::try_join_all;
use sendense_transfer::DiskSource;
use sendense_transfer::progress::Progress;
use sendense_types::{
    ControllerKind, DiskConfig, DiskKey, Firmware, Provisioning, RestoreRequest, RestoreTarget,
    VM_CONFIG_VERSION, VmConfig,
};
use tracing::{error, info, warn};

use crate::config::{self, Hardware};
use crate::datastore::{DatastoreFile, DatastorePath};
use crate::error::VsphereError;
use crate::session::Session;
use crate::soap::{self, MoRef};
use crate::upload::UploadOptions;
use crate::xml::escape;

/// How many times a cleanup request is sent when the HTTP exchange fails.
const CLEANUP_ATTEMPTS: u32 = 3;
/// The pause before the second cleanup attempt (doubled before the third).
const CLEANUP_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);

/// One disk to restore: its key in the configuration and where its data comes from.
#[derive(Debug, Clone)]
pub struct RestoreDisk {
    /// The disk's key in the captured configuration.
    pub key: DiskKey,
    /// Its data (the hub's read-only export of the point, or any other source of exactly the
    /// disk's capacity).
    pub source: Arc<dyn DiskSource>,
}

/// A disk as restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredDisk {
    /// The disk's key in the captured configuration.
    pub key: DiskKey,
    /// Its device key in the VM it now belongs to.
    pub device_key: i32,
    /// Its descriptor, `[ds] folder/disk.vmdk`.
    pub file: String,
    /// Bytes uploaded.
    pub bytes: u64,
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredVm {
    /// The VM (new, or the existing one the disks went into).
    pub vm: MoRef,
    /// Its name.
    pub name: String,
    /// The restored disks, by key.
    pub disks: Vec<RestoredDisk>,
    /// Whether it was powered on.
    pub powered_on: bool,
}

/// Where a restore places things, found before anything is created.
#[derive(Debug, Clone)]
struct Placement {
    dc_path: String,
    datastore: String,
    folder: Option<MoRef>,
    pool: Option<MoRef>,
    host: Option<MoRef>,
    /// Network name -> its backing XML (inside a NIC).
    networks: BTreeMap<String, NetworkRef>,
}

#[derive(Debug, Clone)]
enum NetworkRef {
    Standard(MoRef),
    /// A distributed port group and its switch's UUID (read only for port groups a restore
    /// uses).
    Portgroup(MoRef, String),
}

/// Restores `disks` as `request` says (see the module docs). `progress` gets each disk's bytes
/// (by its key); `cancel` stops the restore, cleaning up what it made.
///
/// # Errors
/// [`VsphereError::Config`], [`VsphereError::RestoreDisk`] for inputs that do not fit;
/// [`VsphereError::NotFound`], [`VsphereError::NetworkNotMapped`],
/// [`VsphereError::VmPoweredOn`] before anything is created; task, HTTP and upload errors
/// after cleaning up; [`VsphereError::Cancelled`].
pub async fn restore(
    session: &Session,
    config: &VmConfig,
    request: &RestoreRequest,
    disks: Vec<RestoreDisk>,
    options: &UploadOptions,
    progress: Arc<dyn Progress>,
    cancel: impl Future<Output = ()> + Send,
) -> Result<RestoredVm, VsphereError> {
    check_inputs(config, &disks)?;
    let mut cancel = pin!(cancel);
    let place = tokio::select! {
        r = Placement::resolve(session, config, request) => r?,
        () = &mut cancel => return Err(VsphereError::Cancelled),
    };
    let job = Job {
        session,
        config,
        request,
        place,
        options: *options,
        progress,
    };
    match request.target {
        RestoreTarget::Vcenter => job.new_vm(disks, cancel).await,
        RestoreTarget::ExistingVm => job.existing_vm(disks, cancel).await,
    }
}

fn check_inputs(config: &VmConfig, disks: &[RestoreDisk]) -> Result<(), VsphereError> {
    if config.version == 0 || config.version > VM_CONFIG_VERSION {
        return Err(VsphereError::Config {
            reason: format!(
                "version {} is not one this agent knows ({VM_CONFIG_VERSION})",
                config.version
            ),
        });
    }
    config.validate().map_err(|e| VsphereError::Config {
        reason: e.to_string(),
    })?;
    let mut seen = BTreeSet::new();
    for d in disks {
        let Some(c) = config.disk(d.key) else {
            return Err(VsphereError::RestoreDisk {
                key: d.key.get(),
                reason: "the captured configuration has no such disk".to_owned(),
            });
        };
        if !seen.insert(d.key) {
            return Err(VsphereError::RestoreDisk {
                key: d.key.get(),
                reason: "named twice".to_owned(),
            });
        }
        if d.source.size() != c.capacity_bytes {
            return Err(VsphereError::RestoreDisk {
                key: d.key.get(),
                reason: format!(
                    "its data holds {} bytes, the disk {}",
                    d.source.size(),
                    c.capacity_bytes
                ),
            });
        }
    }
    if disks.is_empty() {
        return Err(VsphereError::Config {
            reason: "no disk to restore".to_owned(),
        });
    }
    Ok(())
}

fn prop<'a>(
    props: &'a [(String, crate::xml::Element)],
    name: &str,
) -> Option<&'a crate::xml::Element> {
    props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

impl Placement {
    async fn resolve(
        session: &Session,
        config: &VmConfig,
        request: &RestoreRequest,
    ) -> Result<Self, VsphereError> {
        let dc_path = request.datacenter.trim_matches('/').to_owned();
        let dc = session
            .find_by_path(&dc_path)
            .await?
            .filter(|m| m.kind == "Datacenter")
            .ok_or_else(|| VsphereError::NotFound {
                what: "datacenter",
                name: request.datacenter.clone(),
            })?;
        let datastores = session.objects_in(&dc, &["Datastore"], &["name"]).await?;
        if !datastores
            .iter()
            .any(|o| o.prop("name").is_some_and(|v| v.text == request.datastore))
        {
            return Err(VsphereError::NotFound {
                what: "datastore",
                name: request.datastore.clone(),
            });
        }
        let mut place = Self {
            dc_path,
            datastore: request.datastore.clone(),
            folder: None,
            pool: None,
            host: None,
            networks: BTreeMap::new(),
        };
        if request.target == RestoreTarget::ExistingVm {
            return Ok(place);
        }
        place.folder = Some(place.folder_of(session, &dc, request).await?);
        if let Some(host) = &request.host {
            let hosts = session
                .objects_in(&dc, &["HostSystem"], &["name", "parent"])
                .await?;
            let found = hosts
                .into_iter()
                .find(|o| o.prop("name").is_some_and(|v| v.text == *host))
                .ok_or_else(|| VsphereError::NotFound {
                    what: "host",
                    name: host.clone(),
                })?;
            if request.resource_pool.is_none()
                && let Some(parent) = found.prop("parent")
            {
                let parent = soap::moref(parent)?;
                let props = session.properties(&parent, &["resourcePool"]).await?;
                place.pool = prop(&props, "resourcePool").map(soap::moref).transpose()?;
            }
            place.host = Some(found.obj);
        }
        if let Some(pool) = &request.resource_pool {
            let path = format!("{}/{}", place.dc_path, pool.trim_matches('/'));
            place.pool = Some(
                session
                    .find_by_path(&path)
                    .await?
                    .filter(|m| m.kind == "ResourcePool" || m.kind == "VirtualApp")
                    .ok_or_else(|| VsphereError::NotFound {
                        what: "resource pool",
                        name: pool.clone(),
                    })?,
            );
        }
        if place.pool.is_none() {
            let computes = session
                .objects_in(
                    &dc,
                    &["ComputeResource", "ClusterComputeResource"],
                    &["resourcePool"],
                )
                .await?;
            place.pool = computes
                .iter()
                .find_map(|o| o.prop("resourcePool").map(soap::moref))
                .transpose()?;
            if place.pool.is_none() {
                return Err(VsphereError::NotFound {
                    what: "resource pool",
                    name: format!("(any, in datacenter {})", request.datacenter),
                });
            }
        }
        let networks = session
            .objects_in(&dc, &["Network", "DistributedVirtualPortgroup"], &["name"])
            .await?;
        for o in networks {
            if let Some(name) = o.prop("name") {
                let r = if o.obj.kind == "DistributedVirtualPortgroup" {
                    NetworkRef::Portgroup(o.obj.clone(), String::new())
                } else {
                    NetworkRef::Standard(o.obj.clone())
                };
                place.networks.insert(name.text.clone(), r);
            }
        }
        for network in config.networks() {
            let target = request.map_network(network);
            match place.networks.get_mut(target) {
                None => {
                    return Err(VsphereError::NetworkNotMapped {
                        network: network.to_owned(),
                        target: target.to_owned(),
                        datacenter: request.datacenter.clone(),
                    });
                }
                Some(NetworkRef::Portgroup(pg, uuid)) if uuid.is_empty() => {
                    *uuid = switch_uuid(session, pg).await?;
                }
                Some(_) => {}
            }
        }
        Ok(place)
    }

    async fn folder_of(
        &self,
        session: &Session,
        dc: &MoRef,
        request: &RestoreRequest,
    ) -> Result<MoRef, VsphereError> {
        if let Some(folder) = &request.folder {
            let path = format!("{}/{}", self.dc_path, folder.trim_matches('/'));
            return session
                .find_by_path(&path)
                .await?
                .filter(|m| m.kind == "Folder")
                .ok_or_else(|| VsphereError::NotFound {
                    what: "folder",
                    name: folder.clone(),
                });
        }
        let props = session.properties(dc, &["vmFolder"]).await?;
        prop(&props, "vmFolder")
            .map(soap::moref)
            .transpose()?
            .ok_or(VsphereError::UnexpectedResponse {
                what: "datacenter without vmFolder",
            })
    }
}

/// The UUID of a distributed port group's switch (a NIC backing names both).
async fn switch_uuid(session: &Session, pg: &MoRef) -> Result<String, VsphereError> {
    let props = session
        .properties(pg, &["config.distributedVirtualSwitch"])
        .await?;
    let switch = prop(&props, "config.distributedVirtualSwitch")
        .map(soap::moref)
        .transpose()?
        .ok_or(VsphereError::UnexpectedResponse {
            what: "distributed port group without a switch",
        })?;
    let props = session.properties(&switch, &["uuid"]).await?;
    prop(&props, "uuid")
        .map(|v| v.text.clone())
        .filter(|u| !u.is_empty())
        .ok_or(VsphereError::UnexpectedResponse {
            what: "distributed switch without a uuid",
        })
}

struct Job<'a> {
    session: &'a Session,
    config: &'a VmConfig,
    request: &'a RestoreRequest,
    place: Placement,
    options: UploadOptions,
    progress: Arc<dyn Progress>,
}

/// Runs `create` to its end even when `cancel` resolves meanwhile; whether it did.
async fn uninterrupted<T>(
    create: impl Future<Output = T>,
    cancel: &mut std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
) -> (T, bool) {
    let mut create = pin!(create);
    let mut cancelled = false;
    loop {
        tokio::select! {
            r = &mut create => return (r, cancelled),
            () = cancel.as_mut(), if !cancelled => {
                warn!("cancelled: waiting for vCenter to finish creating, to remove what it made");
                cancelled = true;
            }
        }
    }
}

impl Job<'_> {
    async fn new_vm(
        &self,
        disks: Vec<RestoreDisk>,
        mut cancel: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<RestoredVm, VsphereError> {
        let (Some(folder), Some(pool)) = (&self.place.folder, &self.place.pool) else {
            return Err(VsphereError::UnexpectedResponse {
                what: "placement without folder or pool",
            });
        };
        let wanted: BTreeSet<DiskKey> = disks.iter().map(|d| d.key).collect();
        let body = soap::envelope(
            "CreateVM_Task",
            &format!(
                "{}{}{}{}",
                folder.to_xml("_this"),
                self.create_spec(&wanted)?,
                pool.to_xml("pool"),
                self.place
                    .host
                    .as_ref()
                    .map_or(String::new(), |h| h.to_xml("host"))
            ),
        );
        let (created, cancelled) =
            uninterrupted(self.session.run_task("CreateVM_Task", &body), &mut cancel).await;
        let vm = created?.filter(|m| m.kind == "VirtualMachine").ok_or(
            VsphereError::UnexpectedResponse {
                what: "CreateVM_Task returned no VM",
            },
        )?;
        info!(vm = %vm, name = %self.request.vm_name, "VM created");
        let work = async {
            if cancelled {
                return Err(VsphereError::Cancelled);
            }
            let hw = self.devices(&vm).await?;
            let targets = self.new_vm_targets(&hw, &disks)?;
            let restored = self.upload_all(targets).await?;
            let mut powered_on = false;
            if self.request.power_on {
                self.session
                    .run_task(
                        "PowerOnVM_Task",
                        &soap::envelope("PowerOnVM_Task", &vm.to_xml("_this")),
                    )
                    .await?;
                powered_on = true;
                info!(vm = %vm, "VM powered on");
            }
            Ok(RestoredVm {
                vm: vm.clone(),
                name: self.request.vm_name.clone(),
                disks: restored,
                powered_on,
            })
        };
        let result = tokio::select! {
            r = work => r,
            () = cancel.as_mut() => Err(VsphereError::Cancelled),
        };
        if let Err(e) = &result {
            warn!(vm = %vm, error = %e, "restore failed: destroying the VM it created");
            let body = soap::envelope("Destroy_Task", &vm.to_xml("_this"));
            if let Err(ce) = self.cleanup_task("Destroy_Task", &body).await {
                error!(vm = %vm, name = %self.request.vm_name, error = %ce, "destroying the partly restored VM failed: remove it by hand");
            }
        }
        result
    }

    /// The `config` element of `CreateVM_Task`: the captured hardware with the disks `wanted`.
    fn create_spec(&self, wanted: &BTreeSet<DiskKey>) -> Result<String, VsphereError> {
        let c = self.config;
        let mut x = String::from("<config>");
        let _ = write!(x, "<name>{}</name>", escape(&self.request.vm_name));
        if let Some(v) = &c.hardware_version {
            let _ = write!(x, "<version>{}</version>", escape(v));
        }
        let _ = write!(
            x,
            "<guestId>{}</guestId><annotation>{}</annotation><files><vmPathName>[{}]</vmPathName></files>\
<numCPUs>{}</numCPUs><numCoresPerSocket>{}</numCoresPerSocket><memoryMB>{}</memoryMB>",
            escape(&c.guest_id),
            escape(&c.annotation),
            escape(&self.place.datastore),
            c.num_cpus,
            c.cores_per_socket,
            c.memory_mb
        );
        // Controllers the disks need (IDE ones exist in every new VM: keys 200 + bus).
        let used: BTreeSet<i32> = c
            .disks
            .iter()
            .filter(|d| wanted.contains(&d.key))
            .map(|d| d.controller_key)
            .collect();
        let mut keys: BTreeMap<i32, i32> = BTreeMap::new();
        let mut temp = -100;
        for ctl in c.controllers.iter().filter(|k| used.contains(&k.key)) {
            if ctl.kind == ControllerKind::Ide {
                keys.insert(ctl.key, 200 + i32::try_from(ctl.bus_number).unwrap_or(0));
                continue;
            }
            keys.insert(ctl.key, temp);
            x.push_str(&controller_add(ctl.kind, temp, ctl.bus_number));
            temp -= 1;
        }
        let mut dtemp = -1000;
        for d in c.disks.iter().filter(|d| wanted.contains(&d.key)) {
            let controller =
                keys.get(&d.controller_key)
                    .copied()
                    .ok_or_else(|| VsphereError::RestoreDisk {
                        key: d.key.get(),
                        reason: "its controller is not in the configuration".to_owned(),
                    })?;
            x.push_str(&disk_add(
                dtemp,
                controller,
                d.unit_number,
                d.capacity_bytes,
                d.provisioning,
                &self.place.datastore,
            ));
            dtemp -= 1;
        }
        let mut ntemp = -2000;
        for n in &c.nics {
            let target = self.request.map_network(&n.network);
            let backing = match self.place.networks.get(target) {
                Some(NetworkRef::Standard(m)) => format!(
                    "<backing xsi:type=\"VirtualEthernetCardNetworkBackingInfo\"><deviceName>{}</deviceName>{}</backing>",
                    escape(target),
                    m.to_xml("network")
                ),
                Some(NetworkRef::Portgroup(m, switch_uuid)) => {
                    format!(
                        "<backing xsi:type=\"VirtualEthernetCardDistributedVirtualPortBackingInfo\"><port><switchUuid>{}</switchUuid><portgroupKey>{}</portgroupKey></port></backing>",
                        escape(switch_uuid),
                        escape(&m.value)
                    )
                }
                None => {
                    return Err(VsphereError::NetworkNotMapped {
                        network: n.network.clone(),
                        target: target.to_owned(),
                        datacenter: self.request.datacenter.clone(),
                    });
                }
            };
            let mac = if self.request.keep_macs {
                format!(
                    "<addressType>manual</addressType><macAddress>{}</macAddress>",
                    n.mac_address
                )
            } else {
                "<addressType>generated</addressType>".to_owned()
            };
            let _ = write!(
                x,
                "<deviceChange><operation>add</operation><device xsi:type=\"{}\"><key>{ntemp}</key>{backing}\
<connectable><startConnected>{}</startConnected><allowGuestControl>true</allowGuestControl><connected>false</connected></connectable>{mac}</device></deviceChange>",
                n.adapter_type.vsphere_type(),
                n.start_connected
            );
            ntemp -= 1;
        }
        if c.firmware == Firmware::Efi {
            let _ = write!(
                x,
                "<bootOptions><efiSecureBootEnabled>{}</efiSecureBootEnabled></bootOptions>",
                c.secure_boot
            );
        }
        let _ = write!(x, "<firmware>{}</firmware></config>", c.firmware.as_str());
        Ok(x)
    }

    async fn devices(&self, vm: &MoRef) -> Result<Hardware, VsphereError> {
        let props = self
            .session
            .properties(vm, &["config.hardware.device"])
            .await?;
        let val =
            prop(&props, "config.hardware.device").ok_or(VsphereError::UnexpectedResponse {
                what: "VM without devices",
            })?;
        config::hardware(val.children.iter())
    }

    /// Each disk to restore and the datastore file vCenter made for it in the new VM.
    fn new_vm_targets(
        &self,
        hw: &Hardware,
        disks: &[RestoreDisk],
    ) -> Result<Vec<(RestoreDisk, i32, String)>, VsphereError> {
        let mut out = Vec::with_capacity(disks.len());
        for d in disks {
            let cfg = self.disk_config(d.key)?;
            let captured = self.config.controller(cfg.controller_key).ok_or_else(|| {
                VsphereError::RestoreDisk {
                    key: d.key.get(),
                    reason: "its controller is not in the configuration".to_owned(),
                }
            })?;
            let controller = hw
                .controllers
                .iter()
                .find(|c| c.kind == captured.kind && c.bus_number == captured.bus_number)
                .ok_or(VsphereError::UnexpectedResponse {
                    what: "the new VM lacks a controller it was created with",
                })?;
            let device = hw
                .disks
                .iter()
                .find(|x| x.controller_key == controller.key && x.unit_number == cfg.unit_number)
                .ok_or(VsphereError::UnexpectedResponse {
                    what: "the new VM lacks a disk it was created with",
                })?;
            out.push((d.clone(), device.key, device.file_name.clone()));
        }
        Ok(out)
    }

    fn disk_config(&self, key: DiskKey) -> Result<&DiskConfig, VsphereError> {
        self.config
            .disk(key)
            .ok_or_else(|| VsphereError::RestoreDisk {
                key: key.get(),
                reason: "the captured configuration has no such disk".to_owned(),
            })
    }

    /// Uploads every disk at once into its flat extent.
    async fn upload_all(
        &self,
        targets: Vec<(RestoreDisk, i32, String)>,
    ) -> Result<Vec<RestoredDisk>, VsphereError> {
        let mut uploads: Vec<sendense_transfer::BoxFuture<'_, Result<RestoredDisk, VsphereError>>> =
            Vec::with_capacity(targets.len());
        for (disk, device_key, file) in targets {
            let flat = DatastorePath::parse(&file)?.flat_extent()?;
            let target = DatastoreFile::new(self.session.clone(), &self.place.dc_path, &flat);
            let options = self.options;
            let progress = Arc::clone(&self.progress);
            uploads.push(Box::pin(async move {
                let bytes = target
                    .upload(&disk.source, disk.key.get(), &options, &progress)
                    .await?;
                Ok::<_, VsphereError>(RestoredDisk {
                    key: disk.key,
                    device_key,
                    file,
                    bytes,
                })
            }));
        }
        let mut done = try_join_all(uploads).await?;
        done.sort_by_key(|d| d.key);
        Ok(done)
    }

    async fn existing_vm(
        &self,
        disks: Vec<RestoreDisk>,
        mut cancel: std::pin::Pin<&mut (impl Future<Output = ()> + Send)>,
    ) -> Result<RestoredVm, VsphereError> {
        let vm = self.session.find_vm(&self.request.vm_name).await?;
        let props = self
            .session
            .properties(
                &vm,
                &["name", "runtime.powerState", "config.hardware.device"],
            )
            .await?;
        let name =
            prop(&props, "name").map_or_else(|| self.request.vm_name.clone(), |v| v.text.clone());
        if prop(&props, "runtime.powerState").is_some_and(|v| v.text != "poweredOff") {
            return Err(VsphereError::VmPoweredOn { vm: name });
        }
        let before = config::hardware(
            prop(&props, "config.hardware.device")
                .map(|v| v.children.iter())
                .into_iter()
                .flatten(),
        )?;
        let plan = plan_slots(self.config, &before, &disks)?;
        let mut spec = String::from("<spec>");
        for (kind, temp, bus) in &plan.new_controllers {
            spec.push_str(&controller_add(*kind, *temp, *bus));
        }
        for (i, (d, controller, unit)) in plan.disks.iter().enumerate() {
            let cfg = self.disk_config(d.key)?;
            let temp = -1000 - i32::try_from(i).unwrap_or(0);
            spec.push_str(&disk_add(
                temp,
                *controller,
                *unit,
                cfg.capacity_bytes,
                cfg.provisioning,
                &self.place.datastore,
            ));
        }
        spec.push_str("</spec>");
        let body = soap::envelope("ReconfigVM_Task", &format!("{}{spec}", vm.to_xml("_this")));
        let (added, cancelled) =
            uninterrupted(self.session.run_task("ReconfigVM_Task", &body), &mut cancel).await;
        added?;
        info!(vm = %vm, disks = plan.disks.len(), controllers = plan.new_controllers.len(), "disks added");
        let after = self.devices(&vm).await;
        let after = match after {
            Ok(hw) => hw,
            Err(e) => {
                self.remove_added(&vm, &before).await;
                return Err(e);
            }
        };
        let old_disks: BTreeSet<i32> = before.disks.iter().map(|d| d.key).collect();
        let work = async {
            if cancelled {
                return Err(VsphereError::Cancelled);
            }
            let mut targets = Vec::with_capacity(plan.disks.len());
            for (d, controller, unit) in &plan.disks {
                let controller = if *controller < 0 {
                    let (kind, _, bus) = plan
                        .new_controllers
                        .iter()
                        .find(|(_, t, _)| t == controller)
                        .ok_or(VsphereError::UnexpectedResponse {
                            what: "a planned controller is missing",
                        })?;
                    after
                        .controllers
                        .iter()
                        .find(|c| c.kind == *kind && c.bus_number == *bus)
                        .map(|c| c.key)
                        .ok_or(VsphereError::UnexpectedResponse {
                            what: "the VM lacks the controller just added",
                        })?
                } else {
                    *controller
                };
                let device = after
                    .disks
                    .iter()
                    .find(|x| {
                        x.controller_key == controller
                            && x.unit_number == *unit
                            && !old_disks.contains(&x.key)
                    })
                    .ok_or(VsphereError::UnexpectedResponse {
                        what: "the VM lacks the disk just added",
                    })?;
                targets.push((d.clone(), device.key, device.file_name.clone()));
            }
            self.upload_all(targets).await
        };
        let result = tokio::select! {
            r = work => r,
            () = cancel.as_mut() => Err(VsphereError::Cancelled),
        };
        match result {
            Ok(restored) => Ok(RestoredVm {
                vm,
                name,
                disks: restored,
                powered_on: false,
            }),
            Err(e) => {
                warn!(vm = %vm, error = %e, "restore failed: removing the disks it added");
                self.remove_added(&vm, &before).await;
                Err(e)
            }
        }
    }

    /// Removes the disks (and their files) and controllers the VM did not have `before`.
    async fn remove_added(&self, vm: &MoRef, before: &Hardware) {
        let old_disks: BTreeSet<i32> = before.disks.iter().map(|d| d.key).collect();
        let old_controllers: BTreeSet<i32> = before.controllers.iter().map(|c| c.key).collect();
        let now = match self.devices(vm).await {
            Ok(hw) => hw,
            Err(e) => {
                error!(vm = %vm, error = %e, "cannot read the VM's devices to remove the added disks: remove them by hand");
                return;
            }
        };
        let mut spec = String::from("<spec>");
        let mut count = 0;
        for d in now.disks.iter().filter(|d| !old_disks.contains(&d.key)) {
            let _ = write!(
                spec,
                "<deviceChange><operation>remove</operation><fileOperation>destroy</fileOperation><device xsi:type=\"VirtualDisk\"><key>{}</key><controllerKey>{}</controllerKey><unitNumber>{}</unitNumber><capacityInKB>{}</capacityInKB></device></deviceChange>",
                d.key,
                d.controller_key,
                d.unit_number,
                d.capacity / 1024
            );
            count += 1;
        }
        for c in now
            .controllers
            .iter()
            .filter(|c| !old_controllers.contains(&c.key))
        {
            let _ = write!(
                spec,
                "<deviceChange><operation>remove</operation><device xsi:type=\"{}\"><key>{}</key><busNumber>{}</busNumber></device></deviceChange>",
                c.kind.vsphere_type(),
                c.key,
                c.bus_number
            );
            count += 1;
        }
        spec.push_str("</spec>");
        if count == 0 {
            return;
        }
        let body = soap::envelope("ReconfigVM_Task", &format!("{}{spec}", vm.to_xml("_this")));
        if let Err(e) = self.cleanup_task("ReconfigVM_Task", &body).await {
            error!(vm = %vm, error = %e, "removing the added disks failed: remove them by hand");
        }
    }

    /// Runs a cleanup task, again after a short pause when the HTTP exchange itself failed
    /// (up to [`CLEANUP_ATTEMPTS`] times): the upload that just failed may have taken a pooled
    /// connection down with it, and what a failed restore made must not be left behind for
    /// want of one more request. A fault answered by vCenter is final, except that a retried
    /// call finding its object gone counts as done.
    async fn cleanup_task(&self, call: &'static str, body: &str) -> Result<(), VsphereError> {
        let mut attempt = 1;
        loop {
            match self.session.run_task(call, body).await {
                Ok(_) => return Ok(()),
                // An earlier attempt went through although its answer was lost.
                Err(e)
                    if attempt > 1
                        && e.fault_kind() == Some(&crate::FaultKind::ManagedObjectNotFound) =>
                {
                    return Ok(());
                }
                Err(e @ VsphereError::Http { .. }) if attempt < CLEANUP_ATTEMPTS => {
                    warn!(call, attempt, error = %e, "cleanup request failed: trying again");
                    tokio::time::sleep(CLEANUP_PAUSE * attempt).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Where each disk goes in an existing VM: `(disk, controller key (negative: a planned new
/// controller), unit)`, and the controllers to add `(kind, temporary key, bus)`.
struct SlotPlan {
    disks: Vec<(RestoreDisk, i32, u32)>,
    new_controllers: Vec<(ControllerKind, i32, u32)>,
}

/// Most controllers of one kind a VM may have.
const MAX_BUSES: u32 = 4;

fn usable_units(kind: ControllerKind) -> impl Iterator<Item = u32> {
    let scsi = !matches!(
        kind,
        ControllerKind::Ide | ControllerKind::Sata | ControllerKind::Nvme
    );
    (0..kind.max_units()).filter(move |u| !(scsi && *u == 7))
}

/// Picks a free slot for every disk: a controller of the captured kind first, then any other
/// (but IDE), then a new controller of the captured kind (PVSCSI for IDE disks).
fn plan_slots(
    config: &VmConfig,
    hw: &Hardware,
    disks: &[RestoreDisk],
) -> Result<SlotPlan, VsphereError> {
    let mut taken = hw.occupied.clone();
    let mut controllers: Vec<(i32, ControllerKind, u32)> = hw
        .controllers
        .iter()
        .filter(|c| c.kind != ControllerKind::Ide)
        .map(|c| (c.key, c.kind, c.bus_number))
        .collect();
    let mut plan = SlotPlan {
        disks: Vec::new(),
        new_controllers: Vec::new(),
    };
    let mut next_temp = -100;
    for d in disks {
        let wanted = config
            .disk(d.key)
            .and_then(|c| config.controller(c.controller_key))
            .map_or(ControllerKind::Pvscsi, |c| c.kind);
        let wanted = if wanted == ControllerKind::Ide {
            ControllerKind::Pvscsi
        } else {
            wanted
        };
        let mut order: Vec<&(i32, ControllerKind, u32)> =
            controllers.iter().filter(|c| c.1 == wanted).collect();
        order.extend(controllers.iter().filter(|c| c.1 != wanted));
        let free = order.iter().find_map(|(key, kind, _)| {
            usable_units(*kind)
                .find(|u| !taken.contains(&(*key, *u)))
                .map(|u| (*key, u))
        });
        let (key, unit) = if let Some(slot) = free {
            slot
        } else {
            let bus = (0..MAX_BUSES)
                .find(|b| !controllers.iter().any(|c| c.1 == wanted && c.2 == *b))
                .ok_or_else(|| VsphereError::RestoreDisk {
                    key: d.key.get(),
                    reason: "the VM has no free controller slot and no room for another controller"
                        .to_owned(),
                })?;
            let temp = next_temp;
            next_temp -= 1;
            controllers.push((temp, wanted, bus));
            plan.new_controllers.push((wanted, temp, bus));
            (temp, 0)
        };
        taken.insert((key, unit));
        plan.disks.push((d.clone(), key, unit));
    }
    Ok(plan)
}

/// A `deviceChange` adding a controller.
fn controller_add(kind: ControllerKind, key: i32, bus: u32) -> String {
    let scsi = if matches!(
        kind,
        ControllerKind::Pvscsi
            | ControllerKind::LsiLogic
            | ControllerKind::LsiLogicSas
            | ControllerKind::BusLogic
    ) {
        "<sharedBus>noSharing</sharedBus>"
    } else {
        ""
    };
    format!(
        "<deviceChange><operation>add</operation><device xsi:type=\"{}\"><key>{key}</key><busNumber>{bus}</busNumber>{scsi}</device></deviceChange>",
        kind.vsphere_type()
    )
}

/// A `deviceChange` creating a new disk in the datastore's folder of the VM.
fn disk_add(
    key: i32,
    controller: i32,
    unit: u32,
    capacity: u64,
    provisioning: Provisioning,
    datastore: &str,
) -> String {
    let (thin, eager) = match provisioning {
        Provisioning::Thin => (true, false),
        Provisioning::ThickLazy => (false, false),
        Provisioning::ThickEager => (false, true),
    };
    format!(
        "<deviceChange><operation>add</operation><fileOperation>create</fileOperation><device xsi:type=\"VirtualDisk\"><key>{key}</key>\
<backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>[{}]</fileName><diskMode>persistent</diskMode><thinProvisioned>{thin}</thinProvisioned><eagerlyScrub>{eager}</eagerlyScrub></backing>\
<controllerKey>{controller}</controllerKey><unitNumber>{unit}</unitNumber><capacityInKB>{}</capacityInKB><capacityInBytes>{capacity}</capacityInBytes></device></deviceChange>",
        escape(datastore),
        capacity / 1024
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ControllerDevice, DiskDevice};
    use sendense_transfer::source::MemorySource;
    use sendense_types::{ControllerConfig, NicConfig};

    fn config() -> VmConfig {
        VmConfig {
            version: VM_CONFIG_VERSION,
            name: "a".into(),
            guest_id: "otherGuest64".into(),
            hardware_version: None,
            firmware: Firmware::Bios,
            secure_boot: false,
            num_cpus: 1,
            cores_per_socket: 1,
            memory_mb: 512,
            annotation: String::new(),
            controllers: vec![ControllerConfig {
                key: 1000,
                kind: ControllerKind::Pvscsi,
                bus_number: 0,
            }],
            disks: vec![DiskConfig {
                key: DiskKey(2000),
                capacity_bytes: 1024,
                controller_key: 1000,
                unit_number: 0,
                provisioning: Provisioning::Thin,
                file_name: None,
            }],
            nics: Vec::<NicConfig>::new(),
        }
    }

    #[test]
    fn plan_slots_full_controller_gets_a_new_one_of_the_captured_kind() {
        let mut hw = Hardware {
            controllers: vec![ControllerDevice {
                key: 1000,
                kind: ControllerKind::Pvscsi,
                bus_number: 0,
            }],
            ..Hardware::default()
        };
        for unit in (0..16).filter(|u| *u != 7) {
            hw.disks.push(DiskDevice {
                key: 2000 + i32::try_from(unit).unwrap(),
                controller_key: 1000,
                unit_number: unit,
                capacity: 1024,
                provisioning: Provisioning::Thin,
                file_name: String::new(),
            });
            hw.occupied.insert((1000, unit));
        }
        let disk = RestoreDisk {
            key: DiskKey(2000),
            source: Arc::new(MemorySource::new(vec![0; 1024])),
        };

        let plan = plan_slots(&config(), &hw, &[disk]).unwrap();

        assert_eq!(plan.new_controllers, [(ControllerKind::Pvscsi, -100, 1)]);
        assert_eq!(
            plan.disks
                .iter()
                .map(|(_, c, u)| (*c, *u))
                .collect::<Vec<_>>(),
            [(-100, 0)]
        );
    }

    #[test]
    fn plan_slots_free_unit_skips_taken_and_reserved_units() {
        let hw = Hardware {
            controllers: vec![ControllerDevice {
                key: 1000,
                kind: ControllerKind::Pvscsi,
                bus_number: 0,
            }],
            occupied: (0..7).map(|u| (1000, u)).collect(),
            ..Hardware::default()
        };
        let disk = RestoreDisk {
            key: DiskKey(2000),
            source: Arc::new(MemorySource::new(vec![0; 1024])),
        };

        let plan = plan_slots(&config(), &hw, &[disk]).unwrap();

        assert!(plan.new_controllers.is_empty());
        assert_eq!(
            plan.disks
                .iter()
                .map(|(_, c, u)| (*c, *u))
                .collect::<Vec<_>>(),
            [(1000, 8)]
        );
    }
}
