//! Console sign-in: sessions, CSRF tokens, login rate limits, and the signed-in user extractor.
//!
//! Sessions are kept in the catalog by [`crate::users::Users`] (the catalog holds the SHA-256
//! of the cookie's token, never the token), so a hub restart signs nobody out. The cookie holds
//! 32 random bytes in hex. A session ends after an hour without a request, twelve hours after
//! sign-in, at sign-out, and as soon as its user is deleted or their password changed (the
//! catalog removes their sessions; every request also reads the user from the catalog and
//! compares the fingerprint of their stored hash with the one taken at sign-in), so
//! `DELETE /api/v1/users/{name}` and `ctl user passwd` take effect at once, wherever they
//! were made. Only the one-time messages shown after a redirect ("Job ... queued.") are kept
//! in memory.
//!
//! Every `POST` needs the session's CSRF token, as the form field `csrf` or the header
//! `X-CSRF-Token` ([`csrf_guard`]); the sign-in form, made before any session exists, carries
//! a one-time token that must match its own `sendense_login` cookie. Without it: 403.
//!
//! Failed sign-ins are counted per user name (5 in 15 minutes) and per client address (20 in
//! 15 minutes); past either limit, sign-ins are refused (429) until the window ends, with the
//! wait in words, before the password is even checked.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use sendense_types::{Role, UserName};
use serde::Deserialize;

use super::view::{self, PageError};
use super::{ConsoleState, blocking};
use crate::users::session_key;

/// The session cookie's name.
pub(super) const SESSION_COOKIE: &str = "sendense_session";
/// The sign-in form's own CSRF cookie.
pub(super) const LOGIN_COOKIE: &str = "sendense_login";
/// The header htmx sends the CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-csrf-token";
/// Failed sign-ins are counted over this window.
pub(super) const LIMIT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed sign-ins for one user name within the window before sign-ins are refused.
pub(super) const MAX_FAILURES_PER_USER: u32 = 5;
/// Failed sign-ins from one address within the window before sign-ins are refused.
pub(super) const MAX_FAILURES_PER_ADDRESS: u32 = 20;
/// Most user names (and addresses) whose failures are tracked before finished windows are
/// dropped.
const MAX_TRACKED: usize = 10_000;
/// Most one-time messages held at once (all are dropped beyond it: they are only courtesy).
const MAX_FLASHES: usize = 10_000;

/// One-time messages for a session's next page (after a redirect), by session key.
#[derive(Debug, Default)]
pub(super) struct Flashes {
    inner: Mutex<HashMap<String, String>>,
}

impl Flashes {
    /// Keeps a message to show on the next page of the session of `token`.
    pub(super) fn flash(&self, token: &str, message: String) {
        let mut map = self.lock();
        if map.len() >= MAX_FLASHES {
            map.clear();
        }
        map.insert(session_key(token), message);
    }

    fn take(&self, token: &str) -> Option<String> {
        self.lock().remove(&session_key(token))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A poisoned lock only means another request panicked mid-update of a plain map.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The CSRF token of the live session of `token`, if any.
async fn session_csrf(state: &ConsoleState, token: String) -> Result<Option<String>, PageError> {
    let users = std::sync::Arc::clone(&state.api.users);
    Ok(blocking(move || users.session(&token))
        .await?
        .map(|s| s.csrf))
}

/// Failed sign-ins per user name and per address.
#[derive(Debug, Default)]
pub(super) struct LoginLimiter {
    inner: Mutex<Limits>,
}

#[derive(Debug, Default)]
struct Limits {
    users: HashMap<String, Window>,
    addrs: HashMap<IpAddr, Window>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Why a sign-in is refused before its password is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Throttled {
    /// Too many failures for this user name.
    User {
        /// Whole minutes (rounded up) until sign-ins are taken again.
        minutes: u64,
    },
    /// Too many failures from this address.
    Address {
        /// Whole minutes (rounded up) until sign-ins are taken again.
        minutes: u64,
    },
}

impl Throttled {
    /// The refusal in words.
    #[must_use]
    pub(super) fn message(&self, user: &str, addr: IpAddr) -> String {
        match self {
            Self::User { minutes } => format!(
                "Too many failed sign-ins for user {user}. Sign-ins for this user are paused: \
                 try again in {minutes} minute{}, or ask an admin to set a new password.",
                plural(*minutes)
            ),
            Self::Address { minutes } => format!(
                "Too many failed sign-ins from your address ({addr}). Sign-ins from it are \
                 paused: try again in {minutes} minute{}.",
                plural(*minutes)
            ),
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl LoginLimiter {
    /// Whether a sign-in for `user` from `addr` may be tried at `now`.
    ///
    /// # Errors
    /// [`Throttled`] when either limit is reached within the window.
    pub(super) fn check(&self, user: &str, addr: IpAddr, now: Instant) -> Result<(), Throttled> {
        let limits = self.lock();
        let left = |w: Option<&Window>, max: u32| {
            w.filter(|w| w.failures >= max && now.duration_since(w.start) < LIMIT_WINDOW)
                .map(|w| {
                    let left = LIMIT_WINDOW.saturating_sub(now.duration_since(w.start));
                    left.as_secs().div_ceil(60).max(1)
                })
        };
        if let Some(minutes) = left(limits.users.get(user), MAX_FAILURES_PER_USER) {
            return Err(Throttled::User { minutes });
        }
        if let Some(minutes) = left(limits.addrs.get(&addr), MAX_FAILURES_PER_ADDRESS) {
            return Err(Throttled::Address { minutes });
        }
        Ok(())
    }

    /// Counts a failed sign-in.
    pub(super) fn failed(&self, user: &str, addr: IpAddr, now: Instant) {
        let mut limits = self.lock();
        if limits.users.len() > MAX_TRACKED {
            limits
                .users
                .retain(|_, w| now.duration_since(w.start) < LIMIT_WINDOW);
            limits
                .addrs
                .retain(|_, w| now.duration_since(w.start) < LIMIT_WINDOW);
        }
        bump(
            limits
                .users
                .entry(user.to_owned())
                .or_insert(Window::new(now)),
            now,
        );
        bump(limits.addrs.entry(addr).or_insert(Window::new(now)), now);
    }

    /// Forgets a user name's failures after a successful sign-in.
    pub(super) fn succeeded(&self, user: &str) {
        self.lock().users.remove(user);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            start: now,
            failures: 0,
        }
    }
}

fn bump(w: &mut Window, now: Instant) {
    if now.duration_since(w.start) >= LIMIT_WINDOW {
        *w = Window::new(now);
    }
    w.failures = w.failures.saturating_add(1);
}

/// The signed-in console user of a request; extracting it signs the request in (or answers a
/// redirect to the sign-in page).
#[derive(Debug, Clone)]
pub(super) struct SignedIn {
    /// The user's name.
    pub(super) name: UserName,
    /// The user's role, as the catalog says now.
    pub(super) role: Role,
    /// The session's CSRF token, for the forms of the page.
    pub(super) csrf: String,
    /// A message left by the previous request (after a redirect), shown once.
    pub(super) flash: Option<String>,
    token: String,
}

impl SignedIn {
    /// Refuses (403, in words) a user whose role may not run jobs and restores.
    ///
    /// # Errors
    /// [`PageError`] 403 for a viewer.
    pub(super) fn require_operator(&self, what: &str) -> Result<(), PageError> {
        if self.role.may_operate() {
            Ok(())
        } else {
            Err(PageError::forbidden(format!(
                "Your role ({}) may look but not {what}. Ask an admin for the operator role.",
                self.role
            )))
        }
    }

    /// Refuses (403, in words) a user who is not an admin.
    ///
    /// # Errors
    /// [`PageError`] 403 for operators and viewers.
    pub(super) fn require_admin(&self, what: &str) -> Result<(), PageError> {
        if self.role.may_administer() {
            Ok(())
        } else {
            Err(PageError::forbidden(format!(
                "Only admins may {what}; your role is {}.",
                self.role
            )))
        }
    }

    /// Keeps `message` for the next page this user sees.
    pub(super) fn flash(&self, state: &ConsoleState, message: impl Into<String>) {
        state.flashes.flash(&self.token, message.into());
    }
}

impl FromRequestParts<ConsoleState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let htmx = parts.headers.contains_key("hx-request");
        let to_login = || {
            if htmx {
                (
                    StatusCode::UNAUTHORIZED,
                    [("hx-redirect", "/login")],
                    "Signed out",
                )
                    .into_response()
            } else {
                Redirect::to("/login").into_response()
            }
        };
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Err(to_login());
        };
        let users = std::sync::Arc::clone(&state.api.users);
        let t = token.clone();
        let found = blocking(move || {
            let Some(session) = users.session(&t)? else {
                return Ok(None);
            };
            let stamp = users.stamp(&session.user)?;
            // Deleted, or a new password since the sign-in: the session ends.
            match stamp.filter(|s| s.fingerprint == session.fingerprint) {
                Some(stamp) => Ok(Some((session, stamp.user))),
                None => {
                    users.end_session(&t)?;
                    Ok(None)
                }
            }
        })
        .await;
        let (session, user) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return Err(to_login()),
            Err(e) => return Err(PageError::from(e).into_response()),
        };
        let flash = if parts.method == Method::GET && !htmx {
            state.flashes.take(&token)
        } else {
            None
        };
        Ok(Self {
            name: user.name,
            role: user.role,
            csrf: session.csrf,
            flash,
            token,
        })
    }
}

/// Refuses (403) every `POST` to the console without the right CSRF token: the session's
/// (field `csrf` or header `X-CSRF-Token`), or for the sign-in form its own cookie's.
pub(super) async fn csrf_guard(
    State(state): State<ConsoleState>,
    req: Request,
    next: Next,
) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let expected = if parts.uri.path() == "/login" {
        cookie(&parts.headers, LOGIN_COOKIE)
    } else {
        match cookie(&parts.headers, SESSION_COOKIE) {
            Some(token) => match session_csrf(&state, token).await {
                Ok(csrf) => csrf,
                Err(e) => return e.into_response(),
            },
            // No session: the handler sends the request to the sign-in page.
            None => return next.run(Request::from_parts(parts, body)).await,
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, super::MAX_FORM).await else {
        return PageError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The form is too large for the hub to read.",
        )
        .into_response();
    };
    let given = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form_field(&bytes, "csrf"));
    let valid = match (&expected, &given) {
        (Some(e), Some(g)) => crate::token::matches(e, g),
        _ => false,
    };
    if !valid {
        tracing::warn!(path = %parts.uri.path(), "console form without a valid CSRF token refused");
        return PageError::new(
            StatusCode::FORBIDDEN,
            "This form was refused: it did not carry this page's security token (it may be \
             older than your current sign-in, or come from another site). Reload the page and \
             try again.",
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// The value of field `name` in a URL-encoded form body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

fn set_cookie(name: &str, value: &str, path: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; Secure; SameSite=Strict{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

/// The sign-in form's fields.
#[derive(Debug, Deserialize)]
pub(super) struct LoginForm {
    name: String,
    password: String,
}

/// `GET /login`.
pub(super) async fn login_page(State(state): State<ConsoleState>) -> Response {
    login_answer(&state, StatusCode::OK, None, "").await
}

async fn login_answer(
    state: &ConsoleState,
    status: StatusCode,
    error: Option<String>,
    name: &str,
) -> Response {
    let token = match crate::users::random_token() {
        Ok(token) => token,
        Err(e) => return PageError::from(e).into_response(),
    };
    let users = std::sync::Arc::clone(&state.api.users);
    let none_yet = blocking(move || users.list())
        .await
        .is_ok_and(|l| l.users.is_empty());
    let mut response = (
        status,
        view::login(&token, error.as_deref(), name, none_yet),
    )
        .into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &token, "/login", Some(3600)),
    );
    response
}

/// `POST /login`: checks the limits, then the password; starts a session.
pub(super) async fn login(
    State(state): State<ConsoleState>,
    extensions: axum::http::Extensions,
    form: Result<axum::Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::Form(form)) = form else {
        return login_answer(
            &state,
            StatusCode::BAD_REQUEST,
            Some("Type a user name and a password.".into()),
            "",
        )
        .await;
    };
    let addr = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let name = form.name.trim().to_owned();
    if let Err(throttled) = state.limiter.check(&name, addr, Instant::now()) {
        tracing::warn!(user = %name, %addr, "console sign-in refused: too many failures");
        return login_answer(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            Some(throttled.message(&name, addr)),
            &name,
        )
        .await;
    }
    let users = std::sync::Arc::clone(&state.api.users);
    let (who, password) = (name.clone(), form.password);
    let signed_in = blocking(move || {
        let Some(stamp) = users.authenticate(&who, &password)? else {
            return Ok(None);
        };
        let token = users.start_session(&stamp)?;
        Ok(Some((stamp.user, token)))
    })
    .await;
    match signed_in {
        Ok(Some((user, token))) => {
            state.limiter.succeeded(&name);
            tracing::info!(user = %user.name, role = %user.role, %addr, "console sign-in");
            let mut response = Redirect::to("/").into_response();
            let headers = response.headers_mut();
            headers.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &token, "/", None),
            );
            headers.append(
                header::SET_COOKIE,
                set_cookie(LOGIN_COOKIE, "", "/login", Some(0)),
            );
            response
        }
        Ok(None) => {
            state.limiter.failed(&name, addr, Instant::now());
            tracing::warn!(user = %name, %addr, "console sign-in failed");
            login_answer(
                &state,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name or password.".into()),
                &name,
            )
            .await
        }
        Err(e) => PageError::from(e).into_response(),
    }
}

/// `POST /logout`: ends the session.
pub(super) async fn logout(State(state): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.flashes.take(&token);
        let users = std::sync::Arc::clone(&state.api.users);
        if let Err(e) = blocking(move || users.end_session(&token)).await {
            return PageError::from(e).into_response();
        }
    }
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "/", Some(0)),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn limiter_refuses_a_user_after_five_failures_until_the_window_ends() {
        let limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES_PER_USER {
            limiter.failed("alice", ADDR, t0);
        }

        let refused = limiter.check("alice", ADDR, t0 + Duration::from_secs(60));
        let other_user = limiter.check("bob", ADDR, t0);
        let later = limiter.check("alice", ADDR, t0 + LIMIT_WINDOW);

        assert_eq!(refused, Err(Throttled::User { minutes: 14 }));
        assert_eq!((other_user, later), (Ok(()), Ok(())));
    }

    #[test]
    fn limiter_refuses_an_address_after_twenty_failures_over_many_names() {
        let limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES_PER_ADDRESS {
            limiter.failed(&format!("user{i}"), ADDR, t0);
        }

        let refused = limiter.check("fresh", ADDR, t0);
        let elsewhere = limiter.check("fresh", IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), t0);

        assert_eq!(refused, Err(Throttled::Address { minutes: 15 }));
        assert_eq!(elsewhere, Ok(()));
    }

    #[test]
    fn limiter_success_forgets_the_users_failures() {
        let limiter = LoginLimiter::default();
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES_PER_USER - 1 {
            limiter.failed("alice", ADDR, t0);
        }

        limiter.succeeded("alice");
        limiter.failed("alice", ADDR, t0);

        assert_eq!(limiter.check("alice", ADDR, t0), Ok(()));
    }

    #[test]
    fn cookie_finds_its_value_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sendense_session=abc; b=2"),
        );

        assert_eq!(cookie(&headers, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&headers, LOGIN_COOKIE), None);
    }

    #[test]
    fn set_cookie_is_httponly_secure_strict() {
        let value = set_cookie(SESSION_COOKIE, "t", "/", None);

        assert_eq!(
            value.to_str().unwrap(),
            "sendense_session=t; Path=/; HttpOnly; Secure; SameSite=Strict"
        );
    }
}
