//! Web console users (DESIGN.md "Identities and trust"): create, list, delete, change a
//! password, and check a login.
//!
//! Passwords are hashed with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes, one
//! lane; OWASP's recommendation) with a 16-byte salt from the system's random source, and stored
//! as PHC strings in the catalog ([`sendense_catalog::UserRecord`]). A login for an unknown user
//! verifies against a dummy hash, so the answer takes the same time whether the user exists
//! or not. Passwords are never logged, answered or kept beyond the call. Every method here
//! blocks (argon2 costs tens of milliseconds on purpose): call them off the async threads.
//!
//! Console sessions are kept in the catalog ([`sendense_catalog::SessionRecord`]) so that
//! they survive a hub restart. The cookie holds 32 random bytes in hex; the catalog holds only
//! their SHA-256, so neither a copy of the catalog nor the lookup's timing yields a usable
//! cookie. A session ends [`SESSION_IDLE`] after its last request, [`SESSION_MAX_AGE`] after
//! sign-in, at sign-out, and when its user is deleted or gets a new password (the catalog
//! removes the user's sessions in the same transaction). Expired sessions are removed at
//! every sign-in and when the hub starts.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use ring::rand::{SecureRandom, SystemRandom};
use sendense_catalog::{Catalog, SessionRecord, UserRecord};
use sendense_types::{
    CreateUserRequest, Role, SetPasswordRequest, Timestamp, User, UserList, UserName,
};

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

/// A session ends this long (seconds) after its last request.
pub const SESSION_IDLE: i64 = 60 * 60;
/// A session ends this long (seconds) after sign-in, whatever happens.
pub const SESSION_MAX_AGE: i64 = 12 * 60 * 60;
/// A request moves a session's end only when it moves by at least this much (seconds), so
/// that a busy page costs a catalog write a minute, not one a request.
const SESSION_EXTEND_STEP: i64 = 60;
/// Most sessions held at once (the oldest go first beyond it).
const MAX_SESSIONS: usize = 10_000;

/// A live console session as a request sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// The signed-in user.
    pub user: UserName,
    /// The session's CSRF token.
    pub csrf: String,
    /// The user's password fingerprint at sign-in.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for ConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSession")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// The catalog's key of a session token: its SHA-256 in hex.
#[must_use]
pub fn session_key(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 random bytes from the system's random source, in hex.
///
/// # Errors
/// [`HubError::PasswordHash`] if the random source fails.
pub fn random_token() -> Result<String, HubError> {
    let mut raw = [0u8; 32];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| HubError::PasswordHash {
            reason: "the system's random source failed".into(),
        })?;
    Ok(hex(&raw))
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
        let pruned = catalog.prune_sessions(Timestamp::now())?;
        if pruned > 0 {
            tracing::debug!(pruned, "expired console sessions removed");
        }
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

    /// Changes a user's role; their sessions keep going with the new role.
    ///
    /// # Errors
    /// Unknown user (not found); storage errors.
    pub fn set_role(&self, name: &UserName, role: Role) -> Result<User, HubError> {
        let record = self.catalog.set_user_role(name, role)?;
        tracing::info!(user = %name, %role, "console user's role changed");
        Ok(record.to_api())
    }

    /// Starts a console session for the user of `stamp` (just signed in): answers the cookie's
    /// token. Sessions expired by now are removed first.
    ///
    /// # Errors
    /// The random source or the catalog fails.
    pub fn start_session(&self, stamp: &SignInStamp) -> Result<String, HubError> {
        let token = random_token()?;
        let now = Timestamp::now();
        let record = SessionRecord {
            user: stamp.user.name.clone(),
            csrf: random_token()?,
            fingerprint: hex(&stamp.fingerprint),
            started_at: now,
            expires_at: now.saturating_add_seconds(SESSION_IDLE),
        };
        self.catalog
            .put_session(&session_key(&token), &record, now, MAX_SESSIONS)?;
        Ok(token)
    }

    /// The live session of `token`, its end moved to an idle period from now (within the
    /// session's maximum age); `None` for an unknown or expired token (an expired one is
    /// removed).
    ///
    /// # Errors
    /// Storage errors.
    pub fn session(&self, token: &str) -> Result<Option<ConsoleSession>, HubError> {
        self.session_at(token, Timestamp::now())
    }

    /// [`Self::session`] at `now`.
    ///
    /// # Errors
    /// Storage errors.
    pub fn session_at(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<Option<ConsoleSession>, HubError> {
        let key = session_key(token);
        let Some(record) = self.catalog.session(&key)? else {
            return Ok(None);
        };
        if record.expires_at <= now {
            self.catalog.delete_session(&key)?;
            return Ok(None);
        }
        let end = now
            .saturating_add_seconds(SESSION_IDLE)
            .min(record.started_at.saturating_add_seconds(SESSION_MAX_AGE));
        if end.unix_seconds() - record.expires_at.unix_seconds() >= SESSION_EXTEND_STEP {
            self.catalog.extend_session(&key, end)?;
        }
        let mut fingerprint = [0u8; 32];
        for (i, out) in fingerprint.iter_mut().enumerate() {
            *out = record
                .fingerprint
                .get(2 * i..2 * i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .unwrap_or(0);
        }
        Ok(Some(ConsoleSession {
            user: record.user,
            csrf: record.csrf,
            fingerprint,
        }))
    }

    /// Ends the session of `token` (sign-out); nothing if there is none.
    ///
    /// # Errors
    /// Storage errors.
    pub fn end_session(&self, token: &str) -> Result<(), HubError> {
        self.catalog.delete_session(&session_key(token))?;
        Ok(())
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

    #[test]
    fn a_session_survives_a_new_users_service_on_the_same_catalog_and_ends_at_sign_out() {
        let dir = tempfile::tempdir().unwrap();
        let token = {
            let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
            let users = Users::new(catalog).unwrap();
            users
                .create(&request("alice", Role::Operator, "correct horse"))
                .unwrap();
            let stamp = users
                .authenticate("alice", "correct horse")
                .unwrap()
                .unwrap();
            users.start_session(&stamp).unwrap()
        };
        // As after a hub restart: the catalog opened again, a new service.
        let catalog = Arc::new(Catalog::open_in(dir.path()).unwrap());
        let users = Users::new(Arc::clone(&catalog)).unwrap();

        let found = users.session(&token).unwrap();
        let forged = users.session(&random_token().unwrap()).unwrap();
        let stored: Vec<String> = catalog
            .sessions()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        users.end_session(&token).unwrap();

        let found = found.unwrap();
        assert_eq!(found.user.as_str(), "alice");
        assert_eq!(found.csrf.len(), 64);
        assert!(forged.is_none());
        assert_eq!(
            stored,
            [session_key(&token)],
            "only the token's hash is stored"
        );
        assert!(users.session(&token).unwrap().is_none());
    }

    #[test]
    fn a_session_expires_when_idle_and_at_its_maximum_age_and_is_removed() {
        let (_dir, users) = users();
        users
            .create(&request("alice", Role::Viewer, "correct horse"))
            .unwrap();
        let stamp = users
            .authenticate("alice", "correct horse")
            .unwrap()
            .unwrap();
        let token = users.start_session(&stamp).unwrap();
        let t0 = Timestamp::now();
        let at = |s: i64| t0.saturating_add_seconds(s);

        // A request every 50 minutes keeps it going until 12 hours after sign-in.
        let mut alive_at = Vec::new();
        let mut t = 0;
        while t < SESSION_MAX_AGE + 3_000 {
            alive_at.push((t, users.session_at(&token, at(t)).unwrap().is_some()));
            t += 3_000;
        }
        let idle = users.start_session(&stamp).unwrap();
        let after_idle = users.session_at(&idle, at(SESSION_IDLE + 1)).unwrap();
        let gone = users.session_at(&idle, at(1)).unwrap();

        assert!(
            alive_at
                .iter()
                .all(|(t, alive)| *alive == (*t < SESSION_MAX_AGE - 60)),
            "{alive_at:?}"
        );
        assert!(after_idle.is_none());
        assert!(gone.is_none(), "an expired session is removed when found");
    }

    #[test]
    fn a_new_password_ends_the_users_sessions() {
        let (_dir, users) = users();
        users
            .create(&request("alice", Role::Admin, "first password"))
            .unwrap();
        let stamp = users
            .authenticate("alice", "first password")
            .unwrap()
            .unwrap();
        let token = users.start_session(&stamp).unwrap();

        users
            .set_password(
                &"alice".parse().unwrap(),
                &SetPasswordRequest::new("second password".into()).unwrap(),
            )
            .unwrap();

        assert!(users.session(&token).unwrap().is_none());
    }

    #[test]
    fn set_role_changes_the_role_a_session_sees() {
        let (_dir, users) = users();
        users
            .create(&request("bob", Role::Viewer, "bob password"))
            .unwrap();
        let name: UserName = "bob".parse().unwrap();

        let changed = users.set_role(&name, Role::Operator).unwrap();

        assert_eq!(changed.role, Role::Operator);
        assert_eq!(
            users.stamp(&name).unwrap().unwrap().user.role,
            Role::Operator
        );
    }
}
