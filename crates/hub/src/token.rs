//! The REST API's bearer token: `DATA/api.token`, 64 hex characters, mode
//! 0600, created on first start and reused afterwards.

use std::fs;
use std::path::Path;

use crate::error::HubError;
use crate::tls::write_file;

/// Token file name inside the data folder.
pub const TOKEN_FILE: &str = "api.token";

/// Reads the token in `data_dir`, creating a random one on first start.
///
/// # Errors
/// The file cannot be read or written, or holds no token.
pub fn load_or_create(data_dir: &Path) -> Result<String, HubError> {
    let path = data_dir.join(TOKEN_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_owned();
            if token.len() < 32 {
                return Err(HubError::Io {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "token file holds fewer than 32 characters; remove it to make a new one",
                    ),
                });
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // ThreadRng is a CSPRNG seeded from the OS.
            let raw: [u8; 32] = rand::random();
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            write_file(&path, format!("{token}\n").as_bytes(), 0o600)?;
            Ok(token)
        }
        Err(source) => Err(HubError::Io { path, source }),
    }
}

/// Compares two tokens in time independent of where they differ.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn load_or_create_first_time_writes_private_file_then_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        let mode = fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
    }

    #[test]
    fn matches_only_equal_tokens() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd"));
        assert!(!matches("abc", "ab"));
    }
}
