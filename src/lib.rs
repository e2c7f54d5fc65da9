//! keygate: a standalone API-key authentication gateway.
//!
//! Map of the tree (see STYLE.md §1 and §2; arrows point down only):
//!
//! - Domain (pure): [`keys`] — key format, secrets, hashing, model;
//!   [`policy`] — path normalisation, routes, scopes.
//! - Adapters: [`store`] — the `KeyStore` trait and its SQLite implementation.
//! - Use case: [`manage`] — key lifecycle operations shared by the CLI and
//!   the admin API (create, update, rotate, revoke, import).
//! - Wiring: [`config`] — TOML + env overrides → validated settings;
//!   [`telemetry`] — tracing subscriber; [`cli`] — the command line.
//! - Shared: [`clock`] — injected time.
#![forbid(unsafe_code)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod keys;
pub mod manage;
pub mod policy;
pub mod store;
pub mod telemetry;
