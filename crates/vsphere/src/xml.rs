//! A small, bounded XML tree for SOAP responses.
//!
//! vCenter answers are parsed into a tree of [`Element`]s with namespace prefixes stripped
//! from element names. The input size, nesting depth and element count are bounded
//! ([`MAX_RESPONSE_BYTES`], [`MAX_DEPTH`], [`MAX_ELEMENTS`]) so a hostile or broken server
//! cannot make us allocate without bound or recurse deeply. Parsing never panics.

use quick_xml::Reader;
use quick_xml::events::{BytesStart, Event};

use crate::error::VsphereError;

/// Largest SOAP response accepted, in bytes.
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Deepest element nesting accepted.
pub const MAX_DEPTH: usize = 64;
/// Most elements accepted in one response.
pub const MAX_ELEMENTS: usize = 400_000;

/// One XML element: local name, attributes, children and concatenated text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    /// Local name (prefix removed).
    pub name: String,
    /// Unprefixed `type` attribute (a managed object reference's type).
    pub mo_type: Option<String>,
    /// `xsi:type` attribute with its prefix removed.
    pub xsi_type: Option<String>,
    /// Child elements in document order.
    pub children: Vec<Self>,
    /// Text content (unescaped), trimmed of surrounding whitespace at the end of parsing.
    pub text: String,
}

impl Element {
    /// First child with this local name.
    pub fn child(&self, name: &str) -> Option<&Self> {
        self.children.iter().find(|c| c.name == name)
    }

    /// All children with this local name.
    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Self> {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// Text of the first child with this name.
    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }

    /// Descend through a path of child names.
    pub fn path(&self, names: &[&str]) -> Option<&Self> {
        let mut cur = self;
        for n in names {
            cur = cur.child(n)?;
        }
        Some(cur)
    }
}

fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

fn strip_prefix_str(v: &str) -> &str {
    match v.rfind(':') {
        Some(i) => &v[i + 1..],
        None => v,
    }
}

fn xml_err(e: impl Into<quick_xml::Error>) -> VsphereError {
    VsphereError::Xml { source: e.into() }
}

fn start_element(e: &BytesStart<'_>) -> Result<Element, VsphereError> {
    let mut el = Element {
        name: String::from_utf8_lossy(local(e.name().as_ref())).into_owned(),
        ..Element::default()
    };
    for attr in e.attributes() {
        let attr = attr.map_err(xml_err)?;
        let key = attr.key.as_ref();
        if key == b"type" {
            let v = attr.unescape_value().map_err(xml_err)?;
            el.mo_type = Some(v.into_owned());
        } else if local(key) == b"type" && key.len() > 4 {
            let v = attr.unescape_value().map_err(xml_err)?;
            el.xsi_type = Some(strip_prefix_str(&v).to_owned());
        }
    }
    Ok(el)
}

/// Parse a whole document into its root element.
///
/// # Errors
/// [`VsphereError::XmlLimit`] when a bound is exceeded, [`VsphereError::Xml`] when the input
/// is not well-formed, [`VsphereError::UnexpectedResponse`] when there is no root element.
pub fn parse(input: &[u8]) -> Result<Element, VsphereError> {
    if input.len() > MAX_RESPONSE_BYTES {
        return Err(VsphereError::XmlLimit {
            limit: "response size",
        });
    }
    let mut reader = Reader::from_reader(input);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut count = 0usize;
    loop {
        let ev = reader.read_event().map_err(xml_err)?;
        match ev {
            Event::Start(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(VsphereError::XmlLimit {
                        limit: "element count",
                    });
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(VsphereError::XmlLimit {
                        limit: "nesting depth",
                    });
                }
                if root.is_some() {
                    return Err(VsphereError::UnexpectedResponse {
                        what: "content after the root element",
                    });
                }
                stack.push(start_element(&e)?);
            }
            Event::Empty(e) => {
                count += 1;
                if count > MAX_ELEMENTS {
                    return Err(VsphereError::XmlLimit {
                        limit: "element count",
                    });
                }
                let el = start_element(&e)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None if root.is_none() => root = Some(el),
                    None => {
                        return Err(VsphereError::UnexpectedResponse {
                            what: "content after the root element",
                        });
                    }
                }
            }
            Event::End(_) => {
                // quick-xml checks that end names match start names.
                let Some(mut el) = stack.pop() else {
                    return Err(VsphereError::UnexpectedResponse {
                        what: "unbalanced end tag",
                    });
                };
                let trimmed = el.text.trim();
                if trimmed.len() != el.text.len() {
                    el.text = trimmed.to_owned();
                }
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => root = Some(el),
                }
            }
            Event::Text(t) => {
                if let Some(top) = stack.last_mut() {
                    let s = t.unescape().map_err(xml_err)?;
                    top.text.push_str(&s);
                }
            }
            Event::CData(c) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&c));
                }
            }
            Event::Eof => break,
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
    if !stack.is_empty() {
        return Err(VsphereError::UnexpectedResponse {
            what: "truncated XML document",
        });
    }
    root.ok_or(VsphereError::UnexpectedResponse {
        what: "empty XML document",
    })
}

/// Escape text for use in element content or attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_nested_with_prefixes_strips_prefixes() {
        let doc = br#"<?xml version="1.0"?><s:Envelope xmlns:s="x" xmlns:xsi="y"><s:Body><a type="VirtualMachine" xsi:type="vim25:ManagedObjectReference">vm-1</a></s:Body></s:Envelope>"#;
        let root = parse(doc).unwrap();
        let a = root.path(&["Body", "a"]).unwrap();
        assert_eq!(
            (a.text.as_str(), a.mo_type.as_deref(), a.xsi_type.as_deref()),
            (
                "vm-1",
                Some("VirtualMachine"),
                Some("ManagedObjectReference")
            )
        );
    }

    #[test]
    fn parse_deep_nesting_is_rejected() {
        let doc = format!(
            "{}{}",
            "<a>".repeat(MAX_DEPTH + 1),
            "</a>".repeat(MAX_DEPTH + 1)
        );
        assert!(matches!(
            parse(doc.as_bytes()),
            Err(VsphereError::XmlLimit { .. })
        ));
    }

    #[test]
    fn parse_mismatched_tags_is_error() {
        assert!(parse(b"<a><b></a></b>").is_err());
    }

    #[test]
    fn parse_truncated_is_error() {
        assert!(parse(b"<a><b>text").is_err());
    }

    #[test]
    fn parse_oversized_is_rejected() {
        let doc = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert!(matches!(parse(&doc), Err(VsphereError::XmlLimit { .. })));
    }

    proptest! {
        #[test]
        fn escape_then_parse_round_trips(s in "\\PC{0,64}") {
            let doc = format!("<a>{}</a>", escape(&s));
            let root = parse(doc.as_bytes()).unwrap();
            prop_assert_eq!(root.text, s.trim());
        }

        #[test]
        fn parse_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse(&b);
        }
    }
}
