//! Web console users (DESIGN.md "Identities and trust"): create, list, delete, change a
//! password, and check a login.
//!
//! Passwords are hashed with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, one
//! lane; OWASP's recommendation) with a 16-byte salt from the system's random source, and stored
//! as PHC strings in the catalog ([`sendense_catalog::UserRecord`]). A login for an unknown user
//! verifies against a dummy hash, so the answer takes the same time whether the user exists
//! or not. Passwords are never logged, answered or kept beyond the call. Every method here
//! blocks (argon2 costs tens of milliseconds on purpose): call them off the async threads.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};
use sendense_catalog::{Catalog, UserRecord};
use sendense_types::{CreateUserRequest, SetPasswordRequest, Timestamp, User, UserList, UserName};

use crate::error::HubError;

/// A user as a console session sees it: the user, and a fingerprint of their stored password
/// hash (its SHA-256), which changes with every new password (each hash has a fresh salt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInStamp {
    /// The user.
    pub user: User,
    /// SHA-256 of the stored PHC string.
    pub fingerprint: [u8; 32],
}

impl SignInStamp {
    fn of(record: &UserRecord) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, record.password_hash.as_bytes());
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(d.as_ref());
        Self {
            user: record.to_api(),
            fingerprint,
        }
    }
}

/// The console's users.
#[derive(Debug)]
pub struct Users {
    catalog: Arc<Catalog>,
    /// Verified against when the user is unknown, so that the time taken does not tell.
    dummy_hash: String,
}

impl Users {
    /// The users stored in `catalog`.
    ///
    /// # Errors
    /// [`HubError::PasswordHash`] if the system's random source fails.
    pub fn new(catalog: Arc<Catalog>) -> Result<Self, HubError> {
        let dummy_hash = hash("not a password of anyone")?;
        Ok(Self {
            catalog,
            dummy_hash,
        })
    }

    /// Creates a user.
    ///
    /// # Errors
    /// A user of that name exists (conflict); hashing or storage errors.
    pub fn create(&self, req: &CreateUserRequest) -> Result<User, HubError> {
        let now = Timestamp::now();
        let record = UserRecord {
            name: req.name().clone(),
            role: req.role(),
            password_hash: hash(req.password())?,
            created_at: now,
            password_changed_at: now,
        };
        self.catalog.create_user(&record)?;
        tracing::info!(user = %record.name, role = %record.role, "console user created");
        Ok(record.to_api())
    }

    /// Every user, by name.
    ///
    /// # Errors
    /// Storage errors.
    pub fn list(&self) -> Result<UserList, HubError> {
        Ok(UserList {
            users: self
                .catalog
                .users()?
                .iter()
                .map(UserRecord::to_api)
                .collect(),
        })
    }

    /// One user.
    ///
    /// # Errors
    /// Unknown user (not found); storage errors.
    pub fn user(&self, name: &UserName) -> Result<User, HubError> {
        self.catalog.user(name)?.map(|r| r.to_api()).ok_or_else(|| {
            sendense_catalog::CatalogError::UserNotFound { name: name.clone() }.into()
        })
    }

    /// Deletes a user; answers what it was.
    ///
    /// # Errors
    /// Unknown user (not found); storage errors.
    pub fn delete(&self, name: &UserName) -> Result<User, HubError> {
        let record = self.catalog.delete_user(name)?;
        tracing::info!(user = %name, "console user deleted");
        Ok(record.to_api())
    }

    /// Sets a user's password.
    ///
    /// # Errors
    /// Unknown user (not found); hashing or storage errors.
    pub fn set_password(
        &self,
        name: &UserName,
        req: &SetPasswordRequest,
    ) -> Result<User, HubError> {
        let record =
            self.catalog
                .set_user_password(name, hash(req.password())?, Timestamp::now())?;
        tracing::info!(user = %name, "console user's password changed");
        Ok(record.to_api())
    }

    /// The user `name` and their password's fingerprint, if they exist (what a console session
    /// checks on every request).
    ///
    /// # Errors
    /// Storage errors.
    pub fn stamp(&self, name: &UserName) -> Result<Option<SignInStamp>, HubError> {
        Ok(self.catalog.user(name)?.as_ref().map(SignInStamp::of))
    }

    /// The user `name` when `password` is theirs; `None` for an unknown user or a wrong
    /// password (the same time either way).
    ///
    /// # Errors
    /// Storage errors; a stored hash that is not a PHC string.
    pub fn authenticate(
        &self,
        name: &str,
        password: &str,
    ) -> Result<Option<SignInStamp>, HubError> {
        let record = match name.parse::<UserName>() {
            Ok(name) => self.catalog.user(&name)?,
            Err(_) => None,
        };
        let stored = record
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |r| r.password_hash.as_str());
        let parsed = PasswordHash::new(stored).map_err(|e| HubError::PasswordHash {
            reason: e.to_string(),
        })?;
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(record.filter(|_| matches).as_ref().map(SignInStamp::of))
    }
}

/// The argon2id PHC string of `password` with a fresh random salt.
fn hash(password: &str) -> Result<String, HubError> {
    let mut salt = [0u8; 16];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| HubError::PasswordHash {
            reason: "the system's random source failed".into(),
        })?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HubError::PasswordHash {
        reason: e.to_string(),
    })?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HubError::PasswordHash {
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use sendense_types::Role;

    use super::*;

    fn users() -> (tempfile::TempDir, Users) {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        (dir, Users::new(catalog).unwrap())
    }

    fn request(name: &str, role: Role, password: &str) -> CreateUserRequest {
        CreateUserRequest::new(name.parse().unwrap(), role, password.into()).unwrap()
    }

    #[test]
    fn authenticate_right_password_only() {
        let (_dir, users) = users();
        users
            .create(&request("alice", Role::Operator, "correct horse"))
            .unwrap();

        let right = users.authenticate("alice", "correct horse").unwrap();
        let wrong = users.authenticate("alice", "wrong horse").unwrap();
        let unknown = users.authenticate("bob", "correct horse").unwrap();
        let invalid = users.authenticate("../x", "correct horse").unwrap();

        assert_eq!(right.map(|s| s.user.role), Some(Role::Operator));
        assert_eq!((wrong, unknown, invalid), (None, None, None));
    }

    #[test]
    fn stored_hash_is_argon2id_and_not_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        let users = Users::new(Arc::clone(&catalog)).unwrap();

        users
            .create(&request("alice", Role::Admin, "correct horse"))
            .unwrap();
        let stored = catalog.user(&"alice".parse().unwrap()).unwrap().unwrap();

        assert!(stored.password_hash.starts_with("$argon2id$v=19$"));
        assert!(!stored.password_hash.contains("correct horse"));
    }

    #[test]
    fn set_password_replaces_the_old_one() {
        let (_dir, users) = users();
        users
            .create(&request("alice", Role::Viewer, "first password"))
            .unwrap();
        let name: UserName = "alice".parse().unwrap();

        let before = users.stamp(&name).unwrap().unwrap();

        users
            .set_password(
                &name,
                &SetPasswordRequest::new("second password".into()).unwrap(),
            )
            .unwrap();

        assert!(
            users
                .authenticate("alice", "first password")
                .unwrap()
                .is_none()
        );
        let after = users
            .authenticate("alice", "second password")
            .unwrap()
            .unwrap();
        assert_ne!(before.fingerprint, after.fingerprint);
    }
}
