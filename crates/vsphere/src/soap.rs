//! vim25 SOAP envelopes: request bodies and typed response parsing.
//!
//! Hand-written, no generated bindings: each request is a short template with escaped values,
//! and each response is parsed from a bounded XML tree (see [`crate::MAX_RESPONSE_BYTES`] and
//! [`crate::MAX_DEPTH`]) into the few fields we use.
//! A `soapenv:Fault` in the body becomes [`VsphereError::Fault`] with a typed [`FaultKind`]
//! taken from the fault detail's `xsi:type` (or element name).

use std::fmt::Write as _;

use crate::error::{FaultKind, SoapFault, VsphereError};
use crate::xml::{self, Element, escape};

/// The `SOAPAction` header value sent with every call.
pub const SOAP_ACTION: &str = "urn:vim25/7.0.3.0";

/// A managed object reference: type and id (`VirtualMachine`, `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MoRef {
    /// The managed object type.
    pub kind: String,
    /// The id.
    pub value: String,
}

impl MoRef {
    /// A new reference.
    #[must_use]
    pub fn new(kind: &str, value: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            value: value.to_owned(),
        }
    }

    /// The reference as a SOAP element named `tag`.
    pub(crate) fn to_xml(&self, tag: &str) -> String {
        format!(
            "<{tag} type=\"{}\">{}</{tag}>",
            escape(&self.kind),
            escape(&self.value)
        )
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// The managed objects of `RetrieveServiceContent` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContent {
    /// Root inventory folder.
    pub root_folder: MoRef,
    /// The property collector.
    pub property_collector: MoRef,
    /// The view manager (container views for lookup by name).
    pub view_manager: MoRef,
    /// The search index (FindByInventoryPath).
    pub search_index: MoRef,
    /// The session manager (Login/Logout).
    pub session_manager: MoRef,
    /// The file manager (`DeleteDatastoreFile_Task`), when the server has one.
    pub file_manager: Option<MoRef>,
}

/// A virtual disk device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDisk {
    /// Device key (2000, 2001, ...).
    pub key: i32,
    /// Capacity in bytes.
    pub capacity: u64,
    /// The disk's backing.
    pub backing: DiskBacking,
}

/// A virtual disk backing and its parent chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskBacking {
    /// The backing's `xsi:type`, e.g. `VirtualDiskFlatVer2BackingInfo`.
    pub kind: String,
    /// `[datastore] folder/file.vmdk`.
    pub file_name: String,
    /// The disk's UUID, if reported.
    pub uuid: Option<String>,
    /// The CBT change id, once CBT is active.
    pub change_id: Option<String>,
    /// The disk mode (`persistent`, `independent_persistent`, ...).
    pub disk_mode: Option<String>,
    /// The parent backing (delta disks).
    pub parent: Option<Box<Self>>,
}

/// The flat backing type we can read over `/folder`.
pub const FLAT_BACKING: &str = "VirtualDiskFlatVer2BackingInfo";

impl DiskBacking {
    /// Whether this is a flat VMDK backing.
    #[must_use]
    pub fn is_flat(&self) -> bool {
        self.kind == FLAT_BACKING
    }
}

/// One snapshot of a VM's snapshot tree (flattened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The snapshot object.
    pub snapshot: MoRef,
    /// Its name.
    pub name: String,
}

/// State of a vCenter task.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TaskState {
    /// Queued.
    Queued,
    /// Running.
    Running,
    /// Finished; the result reference if any.
    Success(Option<MoRef>),
    /// Failed with this fault.
    Error(SoapFault),
}

/// One page of `QueryChangedDiskAreas`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskChangeInfo {
    /// Start of the area described.
    pub start_offset: u64,
    /// Length of the area described.
    pub length: u64,
    /// Changed areas `(start, length)` within it.
    pub changed: Vec<(u64, u64)>,
}

/// The kinds of response this module parses (for fuzzing and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResponseKind {
    /// `RetrieveServiceContentResponse`.
    ServiceContent,
    /// A response whose `returnval` is an optional managed object reference.
    MoRef,
    /// `RetrievePropertiesExResponse` holding VM properties (devices, snapshots).
    VmProperties,
    /// `RetrievePropertiesExResponse` holding a task's `info`.
    TaskInfo,
    /// `QueryChangedDiskAreasResponse`.
    DiskChangeInfo,
}

/// Parse `bytes` as a response of `kind`, discarding the result (fuzzing entry point).
///
/// # Errors
/// Any parsing error or SOAP fault.
pub fn parse_response(kind: ResponseKind, bytes: &[u8]) -> Result<(), VsphereError> {
    let body = response_body(bytes, "fuzz")?;
    match kind {
        ResponseKind::ServiceContent => service_content(&body).map(drop),
        ResponseKind::MoRef => returnval_moref(&body).map(drop),
        ResponseKind::VmProperties => {
            let (objects, _) = object_contents(&body)?;
            for o in &objects {
                for (name, val) in &o.props {
                    match name.as_str() {
                        "config.hardware.device" => drop(devices(val)?),
                        "snapshot" => drop(snapshot_list(val)),
                        "config.changeTrackingEnabled" => drop(parse_bool(val)),
                        _ => {}
                    }
                }
            }
            Ok(())
        }
        ResponseKind::TaskInfo => {
            let (objects, _) = object_contents(&body)?;
            for o in &objects {
                if let Some(v) = o.prop("info") {
                    drop(task_state(v)?);
                }
            }
            Ok(())
        }
        ResponseKind::DiskChangeInfo => disk_change_info(&body).map(drop),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Wrap a method element in a SOAP envelope.
pub(crate) fn envelope(method: &str, inner: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
<soapenv:Body><{method} xmlns=\"urn:vim25\">{inner}</{method}></soapenv:Body></soapenv:Envelope>"
    )
}

pub(crate) fn retrieve_service_content() -> String {
    envelope(
        "RetrieveServiceContent",
        "<_this type=\"ServiceInstance\">ServiceInstance</_this>",
    )
}

pub(crate) fn login(session_manager: &MoRef, user: &str, password: &str) -> String {
    envelope(
        "Login",
        &format!(
            "{}<userName>{}</userName><password>{}</password>",
            session_manager.to_xml("_this"),
            escape(user),
            escape(password)
        ),
    )
}

pub(crate) fn logout(session_manager: &MoRef) -> String {
    envelope("Logout", &session_manager.to_xml("_this"))
}

pub(crate) fn find_by_inventory_path(search_index: &MoRef, path: &str) -> String {
    envelope(
        "FindByInventoryPath",
        &format!(
            "{}<inventoryPath>{}</inventoryPath>",
            search_index.to_xml("_this"),
            escape(path)
        ),
    )
}

pub(crate) fn create_container_view(view_manager: &MoRef, container: &MoRef, kind: &str) -> String {
    envelope(
        "CreateContainerView",
        &format!(
            "{}{}<type>{}</type><recursive>true</recursive>",
            view_manager.to_xml("_this"),
            container.to_xml("container"),
            escape(kind)
        ),
    )
}

/// `CreateContainerView` listing objects of several types.
pub(crate) fn create_container_view_of(
    view_manager: &MoRef,
    container: &MoRef,
    kinds: &[&str],
) -> String {
    let mut types = String::new();
    for k in kinds {
        let _ = write!(types, "<type>{}</type>", escape(k));
    }
    envelope(
        "CreateContainerView",
        &format!(
            "{}{}{types}<recursive>true</recursive>",
            view_manager.to_xml("_this"),
            container.to_xml("container"),
        ),
    )
}

/// `RetrievePropertiesEx` of `paths` on every object of the types `kinds` in a container view.
pub(crate) fn retrieve_view_properties_of(
    collector: &MoRef,
    view: &MoRef,
    kinds: &[&str],
    paths: &[&str],
) -> String {
    let mut prop_sets = String::new();
    for k in kinds {
        let _ = write!(prop_sets, "<propSet><type>{}</type>", escape(k));
        for p in paths {
            let _ = write!(prop_sets, "<pathSet>{}</pathSet>", escape(p));
        }
        prop_sets.push_str("</propSet>");
    }
    envelope(
        "RetrievePropertiesEx",
        &format!(
            "{}<specSet>{prop_sets}<objectSet>{}<skip>true</skip>\
<selectSet xsi:type=\"TraversalSpec\"><name>traverseView</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet>\
</objectSet></specSet><options/>",
            collector.to_xml("_this"),
            view.to_xml("obj"),
        ),
    )
}

pub(crate) fn destroy_view(view: &MoRef) -> String {
    envelope("DestroyView", &view.to_xml("_this"))
}

/// `RetrievePropertiesEx` of `paths` on one object.
pub(crate) fn retrieve_properties(collector: &MoRef, obj: &MoRef, paths: &[&str]) -> String {
    let mut path_set = String::new();
    for p in paths {
        let _ = write!(path_set, "<pathSet>{}</pathSet>", escape(p));
    }
    envelope(
        "RetrievePropertiesEx",
        &format!(
            "{}<specSet><propSet><type>{}</type>{path_set}</propSet><objectSet>{}<skip>false</skip></objectSet></specSet><options/>",
            collector.to_xml("_this"),
            escape(&obj.kind),
            obj.to_xml("obj"),
        ),
    )
}

/// `RetrievePropertiesEx` of `paths` on every object of type `kind` in a container view.
pub(crate) fn retrieve_view_properties(
    collector: &MoRef,
    view: &MoRef,
    kind: &str,
    paths: &[&str],
) -> String {
    let mut path_set = String::new();
    for p in paths {
        let _ = write!(path_set, "<pathSet>{}</pathSet>", escape(p));
    }
    envelope(
        "RetrievePropertiesEx",
        &format!(
            "{}<specSet><propSet><type>{}</type>{path_set}</propSet><objectSet>{}<skip>true</skip>\
<selectSet xsi:type=\"TraversalSpec\"><name>traverseView</name><type>ContainerView</type><path>view</path><skip>false</skip></selectSet>\
</objectSet></specSet><options/>",
            collector.to_xml("_this"),
            escape(kind),
            view.to_xml("obj"),
        ),
    )
}

pub(crate) fn continue_retrieve_properties(collector: &MoRef, token: &str) -> String {
    envelope(
        "ContinueRetrievePropertiesEx",
        &format!(
            "{}<token>{}</token>",
            collector.to_xml("_this"),
            escape(token)
        ),
    )
}

pub(crate) fn reconfig_enable_cbt(vm: &MoRef) -> String {
    envelope(
        "ReconfigVM_Task",
        &format!(
            "{}<spec><changeTrackingEnabled>true</changeTrackingEnabled></spec>",
            vm.to_xml("_this")
        ),
    )
}

pub(crate) fn create_snapshot(vm: &MoRef, name: &str, description: &str, quiesce: bool) -> String {
    envelope(
        "CreateSnapshot_Task",
        &format!(
            "{}<name>{}</name><description>{}</description><memory>false</memory><quiesce>{quiesce}</quiesce>",
            vm.to_xml("_this"),
            escape(name),
            escape(description)
        ),
    )
}

pub(crate) fn remove_snapshot(snapshot: &MoRef) -> String {
    envelope(
        "RemoveSnapshot_Task",
        &format!(
            "{}<removeChildren>false</removeChildren><consolidate>true</consolidate>",
            snapshot.to_xml("_this")
        ),
    )
}

pub(crate) fn query_changed_disk_areas(
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i32,
    start_offset: u64,
    change_id: &str,
) -> String {
    envelope(
        "QueryChangedDiskAreas",
        &format!(
            "{}{}<deviceKey>{device_key}</deviceKey><startOffset>{start_offset}</startOffset><changeId>{}</changeId>",
            vm.to_xml("_this"),
            snapshot.to_xml("snapshot"),
            escape(change_id)
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Parse a response and return the element inside `Body` (the `...Response` element).
///
/// # Errors
/// [`VsphereError::Fault`] when the body is a SOAP fault; parsing errors otherwise.
pub(crate) fn response_body(bytes: &[u8], call: &'static str) -> Result<Element, VsphereError> {
    let root = xml::parse(bytes)?;
    if root.name != "Envelope" {
        return Err(VsphereError::UnexpectedResponse {
            what: "root element is not a SOAP Envelope",
        });
    }
    let mut root = root;
    let pos = root.children.iter().position(|c| c.name == "Body").ok_or(
        VsphereError::UnexpectedResponse {
            what: "SOAP envelope without Body",
        },
    )?;
    let mut body = root.children.swap_remove(pos);
    if let Some(fault) = body.child("Fault") {
        return Err(VsphereError::Fault {
            call,
            fault: parse_fault(fault),
        });
    }
    if body.children.is_empty() {
        return Err(VsphereError::UnexpectedResponse {
            what: "empty SOAP Body",
        });
    }
    Ok(body.children.swap_remove(0))
}

fn parse_fault(fault: &Element) -> SoapFault {
    let message = fault
        .child_text("faultstring")
        .unwrap_or_default()
        .to_owned();
    let detail_kind = fault
        .child("detail")
        .and_then(|d| d.children.first())
        .map(|d| d.xsi_type.clone().unwrap_or_else(|| d.name.clone()));
    let kind = match detail_kind {
        Some(name) => FaultKind::from_type_name(&name),
        None => FaultKind::Other(
            fault
                .child_text("faultcode")
                .unwrap_or("ServerFaultCode")
                .to_owned(),
        ),
    };
    SoapFault { kind, message }
}

/// A fault inside a `LocalizedMethodFault` (task errors).
fn localized_fault(el: &Element) -> SoapFault {
    let kind = el
        .child("fault")
        .and_then(|f| f.xsi_type.as_deref())
        .map_or(
            FaultKind::Other("Unknown".to_owned()),
            FaultKind::from_type_name,
        );
    let message = el
        .child_text("localizedMessage")
        .unwrap_or_default()
        .to_owned();
    SoapFault { kind, message }
}

pub(crate) fn moref(el: &Element) -> Result<MoRef, VsphereError> {
    let kind = el
        .mo_type
        .as_deref()
        .ok_or(VsphereError::UnexpectedResponse {
            what: "managed object reference without type",
        })?;
    if el.text.is_empty() {
        return Err(VsphereError::UnexpectedResponse {
            what: "empty managed object reference",
        });
    }
    Ok(MoRef::new(kind, &el.text))
}

fn required<'a>(el: &'a Element, name: &'static str) -> Result<&'a Element, VsphereError> {
    el.child(name)
        .ok_or(VsphereError::UnexpectedResponse { what: name })
}

pub(crate) fn service_content(body: &Element) -> Result<ServiceContent, VsphereError> {
    let rv = required(body, "returnval")?;
    Ok(ServiceContent {
        root_folder: moref(required(rv, "rootFolder")?)?,
        property_collector: moref(required(rv, "propertyCollector")?)?,
        view_manager: moref(required(rv, "viewManager")?)?,
        search_index: moref(required(rv, "searchIndex")?)?,
        session_manager: moref(required(rv, "sessionManager")?)?,
        file_manager: rv.child("fileManager").map(moref).transpose()?,
    })
}

/// The optional `returnval` managed object reference.
pub(crate) fn returnval_moref(body: &Element) -> Result<Option<MoRef>, VsphereError> {
    body.child("returnval").map(moref).transpose()
}

/// One object's properties from `RetrievePropertiesEx`.
#[derive(Debug, Clone)]
pub(crate) struct ObjectContent {
    pub(crate) obj: MoRef,
    pub(crate) props: Vec<(String, Element)>,
}

impl ObjectContent {
    pub(crate) fn prop(&self, name: &str) -> Option<&Element> {
        self.props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// The objects of a `RetrievePropertiesEx` answer and its continuation token.
pub(crate) fn object_contents(
    body: &Element,
) -> Result<(Vec<ObjectContent>, Option<String>), VsphereError> {
    let Some(rv) = body.child("returnval") else {
        // No returnval: no object matched.
        return Ok((Vec::new(), None));
    };
    let mut out = Vec::new();
    for o in rv.children_named("objects") {
        let obj = moref(required(o, "obj")?)?;
        let mut props = Vec::new();
        for p in o.children_named("propSet") {
            let name = required(p, "name")?.text.clone();
            let val = p.child("val").cloned().unwrap_or_default();
            props.push((name, val));
        }
        out.push(ObjectContent { obj, props });
    }
    let token = rv.child_text("token").map(str::to_owned);
    Ok((out, token))
}

pub(crate) fn parse_u64(el: &Element, field: &'static str) -> Result<u64, VsphereError> {
    let t = el
        .child_text(field)
        .ok_or(VsphereError::UnexpectedResponse { what: field })?;
    t.parse().map_err(|_| VsphereError::InvalidNumber {
        field,
        value: t.chars().take(64).collect(),
    })
}

pub(crate) fn parse_bool(el: &Element) -> bool {
    el.text == "true" || el.text == "1"
}

fn backing(el: &Element, depth: usize) -> Result<DiskBacking, VsphereError> {
    if depth > 32 {
        return Err(VsphereError::XmlLimit {
            limit: "backing chain depth",
        });
    }
    let parent = match el.child("parent") {
        Some(p) => Some(Box::new(backing(p, depth + 1)?)),
        None => None,
    };
    Ok(DiskBacking {
        kind: el.xsi_type.clone().unwrap_or_default(),
        file_name: el.child_text("fileName").unwrap_or_default().to_owned(),
        uuid: el.child_text("uuid").map(str::to_owned),
        change_id: el.child_text("changeId").map(str::to_owned),
        disk_mode: el.child_text("diskMode").map(str::to_owned),
        parent,
    })
}

/// The `VirtualDisk` entries of a `config.hardware.device` value.
pub(crate) fn devices(val: &Element) -> Result<Vec<VirtualDisk>, VsphereError> {
    let mut out = Vec::new();
    for d in &val.children {
        if d.xsi_type.as_deref() != Some("VirtualDisk") {
            continue;
        }
        let key_text = d.child_text("key").unwrap_or_default();
        let key: i32 = key_text.parse().map_err(|_| VsphereError::InvalidNumber {
            field: "key",
            value: key_text.chars().take(64).collect(),
        })?;
        let capacity = if d.child("capacityInBytes").is_some() {
            parse_u64(d, "capacityInBytes")?
        } else {
            parse_u64(d, "capacityInKB")?
                .checked_mul(1024)
                .ok_or(VsphereError::InvalidNumber {
                    field: "capacityInKB",
                    value: d.child_text("capacityInKB").unwrap_or_default().to_owned(),
                })?
        };
        let backing = backing(required(d, "backing")?, 0)?;
        out.push(VirtualDisk {
            key,
            capacity,
            backing,
        });
    }
    Ok(out)
}

/// Flatten a `VirtualMachineSnapshotInfo` (the VM's `snapshot` property).
pub(crate) fn snapshot_list(val: &Element) -> Vec<SnapshotInfo> {
    fn walk(el: &Element, out: &mut Vec<SnapshotInfo>) {
        for t in el
            .children
            .iter()
            .filter(|c| c.name == "rootSnapshotList" || c.name == "childSnapshotList")
        {
            if let (Some(Ok(snapshot)), Some(name)) =
                (t.child("snapshot").map(moref), t.child_text("name"))
            {
                out.push(SnapshotInfo {
                    snapshot,
                    name: name.to_owned(),
                });
            }
            walk(t, out);
        }
    }
    let mut out = Vec::new();
    walk(val, &mut out);
    out
}

/// The state of a `TaskInfo` value.
pub(crate) fn task_state(info: &Element) -> Result<TaskState, VsphereError> {
    let state = info
        .child_text("state")
        .ok_or(VsphereError::UnexpectedResponse {
            what: "task info without state",
        })?;
    Ok(match state {
        "queued" => TaskState::Queued,
        "running" => TaskState::Running,
        "success" => TaskState::Success(
            info.child("result")
                .filter(|r| r.mo_type.is_some())
                .map(moref)
                .transpose()?,
        ),
        "error" => TaskState::Error(info.child("error").map_or_else(
            || SoapFault {
                kind: FaultKind::Other("Unknown".to_owned()),
                message: String::new(),
            },
            localized_fault,
        )),
        _ => {
            return Err(VsphereError::UnexpectedResponse {
                what: "unknown task state",
            });
        }
    })
}

/// A `QueryChangedDiskAreasResponse`.
pub(crate) fn disk_change_info(body: &Element) -> Result<DiskChangeInfo, VsphereError> {
    let rv = required(body, "returnval")?;
    let start_offset = parse_u64(rv, "startOffset")?;
    let length = parse_u64(rv, "length")?;
    let mut changed = Vec::new();
    for a in rv.children_named("changedArea") {
        changed.push((parse_u64(a, "start")?, parse_u64(a, "length")?));
    }
    Ok(DiskChangeInfo {
        start_offset,
        length,
        changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrap(body: &str) -> Vec<u8> {
        format!(
            "<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
        )
        .into_bytes()
    }

    #[test]
    fn response_body_not_authenticated_fault_is_typed() {
        let doc = wrap(
            "<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>The session is not authenticated.</faultstring><detail><NotAuthenticatedFault xmlns=\"urn:vim25\" xsi:type=\"NotAuthenticated\"><object type=\"Folder\">group-d1</object></NotAuthenticatedFault></detail></soapenv:Fault>",
        );
        let err = response_body(&doc, "test").unwrap_err();
        assert_eq!(err.fault_kind(), Some(&FaultKind::NotAuthenticated));
    }

    #[test]
    fn response_body_fault_without_xsi_type_uses_element_name() {
        let doc = wrap(
            "<soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>x</faultstring><detail><InvalidArgumentFault/></detail></soapenv:Fault>",
        );
        let err = response_body(&doc, "test").unwrap_err();
        assert_eq!(err.fault_kind(), Some(&FaultKind::InvalidArgument));
    }

    #[test]
    fn disk_change_info_parses_areas() {
        let doc = wrap(
            "<QueryChangedDiskAreasResponse><returnval><startOffset>0</startOffset><length>4096</length><changedArea><start>512</start><length>1024</length></changedArea></returnval></QueryChangedDiskAreasResponse>",
        );
        let body = response_body(&doc, "test").unwrap();
        let info = disk_change_info(&body).unwrap();
        assert_eq!(
            info,
            DiskChangeInfo {
                start_offset: 0,
                length: 4096,
                changed: vec![(512, 1024)]
            }
        );
    }

    #[test]
    fn disk_change_info_negative_number_is_error() {
        let doc =
            wrap("<R><returnval><startOffset>-1</startOffset><length>1</length></returnval></R>");
        let body = response_body(&doc, "test").unwrap();
        assert!(matches!(
            disk_change_info(&body),
            Err(VsphereError::InvalidNumber { .. })
        ));
    }

    #[test]
    fn devices_reads_flat_disk_with_parent() {
        let doc = wrap(
            "<R><returnval><objects><obj type=\"VirtualMachine\">vm-1</obj><propSet><name>config.hardware.device</name><val xsi:type=\"ArrayOfVirtualDevice\">\
<VirtualDevice xsi:type=\"VirtualIDEController\"><key>200</key></VirtualDevice>\
<VirtualDevice xsi:type=\"VirtualDisk\"><key>2000</key><backing xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>[ds1] vm1/vm1-000001.vmdk</fileName><diskMode>persistent</diskMode><uuid>u1</uuid><changeId>52 aa/3</changeId>\
<parent xsi:type=\"VirtualDiskFlatVer2BackingInfo\"><fileName>[ds1] vm1/vm1.vmdk</fileName></parent></backing><capacityInKB>1024</capacityInKB></VirtualDevice>\
</val></propSet></objects></returnval></R>",
        );
        let body = response_body(&doc, "test").unwrap();
        let (objs, _) = object_contents(&body).unwrap();
        let disks = devices(objs[0].prop("config.hardware.device").unwrap()).unwrap();
        assert_eq!(
            (
                disks.len(),
                disks[0].key,
                disks[0].capacity,
                disks[0]
                    .backing
                    .parent
                    .as_ref()
                    .map(|p| p.file_name.as_str())
            ),
            (1, 2000, 1024 * 1024, Some("[ds1] vm1/vm1.vmdk"))
        );
    }

    proptest::proptest! {
        #[test]
        fn disk_change_info_round_trips(
            start in proptest::prelude::any::<u64>(),
            length in proptest::prelude::any::<u64>(),
            changed in proptest::collection::vec(
                (proptest::prelude::any::<u64>(), proptest::prelude::any::<u64>()),
                0..8,
            ),
        ) {
            let mut xml = format!(
                "<R><returnval><startOffset>{start}</startOffset><length>{length}</length>"
            );
            for (s, l) in &changed {
                xml.push_str(&format!(
                    "<changedArea><start>{s}</start><length>{l}</length></changedArea>"
                ));
            }
            xml.push_str("</returnval></R>");
            let body = response_body(&wrap(&xml), "test").unwrap();
            let info = disk_change_info(&body).unwrap();
            proptest::prop_assert_eq!(info, DiskChangeInfo { start_offset: start, length, changed });
        }
    }

    #[test]
    fn request_values_are_escaped() {
        let body = login(
            &MoRef::new("SessionManager", "SessionManager"),
            "a<b",
            "p&\"q",
        );
        assert!(body.contains("<userName>a&lt;b</userName><password>p&amp;&quot;q</password>"));
    }
}
