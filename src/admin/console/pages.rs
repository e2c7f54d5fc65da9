//! The console's pages and form handlers. Each GET renders one page; each
//! POST checks the session's CSRF token, calls one `KeyManager` operation
//! and answers `303 See Other` to the page that shows the result, or the
//! same page again with what to fix.

use axum::extract::{Form, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{self, COOKIE, LOGIN_COOKIE, cookie, set_cookie};
use super::{Console, Operator, Section, see_other};
use crate::admin::AdminState;
use crate::admin::auth::Refusal;
use crate::keys::model::parse_expiry;
use crate::keys::secret::constant_time_eq;
use crate::keys::{Key, KeyPatch, KeyStatus, SecretStr};
use crate::manage::history::{Series, TopQuery};
use crate::manage::series::SeriesQuery;
use crate::manage::{CreateKey, KeyView, ManageError};
use crate::store::{AuditEntry, KeyFilter, PageRequest, UsageRank, UsageSubject};
use crate::ui::{self, Flash, Shell, badge, chart, csrf_field, time};

/// Keys per page of the list.
const KEYS_PER_PAGE: u32 = 50;
/// Audit rows per page of the log, and on a key's page.
const AUDIT_PER_PAGE: u32 = 50;
const KEY_AUDIT_ROWS: u32 = 20;

/// A form's fields as sent (repeated names kept: checkboxes).
#[derive(Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.trim())
    }

    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_owned()
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.trim())
            .collect()
    }
}

/// A page's query parameters; anything unreadable counts as absent (a
/// page's filters are hints, never an error).
fn lenient<T: serde::de::DeserializeOwned + Default>(raw: Option<String>) -> T {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default()
}

/// Whether a form carries the session's CSRF token.
fn csrf_ok(operator: &Operator, fields: &Fields) -> bool {
    fields.get("csrf").is_some_and(|t| operator.session.csrf_ok(t))
}

/// The answer to a form without the session's CSRF token: nothing done.
fn csrf_refused(operator: &Operator) -> Response {
    let shell = operator.shell(Section::Overview);
    let flash = Flash::Problem(
        "This form had expired or did not come from this console, so nothing was changed. Go back, reload the page and try again."
            .into(),
    );
    ui::respond(
        StatusCode::FORBIDDEN,
        ui::page(
            &shell,
            "Nothing was changed",
            Some(&flash),
            html! {
                p { a href="/console/" { "Back to the overview" } }
            },
        ),
    )
}

/// A page for a failure that is not the operator's input.
fn failure(operator: &Operator, e: &ManageError) -> Response {
    let (status, title, text) = match e {
        ManageError::NotFound(_) => (
            StatusCode::NOT_FOUND,
            "No such key",
            "No key has this id. It may have been typed wrong; find it in the key list.".to_owned(),
        ),
        ManageError::Conflict(message) => (StatusCode::CONFLICT, "Not possible", message.clone()),
        ManageError::Store(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "The key store is unavailable",
            "keygate cannot reach its key store right now. Try again in a moment; /readyz says when it is back."
                .to_owned(),
        ),
        // The cause goes to the log (below), never into the page.
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "keygate could not complete this. Nothing else was changed; the gateway's log says why.".to_owned(),
        ),
    };
    if status.is_server_error() {
        tracing::warn!(error = %e, "console action failed");
    }
    let shell = operator.shell(Section::Keys);
    ui::respond(
        status,
        ui::page(
            &shell,
            title,
            Some(&Flash::Problem(text)),
            html! {
                p { a href="/console/keys" { "Back to the keys" } }
            },
        ),
    )
}

/// A part of a page that could not be read: a note on the page, the cause
/// in the log.
fn unreadable(what: &str, e: &ManageError) -> Markup {
    tracing::warn!(error = %e, "console: {what} cannot be read");
    html! { p.flash.error role="alert" { (what) " cannot be read right now (the key store did not answer). Reload in a moment." } }
}

/// Field errors as one message.
fn invalid_message(e: &ManageError) -> Option<String> {
    match e {
        ManageError::Invalid(errors) => Some(
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    }
}

// ---- sign in and out -------------------------------------------------

fn signed_out_shell() -> Shell<'static> {
    Shell {
        product: "keygate console",
        home: "/console/",
        assets: "/console/assets",
        nav: Vec::new(),
        sign_out: None,
        who: None,
    }
}

/// The sign-in form, with a fresh form token in its own cookie.
fn login_page(status: StatusCode, flash: Option<Flash>, configured: bool) -> Response {
    let nonce = session::random_hex();
    let body = html! {
        @if configured {
            p.lead { "Sign in with an admin token: the value of KEYGATE_ADMIN_TOKEN, or a token whose hash is in admin.tokens." }
            form.stack method="post" action="/console/login" {
                (csrf_field(&nonce))
                div {
                    label for="token" { "Admin token" }
                    input #token type="password" name="token" autocomplete="current-password" required autofocus;
                }
                div { button type="submit" { "Sign in" } }
            }
        } @else {
            p { "No admin token is configured, so nobody can sign in. Set KEYGATE_ADMIN_TOKEN (e.g. " code { "export KEYGATE_ADMIN_TOKEN=\"$(openssl rand -hex 32)\"" } ") or admin.tokens, restart keygate, and come back." }
        }
    };
    let mut response = ui::respond(
        status,
        ui::page(&signed_out_shell(), "Sign in", flash.as_ref(), body),
    );
    if let Ok(value) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &nonce, session::LOGIN_LIFETIME)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn presented_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| cookie(h, name))
}

/// The page for a key store that cannot be asked (before any session is
/// known).
pub fn store_down(e: &crate::store::StoreError) -> Response {
    tracing::warn!(error = %e, "console: the key store is unavailable");
    let flash = Flash::Problem(
        "keygate cannot reach its key store right now. Try again in a moment; /readyz says when it is back."
            .into(),
    );
    ui::respond(
        StatusCode::SERVICE_UNAVAILABLE,
        ui::page(
            &signed_out_shell(),
            "The key store is unavailable",
            Some(&flash),
            html! {},
        ),
    )
}

pub async fn login_form(State(state): Console, headers: HeaderMap) -> Response {
    if let Some(presented) = presented_cookie(&headers, COOKIE) {
        match state.console.get(presented).await {
            Ok(Some(_)) => return see_other("/console/"),
            Ok(None) => {}
            Err(e) => return store_down(&e),
        }
    }
    login_page(StatusCode::OK, None, state.auth.has_tokens())
}

pub async fn login(State(state): Console, headers: HeaderMap, Form(fields): Form<Fields>) -> Response {
    let configured = state.auth.has_tokens();
    let form_ok = match (presented_cookie(&headers, LOGIN_COOKIE), fields.get("csrf")) {
        (Some(expected), Some(presented)) => constant_time_eq(expected.as_bytes(), presented.as_bytes()),
        _ => false,
    };
    if !form_ok {
        let flash = Flash::Problem("The sign-in form had expired. Enter the token again.".into());
        return login_page(StatusCode::FORBIDDEN, Some(flash), configured);
    }
    let token = fields.get("token").unwrap_or_default();
    match state
        .auth
        .authenticate_token(SecretStr::new(token).expose())
        .await
    {
        Ok(principal) => {
            let (cookie_value, _) = match state.console.open(principal.token_id()).await {
                Ok(opened) => opened,
                Err(e) => return store_down(&e),
            };
            tracing::info!(token_id = principal.token_id(), "console sign-in");
            let mut response = see_other("/console/");
            let headers = response.headers_mut();
            for value in [
                set_cookie(COOKIE, &cookie_value, session::LIFETIME),
                set_cookie(LOGIN_COOKIE, "", Duration::zero()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.append(header::SET_COOKIE, value);
                }
            }
            response
        }
        Err(refusal) => {
            tracing::info!(reason = ?refusal, "console sign-in refused");
            let (status, text) = match refusal {
                Refusal::Throttled => (
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many wrong tokens were tried just now. Wait a second and try again.",
                ),
                Refusal::NotConfigured => (StatusCode::UNAUTHORIZED, "No admin token is configured."),
                Refusal::Missing | Refusal::Wrong => (
                    StatusCode::UNAUTHORIZED,
                    "That admin token is not valid. Check for missing characters and try again.",
                ),
            };
            login_page(status, Some(Flash::Problem(text.into())), configured)
        }
    }
}

pub async fn logout(
    State(state): Console,
    operator: Operator,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    if !csrf_ok(&operator, &fields) {
        return csrf_refused(&operator);
    }
    if let Some(presented) = presented_cookie(&headers, COOKIE) {
        if let Err(e) = state.console.close(presented).await {
            return store_down(&e);
        }
    }
    let mut response = see_other("/console/login");
    if let Ok(value) = HeaderValue::from_str(&set_cookie(COOKIE, "", Duration::zero())) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

// ---- overview ----------------------------------------------------------

pub async fn overview(State(state): Console, operator: Operator) -> Response {
    let day = SeriesQuery::default();
    let series = state.manager.series(UsageSubject::All, &day).await;
    let top = state.manager.top(&TopQuery::default()).await;
    let refused = state
        .manager
        .top(&TopQuery {
            rank: UsageRank::Refused,
            limit: 5,
            ..TopQuery::default()
        })
        .await;
    let store_ok = state.store.ping().await.is_ok();
    let limiter = format!("{:?}", state.metrics.limiter.state()).to_lowercase();
    let body = html! {
        p.lead { "Requests through this gateway and its replicas over the last 24 hours." }
        @match &series {
            Ok(series) => {
                (totals_cards(series))
                (chart::usage_chart("Requests by outcome, last 24 hours", series))
            }
            Err(e) => { (unreadable("The usage history", e)) }
        }
        h2 { "Busiest keys" }
        @match &top {
            Ok(top) if top.keys.is_empty() => {
                p.empty { "No key has been used in the last 24 hours. " a href="/console/keys/new" { "Create a key" } " and send a request with it." }
            }
            Ok(top) => { (top_table("busiest", &top.keys)) }
            Err(e) => { (unreadable("This list", e)) }
        }
        @if let Ok(refused) = &refused {
            @if !refused.keys.is_empty() {
                h2 { "Most refused keys" }
                p.hint { "A wrong secret with a key's short prefix, a revoked or expired key, or a rate limit: worth a look." }
                (top_table("refused", &refused.keys))
            }
        }
        h2 { "Health" }
        dl.meta {
            dt { "Key store" }
            dd { @if store_ok { "reachable" } @else { strong { "unreachable" } " — requests with uncached keys are refused with 503" } }
            dt { "Rate limits" }
            dd { (limiter) }
        }
    };
    ui::respond(
        StatusCode::OK,
        ui::page(&operator.shell(Section::Overview), "Overview", None, body),
    )
}

fn totals_cards(series: &Series) -> Markup {
    let total: u64 = series.points.iter().map(|p| p.total).sum();
    let ok: u64 = series
        .points
        .iter()
        .map(|p| p.by_outcome.get("ok").copied().unwrap_or(0))
        .sum();
    html! {
        ul.cards {
            li { span.n { (chart::compact(total)) } span.l { "requests" } }
            li { span.n { (chart::compact(ok)) } span.l { "allowed" } }
            li { span.n { (chart::compact(total - ok)) } span.l { "refused" } }
        }
    }
}

fn top_table(id: &str, keys: &[crate::store::KeyTotals]) -> Markup {
    html! {
        div.scroll {
            table #(id) {
                thead { tr { th scope="col" { "Key" } th scope="col" { "Owner" } th.num scope="col" { "Requests" } th.num scope="col" { "Allowed" } th.num scope="col" { "Refused" } } }
                tbody {
                    @for k in keys {
                        tr {
                            th scope="row" { a href={"/console/keys/" (k.key_id)} { (k.name) } }
                            td { (k.owner.as_deref().unwrap_or("—")) }
                            td.num { (k.total) }
                            td.num { (k.ok) }
                            td.num { (k.total - k.ok) }
                        }
                    }
                }
            }
        }
    }
}

// ---- the key list ------------------------------------------------------

/// `GET /console/keys` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct KeysQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    plan: String,
    #[serde(default)]
    after: String,
}

pub async fn keys(State(state): Console, operator: Operator, RawQuery(query): RawQuery) -> Response {
    let query: KeysQuery = lenient(query);
    let status = query.status.parse::<KeyStatus>().ok();
    let filter = KeyFilter {
        status,
        plan: (!query.plan.is_empty()).then(|| query.plan.clone()),
        search: (!query.q.trim().is_empty()).then(|| query.q.trim().to_owned()),
        ..KeyFilter::default()
    };
    let after = query.after.parse().ok();
    let page = state
        .manager
        .list(
            &filter,
            PageRequest {
                limit: KEYS_PER_PAGE,
                after,
            },
        )
        .await;
    let page = match page {
        Ok(page) => page,
        Err(e) => return failure(&operator, &e),
    };
    let now = state.manager.now();
    let plans: Vec<String> = state.manager.plans().iter().cloned().collect();
    let filtered = filter.status.is_some() || filter.plan.is_some() || filter.search.is_some();
    let next = page.next.as_ref().map(|after| {
        let mut params =
            form_urlencoded(&[("q", &query.q), ("status", &query.status), ("plan", &query.plan)]);
        params.push_str(&format!("&after={after}"));
        format!("/console/keys?{params}")
    });
    let body = html! {
        form.inline method="get" action="/console/keys" role="search" {
            div {
                label for="q" { "Search" span.hint { "name, owner or short prefix" } }
                input #q type="search" name="q" value=(query.q);
            }
            div {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "any" }
                    @for s in ["active", "inactive", "revoked"] {
                        option value=(s) selected[query.status == s] { (s) }
                    }
                }
            }
            div {
                label for="plan" { "Plan" }
                select #plan name="plan" {
                    option value="" selected[query.plan.is_empty()] { "any" }
                    @for p in &plans {
                        option value=(p) selected[&query.plan == p] { (p) }
                    }
                }
            }
            div { button type="submit" { "Filter" } }
            @if filtered { div { a href="/console/keys" { "Clear filters" } } }
        }
        @if page.items.is_empty() {
            @if filtered {
                p.empty { "No key matches these filters. " a href="/console/keys" { "Show every key" } "." }
            } @else {
                p.empty { "There are no keys yet. " a href="/console/keys/new" { "Create the first key" } "; it is shown once, so have somewhere safe to paste it." }
            }
        } @else {
            p {
                label.visually-hidden for="live-filter" { "Filter this page" }
                input #live-filter type="search" placeholder="Filter this page…" data-filter="keys" hidden;
                span #keys-count.hint aria-live="polite" {}
            }
            div.scroll {
                table.keys #keys {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Owner" } th scope="col" { "Status" }
                        th.opt scope="col" { "Plan" } th.opt scope="col" { "Short prefix" } th.opt scope="col" { "Last used" } th.num.opt scope="col" { "Requests" }
                    } }
                    tbody {
                        @for key in &page.items {
                            @let view = KeyView::new(key, now);
                            tr {
                                th scope="row" { a href={"/console/keys/" (key.id)} { (key.name) } }
                                td { (key.owner.as_deref().unwrap_or("—")) }
                                td { (badge(state_name(&view))) }
                                td.opt { (key.plan.as_deref().unwrap_or("none")) }
                                td.opt.mono { (key.short_prefix) }
                                td.opt { @match key.last_used_at { Some(at) => (time(at)), None => "never" } }
                                td.num.opt { (key.request_count) }
                            }
                        }
                    }
                }
            }
            @if let Some(next) = &next {
                nav.pager aria-label="Pages" { a href=(next) { "Next page" } }
            }
        }
    };
    ui::respond(
        StatusCode::OK,
        ui::page(&operator.shell(Section::Keys), "Keys", None, body),
    )
}

/// `a=1&b=2`, percent-encoded, skipping empty values.
fn form_urlencoded(pairs: &[(&str, &str)]) -> String {
    let kept: Vec<(&str, &str)> = pairs.iter().copied().filter(|(_, v)| !v.is_empty()).collect();
    serde_urlencoded::to_string(kept).unwrap_or_default()
}

/// What a badge shows: the stored status, or `expired`.
fn state_name(view: &KeyView) -> &'static str {
    if view.status == KeyStatus::Active && view.expired {
        "expired"
    } else {
        view.status.as_str()
    }
}

// ---- one key -----------------------------------------------------------

/// `GET /console/keys/{id}` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct KeyPageQuery {
    #[serde(default)]
    range: String,
}

/// The chart ranges a key's page offers.
const RANGES: [(&str, &str, i64); 3] = [
    ("24h", "24 hours", 24),
    ("7d", "7 days", 24 * 7),
    ("30d", "30 days", 24 * 30),
];

pub async fn key_page(
    State(state): Console,
    operator: Operator,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query: KeyPageQuery = lenient(query);
    render_key(&state, &operator, &id, &query.range, StatusCode::OK, None).await
}

async fn render_key(
    state: &AdminState,
    operator: &Operator,
    id: &str,
    range: &str,
    status: StatusCode,
    flash: Option<Flash>,
) -> Response {
    let key = match state.manager.get(id).await {
        Ok(key) => key,
        Err(e) => return failure(operator, &e),
    };
    let now = state.manager.now();
    let (range, range_label, hours) = RANGES
        .iter()
        .copied()
        .find(|(r, _, _)| *r == range)
        .unwrap_or(RANGES[0]);
    let query = SeriesQuery {
        from: now.checked_sub_signed(Duration::hours(hours)),
        ..SeriesQuery::default()
    };
    let series = state.manager.series(UsageSubject::Key(&key.id), &query).await;
    let audit = state.manager.key_audit(&key.id, KEY_AUDIT_ROWS).await;
    let view = KeyView::new(&key, now);
    let csrf = operator.session.csrf.as_str();
    let body = html! {
        p { a href="/console/keys" { "← All keys" } }
        dl.meta {
            dt { "Status" } dd { (badge(state_name(&view))) }
            dt { "Id" } dd.mono { (key.id) }
            dt { "Short prefix" } dd.mono { (key.prefix) (key.short_prefix) "…" }
            dt { "Owner" } dd { (key.owner.as_deref().unwrap_or("—")) }
            dt { "Scopes" } dd { @if key.scopes.is_empty() { "none" } @else { @for s in &key.scopes { code { (s) } " " } } }
            dt { "Plan" } dd { (key.plan.as_deref().unwrap_or("none (no rate limits)")) }
            dt { "Expires" } dd { @match key.expires_at { Some(at) => (time(at)), None => "never" } }
            dt { "Created" } dd { (time(key.created_at)) }
            dt { "Last used" } dd { @match key.last_used_at { Some(at) => (time(at)), None => "never" } }
            dt { "Requests" } dd { (key.request_count) " all time" }
        }
        h2 { "Usage" }
        nav.tabs aria-label="Chart range" {
            @for (r, label, _) in RANGES {
                @if r == range {
                    a href={"?range=" (r)} aria-current="page" { (label) }
                } @else {
                    a href={"?range=" (r)} { (label) }
                }
            }
        }
        @match &series {
            Ok(series) => { (chart::usage_chart(&format!("Requests of {} by outcome, last {range_label}", key.name), series)) }
            Err(e) => { (unreadable("The usage history", e)) }
        }
        @if key.status != KeyStatus::Revoked {
            h2 { "Change" }
            (edit_form(&key, csrf, &state.manager.plans().iter().cloned().collect::<Vec<_>>()))
            h2 { "Lifecycle" }
            div.actions {
                form method="post" action={"/console/keys/" (key.id) "/status"} {
                    (csrf_field(csrf))
                    @if key.status == KeyStatus::Active {
                        input type="hidden" name="status" value="inactive";
                        p.hint { "Requests with it are refused until it is enabled again." }
                        button.secondary type="submit" { "Disable" }
                    } @else {
                        input type="hidden" name="status" value="active";
                        p.hint { "Requests with it are accepted again." }
                        button type="submit" { "Enable" }
                    }
                }
                form method="post" action={"/console/keys/" (key.id) "/rotate"} {
                    (csrf_field(csrf))
                    label for="grace" { "Rotate" span.hint { "A new secret; the old one keeps working for:" } }
                    select #grace name="grace" {
                        option value="0" { "no time (stops now)" }
                        option value="1h" { "1 hour" }
                        option value="24h" selected { "24 hours" }
                        option value="7d" { "7 days" }
                    }
                    button.secondary type="submit" { "Rotate the secret" }
                }
                form method="post" action={"/console/keys/" (key.id) "/revoke"} {
                    (csrf_field(csrf))
                    label for="confirm" { "Revoke" span.hint { "Permanent. Type the key's name, " strong { (key.name) } ", to confirm." } }
                    input #confirm type="text" name="confirm" autocomplete="off" data-confirm=(key.name);
                    button.danger type="submit" { "Revoke this key" }
                }
            }
        } @else {
            p.flash { "This key is revoked: it can no longer be used or changed." }
        }
        h2 { "Audit" }
        @match &audit {
            Ok(entries) => { (audit_table(entries, false)) }
            Err(e) => { (unreadable("This list", e)) }
        }
    };
    ui::respond(
        status,
        ui::page(&operator.shell(Section::Keys), &key.name, flash.as_ref(), body),
    )
}

/// The key's page again, answering 422 with what to fix.
async fn key_problem(state: &AdminState, operator: &Operator, id: &str, flash: Flash) -> Response {
    render_key(
        state,
        operator,
        id,
        "",
        StatusCode::UNPROCESSABLE_ENTITY,
        Some(flash),
    )
    .await
}

fn edit_form(key: &Key, csrf: &str, plans: &[String]) -> Markup {
    let scopes: Vec<&str> = key.scopes.iter().map(String::as_str).collect();
    html! {
        form.stack method="post" action={"/console/keys/" (key.id) "/edit"} {
            (csrf_field(csrf))
            div { label for="name" { "Name" } input #name type="text" name="name" value=(key.name) required; }
            div { label for="owner" { "Owner" span.hint { "empty: none" } } input #owner type="text" name="owner" value=(key.owner.as_deref().unwrap_or("")); }
            div { label for="scopes" { "Scopes" span.hint { "separated by commas or spaces" } } input #scopes type="text" name="scopes" value=(scopes.join(", ")); }
            div {
                label for="plan" { "Plan" }
                select #plan name="plan" {
                    // A key without a plan keeps none unless one is chosen.
                    @if key.plan.is_none() { option value="" selected { "none (no rate limits)" } }
                    @for p in plans { option value=(p) selected[key.plan.as_deref() == Some(p.as_str())] { (p) } }
                }
            }
            div {
                label for="expires" { "Expires" span.hint { "never, a duration from now such as 30d, or a date (RFC 3339)" } }
                input #expires type="text" name="expires" value=(key.expires_at.map_or_else(|| "never".to_owned(), |t| t.to_rfc3339()));
            }
            div { button type="submit" { "Save changes" } }
        }
    }
}

fn audit_table(entries: &[AuditEntry], with_key: bool) -> Markup {
    html! {
        @if entries.is_empty() {
            p.empty { "No changes recorded yet." }
        } @else {
            div.scroll {
                table {
                    thead { tr {
                        th scope="col" { "When" }
                        @if with_key { th scope="col" { "Key" } }
                        th scope="col" { "Action" } th scope="col" { "By" } th scope="col" { "Details" }
                    } }
                    tbody {
                        @for e in entries {
                            tr {
                                td { (time(e.at)) }
                                @if with_key { td { a.mono href={"/console/keys/" (e.key_id)} { (e.key_id) } } }
                                td { (e.action) }
                                td.mono { (e.actor.as_str()) }
                                td.mono { (e.details) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Scopes typed in a box: separated by commas or whitespace.
fn scope_list<'a>(texts: impl IntoIterator<Item = &'a str>) -> std::collections::BTreeSet<String> {
    texts
        .into_iter()
        .flat_map(|t| t.split(|c: char| c == ',' || c.is_whitespace()))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub async fn edit_key(
    State(state): Console,
    operator: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if !csrf_ok(&operator, &fields) {
        return csrf_refused(&operator);
    }
    let now = state.manager.now();
    let expires = match parse_expiry(&fields.text("expires"), now) {
        Ok(expires) => expires,
        Err(e) => {
            let flash = Flash::Problem(format!("Expires: {e}. Nothing was changed."));
            return key_problem(&state, &operator, &id, flash).await;
        }
    };
    let owner = fields.text("owner");
    let patch = KeyPatch {
        name: Some(fields.text("name")),
        owner: Some((!owner.is_empty()).then_some(owner)),
        scopes: Some(scope_list(fields.all("scopes"))),
        plan: fields.get("plan").filter(|p| !p.is_empty()).map(str::to_owned),
        expires_at: Some(expires),
        ..KeyPatch::default()
    };
    match state.manager.update(&id, patch, &operator.actor()).await {
        Ok(key) => see_other(&format!("/console/keys/{}", key.id)),
        Err(e) => match invalid_message(&e) {
            Some(message) => {
                let flash = Flash::Problem(format!("Nothing was changed: {message}."));
                key_problem(&state, &operator, &id, flash).await
            }
            None => failure(&operator, &e),
        },
    }
}

pub async fn set_status(
    State(state): Console,
    operator: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if !csrf_ok(&operator, &fields) {
        return csrf_refused(&operator);
    }
    let status = match fields.get("status") {
        Some("active") => KeyStatus::Active,
        Some("inactive") => KeyStatus::Inactive,
        _ => {
            let flash = Flash::Problem("Choose enable or disable.".into());
            return key_problem(&state, &operator, &id, flash).await;
        }
    };
    match state.manager.set_status(&id, status, &operator.actor()).await {
        Ok(key) => see_other(&format!("/console/keys/{}", key.id)),
        Err(e) => failure(&operator, &e),
    }
}

pub async fn revoke_key(
    State(state): Console,
    operator: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if !csrf_ok(&operator, &fields) {
        return csrf_refused(&operator);
    }
    let key = match state.manager.get(&id).await {
        Ok(key) => key,
        Err(e) => return failure(&operator, &e),
    };
    if fields.get("confirm") != Some(key.name.as_str()) {
        let flash = Flash::Problem(format!(
            "The key was not revoked: type its name, {}, exactly to confirm.",
            key.name
        ));
        return key_problem(&state, &operator, &id, flash).await;
    }
    match state
        .manager
        .set_status(&id, KeyStatus::Revoked, &operator.actor())
        .await
    {
        Ok(key) => see_other(&format!("/console/keys/{}", key.id)),
        Err(e) => failure(&operator, &e),
    }
}

pub async fn rotate_key(
    State(state): Console,
    operator: Operator,
    Path(id): Path<String>,
    Form(fields): Form<Fields>,
) -> Response {
    if !csrf_ok(&operator, &fields) {
        return csrf_refused(&operator);
    }
    let grace = match crate::keys::model::parse_duration(fields.get("grace").unwrap_or("0")) {
        Ok(grace) => grace,
        Err(e) => {
            let flash = Flash::Problem(format!("Grace period: {e}."));
            return key_problem(&state, &operator, &id, flash).await;
        }
    };
    match state.manager.rotate(&id, grace, &operator.actor()).await {
        Ok(issued) => secret_page(
            &operator,
            &issued.key,
            issued.secret.expose(),
            "Rotated: the new secret",
        ),
        Err(e) => failure(&operator, &e),
    }
}

/// The one page that shows a secret: not cached, not in any URL.
fn secret_page(operator: &Operator, key: &Key, secret: &str, title: &str) -> Response {
    let body = html! {
        p.lead { "Copy it now: keygate keeps only a hash, so it cannot be shown again." }
        div.secret {
            output #secret aria-label="The secret" { (secret) }
            button.secondary type="button" data-copy="secret" hidden { "Copy" }
            span #secret-status role="status" {}
        }
        p { "Use it as " code { "Authorization: Bearer …" } " or " code { "X-API-Key: …" } "." }
        p { a.button href={"/console/keys/" (key.id)} { "Done: go to " (key.name) } }
    };
    ui::respond(
        StatusCode::OK,
        ui::page(&operator.shell(Section::Keys), title, None, body),
    )
}

// ---- a new key ---------------------------------------------------------

/// The expiry presets of the create form.
const EXPIRY_PRESETS: [(&str, &str); 5] = [
    ("never", "Never"),
    ("30d", "In 30 days"),
    ("90d", "In 90 days"),
    ("365d", "In a year"),
    ("date", "On a date:"),
];

pub async fn new_key_form(State(state): Console, operator: Operator) -> Response {
    new_key_page(&state, &operator, &Fields::default(), StatusCode::OK, None)
}

fn new_key_page(
    state: &AdminState,
    operator: &Operator,
    fields: &Fields,
    status: StatusCode,
    flash: Option<Flash>,
) -> Response {
    let offered: Vec<&str> = state.console_scopes.iter().map(String::as_str).collect();
    let chosen = fields.all("scopes");
    let extra: Vec<&str> = chosen.iter().copied().filter(|s| !offered.contains(s)).collect();
    let plans: Vec<String> = state.manager.plans().iter().cloned().collect();
    let default_plan = state.manager.default_plan();
    let expires = fields.get("expires").unwrap_or("never");
    let body = html! {
        form.stack method="post" action="/console/keys/new" {
            (csrf_field(&operator.session.csrf))
            div { label for="name" { "Name" span.hint { "what it is for, e.g. \"orders app (prod)\"" } } input #name type="text" name="name" value=(fields.text("name")) required autofocus; }
            div { label for="owner" { "Owner" span.hint { "the customer or team it belongs to (optional)" } } input #owner type="text" name="owner" value=(fields.text("owner")); }
            @if !offered.is_empty() {
                fieldset {
                    legend { "Scopes" span.hint { "from the route table" } }
                    @for (i, scope) in offered.iter().enumerate() {
                        label { input type="checkbox" name="scopes" value=(scope) id={"scope-" (i)} checked[chosen.contains(scope)]; code { (scope) } }
                    }
                }
            }
            div {
                label for="more-scopes" { @if offered.is_empty() { "Scopes" } @else { "Other scopes" } span.hint { "separated by commas or spaces" } }
                input #more-scopes type="text" name="scopes" value=(extra.join(", "));
            }
            @if !plans.is_empty() {
                div {
                    label for="plan" { "Plan" }
                    select #plan name="plan" {
                        // Without keys.default_plan, a new key has no plan unless one is chosen.
                        @if default_plan.is_none() {
                            option value="" selected[fields.get("plan").is_none_or(str::is_empty)] { "none (no rate limits)" }
                        }
                        @for p in &plans { option value=(p) selected[fields.get("plan").map_or(default_plan.as_deref() == Some(p.as_str()), |c| c == p)] { (p) } }
                    }
                }
            }
            fieldset {
                legend { "Expires" }
                @for (value, label) in EXPIRY_PRESETS {
                    label { input type="radio" name="expires" value=(value) checked[expires == value]; (label) }
                }
                label for="expires-on" { span.visually-hidden { "Expiry date" } }
                input #expires-on type="date" name="expires_on" value=(fields.text("expires_on"));
            }
            div { button type="submit" { "Create key" } }
        }
    };
    ui::respond(
        status,
        ui::page(&operator.shell(Section::NewKey), "New key", flash.as_ref(), body),
    )
}

pub async fn create_key(State(state): Console, operator: Operator, Form(fields): Form<Fields>) -> Response {
    if !csrf_ok(&operator, &fields) {
        return csrf_refused(&operator);
    }
    let now = state.manager.now();
    let expires_at = match expiry_of(&fields, now) {
        Ok(at) => at,
        Err(message) => {
            return new_key_page(
                &state,
                &operator,
                &fields,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(Flash::Problem(message)),
            );
        }
    };
    let owner = fields.text("owner");
    let request = CreateKey {
        name: fields.text("name"),
        owner: (!owner.is_empty()).then_some(owner),
        scopes: scope_list(fields.all("scopes")),
        plan: fields.get("plan").filter(|p| !p.is_empty()).map(str::to_owned),
        expires_at,
        ..CreateKey::default()
    };
    match state.manager.create(request, &operator.actor()).await {
        Ok(issued) => secret_page(
            &operator,
            &issued.key,
            issued.secret.expose(),
            "Key created: its secret",
        ),
        Err(e) => match invalid_message(&e) {
            Some(message) => new_key_page(
                &state,
                &operator,
                &fields,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some(Flash::Problem(format!("The key was not created: {message}."))),
            ),
            None => failure(&operator, &e),
        },
    }
}

/// The chosen expiry: a preset, or the date field (the end of that day,
/// UTC).
fn expiry_of(fields: &Fields, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, String> {
    match fields.get("expires").unwrap_or("never") {
        "date" => {
            let text = fields.get("expires_on").unwrap_or_default();
            let day = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map_err(|_| "Expires: pick a date, or another choice.".to_owned())?;
            let at = day
                .and_hms_opt(23, 59, 59)
                .map(|t| t.and_utc())
                .ok_or_else(|| "Expires: that date cannot be used.".to_owned())?;
            if at <= now {
                return Err("Expires: the date has passed; pick a later one.".into());
            }
            Ok(Some(at))
        }
        preset => parse_expiry(preset, now).map_err(|e| format!("Expires: {e}.")),
    }
}

// ---- the audit log -----------------------------------------------------

/// `GET /console/audit` parameters.
#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    after: Option<i64>,
}

pub async fn audit(State(state): Console, operator: Operator, RawQuery(query): RawQuery) -> Response {
    let query: AuditQuery = lenient(query);
    let page = state
        .manager
        .audit(PageRequest {
            limit: AUDIT_PER_PAGE,
            after: query.after,
        })
        .await;
    let page = match page {
        Ok(page) => page,
        Err(e) => return failure(&operator, &e),
    };
    let body = html! {
        p.lead { "Every change to a key, oldest first: who made it (cli, admin:<token>, console:<token>) and what changed." }
        (audit_table(&page.items, true))
        @if let Some(next) = page.next {
            nav.pager aria-label="Pages" { a href={"/console/audit?after=" (next)} { "Next page" } }
        }
    };
    ui::respond(
        StatusCode::OK,
        ui::page(&operator.shell(Section::Audit), "Audit log", None, body),
    )
}
