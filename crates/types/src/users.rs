//! Web console users (DESIGN.md "Identities and trust"): `POST /api/v1/users`
//! `{name, role, password}`, `GET /api/v1/users`, `DELETE /api/v1/users/{name}`, and
//! `PUT /api/v1/users/{name}/password` `{password}` (what `sendense-hub ctl user passwd` calls).
//!
//! A password travels only in requests; no answer carries it or its hash, and the requests'
//! `Debug` redacts it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::TypesError;
use crate::names::UserName;
use crate::timestamp::Timestamp;

/// Shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password accepted, in bytes (argon2id hashes any length; this bounds the work).
pub const MAX_USER_PASSWORD_LEN: usize = 1024;

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, users and credentials included.
    Admin,
    /// Run jobs and restores, edit policies; not users, credentials or agents.
    Operator,
    /// Read only.
    Viewer,
}

lowercase_enum!(Role, "role", "admin, operator or viewer", {
    Admin => "admin",
    Operator => "operator",
    Viewer => "viewer",
});

impl Role {
    /// Every role, most powerful first.
    pub const ALL: [Self; 3] = [Self::Admin, Self::Operator, Self::Viewer];

    /// Whether the role may start, cancel and restore (admin and operator).
    #[must_use]
    pub const fn may_operate(self) -> bool {
        matches!(self, Self::Admin | Self::Operator)
    }

    /// Whether the role may manage users, credentials and agents (admin only).
    #[must_use]
    pub const fn may_administer(self) -> bool {
        matches!(self, Self::Admin)
    }
}

/// `POST /api/v1/users`: a new console user. The password is 8 to 1024 bytes long.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CreateUserWire", into = "CreateUserWire")]
pub struct CreateUserRequest {
    name: UserName,
    role: Role,
    password: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserWire {
    name: UserName,
    role: Role,
    password: String,
}

impl TryFrom<CreateUserWire> for CreateUserRequest {
    type Error = TypesError;

    fn try_from(w: CreateUserWire) -> Result<Self, Self::Error> {
        Self::new(w.name, w.role, w.password)
    }
}

impl From<CreateUserRequest> for CreateUserWire {
    fn from(r: CreateUserRequest) -> Self {
        Self {
            name: r.name,
            role: r.role,
            password: r.password,
        }
    }
}

impl fmt::Debug for CreateUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl CreateUserRequest {
    /// A validated request.
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] `password` when shorter than 8 characters or longer than
    /// 1024 bytes.
    pub fn new(name: UserName, role: Role, password: String) -> Result<Self, TypesError> {
        check_password(&password)?;
        Ok(Self {
            name,
            role,
            password,
        })
    }

    /// The user's name.
    #[must_use]
    pub fn name(&self) -> &UserName {
        &self.name
    }

    /// The user's role.
    #[must_use]
    pub fn role(&self) -> Role {
        self.role
    }

    /// The password (to hash; never to store or show).
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }
}

/// `PUT /api/v1/users/{name}/password`: a new password for a user.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PasswordWire", into = "PasswordWire")]
pub struct SetPasswordRequest {
    password: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordWire {
    password: String,
}

impl TryFrom<PasswordWire> for SetPasswordRequest {
    type Error = TypesError;

    fn try_from(w: PasswordWire) -> Result<Self, Self::Error> {
        Self::new(w.password)
    }
}

impl From<SetPasswordRequest> for PasswordWire {
    fn from(r: SetPasswordRequest) -> Self {
        Self {
            password: r.password,
        }
    }
}

impl fmt::Debug for SetPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetPasswordRequest")
            .field("password", &"<redacted>")
            .finish()
    }
}

impl SetPasswordRequest {
    /// A validated request (same rules as [`CreateUserRequest::new`]).
    ///
    /// # Errors
    /// [`TypesError::InvalidField`] `password`.
    pub fn new(password: String) -> Result<Self, TypesError> {
        check_password(&password)?;
        Ok(Self { password })
    }

    /// The new password.
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }
}

fn check_password(password: &str) -> Result<(), TypesError> {
    let invalid = |reason| TypesError::InvalidField {
        field: "password",
        reason,
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(invalid("must be at least 8 characters"));
    }
    if password.len() > MAX_USER_PASSWORD_LEN {
        return Err(invalid("must be at most 1024 bytes"));
    }
    Ok(())
}

/// A console user as answered: never the password or its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user's name.
    pub name: UserName,
    /// The user's role.
    pub role: Role,
    /// When the user was created.
    pub created_at: Timestamp,
    /// When the password was last set.
    pub password_changed_at: Timestamp,
}

/// `GET /api/v1/users`: `{users: [...]}`, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// The users.
    pub users: Vec<User>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_user_request_round_trips_and_debug_hides_password() {
        let json = r#"{"name":"alice","role":"operator","password":"correct horse"}"#;

        let req: CreateUserRequest = serde_json::from_str(json).unwrap();

        assert_eq!(req.role(), Role::Operator);
        assert_eq!(serde_json::to_string(&req).unwrap(), json);
        assert!(!format!("{req:?}").contains("horse"));
    }

    #[test]
    fn create_user_request_short_password_is_refused() {
        let json = r#"{"name":"alice","role":"viewer","password":"short"}"#;

        let err = serde_json::from_str::<CreateUserRequest>(json).unwrap_err();

        assert!(err.to_string().contains("at least 8"), "{err}");
    }

    #[test]
    fn create_user_request_unknown_role_is_refused() {
        let json = r#"{"name":"alice","role":"root","password":"long enough"}"#;

        let err = serde_json::from_str::<CreateUserRequest>(json).unwrap_err();

        assert!(err.to_string().contains("unknown variant"), "{err}");
    }

    #[test]
    fn role_parses_its_names() {
        let roles: Vec<Role> = ["admin", "operator", "viewer"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();

        assert_eq!(roles, Role::ALL);
        assert!(Role::from_str("root").is_err());
    }
}
