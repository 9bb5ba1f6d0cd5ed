//! The text descriptor: header keys, extent lines and the disk database.
//!
//! Pure parsing and rendering, no I/O. The descriptor is either its own
//! small text file (`monolithicFlat`, `twoGbMaxExtent*`, `vmfs`) or embedded
//! in a sparse extent (`monolithicSparse`, `streamOptimized`). Grammar, after
//! the libvmdk format notes and VMware's "Virtual Disk Format 5.0":
//!
//! > `# Disk DescriptorFile` / `version=1` / `CID=...` / `parentCID=ffffffff` /
//! > `createType="..."`, then extent lines
//! > `ACCESS SECTORS TYPE ["FILENAME" [OFFSET]]`, then `ddb.key = "value"` lines.
//! > "The filename is relative to the location of the VMDK descriptor file."
//!
//! Limits: at most [`MAX_DESCRIPTOR_BYTES`] of text and [`MAX_EXTENTS`]
//! extent lines; a line that is neither a comment, `key=value` nor an extent
//! is an error. Unknown header keys are ignored; NUL padding (embedded
//! descriptors) and trailing blanks (qemu pads descriptor files) end the text.

use crate::VmdkError;

/// Largest descriptor accepted, in bytes ("max descriptor size").
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Largest number of extent lines accepted.
pub const MAX_EXTENTS: usize = 1024;
/// `parentCID` value meaning "no parent".
pub const CID_NO_PARENT: u32 = 0xFFFF_FFFF;

/// Access mode of an extent (first field of an extent line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access {
    /// `RW`
    ReadWrite,
    /// `RDONLY`
    ReadOnly,
    /// `NOACCESS`
    NoAccess,
}

impl Access {
    /// The keyword as written in a descriptor.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWrite => "RW",
            Self::ReadOnly => "RDONLY",
            Self::NoAccess => "NOACCESS",
        }
    }

    fn from_keyword(s: &str) -> Option<Self> {
        match s {
            "RW" => Some(Self::ReadWrite),
            "RDONLY" => Some(Self::ReadOnly),
            "NOACCESS" => Some(Self::NoAccess),
            _ => None,
        }
    }
}

/// Extent type (third field of an extent line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtentKind {
    /// `FLAT`: raw data file, from a start sector.
    Flat,
    /// `SPARSE`: hosted sparse extent (`KDMV`), possibly stream-optimized.
    Sparse,
    /// `ZERO`: reads as zeros, no file.
    Zero,
    /// `VMFS`: raw data file on VMFS (same layout as `FLAT`).
    Vmfs,
    /// `VMFSSPARSE`: ESX `COWD` sparse extent (not read by this crate).
    VmfsSparse,
    /// `VMFSRDM`: raw device map (not read by this crate).
    VmfsRdm,
    /// `VMFSRAW`: raw device (not read by this crate).
    VmfsRaw,
}

impl ExtentKind {
    /// The keyword as written in a descriptor.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flat => "FLAT",
            Self::Sparse => "SPARSE",
            Self::Zero => "ZERO",
            Self::Vmfs => "VMFS",
            Self::VmfsSparse => "VMFSSPARSE",
            Self::VmfsRdm => "VMFSRDM",
            Self::VmfsRaw => "VMFSRAW",
        }
    }

    fn from_keyword(s: &str) -> Option<Self> {
        match s {
            "FLAT" => Some(Self::Flat),
            "SPARSE" => Some(Self::Sparse),
            "ZERO" => Some(Self::Zero),
            "VMFS" => Some(Self::Vmfs),
            "VMFSSPARSE" => Some(Self::VmfsSparse),
            "VMFSRDM" => Some(Self::VmfsRdm),
            "VMFSRAW" => Some(Self::VmfsRaw),
            _ => None,
        }
    }
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    /// Access mode.
    pub access: Access,
    /// Length of the extent in 512-byte sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentKind,
    /// File name, relative to the descriptor's folder; `None` only for `ZERO`.
    pub file: Option<String>,
    /// Start sector inside the file (flat kinds); 0 when absent.
    pub offset: u64,
}

/// One disk database entry (`ddb.key = "value"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DdbEntry {
    /// The key, including its `ddb.` prefix.
    pub key: String,
    /// The value, without quotes.
    pub value: String,
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version` (1, 2 or 3).
    pub version: u32,
    /// `encoding`, when present.
    pub encoding: Option<String>,
    /// `CID`, the content id.
    pub cid: u32,
    /// `parentCID`; [`CID_NO_PARENT`] for a disk without a parent.
    pub parent_cid: u32,
    /// `createType`, e.g. `monolithicSparse`.
    pub create_type: String,
    /// `parentFileNameHint`, present for delta links.
    pub parent_file_name_hint: Option<String>,
    /// Extents in descriptor order; the disk is their concatenation.
    pub extents: Vec<Extent>,
    /// Disk database entries in file order.
    pub ddb: Vec<DdbEntry>,
}

impl Descriptor {
    /// Parses a descriptor from its bytes (a descriptor file or the embedded
    /// descriptor area of a sparse extent).
    ///
    /// # Errors
    /// [`VmdkError::DescriptorTooLarge`], [`VmdkError::InvalidDescriptor`],
    /// [`VmdkError::TooManyExtents`], [`VmdkError::NoExtents`].
    pub fn parse(bytes: &[u8]) -> Result<Self, VmdkError> {
        let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        if size > MAX_DESCRIPTOR_BYTES {
            return Err(VmdkError::DescriptorTooLarge {
                size,
                limit: MAX_DESCRIPTOR_BYTES,
            });
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut version = 1;
        let mut encoding = None;
        let mut cid = 0xFFFF_FFFE;
        let mut parent_cid = CID_NO_PARENT;
        let mut create_type = None;
        let mut parent_file_name_hint = None;
        let mut extents = Vec::new();
        let mut ddb = Vec::new();
        for (index, raw_line) in text.split('\n').enumerate() {
            let line_no = index + 1;
            let line = raw_line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or_default();
            if let Some(access) = Access::from_keyword(first) {
                if extents.len() >= MAX_EXTENTS {
                    return Err(VmdkError::TooManyExtents { limit: MAX_EXTENTS });
                }
                let rest = &line[first.len()..];
                extents.push(parse_extent(access, rest, line_no)?);
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(invalid(line_no, "neither key=value nor an extent"));
            };
            let key = key.trim();
            let value = unquote(value.trim());
            match key {
                "version" => {
                    version = value.parse().map_err(|_| invalid(line_no, "bad version"))?;
                }
                "encoding" => encoding = Some(value.to_owned()),
                "CID" => cid = parse_hex_u32(value).ok_or_else(|| invalid(line_no, "bad CID"))?,
                "parentCID" => {
                    parent_cid =
                        parse_hex_u32(value).ok_or_else(|| invalid(line_no, "bad parentCID"))?;
                }
                "createType" => create_type = Some(value.to_owned()),
                "parentFileNameHint" => parent_file_name_hint = Some(value.to_owned()),
                k if k.starts_with("ddb.") => {
                    ddb.push(DdbEntry {
                        key: k.to_owned(),
                        value: value.to_owned(),
                    });
                }
                "" => return Err(invalid(line_no, "empty key")),
                _ => {}
            }
        }
        let create_type = create_type.ok_or_else(|| invalid(0, "missing createType"))?;
        if extents.is_empty() {
            return Err(VmdkError::NoExtents);
        }
        Ok(Self {
            version,
            encoding,
            cid,
            parent_cid,
            create_type,
            parent_file_name_hint,
            extents,
            ddb,
        })
    }

    /// Renders the descriptor as text that [`Descriptor::parse`] reads back
    /// to an equal value (file names and values must not contain `"` or line breaks).
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::from("# Disk DescriptorFile\n");
        // Writing into a String cannot fail.
        let _ = writeln!(out, "version={}", self.version);
        if let Some(encoding) = &self.encoding {
            let _ = writeln!(out, "encoding=\"{encoding}\"");
        }
        let _ = writeln!(out, "CID={:08x}", self.cid);
        let _ = writeln!(out, "parentCID={:08x}", self.parent_cid);
        if let Some(hint) = &self.parent_file_name_hint {
            let _ = writeln!(out, "parentFileNameHint=\"{hint}\"");
        }
        let _ = writeln!(
            out,
            "createType=\"{}\"\n\n# Extent description",
            self.create_type
        );
        for e in &self.extents {
            let _ = write!(
                out,
                "{} {} {}",
                e.access.as_str(),
                e.sectors,
                e.kind.as_str()
            );
            if let Some(file) = &e.file {
                let _ = write!(out, " \"{file}\"");
                if e.offset != 0 || e.kind == ExtentKind::Flat {
                    let _ = write!(out, " {}", e.offset);
                }
            }
            out.push('\n');
        }
        out.push_str("\n# The Disk Data Base\n#DDB\n\n");
        for entry in &self.ddb {
            let _ = writeln!(out, "{} = \"{}\"", entry.key, entry.value);
        }
        out
    }

    /// Whether the descriptor names a parent disk (a delta link).
    #[must_use]
    pub fn has_parent(&self) -> bool {
        self.parent_cid != CID_NO_PARENT || self.parent_file_name_hint.is_some()
    }

    /// Total length of the extents in sectors, `None` on overflow.
    #[must_use]
    pub fn total_sectors(&self) -> Option<u64> {
        self.extents
            .iter()
            .try_fold(0u64, |acc, e| acc.checked_add(e.sectors))
    }
}

fn invalid(line: usize, reason: &'static str) -> VmdkError {
    VmdkError::InvalidDescriptor { line, reason }
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_hex_u32(value: &str) -> Option<u32> {
    if value.is_empty() || value.len() > 8 {
        return None;
    }
    u32::from_str_radix(value, 16).ok()
}

fn parse_decimal(token: &str) -> Option<u64> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn parse_extent(access: Access, rest: &str, line: usize) -> Result<Extent, VmdkError> {
    let rest = rest.trim_start();
    let (sectors, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let sectors = parse_decimal(sectors).ok_or_else(|| invalid(line, "bad extent sector count"))?;
    let rest = rest.trim_start();
    let (kind, rest) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let kind =
        ExtentKind::from_keyword(kind).ok_or_else(|| invalid(line, "unknown extent type"))?;
    let rest = rest.trim();
    let (file, rest) = if rest.is_empty() {
        (None, "")
    } else {
        let quoted = rest
            .strip_prefix('"')
            .ok_or_else(|| invalid(line, "extent file name not quoted"))?;
        let (name, after) = quoted
            .split_once('"')
            .ok_or_else(|| invalid(line, "unterminated extent file name"))?;
        if name.is_empty() {
            return Err(invalid(line, "empty extent file name"));
        }
        (Some(name.to_owned()), after.trim())
    };
    let offset = if rest.is_empty() {
        0
    } else {
        parse_decimal(rest).ok_or_else(|| invalid(line, "bad extent start sector"))?
    };
    match (kind, &file) {
        (ExtentKind::Zero, Some(_)) => return Err(invalid(line, "ZERO extent with a file name")),
        (ExtentKind::Zero, None) => {}
        (_, None) => return Err(invalid(line, "extent without a file name")),
        (_, Some(_)) => {}
    }
    Ok(Extent {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QEMU_FLAT: &str = "# Disk DescriptorFile\nversion=1\nCID=e2a58206\nparentCID=ffffffff\n\
        createType=\"monolithicFlat\"\n\n# Extent description\nRW 10243 FLAT \"d-flat.vmdk\" 0\n\n\
        # The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n   \n";

    #[test]
    fn parse_qemu_flat_descriptor_reads_fields() {
        let d = Descriptor::parse(QEMU_FLAT.as_bytes()).unwrap();
        assert_eq!(d.create_type, "monolithicFlat");
        assert_eq!(d.cid, 0xe2a5_8206);
        assert!(!d.has_parent());
        assert_eq!(
            d.extents,
            vec![Extent {
                access: Access::ReadWrite,
                sectors: 10243,
                kind: ExtentKind::Flat,
                file: Some("d-flat.vmdk".into()),
                offset: 0,
            }]
        );
        assert_eq!(d.ddb.len(), 2);
        assert_eq!(d.ddb[1].value, "ide");
    }

    #[test]
    fn parse_vmfs_extent_without_offset_defaults_to_zero() {
        let text = "createType=\"vmfs\"\nRW 8 VMFS \"x-flat.vmdk\"\n";
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.extents[0].kind, ExtentKind::Vmfs);
        assert_eq!(d.extents[0].offset, 0);
    }

    #[test]
    fn parse_file_name_with_spaces_keeps_them() {
        let text = "createType=\"custom\"\nRDONLY 8 FLAT \"my disk-flat.vmdk\" 16\n";
        let d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.extents[0].file.as_deref(), Some("my disk-flat.vmdk"));
        assert_eq!(d.extents[0].offset, 16);
    }

    #[test]
    fn parse_nul_padding_ends_text() {
        let mut bytes = QEMU_FLAT.as_bytes().to_vec();
        bytes.extend_from_slice(&[0; 100]);
        bytes.extend_from_slice(b"garbage line\n");
        assert!(Descriptor::parse(&bytes).is_ok());
    }

    #[test]
    fn parse_huge_descriptor_is_rejected() {
        let bytes = vec![b'#'; 2 << 20];
        assert!(matches!(
            Descriptor::parse(&bytes),
            Err(VmdkError::DescriptorTooLarge { .. })
        ));
    }

    #[test]
    fn parse_too_many_extents_is_rejected() {
        let mut text = String::from("createType=\"custom\"\n");
        for _ in 0..=MAX_EXTENTS {
            text.push_str("RW 1 ZERO\n");
        }
        assert!(matches!(
            Descriptor::parse(text.as_bytes()),
            Err(VmdkError::TooManyExtents { .. })
        ));
    }

    #[test]
    fn parse_garbage_line_is_rejected() {
        let text = "createType=\"custom\"\nRW 1 ZERO\nhello world\n";
        assert!(matches!(
            Descriptor::parse(text.as_bytes()),
            Err(VmdkError::InvalidDescriptor { line: 3, .. })
        ));
    }

    #[test]
    fn parse_bad_extent_lines_are_rejected() {
        for line in [
            "RW x FLAT \"a\" 0",
            "RW 1 BOGUS \"a\"",
            "RW 1 FLAT a",
            "RW 1 FLAT \"a",
            "RW 1 FLAT \"\"",
            "RW 1 FLAT",
            "RW 1 ZERO \"a\"",
            "RW 1 FLAT \"a\" -3",
            "RW 99999999999999999999999 FLAT \"a\"",
        ] {
            let text = format!("createType=\"custom\"\n{line}\n");
            assert!(
                matches!(
                    Descriptor::parse(text.as_bytes()),
                    Err(VmdkError::InvalidDescriptor { .. })
                ),
                "{line}"
            );
        }
    }

    #[test]
    fn parse_missing_create_type_is_rejected() {
        assert!(matches!(
            Descriptor::parse(b"RW 1 ZERO\n"),
            Err(VmdkError::InvalidDescriptor { line: 0, .. })
        ));
    }

    #[test]
    fn parse_no_extent_is_rejected() {
        assert!(matches!(
            Descriptor::parse(b"createType=\"custom\"\n"),
            Err(VmdkError::NoExtents)
        ));
    }

    fn arb_extent() -> impl Strategy<Value = Extent> {
        let access = prop_oneof![
            Just(Access::ReadWrite),
            Just(Access::ReadOnly),
            Just(Access::NoAccess)
        ];
        let kind = prop_oneof![
            Just(ExtentKind::Flat),
            Just(ExtentKind::Sparse),
            Just(ExtentKind::Zero),
            Just(ExtentKind::Vmfs),
            Just(ExtentKind::VmfsSparse),
            Just(ExtentKind::VmfsRdm),
            Just(ExtentKind::VmfsRaw),
        ];
        (
            access,
            any::<u64>(),
            kind,
            "[a-zA-Z0-9 ._-]{0,20}[a-z]",
            any::<u64>(),
        )
            .prop_map(|(access, sectors, kind, file, offset)| {
                if kind == ExtentKind::Zero {
                    Extent {
                        access,
                        sectors,
                        kind,
                        file: None,
                        offset: 0,
                    }
                } else {
                    Extent {
                        access,
                        sectors,
                        kind,
                        file: Some(file),
                        offset,
                    }
                }
            })
    }

    fn arb_descriptor() -> impl Strategy<Value = Descriptor> {
        (
            1u32..4,
            proptest::option::of("[A-Za-z0-9-]{1,12}"),
            any::<u32>(),
            any::<u32>(),
            "[a-zA-Z0-9]{1,20}",
            proptest::option::of("[a-zA-Z0-9/._-]{1,30}"),
            proptest::collection::vec(arb_extent(), 1..8),
            proptest::collection::vec(("ddb\\.[a-zA-Z0-9.]{1,20}", "[a-zA-Z0-9 ._-]{0,20}"), 0..8),
        )
            .prop_map(
                |(version, encoding, cid, parent_cid, create_type, hint, extents, ddb)| {
                    Descriptor {
                        version,
                        encoding,
                        cid,
                        parent_cid,
                        create_type,
                        parent_file_name_hint: hint,
                        extents,
                        ddb: ddb
                            .into_iter()
                            .map(|(key, value)| DdbEntry {
                                key,
                                value: value.trim().to_owned(),
                            })
                            .collect(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn descriptor_render_parse_round_trips(d in arb_descriptor()) {
            let text = d.render();
            prop_assert_eq!(Descriptor::parse(text.as_bytes()).unwrap(), d);
        }

        #[test]
        fn descriptor_parse_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Descriptor::parse(&bytes);
        }
    }
}
