//! The operator console (SPEC §14) on the admin listener at `/console/`:
//! sign in with an admin token, then an overview, the keys (search,
//! filters, pages), a key's page (metadata, usage chart, audit rows, every
//! lifecycle action), creating a key (its secret shown once), and the audit
//! log. Server-rendered ([`crate::ui`]); every action calls the same
//! [`crate::manage::KeyManager`] operation as the admin API and the CLI,
//! audited as `console:<token id>`.

mod pages;
pub mod session;

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use self::session::{COOKIE, ConsoleSession, cookie};
use super::AdminState;
use crate::store::Actor;
use crate::ui::{self, NavLink, Shell};

/// Where the console lives.
pub const BASE: &str = "/console";

/// The console's routes (merged into the admin router).
pub fn router() -> Router<AdminState> {
    Router::new()
        .route("/console", get(|| async { see_other("/console/") }))
        .route("/console/", get(pages::overview))
        .route("/console/login", get(pages::login_form).post(pages::login))
        .route("/console/logout", post(pages::logout))
        .route("/console/keys", get(pages::keys))
        .route(
            "/console/keys/new",
            get(pages::new_key_form).post(pages::create_key),
        )
        .route("/console/keys/{id}", get(pages::key_page))
        .route("/console/keys/{id}/edit", post(pages::edit_key))
        .route("/console/keys/{id}/status", post(pages::set_status))
        .route("/console/keys/{id}/rotate", post(pages::rotate_key))
        .route("/console/keys/{id}/revoke", post(pages::revoke_key))
        .route("/console/audit", get(pages::audit))
        .route("/console/assets/{name}", get(asset))
}

async fn asset(Path(name): Path<String>) -> Response {
    ui::asset(&name).unwrap_or_else(|| StatusCode::NOT_FOUND.into_response())
}

/// A signed-in operator: extracting it from a request without a live
/// session redirects to the sign-in page.
#[derive(Debug, Clone)]
pub struct Operator {
    /// The session.
    pub session: ConsoleSession,
}

impl Operator {
    /// The audit actor of this operator's changes.
    pub fn actor(&self) -> Actor {
        Actor::console(&self.session.token_id)
    }

    /// The page shell, with `current` marked in the navigation.
    pub fn shell(&self, current: Section) -> Shell<'_> {
        let link = |label, href, section| NavLink {
            label,
            href,
            current: section == current,
        };
        Shell {
            product: "keygate console",
            home: "/console/",
            assets: "/console/assets",
            nav: vec![
                link("Overview", "/console/", Section::Overview),
                link("Keys", "/console/keys", Section::Keys),
                link("New key", "/console/keys/new", Section::NewKey),
                link("Audit log", "/console/audit", Section::Audit),
            ],
            sign_out: Some(("/console/logout", &self.session.csrf)),
            who: Some(&self.session.token_id),
        }
    }
}

/// The console's sections, for the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// `/console/`.
    Overview,
    /// `/console/keys` and a key's page.
    Keys,
    /// `/console/keys/new`.
    NewKey,
    /// `/console/audit`.
    Audit,
}

impl FromRequestParts<AdminState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|h| cookie(h, COOKIE));
        let Some(presented) = presented else {
            return Err(see_other("/console/login"));
        };
        match state.console.get(presented).await {
            Ok(Some(session)) => Ok(Self { session }),
            Ok(None) => Err(see_other("/console/login")),
            Err(e) => Err(pages::store_down(&e)),
        }
    }
}

/// `303 See Other` to `to` (after a form, and to sign in).
pub fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    ui::secure_headers(response.headers_mut());
    response
}

/// The state handlers take.
type Console = State<AdminState>;
