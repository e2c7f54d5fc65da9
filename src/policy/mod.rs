//! May they call this? Pure functions: path normalisation ([`path`]), the
//! first-match route table ([`routes`]), plan settings ([`plans`]) and the
//! plan-access and scope checks ([`scopes`]).
//!
//! Domain level (STYLE §2): `http` types such as `Method` are fine, but
//! nothing here names axum, hyper, tower or sqlx, and nothing imports
//! `config` — `config` builds these types from the file.

pub mod path;
pub mod plans;
pub mod routes;
pub mod scopes;

pub use path::{NormalizedPath, PathError, normalize};
pub use plans::{LimitScope, NO_PLAN, PlanLimit, PlanSettings};
pub use routes::{Access, DEFAULT_ROUTE, PathGlob, RouteSettings, RouteTable};
pub use scopes::{MethodClass, first_missing, method_scope, plan_allows};
