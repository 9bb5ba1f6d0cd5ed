//! S3 Object Lock configuration documents, as a store answers `GET /{bucket}?object-lock`
//! (GetObjectLockConfiguration) and the hub sends with `PUT /{bucket}?object-lock`
//! (PutObjectLockConfiguration), and the `<Error>` document an S3 store answers a refused
//! request with.
//!
//! From the S3 API reference (`ObjectLockConfiguration`):
//!
//! ```xml
//! <ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
//!   <ObjectLockEnabled>Enabled</ObjectLockEnabled>
//!   <Rule><DefaultRetention><Mode>COMPLIANCE</Mode><Days>7</Days></DefaultRetention></Rule>
//! </ObjectLockConfiguration>
//! ```
//!
//! "`Days`: the number of days that you want to specify for the default retention period.
//! Must be used with `Mode`"; "`Years`: ... Must be used with `Mode`"; a rule names either
//! `Days` or `Years`, not both. `ObjectLockEnabled` has the single valid value `Enabled`.
//!
//! Parsing is bounded ([`MAX_XML_BYTES`], [`MAX_DEPTH`], [`MAX_TEXT`]), ignores elements it
//! does not know (stores add their own), refuses a field given twice, and never panics: these
//! are bytes from outside (fuzz target `tier_lock_xml`).

use quick_xml::Reader;
use quick_xml::events::Event;

use crate::error::TierError;

/// Largest document accepted.
pub const MAX_XML_BYTES: usize = 64 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 16;
/// Longest text of one element kept (an error message is cut there).
pub const MAX_TEXT: usize = 1024;
/// The S3 namespace of the documents.
pub const S3_NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// A retention mode (S3 `ObjectLockRetentionMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Users with a special permission (`s3:BypassGovernanceRetention`) may shorten or
    /// remove the retention, and delete locked versions.
    Governance,
    /// Nobody, not even the account's root user, can shorten or remove the retention or
    /// delete a locked version before it expires.
    Compliance,
}

impl LockMode {
    /// The mode's name in the documents.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Governance => "GOVERNANCE",
            Self::Compliance => "COMPLIANCE",
        }
    }
}

/// How long a default retention lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionPeriod {
    /// So many days.
    Days(u32),
    /// So many years.
    Years(u32),
}

/// A bucket's default retention: every new object version is locked for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultRetention {
    /// The mode.
    pub mode: LockMode,
    /// The period.
    pub period: RetentionPeriod,
}

/// A bucket's Object Lock configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockConfiguration {
    /// Whether the bucket has Object Lock enabled (`ObjectLockEnabled` is `Enabled`).
    pub enabled: bool,
    /// The default retention, when the bucket has one.
    pub default_retention: Option<DefaultRetention>,
}

impl LockConfiguration {
    /// Object Lock enabled with a default retention of `days` days in `mode`.
    #[must_use]
    pub fn days(mode: LockMode, days: u32) -> Self {
        Self {
            enabled: true,
            default_retention: Some(DefaultRetention {
                mode,
                period: RetentionPeriod::Days(days),
            }),
        }
    }

    /// Parses an `ObjectLockConfiguration` document.
    ///
    /// # Errors
    /// [`TierError::Xml`] when it is larger than [`MAX_XML_BYTES`], nested deeper than
    /// [`MAX_DEPTH`], not well-formed, not an `ObjectLockConfiguration`, gives a field twice,
    /// or holds an unknown mode, a period that is not a positive number, both `Days` and
    /// `Years`, a period without a mode, or an `ObjectLockEnabled` other than `Enabled`.
    pub fn decode(bytes: &[u8]) -> Result<Self, TierError> {
        let fields = Fields::read(bytes, "ObjectLockConfiguration", &LOCK_PATHS)?;
        let [enabled, mode, days, years] = fields.0;
        let enabled = match enabled.as_deref() {
            None => false,
            Some("Enabled") => true,
            Some(_) => return Err(xml("ObjectLockEnabled is not `Enabled`")),
        };
        let mode = match mode.as_deref() {
            None => None,
            Some("COMPLIANCE") => Some(LockMode::Compliance),
            Some("GOVERNANCE") => Some(LockMode::Governance),
            Some(_) => return Err(xml("unknown retention Mode")),
        };
        let period = match (days.as_deref(), years.as_deref()) {
            (None, None) => None,
            (Some(d), None) => Some(RetentionPeriod::Days(positive(d)?)),
            (None, Some(y)) => Some(RetentionPeriod::Years(positive(y)?)),
            (Some(_), Some(_)) => return Err(xml("a retention gives both Days and Years")),
        };
        let default_retention = match (mode, period) {
            (None, None) => None,
            (Some(mode), Some(period)) => Some(DefaultRetention { mode, period }),
            _ => return Err(xml("a default retention needs both a Mode and a period")),
        };
        Ok(Self {
            enabled,
            default_retention,
        })
    }

    /// The `ObjectLockConfiguration` document (a PutObjectLockConfiguration body).
    #[must_use]
    pub fn encode(&self) -> String {
        let mut out = format!(r#"<ObjectLockConfiguration xmlns="{S3_NAMESPACE}">"#);
        if self.enabled {
            out.push_str("<ObjectLockEnabled>Enabled</ObjectLockEnabled>");
        }
        if let Some(r) = self.default_retention {
            let period = match r.period {
                RetentionPeriod::Days(d) => format!("<Days>{d}</Days>"),
                RetentionPeriod::Years(y) => format!("<Years>{y}</Years>"),
            };
            out.push_str(&format!(
                "<Rule><DefaultRetention><Mode>{}</Mode>{period}</DefaultRetention></Rule>",
                r.mode.as_str()
            ));
        }
        out.push_str("</ObjectLockConfiguration>");
        out
    }
}

/// The `Code` and `Message` of an S3 `<Error>` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3ErrorBody {
    /// The error code (`NotImplemented`, `AccessDenied`, ...); empty when absent.
    pub code: String,
    /// The message, cut at [`MAX_TEXT`] bytes; empty when absent.
    pub message: String,
}

impl S3ErrorBody {
    /// Parses an `<Error>` document.
    ///
    /// # Errors
    /// [`TierError::Xml`] when it is not a bounded, well-formed `<Error>` document.
    pub fn decode(bytes: &[u8]) -> Result<Self, TierError> {
        let fields = Fields::read(bytes, "Error", &ERROR_PATHS)?;
        let [code, message] = fields.0;
        Ok(Self {
            code: code.unwrap_or_default(),
            message: message.unwrap_or_default(),
        })
    }
}

/// Where each field of a lock configuration lies below the root.
const LOCK_PATHS: [&[&str]; 4] = [
    &["ObjectLockEnabled"],
    &["Rule", "DefaultRetention", "Mode"],
    &["Rule", "DefaultRetention", "Days"],
    &["Rule", "DefaultRetention", "Years"],
];
/// Where each field of an error lies below the root.
const ERROR_PATHS: [&[&str]; 2] = [&["Code"], &["Message"]];

/// The texts found at `N` element paths below a root element.
struct Fields<const N: usize>([Option<String>; N]);

impl<const N: usize> Fields<N> {
    /// Reads the document: its root must be named `root`; the text at each of `paths`
    /// (element local names below the root) is kept, trimmed; anything else is skipped.
    fn read(bytes: &[u8], root: &str, paths: &[&[&str]; N]) -> Result<Self, TierError> {
        if bytes.len() > MAX_XML_BYTES {
            return Err(xml("document too large"));
        }
        let mut reader = Reader::from_reader(bytes);
        let mut stack: Vec<String> = Vec::new();
        let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
        let mut seen_root = false;
        loop {
            match reader
                .read_event()
                .map_err(|_| xml("not well-formed XML"))?
            {
                Event::Start(e) => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(xml("nested too deeply"));
                    }
                    let name = local_name(e.name().as_ref());
                    if stack.is_empty() {
                        if seen_root || name != root {
                            return Err(xml("unexpected root element"));
                        }
                        seen_root = true;
                    }
                    stack.push(name);
                    if let Some(i) = slot(&stack, paths) {
                        set(&mut found[i], String::new())?;
                    }
                }
                Event::Empty(e) => {
                    let name = local_name(e.name().as_ref());
                    if stack.is_empty() {
                        // An empty root: a document with no field.
                        if seen_root || name != root {
                            return Err(xml("unexpected root element"));
                        }
                        seen_root = true;
                        continue;
                    }
                    // An empty element gives an empty field.
                    stack.push(name);
                    let slot = slot(&stack, paths);
                    stack.pop();
                    if let Some(i) = slot {
                        set(&mut found[i], String::new())?;
                    }
                }
                Event::End(_) => {
                    stack.pop();
                }
                Event::Text(t) => {
                    let text = t.unescape().map_err(|_| xml("bad character reference"))?;
                    if let Some(i) = slot(&stack, paths) {
                        append(&mut found[i], &text);
                    }
                }
                Event::CData(c) => {
                    if let Some(i) = slot(&stack, paths) {
                        append(&mut found[i], &String::from_utf8_lossy(&c));
                    }
                }
                Event::Eof => break,
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
            }
        }
        if !seen_root || !stack.is_empty() {
            return Err(xml("truncated or empty document"));
        }
        for f in found.iter_mut().flatten() {
            let trimmed = f.trim();
            if trimmed.len() != f.len() {
                *f = trimmed.to_owned();
            }
        }
        Ok(Self(found))
    }
}

/// Which of `paths` the open elements `stack` (root first) stand at.
fn slot(stack: &[String], paths: &[&[&str]]) -> Option<usize> {
    let below_root = stack.get(1..)?;
    paths
        .iter()
        .position(|p| p.len() == below_root.len() && p.iter().zip(below_root).all(|(a, b)| *a == b))
}

/// Starts a field (refusing one given twice).
fn set(field: &mut Option<String>, text: String) -> Result<(), TierError> {
    if field.is_some() {
        return Err(xml("a field is given twice"));
    }
    *field = Some(text);
    Ok(())
}

/// Adds text to a field (started by its element), up to [`MAX_TEXT`] bytes (cut at a
/// character boundary).
fn append(field: &mut Option<String>, text: &str) {
    let Some(f) = field else {
        return;
    };
    for c in text.chars() {
        if f.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        f.push(c);
    }
}

fn local_name(name: &[u8]) -> String {
    let local = match name.iter().rposition(|&b| b == b':') {
        Some(i) => name.get(i + 1..).unwrap_or_default(),
        None => name,
    };
    String::from_utf8_lossy(local).into_owned()
}

fn positive(text: &str) -> Result<u32, TierError> {
    match text.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(xml("a retention period is not a positive number")),
    }
}

fn xml(reason: &'static str) -> TierError {
    TierError::Xml { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An answer in the form of the S3 API reference's GetObjectLockConfiguration example.
    const ENABLED_7_DAYS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ObjectLockConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
   <ObjectLockEnabled>Enabled</ObjectLockEnabled>
   <Rule>
      <DefaultRetention>
         <Mode>COMPLIANCE</Mode>
         <Days>7</Days>
      </DefaultRetention>
   </Rule>
</ObjectLockConfiguration>"#;

    #[test]
    fn decode_enabled_with_default_retention_reads_mode_and_days() {
        let config = LockConfiguration::decode(ENABLED_7_DAYS.as_bytes()).unwrap();

        assert_eq!(config, LockConfiguration::days(LockMode::Compliance, 7));
    }

    #[test]
    fn decode_enabled_without_rule_has_no_default_retention() {
        let doc = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>\
                    </ObjectLockConfiguration>";

        let config = LockConfiguration::decode(doc).unwrap();

        assert_eq!(
            config,
            LockConfiguration {
                enabled: true,
                default_retention: None
            }
        );
    }

    #[test]
    fn decode_without_enabled_is_not_enabled() {
        let config = LockConfiguration::decode(b"<ObjectLockConfiguration/>").unwrap();

        assert!(!config.enabled);
    }

    #[test]
    fn decode_both_days_and_years_is_refused() {
        let doc = b"<ObjectLockConfiguration><Rule><DefaultRetention><Mode>GOVERNANCE</Mode>\
                    <Days>1</Days><Years>1</Years></DefaultRetention></Rule></ObjectLockConfiguration>";

        assert!(LockConfiguration::decode(doc).is_err());
    }

    #[test]
    fn decode_field_given_twice_is_refused() {
        let doc = b"<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled>\
                    <ObjectLockEnabled>Enabled</ObjectLockEnabled></ObjectLockConfiguration>";

        assert!(LockConfiguration::decode(doc).is_err());
    }

    #[test]
    fn decode_other_root_is_refused() {
        let err = LockConfiguration::decode(b"<Error><Code>NotImplemented</Code></Error>");

        assert!(matches!(err, Err(TierError::Xml { .. })), "{err:?}");
    }

    #[test]
    fn decode_deep_nesting_is_refused() {
        let doc = format!(
            "<ObjectLockConfiguration>{}{}</ObjectLockConfiguration>",
            "<a>".repeat(MAX_DEPTH),
            "</a>".repeat(MAX_DEPTH)
        );

        assert!(LockConfiguration::decode(doc.as_bytes()).is_err());
    }

    #[test]
    fn decode_truncated_document_is_refused() {
        let cut = &ENABLED_7_DAYS.as_bytes()[..ENABLED_7_DAYS.len() - 10];

        assert!(LockConfiguration::decode(cut).is_err());
    }

    #[test]
    fn error_body_of_garage_not_implemented_reads_code_and_message() {
        // As Garage 2.5 answers GetObjectLockConfiguration (garage_api_common's error XML).
        let doc = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>NotImplemented</Code>\
                    <Message>Not implemented: GetObjectLockConfiguration</Message>\
                    <Resource>/sendense-e2e</Resource><Region>garage</Region></Error>";

        let body = S3ErrorBody::decode(doc).unwrap();

        assert_eq!(
            body,
            S3ErrorBody {
                code: "NotImplemented".into(),
                message: "Not implemented: GetObjectLockConfiguration".into()
            }
        );
    }

    #[test]
    fn error_body_long_message_is_cut() {
        let doc = format!("<Error><Message>{}</Message></Error>", "é".repeat(MAX_TEXT));

        let body = S3ErrorBody::decode(doc.as_bytes()).unwrap();

        assert!(body.message.len() <= MAX_TEXT && body.message.len() > MAX_TEXT - 2);
    }

    fn config() -> impl Strategy<Value = LockConfiguration> {
        let mode = prop_oneof![Just(LockMode::Compliance), Just(LockMode::Governance)];
        let period = prop_oneof![
            (1u32..).prop_map(RetentionPeriod::Days),
            (1u32..).prop_map(RetentionPeriod::Years)
        ];
        let retention = proptest::option::of(
            (mode, period).prop_map(|(mode, period)| DefaultRetention { mode, period }),
        );
        (any::<bool>(), retention).prop_map(|(enabled, default_retention)| LockConfiguration {
            enabled,
            default_retention,
        })
    }

    proptest! {
        #[test]
        fn decode_of_encode_is_identity(c in config()) {
            prop_assert_eq!(LockConfiguration::decode(c.encode().as_bytes()), Ok(c));
        }
    }
}
