//! Changed Block Tracking: the paged `QueryChangedDiskAreas` loop.
//!
//! One answer describes only `[startOffset, startOffset + length)`; vCenter limits how much
//! one call covers, so the loop calls again from the end of each answer until the disk's
//! capacity is covered (bareos #2152, yavijava-samples #10). It never calls with
//! `startOffset >= capacity`, which vCenter rejects with `InvalidArgument` (pyvmomi #224).
//! Every answer is checked: it must start where asked, advance, and list sorted areas inside
//! the disk; adjacent areas are merged.

use sendense_transfer::Extent;
use tracing::debug;

use crate::error::VsphereError;
use crate::session::Session;
use crate::soap::MoRef;

/// Change id that asks for every allocated area (a full backup).
pub const ALL_ALLOCATED: &str = "*";

/// Result of [`changed_areas`]: the extents and how many calls it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedAreas {
    /// Sorted, non-overlapping, merged extents inside the disk.
    pub extents: Vec<Extent>,
    /// `QueryChangedDiskAreas` calls made.
    pub calls: u32,
}

/// All changed (or, with [`ALL_ALLOCATED`], allocated) areas of a disk at a snapshot.
///
/// # Errors
/// SOAP faults (a `FileFault` for an unknown change id), [`VsphereError::InvalidChangedArea`]
/// and [`VsphereError::ChangedAreasStalled`] for answers that do not fit the disk.
pub async fn changed_areas(
    session: &Session,
    vm: &MoRef,
    snapshot: &MoRef,
    device_key: i32,
    capacity: u64,
    change_id: &str,
) -> Result<ChangedAreas, VsphereError> {
    let mut extents: Vec<Extent> = Vec::new();
    let mut offset = 0u64;
    let mut calls = 0u32;
    while offset < capacity {
        let page = session
            .query_changed_disk_areas(vm, snapshot, device_key, offset, change_id)
            .await?;
        calls = calls.saturating_add(1);
        let bad = |start, length| VsphereError::InvalidChangedArea {
            key: device_key,
            start,
            length,
            capacity,
        };
        let page_end = page
            .start_offset
            .checked_add(page.length)
            .ok_or_else(|| bad(page.start_offset, page.length))?;
        if page.start_offset != offset || page_end <= offset {
            return Err(VsphereError::ChangedAreasStalled {
                key: device_key,
                offset,
            });
        }
        for (start, length) in page.changed {
            let end = start
                .checked_add(length)
                .ok_or_else(|| bad(start, length))?;
            let prev_end = extents.last().map_or(0, Extent::end);
            if length == 0
                || start < page.start_offset
                || end > page_end
                || end > capacity
                || start < prev_end
            {
                return Err(bad(start, length));
            }
            match extents.last_mut() {
                Some(last) if last.end() == start => last.length += length,
                _ => extents.push(Extent::new(start, length)),
            }
        }
        offset = page_end;
    }
    debug!(
        device_key,
        calls,
        extents = extents.len(),
        "changed areas queried"
    );
    Ok(ChangedAreas { extents, calls })
}
