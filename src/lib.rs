//! keygate: a standalone API-key authentication gateway.
//!
//! Map of the tree (see STYLE.md §1 and §2; arrows point down only):
//!
//! - Domain (pure): [`keys`] — key format, secrets, hashing, model, and
//!   token-exchange sessions as data (`keys::session`, which the store
//!   reads and writes and `token` decides about); [`policy`] — path
//!   normalisation, routes, scopes, plans.
//! - Adapters: [`store`] — the `KeyStore` trait, its SQLite and Postgres
//!   implementations (one SQL body per query, a dialect per backend);
//!   [`ratelimit`] — plan windows counted locally or in Redis;
//!   [`token`] — JWT exchange: claims, signing keys, the session decisions,
//!   refresh rotation.
//! - Use case: [`manage`] — key lifecycle operations shared by the CLI and
//!   the admin API (create, update, rotate, revoke, import), and the one
//!   set of rules a key's fields follow (`manage::KeyFields`), and what a
//!   usage-history query means (`manage::series`); [`auth`] — who
//!   is calling: credential extraction, presented key → principal, with a
//!   verified-key cache kept current by the store's change feed; and the
//!   token exchange (login, refresh, client credentials) over the store.
//! - Edges: [`proxy`] — the proxy listener (serving lanes, gate, forward,
//!   the request's log record); [`admin`] — the
//!   admin listener; [`echo`] — the built-in echo upstream (demo, tests);
//!   [`problem`] — the one renderer of keygate's own error responses
//!   (problem+json or the `[errors]` templates); [`ui`] — what the
//!   dashboard looks like (page shell, assets, SVG charts), shared by the
//!   console (admin listener) and the portal.
//! - Wiring: [`app`] — state, listeners, lifecycle; [`config`] — TOML + env overrides → validated settings;
//!   [`telemetry`] — tracing subscriber; [`cli`] — the command line.
//! - Shared: [`clock`] — injected time.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod echo;
pub mod keys;
pub mod manage;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod ratelimit;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod ui;
