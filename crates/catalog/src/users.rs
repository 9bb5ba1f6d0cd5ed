//! Web console users (DESIGN.md "Identities and trust"): name, role and argon2id password hash.
//!
//! Table (created at open when missing, like every table here; files written before it simply
//! lack it, so it needs no new schema version, and older builds ignore it):
//!
//! | table | key | value |
//! |---|---|---|
//! | `users` | user name | JSON [`UserRecord`] |
//!
//! The catalog stores the hash as the hub made it (a PHC string) and never sees a password.

use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use sendense_types::{Role, Timestamp, User, UserName};
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, decode, encode, get_json};
use crate::error::CatalogError;

const USERS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("users");

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

impl Catalog {
    /// Stores a new user.
    ///
    /// # Errors
    /// [`CatalogError::UserExists`] (conflict) if one of that name exists; storage errors.
    pub fn create_user(&self, record: &UserRecord) -> Result<()> {
        self.write_users(|t| {
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
        self.write_users(|t| {
            let mut record: UserRecord = get_json(t, "users", name.as_str())?
                .ok_or_else(|| CatalogError::UserNotFound { name: name.clone() })?;
            record.password_hash = password_hash;
            record.password_changed_at = now;
            t.insert(name.as_str(), encode(&record).as_slice())?;
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
        self.write_users(|t| {
            let record: UserRecord = get_json(t, "users", name.as_str())?
                .ok_or_else(|| CatalogError::UserNotFound { name: name.clone() })?;
            t.remove(name.as_str())?;
            Ok(record)
        })
    }

    fn write_users<T>(
        &self,
        f: impl FnOnce(&mut Table<'_, &'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_write()?;
        let out = {
            let mut table = txn.open_table(USERS)?;
            f(&mut table)?
        };
        txn.commit()?;
        Ok(out)
    }
}

/// Creates the table of this module (at open).
pub(crate) fn create_tables(txn: &WriteTransaction) -> Result<()> {
    txn.open_table(USERS).map(drop).map_err(CatalogError::from)
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
}
