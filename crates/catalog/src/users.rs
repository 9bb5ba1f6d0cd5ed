//! Web console users (DESIGN.md "Identities and trust"): name, role and argon2id password hash.
//!
//! Table (created at open when missing, like every table here; files written before it simply
//! lack it, so it needs no new schema version, and older builds ignore it):
//!
//! | table | key | value |
//! |---|---|---|
//! | `users` | user name | JSON [`UserRecord`] |
//! | `console_sessions` | SHA-256 (hex) of a session's cookie token | JSON [`SessionRecord`] |
//!
//! The catalog stores the hash as the hub made it (a PHC string) and never sees a password.
//! Console sessions are kept here so that they survive a hub restart; the catalog never sees a
//! session's token, only its SHA-256 (the token is 32 random bytes: its hash cannot be turned
//! back into a usable cookie). A new password or deleting the user removes that user's
//! sessions in the same transaction.

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use sendense_types::{Role, Timestamp, User, UserName};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, decode, encode, get_json};
use crate::error::CatalogError;

const USERS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("users");
const SESSIONS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("console_sessions");

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// A console user as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's name.
    pub name: UserName,
    /// The user's role.
    pub role: Role,
    /// The argon2id hash of the password, as a PHC string (`$argon2id$v=19$...`).
    pub password_hash: String,
    /// When the user was created.
    pub created_at: Timestamp,
    /// When the password was last set.
    pub password_changed_at: Timestamp,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password_hash", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("password_changed_at", &self.password_changed_at)
            .finish()
    }
}

impl UserRecord {
    /// The user as the API answers it (no hash).
    #[must_use]
    pub fn to_api(&self) -> User {
        User {
            name: self.name.clone(),
            role: self.role,
            created_at: self.created_at,
            password_changed_at: self.password_changed_at,
        }
    }
}

/// A signed-in console session as stored, keyed by the SHA-256 of its cookie's token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The signed-in user.
    pub user: UserName,
    /// The session's CSRF token (every form of the session carries it).
    pub csrf: String,
    /// SHA-256 (hex) of the user's password hash at sign-in: another one now means a new
    /// password, and the session is over.
    pub fingerprint: String,
    /// When the user signed in.
    pub started_at: Timestamp,
    /// When the session ends unless a request extends it.
    pub expires_at: Timestamp,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("user", &self.user)
            .field("csrf", &"<redacted>")
            .field("started_at", &self.started_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Stores a new session under `key` (the SHA-256 hex of its token), after removing the
    /// sessions expired at `now`; beyond `max` sessions, the oldest go first.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn put_session(
        &self,
        key: &str,
        record: &SessionRecord,
        now: Timestamp,
        max: usize,
    ) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SESSIONS)?;
            let mut live = Vec::new();
            let mut expired = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                let s: SessionRecord = decode("console_sessions", k.value(), v.value())?;
                if s.expires_at <= now {
                    expired.push(k.value().to_owned());
                } else {
                    live.push((s.started_at, k.value().to_owned()));
                }
            }
            live.sort();
            let excess = (live.len() + 1).saturating_sub(max.max(1));
            for k in expired
                .iter()
                .chain(live.iter().take(excess).map(|(_, k)| k))
            {
                table.remove(k.as_str())?;
            }
            table.insert(key, encode(record).as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The session stored under `key`, expired or not.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn session(&self, key: &str) -> Result<Option<SessionRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        get_json(&table, "console_sessions", key)
    }

    /// Moves the session's end to `expires_at` (nothing if it is gone).
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn extend_session(&self, key: &str, expires_at: Timestamp) -> Result<()> {
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(SESSIONS)?;
            let found: Option<SessionRecord> = get_json(&table, "console_sessions", key)?;
            if let Some(mut record) = found {
                record.expires_at = expires_at;
                table.insert(key, encode(&record).as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Removes one session; answers whether it was there.
    ///
    /// # Errors
    /// Storage errors.
    pub fn delete_session(&self, key: &str) -> Result<bool> {
        let txn = self.db.begin_write()?;
        let removed = txn.open_table(SESSIONS)?.remove(key)?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    /// Removes the sessions expired at `now`; answers how many.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn prune_sessions(&self, now: Timestamp) -> Result<usize> {
        let txn = self.db.begin_write()?;
        let n = {
            let mut table = txn.open_table(SESSIONS)?;
            let mut gone = Vec::new();
            for entry in table.iter()? {
                let (k, v) = entry?;
                let s: SessionRecord = decode("console_sessions", k.value(), v.value())?;
                if s.expires_at <= now {
                    gone.push(k.value().to_owned());
                }
            }
            for k in &gone {
                table.remove(k.as_str())?;
            }
            gone.len()
        };
        txn.commit()?;
        Ok(n)
    }

    /// Every stored session (key, record), expired or not.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn sessions(&self) -> Result<Vec<(String, SessionRecord)>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(SESSIONS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (k, v) = entry?;
            out.push((
                k.value().to_owned(),
                decode("console_sessions", k.value(), v.value())?,
            ));
        }
        Ok(out)
    }

    /// Changes a user's role (their sessions keep going: every request reads the role anew).
    ///
    /// # Errors
    /// [`CatalogError::UserNotFound`]; storage errors.
    pub fn set_user_role(&self, name: &UserName, role: Role) -> Result<UserRecord> {
        self.write_users(|t, _| {
            let mut record: UserRecord = get_json(t, "users", name.as_str())?
                .ok_or_else(|| CatalogError::UserNotFound { name: name.clone() })?;
            record.role = role;
            t.insert(name.as_str(), encode(&record).as_slice())?;
            Ok(record)
        })
    }

    /// Stores a new user.
    ///
    /// # Errors
    /// [`CatalogError::UserExists`] (conflict) if one of that name exists; storage errors.
    pub fn create_user(&self, record: &UserRecord) -> Result<()> {
        self.write_users(|t, _| {
            if t.get(record.name.as_str())?.is_some() {
                return Err(CatalogError::UserExists {
                    name: record.name.clone(),
                });
            }
            t.insert(record.name.as_str(), encode(record).as_slice())?;
            Ok(())
        })
    }

    /// Replaces a user's password hash.
    ///
    /// # Errors
    /// [`CatalogError::UserNotFound`]; storage errors.
    pub fn set_user_password(
        &self,
        name: &UserName,
        password_hash: String,
        now: Timestamp,
    ) -> Result<UserRecord> {
        self.write_users(|t, sessions| {
            let mut record: UserRecord = get_json(t, "users", name.as_str())?
                .ok_or_else(|| CatalogError::UserNotFound { name: name.clone() })?;
            record.password_hash = password_hash;
            record.password_changed_at = now;
            t.insert(name.as_str(), encode(&record).as_slice())?;
            end_sessions_of(sessions, name)?;
            Ok(record)
        })
    }

    /// One user.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn user(&self, name: &UserName) -> Result<Option<UserRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USERS)?;
        get_json(&table, "users", name.as_str())
    }

    /// Every user, by name.
    ///
    /// # Errors
    /// Storage or corruption errors.
    pub fn users(&self) -> Result<Vec<UserRecord>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(USERS)?;
        let mut out = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            out.push(decode("users", key.value(), value.value())?);
        }
        Ok(out)
    }

    /// Deletes a user.
    ///
    /// # Errors
    /// [`CatalogError::UserNotFound`]; storage errors.
    pub fn delete_user(&self, name: &UserName) -> Result<UserRecord> {
        self.write_users(|t, sessions| {
            let record: UserRecord = get_json(t, "users", name.as_str())?
                .ok_or_else(|| CatalogError::UserNotFound { name: name.clone() })?;
            t.remove(name.as_str())?;
            end_sessions_of(sessions, name)?;
            Ok(record)
        })
    }

    fn write_users<T>(
        &self,
        f: impl FnOnce(&mut JsonTable<'_>, &mut JsonTable<'_>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(USERS)?;
            let mut sessions = txn.open_table(SESSIONS)?;
            f(&mut table, &mut sessions)?
        };
        txn.commit()?;
        Ok(out)
    }
}

type JsonTable<'t> = Table<'t, &'static str, &'static [u8]>;

/// Removes every session of `user`.
fn end_sessions_of(sessions: &mut JsonTable<'_>, user: &UserName) -> Result<()> {
    let mut gone = Vec::new();
    for entry in sessions.iter()? {
        let (k, v) = entry?;
        let s: SessionRecord = decode("console_sessions", k.value(), v.value())?;
        if &s.user == user {
            gone.push(k.value().to_owned());
        }
    }
    for k in &gone {
        sessions.remove(k.as_str())?;
    }
    Ok(())
}

/// Creates the tables of this module (at open).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(USERS).map(drop)?;
    txn.open_table(SESSIONS)
        .map(drop)
        .map_err(CatalogError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, role: Role) -> UserRecord {
        UserRecord {
            name: name.parse().unwrap(),
            role,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
            created_at: Timestamp::from_unix_seconds(1_700_000_000).unwrap(),
            password_changed_at: Timestamp::from_unix_seconds(1_700_000_000).unwrap(),
        }
    }

    #[test]
    fn create_user_twice_is_a_conflict_and_list_is_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        catalog.create_user(&record("bob", Role::Viewer)).unwrap();
        catalog.create_user(&record("alice", Role::Admin)).unwrap();

        let again = catalog
            .create_user(&record("bob", Role::Admin))
            .unwrap_err();
        let names: Vec<String> = catalog
            .users()
            .unwrap()
            .iter()
            .map(|u| u.name.to_string())
            .collect();

        assert_eq!(again.kind(), crate::ErrorKind::Conflict);
        assert_eq!(names, ["alice", "bob"]);
    }

    #[test]
    fn set_password_and_delete_unknown_user_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        let ghost: UserName = "ghost".parse().unwrap();

        let set = catalog
            .set_user_password(&ghost, "x".into(), Timestamp::now())
            .unwrap_err();
        let del = catalog.delete_user(&ghost).unwrap_err();

        assert_eq!(set.kind(), crate::ErrorKind::NotFound);
        assert_eq!(del.kind(), crate::ErrorKind::NotFound);
    }

    #[test]
    fn set_password_replaces_hash_and_keeps_role() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        catalog
            .create_user(&record("carol", Role::Operator))
            .unwrap();
        let name: UserName = "carol".parse().unwrap();
        let later = Timestamp::from_unix_seconds(1_800_000_000).unwrap();

        catalog
            .set_user_password(&name, "$argon2id$new".into(), later)
            .unwrap();
        let stored = catalog.user(&name).unwrap().unwrap();

        assert_eq!(stored.password_hash, "$argon2id$new");
        assert_eq!(stored.role, Role::Operator);
        assert_eq!(stored.password_changed_at, later);
        assert!(!format!("{stored:?}").contains("argon2id"));
    }

    fn session(user: &str, started: i64, expires: i64) -> SessionRecord {
        SessionRecord {
            user: user.parse().unwrap(),
            csrf: format!("csrf-of-{user}"),
            fingerprint: "ab".repeat(32),
            started_at: Timestamp::from_unix_seconds(started).unwrap(),
            expires_at: Timestamp::from_unix_seconds(expires).unwrap(),
        }
    }

    fn keys(catalog: &Catalog) -> Vec<String> {
        catalog
            .sessions()
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    #[test]
    fn sessions_survive_reopening_the_catalog_and_can_be_extended_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::from_unix_seconds(1_000).unwrap();
        {
            let catalog = Catalog::open_in(dir.path()).unwrap();
            catalog
                .put_session("k1", &session("alice", 1_000, 4_600), now, 10)
                .unwrap();
        }
        let catalog = Catalog::open_in(dir.path()).unwrap();

        let found = catalog.session("k1").unwrap();
        catalog
            .extend_session("k1", Timestamp::from_unix_seconds(5_000).unwrap())
            .unwrap();
        let extended = catalog.session("k1").unwrap().unwrap().expires_at;
        let removed = catalog.delete_session("k1").unwrap();
        let again = catalog.delete_session("k1").unwrap();

        assert_eq!(found, Some(session("alice", 1_000, 4_600)));
        assert_eq!(extended.unix_seconds(), 5_000);
        assert!(removed && !again);
        assert!(catalog.session("k1").unwrap().is_none());
        assert!(!format!("{found:?}").contains("csrf-of"));
    }

    #[test]
    fn new_sessions_prune_expired_ones_and_keep_at_most_max() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        let at = |s| Timestamp::from_unix_seconds(s).unwrap();
        catalog
            .put_session("old", &session("a", 100, 200), at(100), 3)
            .unwrap();
        catalog
            .put_session("s1", &session("a", 150, 9_000), at(150), 3)
            .unwrap();
        catalog
            .put_session("s2", &session("b", 160, 9_000), at(160), 3)
            .unwrap();

        // At 300 "old" has expired: it goes, and the three left fit.
        catalog
            .put_session("s3", &session("c", 300, 9_000), at(300), 3)
            .unwrap();
        let after_prune = keys(&catalog);
        // A fourth live one: the oldest started (s1) goes.
        catalog
            .put_session("s4", &session("d", 400, 9_000), at(400), 3)
            .unwrap();
        let after_cap = keys(&catalog);
        let pruned = catalog.prune_sessions(at(9_000)).unwrap();

        assert_eq!(after_prune, ["s1", "s2", "s3"]);
        assert_eq!(after_cap, ["s2", "s3", "s4"]);
        assert_eq!(pruned, 3);
        assert!(keys(&catalog).is_empty());
    }

    #[test]
    fn a_new_password_or_deleting_the_user_ends_their_sessions_only() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        catalog.create_user(&record("alice", Role::Admin)).unwrap();
        catalog.create_user(&record("bob", Role::Viewer)).unwrap();
        let now = Timestamp::from_unix_seconds(1_000).unwrap();
        for (key, user) in [("a1", "alice"), ("a2", "alice"), ("b1", "bob")] {
            catalog
                .put_session(key, &session(user, 1_000, 5_000), now, 10)
                .unwrap();
        }

        catalog
            .set_user_password(&"alice".parse().unwrap(), "$argon2id$new".into(), now)
            .unwrap();
        let after_password = keys(&catalog);
        catalog.delete_user(&"bob".parse().unwrap()).unwrap();

        assert_eq!(after_password, ["b1"]);
        assert!(keys(&catalog).is_empty());
    }

    #[test]
    fn set_role_changes_only_the_role_and_unknown_user_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open_in(dir.path()).unwrap();
        catalog.create_user(&record("carol", Role::Viewer)).unwrap();
        let name: UserName = "carol".parse().unwrap();

        let changed = catalog.set_user_role(&name, Role::Operator).unwrap();
        let ghost = catalog
            .set_user_role(&"ghost".parse().unwrap(), Role::Admin)
            .unwrap_err();

        assert_eq!(changed.role, Role::Operator);
        assert_eq!(
            changed.password_hash,
            record("carol", Role::Viewer).password_hash
        );
        assert_eq!(catalog.user(&name).unwrap().unwrap().role, Role::Operator);
        assert_eq!(ghost.kind(), crate::ErrorKind::NotFound);
    }
}
