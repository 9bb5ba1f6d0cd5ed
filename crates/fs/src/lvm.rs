//! LVM2 linear logical volumes on physical volumes of this disk.
//!
//! On-disk format (LVM2 `lib/format_text`): a label in one of the first four sectors
//! (`LABELONE`, its own sector number, CRC, offset of the PV header, `LVM2 001`); the PV
//! header (32-character PV UUID, device size, then zero-terminated lists of data areas and
//! metadata areas as `(offset, size)` pairs in bytes); each metadata area starts with a
//! 512-byte header (`" LVM2 x[5A%r0N*>"` magic, version 1, its start and size, then
//! `(offset, size, checksum, flags)` locations); the first location holds the current volume
//! group metadata as text (a circular buffer: text running past the area's end continues
//! right after its header).
//!
//! The text is parsed here (sections `name { ... }`, `key = value`, strings, integers, lists,
//! `#` comments), bounded in size ([`MAX_METADATA`]) and nesting. A logical volume is
//! readable when every segment is `striped` with one stripe on a physical volume of this
//! disk; it becomes a [`Volume`] over its segments. Others (RAID, thin, snapshots, mirrors,
//! segments on another disk) are listed as unsupported.

use std::collections::HashMap;

use crate::error::FsError;
use crate::le::{u32_at, u64_at};
use crate::limits;
use crate::volume::Volume;

/// Largest metadata text read.
const MAX_METADATA: u64 = 1024 * 1024;
/// Deepest section nesting accepted.
const MAX_NESTING: usize = 16;
/// Most segments of one logical volume.
const MAX_SEGMENTS: usize = 1024;

/// A physical volume found on this disk.
#[derive(Debug, Clone)]
pub(crate) struct PhysicalVolume {
    /// Its UUID without dashes.
    pub(crate) uuid: String,
    /// Its volume on the disk.
    pub(crate) volume: Volume,
    /// The metadata text of its volume group.
    pub(crate) metadata: String,
}

/// A logical volume found in the metadata.
#[derive(Debug, Clone)]
pub(crate) struct LogicalVolume {
    /// `vg/lv`.
    pub(crate) name: String,
    /// Its bytes, when every segment is linear on a physical volume of this disk.
    pub(crate) volume: Result<Volume, &'static str>,
}

/// Reads the label, header and metadata of the physical volume in `volume`.
///
/// # Errors
/// [`FsError::Corrupt`] for a damaged label, header or metadata area, I/O errors.
pub(crate) fn read_pv(volume: &Volume) -> Result<PhysicalVolume, FsError> {
    let mut head = vec![0u8; 2048];
    volume.read_at(&mut head, 0).map_err(FsError::Io)?;
    let label = (0..4)
        .map(|s| s * 512)
        .find(|o| &head[*o..o + 8] == b"LABELONE" && &head[o + 24..o + 32] == b"LVM2 001")
        .ok_or_else(|| corrupt("no LVM2 label in the first four sectors".to_owned()))?;
    let sector = &head[label..label + 512];
    let crc = u32_at(sector, 16);
    if lvm_crc(&sector[20..]) != crc {
        return Err(corrupt("label checksum mismatch".to_owned()));
    }
    let pvh = usize::try_from(u32_at(sector, 20))
        .ok()
        .filter(|o| (32..=512 - 40).contains(o))
        .ok_or_else(|| corrupt("PV header offset".to_owned()))?;
    let uuid = String::from_utf8_lossy(&sector[pvh..pvh + 32]).into_owned();
    // The PV header's area lists run to the end of the label sector.
    let mut at = pvh + 40;
    let mut lists: [Vec<(u64, u64)>; 2] = [Vec::new(), Vec::new()];
    for list in &mut lists {
        loop {
            let Some(pair) = sector.get(at..at + 16) else {
                return Err(corrupt(
                    "PV header area lists run past the label".to_owned(),
                ));
            };
            at += 16;
            let (offset, size) = (u64_at(pair, 0), u64_at(pair, 8));
            if offset == 0 {
                break;
            }
            list.push((offset, size));
        }
    }
    let (mda_start, mda_size) = *lists[1]
        .first()
        .ok_or_else(|| corrupt("no metadata area".to_owned()))?;
    let metadata = read_metadata(volume, mda_start, mda_size)?;
    Ok(PhysicalVolume {
        uuid,
        volume: volume.clone(),
        metadata,
    })
}

/// The current metadata text of the area at `[start, start + size)`.
fn read_metadata(volume: &Volume, start: u64, size: u64) -> Result<String, FsError> {
    if size <= 512 || start.checked_add(size).is_none_or(|e| e > volume.size()) {
        return Err(corrupt(format!(
            "metadata area {start}+{size} outside the volume"
        )));
    }
    let mut h = [0u8; 512];
    volume.read_at(&mut h, start).map_err(FsError::Io)?;
    if &h[4..20] != b" LVM2 x[5A%r0N*>" {
        return Err(corrupt("no metadata area header magic".to_owned()));
    }
    if lvm_crc(&h[4..]) != u32_at(&h, 0) {
        return Err(corrupt("metadata area header checksum mismatch".to_owned()));
    }
    let (offset, len) = (u64_at(&h, 40), u64_at(&h, 48));
    if len == 0 || len > MAX_METADATA || len > size - 512 || offset < 512 || offset >= size {
        return Err(corrupt(format!("metadata text at {offset}+{len}")));
    }
    // len <= MAX_METADATA.
    let mut text = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let first = (size - offset).min(len);
    let first_len = usize::try_from(first).unwrap_or(0);
    volume
        .read_at(&mut text[..first_len], start + offset)
        .map_err(FsError::Io)?;
    if first < len {
        volume
            .read_at(&mut text[first_len..], start + 512)
            .map_err(FsError::Io)?;
    }
    if lvm_crc(&text) != u32_at(&h, 56) {
        return Err(corrupt("metadata text checksum mismatch".to_owned()));
    }
    let text = String::from_utf8_lossy(&text);
    Ok(text.trim_end_matches('\0').to_owned())
}

/// The logical volumes of every volume group whose metadata a physical volume carries,
/// mapped onto the physical volumes of this disk (`pvs`).
///
/// # Errors
/// [`FsError::Corrupt`] for metadata that does not parse, [`FsError::TooLarge`].
pub(crate) fn logical_volumes(pvs: &[PhysicalVolume]) -> Result<Vec<LogicalVolume>, FsError> {
    let mut seen_vgs = Vec::new();
    let mut out = Vec::new();
    let by_uuid: HashMap<&str, &PhysicalVolume> =
        pvs.iter().map(|p| (p.uuid.as_str(), p)).collect();
    for pv in pvs {
        let config = parse(&pv.metadata)?;
        for (vg_name, vg) in config.sections() {
            let id = vg.string("id").unwrap_or_default();
            if seen_vgs.contains(&id) {
                continue;
            }
            seen_vgs.push(id);
            for lv in vg_volumes(vg_name, vg, &by_uuid)? {
                if out.len() >= limits::MAX_PARTITIONS {
                    return Err(FsError::TooLarge {
                        what: format!("more than {} logical volumes", limits::MAX_PARTITIONS),
                    });
                }
                out.push(lv);
            }
        }
    }
    Ok(out)
}

fn vg_volumes(
    vg_name: &str,
    vg: &Section,
    pvs: &HashMap<&str, &PhysicalVolume>,
) -> Result<Vec<LogicalVolume>, FsError> {
    let extent_bytes = vg
        .int("extent_size")
        .and_then(|s| u64::try_from(s).ok())
        .and_then(|s| s.checked_mul(512))
        .filter(|s| *s > 0)
        .ok_or_else(|| corrupt(format!("volume group {vg_name} has no extent_size")))?;
    // pvN -> (volume, pe_start in bytes)
    let mut pv_map = HashMap::new();
    if let Some(section) = vg.section("physical_volumes") {
        for (key, pv) in section.sections() {
            let uuid = pv.string("id").unwrap_or_default().replace('-', "");
            let pe_start = pv
                .int("pe_start")
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| s.checked_mul(512));
            if let (Some(found), Some(pe_start)) = (pvs.get(uuid.as_str()), pe_start) {
                pv_map.insert(key.to_owned(), (found.volume.clone(), pe_start));
            }
        }
    }
    let mut out = Vec::new();
    let Some(lvs) = vg.section("logical_volumes") else {
        return Ok(out);
    };
    for (lv_name, lv) in lvs.sections() {
        let visible = lv.list("status").is_some_and(|s| {
            s.iter()
                .any(|v| matches!(v, Value::Str(s) if s == "VISIBLE"))
        });
        if !visible {
            continue;
        }
        out.push(LogicalVolume {
            name: format!("{vg_name}/{lv_name}"),
            volume: lv_volume(lv, extent_bytes, &pv_map),
        });
    }
    Ok(out)
}

/// The bytes of one logical volume, or why they cannot be read.
fn lv_volume(
    lv: &Section,
    extent_bytes: u64,
    pvs: &HashMap<String, (Volume, u64)>,
) -> Result<Volume, &'static str> {
    let mut segments: Vec<(u64, &Section)> = lv
        .sections()
        .filter(|(k, _)| k.starts_with("segment"))
        .map(|(_, s)| (s.int("start_extent").and_then(|v| u64::try_from(v).ok()), s))
        .map(|(start, s)| {
            start
                .map(|st| (st, s))
                .ok_or("a segment without start_extent")
        })
        .collect::<Result<_, _>>()?;
    if segments.is_empty() || segments.len() > MAX_SEGMENTS {
        return Err("no segments, or too many");
    }
    segments.sort_by_key(|(start, _)| *start);
    let mut parts: Vec<(Volume, u64, u64)> = Vec::new();
    let mut next_extent = 0u64;
    for (start, seg) in segments {
        if start != next_extent {
            return Err("segments with gaps");
        }
        if seg.string("type").as_deref() != Some("striped") || seg.int("stripe_count") != Some(1) {
            return Err("not linear (RAID, thin, mirror, snapshot or striped)");
        }
        let count = seg
            .int("extent_count")
            .and_then(|v| u64::try_from(v).ok())
            .ok_or("a segment without extent_count")?;
        let stripes = seg.list("stripes").ok_or("a segment without stripes")?;
        let (Some(Value::Str(pv)), Some(Value::Int(pe))) = (stripes.first(), stripes.get(1)) else {
            return Err("a segment with malformed stripes");
        };
        let (volume, pe_start) = pvs.get(pv).ok_or("a segment on a volume of another disk")?;
        let pe = u64::try_from(*pe).map_err(|_| "negative extent")?;
        let offset = pe
            .checked_mul(extent_bytes)
            .and_then(|o| o.checked_add(*pe_start))
            .ok_or("extent offset overflows")?;
        let len = count
            .checked_mul(extent_bytes)
            .ok_or("extent count overflows")?;
        parts.push((volume.clone(), offset, len));
        next_extent = next_extent
            .checked_add(count)
            .ok_or("extent count overflows")?;
    }
    Volume::concat(&parts).ok_or("a segment lies outside its physical volume")
}

/// A parsed metadata value.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Int(i64),
    List(Vec<Self>),
    Section(Section),
}

/// A `{ ... }` section: its entries in order.
#[derive(Debug, Clone, PartialEq, Default)]
struct Section(Vec<(String, Value)>);

impl Section {
    fn get(&self, key: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    fn string(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Value::Str(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    fn list(&self, key: &str) -> Option<&[Value]> {
        match self.get(key)? {
            Value::List(l) => Some(l),
            _ => None,
        }
    }
    fn section(&self, key: &str) -> Option<&Self> {
        match self.get(key)? {
            Value::Section(s) => Some(s),
            _ => None,
        }
    }
    fn sections(&self) -> impl Iterator<Item = (&str, &Self)> {
        self.0.iter().filter_map(|(k, v)| match v {
            Value::Section(s) => Some((k.as_str(), s)),
            _ => None,
        })
    }
}

/// Parses LVM2 metadata text.
fn parse(text: &str) -> Result<Section, FsError> {
    let mut p = Parser {
        s: text.as_bytes(),
        at: 0,
    };
    let top = p.section(0)?;
    if p.peek().is_some() {
        return Err(p.err("unexpected `}`"));
    }
    Ok(top)
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> FsError {
        corrupt(format!("metadata text at byte {}: {what}", self.at))
    }

    /// Skips blanks and comments; the next byte.
    fn peek(&mut self) -> Option<u8> {
        loop {
            match self.s.get(self.at) {
                Some(b' ' | b'\t' | b'\r' | b'\n' | 0) => self.at += 1,
                Some(b'#') => {
                    while self.s.get(self.at).is_some_and(|c| *c != b'\n') {
                        self.at += 1;
                    }
                }
                other => return other.copied(),
            }
        }
    }

    fn ident(&mut self) -> Result<String, FsError> {
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || b"_.+-".contains(c))
        {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.err("expected a name"));
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.at]).into_owned())
    }

    /// Entries until `}` or the end (at nesting `depth`).
    fn section(&mut self, depth: usize) -> Result<Section, FsError> {
        if depth > MAX_NESTING {
            return Err(self.err("nested too deeply"));
        }
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            if c == b'}' {
                break;
            }
            let key = self.ident()?;
            match self.peek() {
                Some(b'{') => {
                    self.at += 1;
                    let inner = self.section(depth + 1)?;
                    if self.peek() != Some(b'}') {
                        return Err(self.err("expected `}`"));
                    }
                    self.at += 1;
                    out.push((key, Value::Section(inner)));
                }
                Some(b'=') => {
                    self.at += 1;
                    let v = self.value(depth)?;
                    out.push((key, v));
                }
                _ => return Err(self.err("expected `=` or `{`")),
            }
        }
        Ok(Section(out))
    }

    fn value(&mut self, depth: usize) -> Result<Value, FsError> {
        match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut s = Vec::new();
                loop {
                    match self.s.get(self.at) {
                        None => return Err(self.err("unterminated string")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            self.at += 1;
                            if let Some(c) = self.s.get(self.at) {
                                s.push(*c);
                            }
                        }
                        Some(c) => s.push(*c),
                    }
                    self.at += 1;
                }
                self.at += 1;
                Ok(Value::Str(String::from_utf8_lossy(&s).into_owned()))
            }
            Some(b'[') => {
                if depth > MAX_NESTING {
                    return Err(self.err("nested too deeply"));
                }
                self.at += 1;
                let mut items = Vec::new();
                loop {
                    match self.peek() {
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Value::List(items));
                        }
                        Some(b',') => self.at += 1,
                        None => return Err(self.err("unterminated list")),
                        Some(_) => items.push(self.value(depth + 1)?),
                    }
                }
            }
            Some(c) if c == b'-' || c.is_ascii_digit() => {
                let start = self.at;
                self.at += 1;
                while self
                    .s
                    .get(self.at)
                    .is_some_and(|c| c.is_ascii_digit() || *c == b'.')
                {
                    self.at += 1;
                }
                let text = String::from_utf8_lossy(&self.s[start..self.at]).into_owned();
                let int = text.split('.').next().unwrap_or("0");
                int.parse()
                    .map(Value::Int)
                    .map_err(|_| self.err("bad number"))
            }
            _ => Err(self.err("expected a value")),
        }
    }
}

/// LVM2's CRC (`calc_crc` in `lib/misc/crc.c`): CRC-32 with initial value 0xf597a6cf and no
/// final inversion.
fn lvm_crc(data: &[u8]) -> u32 {
    let mut crc = 0xf597_a6cfu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn corrupt(detail: String) -> FsError {
    FsError::Corrupt {
        what: "LVM2 physical volume",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_text_parses_sections_lists_and_comments() {
        let text = "vg { # c\n id = \"a-b\"\n extent_size = 2048\n lvs { x { stripes = [\"pv0\", 12] } }\n}\n# tail\n";
        let top = parse(text).unwrap();
        let vg = top.section("vg").unwrap();
        assert_eq!(vg.string("id").as_deref(), Some("a-b"));
        assert_eq!(vg.int("extent_size"), Some(2048));
        let x = vg.section("lvs").unwrap().section("x").unwrap();
        assert_eq!(
            x.list("stripes").unwrap(),
            [Value::Str("pv0".into()), Value::Int(12)]
        );
    }

    #[test]
    fn hostile_metadata_text_is_an_error() {
        for bad in ["a {", "a = [", "a = \"x", "{", "a = ]", &"a {".repeat(100)] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
