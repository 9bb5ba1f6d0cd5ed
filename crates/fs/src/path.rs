//! Validated paths inside a file system.

use crate::error::FsError;

/// Longest path accepted.
const MAX_PATH: usize = 4096;

/// An absolute path inside a file system: `/` separated, no `.` or `..` components, no NUL,
/// at most 4096 bytes. Repeated and trailing slashes are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FsPath {
    components: Vec<String>,
}

impl FsPath {
    /// The root folder.
    #[must_use]
    pub fn root() -> Self {
        Self {
            components: Vec::new(),
        }
    }

    /// Parses a path given by a user.
    ///
    /// # Errors
    /// [`FsError::BadPath`] for a relative path, `.` or `..` components, NUL bytes or more than
    /// 4096 bytes.
    pub fn parse(path: &str) -> Result<Self, FsError> {
        let bad = |reason| FsError::BadPath {
            path: path.chars().take(256).collect(),
            reason,
        };
        if path.len() > MAX_PATH {
            return Err(bad("longer than 4096 bytes"));
        }
        if path.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        let Some(rest) = path.strip_prefix('/') else {
            return Err(bad("not absolute (start it with /)"));
        };
        let mut components = Vec::new();
        for c in rest.split('/') {
            match c {
                "" => {}
                "." | ".." => return Err(bad("contains . or .. components")),
                c => components.push(c.to_owned()),
            }
        }
        Ok(Self { components })
    }

    /// Its components, root first.
    #[must_use]
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Whether it is the root.
    #[must_use]
    pub fn is_root(&self) -> bool {
        self.components.is_empty()
    }

    /// The path of `name` inside this folder.
    ///
    /// # Errors
    /// [`FsError::BadPath`] when `name` is empty, `.`, `..` or contains `/` or NUL.
    pub fn join(&self, name: &str) -> Result<Self, FsError> {
        if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
            return Err(FsError::BadPath {
                path: name.chars().take(256).collect(),
                reason: "not a single file name",
            });
        }
        let mut components = self.components.clone();
        components.push(name.to_owned());
        Ok(Self { components })
    }

    /// The last component (`None` for the root).
    #[must_use]
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }
}

impl std::fmt::Display for FsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.components.is_empty() {
            return f.write_str("/");
        }
        for c in &self.components {
            write!(f, "/{c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            FsPath::parse("//etc//passwd/").unwrap().to_string(),
            "/etc/passwd"
        );
        assert!(FsPath::parse("/").unwrap().is_root());
        for bad in ["etc", "/a/../b", "/./a", "/a\0b", ""] {
            assert!(FsPath::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(FsPath::parse(&format!("/{}", "a".repeat(5000))).is_err());
        assert!(FsPath::root().join("..").is_err());
        assert_eq!(FsPath::root().join("x").unwrap().to_string(), "/x");
    }
}
