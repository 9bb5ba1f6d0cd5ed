//! Console users over the REST API, and the console's sign-in, session cookie, CSRF and role
//! checks over plain HTTP (the browser tests are in the e2e suite, `tests/e2e/console.rs`).

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::hub_api::Hub;

/// A browser-like client of the hub: no redirects followed, cookies kept by hand.
struct Visitor {
    http: reqwest::Client,
    base: String,
    cookies: Vec<String>,
}

impl Visitor {
    fn new(hub: &Hub) -> Self {
        let tls = sendense_nbd::tls::client_config(&hub.data.path().join("tls/ca-cert.pem"), None)
            .unwrap();
        Self {
            http: reqwest::Client::builder()
                .use_preconfigured_tls((*tls).clone())
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            base: hub.base.clone(),
            cookies: Vec::new(),
        }
    }

    fn keep(&mut self, resp: &reqwest::Response) -> Vec<String> {
        let set: Vec<String> = resp
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set {
            let pair = c.split(';').next().unwrap().to_owned();
            let name = pair.split('=').next().unwrap().to_owned();
            self.cookies.retain(|k| !k.starts_with(&format!("{name}=")));
            if !pair.ends_with('=') {
                self.cookies.push(pair);
            }
        }
        set
    }

    async fn get(&mut self, path: &str) -> (StatusCode, String) {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header(COOKIE, self.cookies.join("; "))
            .send()
            .await
            .unwrap();
        self.keep(&resp);
        (resp.status(), resp.text().await.unwrap())
    }

    /// Posts a form; the status, the `Set-Cookie` headers and `Location`.
    async fn post(&mut self, path: &str, form: &str) -> (StatusCode, Vec<String>, String) {
        let resp = self
            .http
            .post(format!("{}{path}", self.base))
            .header(COOKIE, self.cookies.join("; "))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form.to_owned())
            .send()
            .await
            .unwrap();
        let set = self.keep(&resp);
        let location = resp
            .headers()
            .get(LOCATION)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (resp.status(), set, location)
    }

    /// Signs in through the sign-in form; the `Set-Cookie` headers of the answer.
    async fn sign_in(&mut self, name: &str, password: &str) -> (StatusCode, Vec<String>) {
        let (_, page) = self.get("/login").await;
        let token = hidden_csrf(&page);
        let (status, set, _) = self
            .post(
                "/login",
                &format!(
                    "csrf={token}&name={name}&password={}",
                    password.replace(' ', "+")
                ),
            )
            .await;
        (status, set)
    }
}

/// The value of the first hidden `csrf` field of a page.
fn hidden_csrf(page: &str) -> String {
    let at = page.find(r#"name="csrf" value=""#).expect("a csrf field");
    let rest = &page[at + r#"name="csrf" value=""#.len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

async fn add_user(hub: &Hub, name: &str, role: &str, password: &str) {
    let (st, body) = hub
        .post(
            "/api/v1/users",
            json!({"name": name, "role": role, "password": password}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn users_api_creates_lists_changes_deletes_and_never_answers_a_password() {
    let hub = Hub::start().await;

    let (created, user) = hub
        .post(
            "/api/v1/users",
            json!({"name": "alice", "role": "operator", "password": "correct horse"}),
        )
        .await;
    let (again, conflict) = hub
        .post(
            "/api/v1/users",
            json!({"name": "alice", "role": "viewer", "password": "another one"}),
        )
        .await;
    let (short, too_short) = hub
        .post(
            "/api/v1/users",
            json!({"name": "bob", "role": "viewer", "password": "short"}),
        )
        .await;
    let (listed, list) = hub.get("/api/v1/users").await;
    let (changed, _) = hub
        .call(
            reqwest::Method::PUT,
            "/api/v1/users/alice/password",
            Some(json!({"password": "battery staple"})),
        )
        .await;
    let (deleted, _) = hub
        .call(reqwest::Method::DELETE, "/api/v1/users/alice", None)
        .await;
    let (gone, _) = hub
        .call(reqwest::Method::DELETE, "/api/v1/users/alice", None)
        .await;

    assert_eq!(created, StatusCode::CREATED);
    assert_eq!(user["name"], "alice");
    assert_eq!(user["role"], "operator");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());
    assert_eq!(again, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(short, StatusCode::BAD_REQUEST);
    assert!(
        too_short["message"]
            .as_str()
            .unwrap()
            .contains("at least 8")
    );
    assert_eq!(listed, StatusCode::OK);
    assert_eq!(list["users"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains("horse") && !list.to_string().contains("argon2"));
    assert_eq!(changed, StatusCode::OK);
    assert_eq!((deleted, gone), (StatusCode::OK, StatusCode::NOT_FOUND));
}

#[tokio::test]
async fn console_sign_in_sets_httponly_secure_strict_session_and_opens_the_dashboard() {
    let hub = Hub::start().await;
    add_user(&hub, "alice", "admin", "correct horse").await;
    let mut v = Visitor::new(&hub);

    let (before, _) = v.get("/").await;
    let (signed, cookies) = v.sign_in("alice", "correct horse").await;
    let (dashboard, page) = v.get("/").await;

    assert_eq!(before, StatusCode::SEE_OTHER);
    assert_eq!(signed, StatusCode::SEE_OTHER);
    let session = cookies
        .iter()
        .find(|c| c.starts_with("sendense_session="))
        .expect("a session cookie");
    assert!(
        session.ends_with("; Path=/; HttpOnly; Secure; SameSite=Strict"),
        "{session}"
    );
    assert_eq!(dashboard, StatusCode::OK);
    assert!(page.contains("alice (admin)") && page.contains("Jobs, last 24 hours"));
}

#[tokio::test]
async fn console_post_without_csrf_token_is_403_and_with_it_works() {
    let hub = Hub::start().await;
    add_user(&hub, "alice", "admin", "correct horse").await;
    let mut v = Visitor::new(&hub);
    v.sign_in("alice", "correct horse").await;
    let (_, page) = v.get("/users").await;
    let token = hidden_csrf(&page);

    let (without, _, _) = v
        .post("/users", "name=mallory&role=admin&password=long+enough")
        .await;
    let (wrong, _, _) = v
        .post(
            "/users",
            "csrf=00ff&name=mallory&role=admin&password=long+enough",
        )
        .await;
    let (login_without, _, _) = v.post("/login", "name=alice&password=correct+horse").await;
    let (with, _, to) = v
        .post(
            "/users",
            &format!("csrf={token}&name=bob&role=viewer&password=long+enough"),
        )
        .await;
    let (_, list) = hub.get("/api/v1/users").await;

    assert_eq!(without, StatusCode::FORBIDDEN);
    assert_eq!(wrong, StatusCode::FORBIDDEN);
    assert_eq!(login_without, StatusCode::FORBIDDEN);
    assert_eq!((with, to.as_str()), (StatusCode::SEE_OTHER, "/users"));
    let names: Vec<&str> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
}

#[tokio::test]
async fn console_viewer_is_refused_changes_server_side() {
    let hub = Hub::start().await;
    add_user(&hub, "val", "viewer", "viewer password").await;
    let mut v = Visitor::new(&hub);
    v.sign_in("val", "viewer password").await;
    let (_, page) = v.get("/").await;
    let token = hidden_csrf(&page);

    let (backup, _, _) = v
        .post(
            "/vms/web01/backup",
            &format!("csrf={token}&backup_type=full&credential="),
        )
        .await;
    let (users_page, _) = v.get("/users").await;
    let (add, _, _) = v
        .post(
            "/users",
            &format!("csrf={token}&name=eve&role=admin&password=long+enough"),
        )
        .await;
    let (_, jobs) = hub.get("/api/v1/jobs").await;

    assert_eq!(backup, StatusCode::FORBIDDEN);
    assert_eq!(users_page, StatusCode::FORBIDDEN);
    assert_eq!(add, StatusCode::FORBIDDEN);
    assert_eq!(jobs["jobs"], Value::Array(Vec::new()));
}

#[tokio::test]
async fn console_session_ends_when_the_users_password_changes_or_user_is_deleted() {
    let hub = Hub::start().await;
    add_user(&hub, "alice", "operator", "correct horse").await;
    add_user(&hub, "bob", "operator", "bob password").await;
    let mut alice = Visitor::new(&hub);
    let mut bob = Visitor::new(&hub);
    alice.sign_in("alice", "correct horse").await;
    bob.sign_in("bob", "bob password").await;
    let (alice_before, _) = alice.get("/").await;

    hub.call(
        reqwest::Method::PUT,
        "/api/v1/users/alice/password",
        Some(json!({"password": "battery staple"})),
    )
    .await;
    hub.call(reqwest::Method::DELETE, "/api/v1/users/bob", None)
        .await;
    let (alice_after, _) = alice.get("/").await;
    let (bob_after, _) = bob.get("/").await;

    assert_eq!(alice_before, StatusCode::OK);
    assert_eq!(alice_after, StatusCode::SEE_OTHER);
    assert_eq!(bob_after, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn console_assets_are_immutable_and_pages_are_not_cached() {
    let hub = Hub::start().await;
    let mut v = Visitor::new(&hub);

    let htmx = v
        .http
        .get(format!("{}/assets/htmx-2.0.11.min.js", hub.base))
        .send()
        .await
        .unwrap();
    let login = v
        .http
        .get(format!("{}/login", hub.base))
        .send()
        .await
        .unwrap();
    let (_, page) = v.get("/login").await;

    assert_eq!(htmx.status(), StatusCode::OK);
    assert_eq!(
        htmx.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    assert_eq!(login.headers()["cache-control"], "no-store");
    assert!(
        login.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    assert!(page.contains("No console user exists yet"), "{page}");
}
