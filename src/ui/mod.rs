//! What the dashboard looks like (SPEC §14), shared by the operator console
//! (admin listener) and the customer portal (proxy listener): the page
//! shell, the embedded stylesheet and script, the usage chart, and the
//! headers every dashboard page carries. Server-rendered HTML (maud,
//! compiled into the binary); pages work without JavaScript, which only
//! enhances (copy buttons, live filters, confirm-by-typing).
//!
//! Edge-level like `problem`: it names HTTP types, never the store.

pub mod chart;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

/// The stylesheet, served at `<assets>/app.css`.
pub const CSS: &str = include_str!("assets/app.css");
/// The only script, served at `<assets>/app.js`.
pub const JS: &str = include_str!("assets/app.js");

/// The Content-Security-Policy of every page: nothing inline, nothing from
/// elsewhere, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// A link of the top navigation.
#[derive(Debug, Clone, Copy)]
pub struct NavLink<'a> {
    /// Text.
    pub label: &'a str,
    /// Target.
    pub href: &'a str,
    /// Whether it is the current section.
    pub current: bool,
}

/// A message shown at the top of the main content, announced to screen
/// readers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// Something worked.
    Done(String),
    /// Something did not; the text says what to do.
    Problem(String),
}

/// Everything around a page's main content.
#[derive(Debug, Clone)]
pub struct Shell<'a> {
    /// The product part of the title and the brand (`keygate console`).
    pub product: &'a str,
    /// Where the brand links to.
    pub home: &'a str,
    /// Where `app.css` and `app.js` are served.
    pub assets: &'a str,
    /// The top navigation (empty before sign-in).
    pub nav: Vec<NavLink<'a>>,
    /// The sign-out form's action and CSRF token, once signed in.
    pub sign_out: Option<(&'a str, &'a str)>,
    /// Who is signed in, shown beside sign-out.
    pub who: Option<&'a str>,
}

/// A whole page: `title` (also the `h1`) over `main`.
pub fn page(shell: &Shell<'_>, title: &str, flash: Option<&Flash>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="referrer" content="no-referrer";
                title { (title) " · " (shell.product) }
                link rel="stylesheet" href={(shell.assets) "/app.css"};
                script src={(shell.assets) "/app.js"} defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href=(shell.home) { (shell.product) }
                    @if !shell.nav.is_empty() {
                        nav aria-label="Main" {
                            ul {
                                @for link in &shell.nav {
                                    li {
                                        @if link.current {
                                            a href=(link.href) aria-current="page" { (link.label) }
                                        } @else {
                                            a href=(link.href) { (link.label) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if let Some((action, csrf)) = shell.sign_out {
                        form method="post" action=(action) {
                            input type="hidden" name="csrf" value=(csrf);
                            @if let Some(who) = shell.who { span.hint { (who) " · " } }
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    @match flash {
                        Some(Flash::Done(text)) => { div.flash role="status" { (text) } }
                        Some(Flash::Problem(text)) => { div.flash.error role="alert" { (text) } }
                        None => {}
                    }
                    (main)
                }
            }
        }
    }
}

/// The headers every dashboard page carries: the CSP, no sniffing, no
/// framing, no referrer, and no caching (pages show keys, and a new key's
/// secret).
pub fn secure_headers(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::CACHE_CONTROL, "no-store");
}

/// A page as a response with `status` and the dashboard's headers.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup).into_response();
    secure_headers(response.headers_mut());
    response
}

/// A static asset (`app.css`, `app.js`), cacheable for an hour.
pub fn asset(name: &str) -> Option<Response> {
    let (body, content_type) = match name {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(response)
}

/// A `<time>` element for an instant (UTC, to the second).
pub fn time(at: chrono::DateTime<chrono::Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

/// A key's state as a coloured badge (`active`, `inactive`, `revoked`,
/// `expired`).
pub fn badge(state: &str) -> Markup {
    html! { span class={"badge " (state)} { (state) } }
}

/// A hidden CSRF field.
pub fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}
