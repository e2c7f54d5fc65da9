//! The first-match route table: which route a request falls under, whether
//! it needs a key, and which scopes that key must hold.
//!
//! Owns the compiled path glob ([`PathGlob`]), one configured route
//! ([`RouteSettings`], filled by `config`) and the table built from them
//! once at startup ([`RouteTable`]). Matching runs on the normalised path
//! ([`super::path`]); comparing granted against required scopes is left to
//! [`super::scopes`], and the order of checks to the proxy's gate.

use std::collections::BTreeSet;
use std::fmt;

use http::Method;

use super::path::NormalizedPath;
use super::scopes::{MethodClass, method_scope};

/// A compiled path glob. `*` matches any run of characters within one
/// segment; `**` (a whole segment) matches any number of whole segments,
/// none included, so `/v1/orders/**` matches `/v1/orders`, `/v1/orders/1`
/// and `/v1/orders/1/items` but not `/v1/ordersx`. Matching is on the
/// normalised path, byte for byte, case-sensitive.
#[derive(Clone, PartialEq, Eq)]
pub struct PathGlob {
    pattern: String,
    segments: Vec<GlobSegment>,
    /// `Some("/v1/orders")` when the glob is literal segments and then one
    /// trailing `**` (the usual `/v1/orders/**`; `Some("")` for `/**`): a
    /// path matches when it is that prefix followed by its end or a `/`,
    /// which is checked without walking segments.
    prefix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GlobSegment {
    /// Exactly this text.
    Literal(String),
    /// Text with `*` wildcards, within one segment.
    Wild(String),
    /// `**`: zero or more whole segments.
    Any,
}

impl GlobSegment {
    fn matches(&self, segment: &str) -> bool {
        match self {
            Self::Literal(text) => text == segment,
            Self::Wild(pattern) => wildcard_match(pattern.as_bytes(), segment.as_bytes()),
            Self::Any => true,
        }
    }
}

/// Classic single-star backtracking match of `*` wildcards: linear in
/// practice, O(pattern × text) at worst, never exponential.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Percent-escapes in a glob must be written the way the normalised path
/// writes them ([`super::path`]: unreserved characters decoded, other
/// escapes in uppercase hex, `%2F`, `%5C` and `%00` refused), or the glob
/// could never match.
fn check_escapes(pattern: &str) -> Result<(), String> {
    let bytes = pattern.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        let upper_hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
        let escape = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(upper_hex));
        let Some(hex) = escape else {
            return Err(format!(
                "path glob {pattern:?} has a '%' that is not followed by two uppercase hex digits; write escapes as a normalised path has them (e.g. %C3%A9)"
            ));
        };
        let value = hex.iter().fold(0u8, |acc, &h| {
            let digit = if h.is_ascii_digit() {
                h - b'0'
            } else {
                h - b'A' + 10
            };
            acc * 16 + digit
        });
        if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
            return Err(format!(
                "path glob {pattern:?} escapes the unreserved character {:?}, which a normalised path always has decoded: write it plainly",
                char::from(value)
            ));
        }
        if matches!(value, b'/' | b'\\' | 0) {
            return Err(format!(
                "path glob {pattern:?} has %{}, which normalisation refuses, so it never matches",
                String::from_utf8_lossy(hex)
            ));
        }
        i += 3;
    }
    Ok(())
}

/// The segment of `rest` (a path without its leading `/`) starting at byte
/// `at`, and where the next one starts; `rest.len() + 1` means "no more".
/// Walking offsets instead of collecting the segments keeps matching free of
/// allocation.
fn segment_at(rest: &str, at: usize) -> (&str, usize) {
    let tail = rest.get(at..).unwrap_or("");
    match tail.find('/') {
        Some(i) => (&tail[..i], at + i + 1),
        None => (tail, rest.len() + 1),
    }
}

impl PathGlob {
    /// Compiles a glob. It must start with `/`; `**` must be a whole segment;
    /// empty (`//`), `.` and `..` segments are refused because a normalised
    /// path never contains them (a trailing `/` is allowed).
    pub fn new(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("path glob {pattern:?} must start with '/'"));
        };
        if let Some(c) = pattern
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '\\'))
        {
            return Err(format!(
                "path glob {pattern:?} contains {c:?}: globs match the path only (no query, fragment, spaces or backslashes)"
            ));
        }
        if pattern.contains(';') || pattern.contains("%3B") {
            return Err(format!(
                "path glob {pattern:?} contains ';': routes match the path without its segment parameters (/v1/orders;v=2/1 is matched as /v1/orders/1), so write the glob without them"
            ));
        }
        check_escapes(pattern)?;
        let parts: Vec<&str> = rest.split('/').collect();
        let last = parts.len() - 1;
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let segment = match part {
                "**" => GlobSegment::Any,
                "" if i == last => GlobSegment::Literal(String::new()),
                "" => {
                    return Err(format!(
                        "path glob {pattern:?} has an empty segment ('//'), which a normalised path never contains"
                    ));
                }
                "." | ".." => {
                    return Err(format!(
                        "path glob {pattern:?} has a {part:?} segment, which a normalised path never contains"
                    ));
                }
                p if p.contains("**") => {
                    return Err(format!(
                        "path glob {pattern:?}: '**' must be a whole segment (as in /v1/**), not part of {p:?}; use '*' within a segment"
                    ));
                }
                p if p.contains('*') => GlobSegment::Wild(p.to_owned()),
                p => GlobSegment::Literal(p.to_owned()),
            };
            segments.push(segment);
        }
        let prefix = match segments.split_last() {
            Some((GlobSegment::Any, literals)) => literals
                .iter()
                .map(|segment| match segment {
                    GlobSegment::Literal(text) => Some(format!("/{text}")),
                    _ => None,
                })
                .collect::<Option<String>>(),
            _ => None,
        };
        Ok(Self {
            pattern: pattern.to_owned(),
            segments,
            prefix,
        })
    }

    /// Whether the normalised `path` (starting with `/`, no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        if !path.starts_with('/') {
            return false;
        }
        if let Some(prefix) = &self.prefix {
            return path
                .strip_prefix(prefix.as_str())
                .is_some_and(|after| after.is_empty() || after.starts_with('/'));
        }
        self.walk(path)
    }

    /// The general match: segment by segment, `**` backtracking.
    fn walk(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        // The same single-star backtracking as `wildcard_match`, one level
        // up: `**` is the star, each other glob segment matches exactly one
        // path segment. `p` is the byte offset of the current path segment;
        // past `rest.len()` every segment is consumed.
        let segs = &self.segments;
        let (mut s, mut p) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while p <= rest.len() {
            let (part, next) = segment_at(rest, p);
            if s < segs.len() && segs[s] == GlobSegment::Any {
                star = Some((s, p));
                s += 1;
            } else if s < segs.len() && segs[s].matches(part) {
                s += 1;
                p = next;
            } else if let Some((ss, sp)) = star {
                // Let the `**` swallow one more segment and retry after it.
                let after = segment_at(rest, sp).1;
                s = ss + 1;
                p = after;
                star = Some((ss, after));
            } else {
                return false;
            }
        }
        segs[s..].iter().all(|seg| *seg == GlobSegment::Any)
    }

    /// The glob as configured.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Debug for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathGlob({:?})", self.pattern)
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// One `[[routes]]` entry; the table is first-match-wins in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSettings {
    /// Path glob (`routes[i].path`).
    pub path: PathGlob,
    /// Uppercase method tokens, deduplicated, in configured order; empty =
    /// every method (`routes[i].methods` absent).
    pub methods: Vec<String>,
    /// Scopes all required (`routes[i].scopes`).
    pub scopes: BTreeSet<String>,
    /// Whether a key is required; `false` forwards without one
    /// (`routes[i].auth`).
    pub auth: bool,
}

impl RouteSettings {
    /// Whether the route applies to `method` (compared case-sensitively, as
    /// HTTP methods are; the configured ones are uppercase). A route that
    /// lists `GET` also applies to `HEAD`: HEAD is GET without the body
    /// (RFC 9110 §9.3.2), so it reads the same resource and must not escape
    /// the GET route's scopes by falling through to a laxer route.
    pub fn allows_method(&self, method: &str) -> bool {
        self.methods.is_empty()
            || self.methods.iter().any(|m| m == method)
            || (method == "HEAD" && self.methods.iter().any(|m| m == "GET"))
    }

    /// Whether the route matches a request: the method is allowed and the
    /// glob matches the normalised path.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        self.allows_method(method) && self.path.matches(path)
    }

    /// The label of the route in logs and metrics: the glob, preceded by
    /// the methods when it lists any (`GET /v1/orders/**`,
    /// `POST,PUT /v1/orders/**`).
    pub fn label(&self) -> String {
        if self.methods.is_empty() {
            self.path.as_str().to_owned()
        } else {
            format!("{} {}", self.methods.join(","), self.path)
        }
    }
}

/// The route label of requests that no route matches.
pub const DEFAULT_ROUTE: &str = "default";

/// What the route table decides for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access<'a> {
    /// A route with `auth = false` matched: forward without a key.
    Public {
        /// The matching route's label (see [`RouteSettings::label`]).
        route: &'a str,
    },
    /// A key is required, holding every scope in `required`.
    Protected {
        /// The matching route's label, or [`DEFAULT_ROUTE`].
        route: &'a str,
        /// Scopes the key must hold: the route's (or `auth.default_scopes`
        /// when no route matched), plus the method scope when
        /// `auth.method_scopes` is on; sorted, without duplicates. Empty =
        /// any valid key.
        required: &'a [String],
    },
}

impl<'a> Access<'a> {
    /// The route label, for the request span and metrics.
    pub fn route(&self) -> &'a str {
        match *self {
            Self::Public { route } | Self::Protected { route, .. } => route,
        }
    }
}

/// Required scopes of one route (or of the default), precomputed for each
/// [`MethodClass`] so that [`RouteTable::decide`] only borrows.
#[derive(Debug, Clone)]
struct Requirement {
    label: String,
    auth: bool,
    /// Indexed by `MethodClass as usize`.
    by_class: [Vec<String>; MethodClass::COUNT],
}

impl Requirement {
    fn new(label: String, auth: bool, scopes: &BTreeSet<String>, method_scopes: bool) -> Self {
        let by_class = MethodClass::ALL.map(|class| {
            let mut set: BTreeSet<&str> = scopes.iter().map(String::as_str).collect();
            // A public route takes no key, so it has nothing to require.
            if method_scopes && auth {
                set.extend(method_scope(class));
            }
            set.into_iter().map(str::to_owned).collect()
        });
        Self {
            label,
            auth,
            by_class,
        }
    }

    fn access(&self, class: MethodClass) -> Access<'_> {
        if self.auth {
            Access::Protected {
                route: &self.label,
                required: &self.by_class[class as usize],
            }
        } else {
            Access::Public { route: &self.label }
        }
    }
}

/// The `[[routes]]` table, compiled once from config. First match wins: the
/// first route whose methods (if it lists any) include the request's method
/// — a route listing GET also takes HEAD, see
/// [`RouteSettings::allows_method`] — and whose glob matches the normalised
/// path; a request no route matches needs `auth.default_scopes`.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<(RouteSettings, Requirement)>,
    default: Requirement,
}

impl RouteTable {
    /// Builds the table. `default_scopes` apply to unmatched paths;
    /// `method_scopes` adds `read` (GET, HEAD), `write` (POST, PUT, PATCH)
    /// or `delete` (DELETE) to every protected request's requirement
    /// (other methods get no method scope).
    pub fn new(routes: Vec<RouteSettings>, default_scopes: BTreeSet<String>, method_scopes: bool) -> Self {
        let routes = routes
            .into_iter()
            .map(|route| {
                let requirement = Requirement::new(route.label(), route.auth, &route.scopes, method_scopes);
                (route, requirement)
            })
            .collect();
        let default = Requirement::new(DEFAULT_ROUTE.to_owned(), true, &default_scopes, method_scopes);
        Self { routes, default }
    }

    /// Decides for one request, on the path's routing view (segment
    /// parameters removed, see [`NormalizedPath::routing_view`]).
    /// Allocation-free for paths without parameters: the answer borrows
    /// from the table.
    pub fn decide(&self, method: &Method, path: &NormalizedPath) -> Access<'_> {
        let class = MethodClass::of(method);
        let view = path.routing_view();
        let (method, path) = (method.as_str(), view.as_ref());
        self.routes
            .iter()
            .find(|(route, _)| route.matches(method, path))
            .map_or(&self.default, |(_, requirement)| requirement)
            .access(class)
    }

    /// How many routes the table holds.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the table has no routes (every request then needs
    /// `auth.default_scopes`).
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::path::normalize;

    fn route(path: &str, methods: &[&str], scopes: &[&str], auth: bool) -> RouteSettings {
        RouteSettings {
            path: PathGlob::new(path).unwrap(),
            methods: methods.iter().map(|m| (*m).to_owned()).collect(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            auth,
        }
    }

    fn set(scopes: &[&str]) -> BTreeSet<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn globs_match_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("/v1/orders/**", "/v1/orders", true),
            ("/v1/orders/**", "/v1/orders/", true),
            ("/v1/orders/**", "/v1/orders/1", true),
            ("/v1/orders/**", "/v1/orders/1/items", true),
            ("/v1/orders/**", "/v1/ordersx", false),
            ("/v1/orders/**", "/v1/order", false),
            ("/v1/orders/**", "/v2/orders/1", false),
            ("/v1/*/items", "/v1/1/items", true),
            ("/v1/*/items", "/v1/abc/items", true),
            ("/v1/*/items", "/v1/1/2/items", false),
            ("/v1/*/items", "/v1/items", false),
            ("/v1/*/items", "/v1/1/items/x", false),
            ("/v1/*", "/v1/", true),
            ("/v1/*", "/v1", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("/", "/", true),
            ("/", "/x", false),
            ("/healthz", "/healthz", true),
            ("/healthz", "/healthz/", false),
            ("/healthz", "/healthzz", false),
            ("/files/*.json", "/files/a.json", true),
            ("/files/*.json", "/files/a.txt", false),
            ("/files/*.json", "/files/a/b.json", false),
            ("/a/**/z", "/a/z", true),
            ("/a/**/z", "/a/b/c/z", true),
            ("/a/**/z", "/a/b/c/y", false),
            ("/a/**/z", "/a/b/z/", false),
            ("/a/**/b/**/c", "/a/x/b/y/b/c", true),
            ("/a/**/b/**/c", "/a/x/c", false),
            ("/**/items", "/items", true),
            ("/**/items", "/a/b/items", true),
            ("/v1/orders/**", "v1/orders", false),
            ("/V1/**", "/v1/x", false),
            ("/caf%C3%A9/*", "/caf%C3%A9/menu", true),
            ("/v1/a/**", "/v1/a/b", true),
            ("/v1/a/**", "/v1/ab", false),
            ("/v1/a/**", "/v1", false),
            ("/**", "", false),
        ];
        for &(glob, path, want) in cases {
            let compiled = PathGlob::new(glob).unwrap();
            assert_eq!(compiled.matches(path), want, "{glob} vs {path}");
            // The prefix shortcut answers exactly as the segment walk does.
            assert_eq!(compiled.walk(path), want, "{glob} vs {path} (walk)");
        }
        assert_eq!(
            PathGlob::new("/v1/orders/**").unwrap().prefix.as_deref(),
            Some("/v1/orders")
        );
        assert_eq!(PathGlob::new("/**").unwrap().prefix.as_deref(), Some(""));
        assert_eq!(PathGlob::new("/v1/*/x/**").unwrap().prefix, None);
        assert_eq!(PathGlob::new("/a/**/z").unwrap().prefix, None);
    }

    #[test]
    fn bad_globs_are_refused() {
        for bad in [
            "v1/orders",
            "",
            "/v1/**x",
            "/v1/x**",
            "/v1/***",
            "/v1//x",
            "/v1/../x",
            "/./x",
            "/v1?x=1",
            "/v1#f",
            "/v 1",
            "/caf%c3%a9",
            "/%41bc",
            "/a%2Fb",
            "/a%",
            "/v1/orders;v=2/**",
            "/v1/orders%3Bv/**",
        ] {
            assert!(PathGlob::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_match_methods() {
        let get = route("/v1/**", &["GET"], &[], true);
        assert!(get.matches("GET", "/v1/x"));
        assert!(get.matches("HEAD", "/v1/x"), "HEAD follows GET");
        assert!(!get.matches("POST", "/v1/x"));
        assert!(!get.matches("GET", "/v2/x"));
        let head_only = route("/v1/**", &["HEAD"], &[], true);
        assert!(head_only.matches("HEAD", "/v1"));
        assert!(!head_only.matches("GET", "/v1"), "GET does not follow HEAD");
        let any = route("/v1/**", &[], &[], true);
        assert!(any.matches("DELETE", "/v1"));
        assert!(!get.matches("get", "/v1/x"), "methods are case-sensitive");
    }

    #[test]
    fn labels() {
        assert_eq!(
            route("/v1/orders/**", &["GET"], &[], true).label(),
            "GET /v1/orders/**"
        );
        assert_eq!(
            route("/v1/orders/**", &["POST", "PUT"], &[], true).label(),
            "POST,PUT /v1/orders/**"
        );
        assert_eq!(route("/public/**", &[], &[], false).label(), "/public/**");
    }

    /// The default config's routes, plus a few to exercise globs.
    fn table(default_scopes: &[&str], method_scopes: bool) -> RouteTable {
        RouteTable::new(
            vec![
                route("/v1/orders/**", &["GET"], &["can_read_order"], true),
                route(
                    "/v1/orders/**",
                    &["POST", "PUT", "PATCH"],
                    &["can_write_order"],
                    true,
                ),
                route("/public/**", &[], &[], false),
                route("/v1/*/items", &[], &["items", "can_read_order"], true),
                route("/v1/**", &[], &["v1"], true),
            ],
            set(default_scopes),
            method_scopes,
        )
    }

    fn decide<'a>(table: &'a RouteTable, method: &str, path: &str) -> Access<'a> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        table.decide(&method, &normalize(path).unwrap())
    }

    #[test]
    fn decisions_table() {
        let plain = table(&["base"], false);
        let with_methods = table(&[], true);
        // (auth.method_scopes, request, route label, required scopes; None = public)
        #[rustfmt::skip] // one case a line reads as a table
        let cases: &[(bool, &str, &str, Option<&[&str]>)] = &[
            // First match wins; the methods filter picks between the two
            // order routes.
            (false, "GET /v1/orders/1", "GET /v1/orders/**", Some(&["can_read_order"])),
            (false, "PATCH /v1/orders", "POST,PUT,PATCH /v1/orders/**", Some(&["can_write_order"])),
            // HEAD follows the GET route rather than falling through.
            (false, "HEAD /v1/orders/1", "GET /v1/orders/**", Some(&["can_read_order"])),
            // No order route lists DELETE: it falls through to /v1/**.
            (false, "DELETE /v1/orders/1", "/v1/**", Some(&["v1"])),
            // auth = false, with or without method scopes.
            (false, "POST /public/upload", "/public/**", None),
            (true, "GET /public/x", "/public/**", None),
            // `*` within one segment; scopes sorted.
            (false, "GET /v1/7/items", "/v1/*/items", Some(&["can_read_order", "items"])),
            (false, "GET /v1/7/8/items", "/v1/**", Some(&["v1"])),
            // Unmatched: the default scopes.
            (false, "GET /v2/orders", DEFAULT_ROUTE, Some(&["base"])),
            // Routing sees the normalised path: this is /v1/orders/1.
            (false, "GET /public/../v1/orders/1", "GET /v1/orders/**", Some(&["can_read_order"])),
            // Method scopes added, deduplicated and sorted.
            (true, "GET /v1/orders/1", "GET /v1/orders/**", Some(&["can_read_order", "read"])),
            (true, "HEAD /v1/orders/1", "GET /v1/orders/**", Some(&["can_read_order", "read"])),
            (true, "PUT /v1/orders/1", "POST,PUT,PATCH /v1/orders/**", Some(&["can_write_order", "write"])),
            (true, "DELETE /v1/orders/1", "/v1/**", Some(&["delete", "v1"])),
            (true, "OPTIONS /v1/x", "/v1/**", Some(&["v1"])),
            (true, "HEAD /other", DEFAULT_ROUTE, Some(&["read"])),
            (true, "POST /other", DEFAULT_ROUTE, Some(&["write"])),
            (true, "OPTIONS /other", DEFAULT_ROUTE, Some(&[])),
        ];
        for &(method_scopes, request, route, want) in cases {
            let table = if method_scopes { &with_methods } else { &plain };
            let (method, path) = request.split_once(' ').unwrap();
            let access = decide(table, method, path);
            assert_eq!(access.route(), route, "{request}");
            match (access, want) {
                (Access::Public { .. }, None) => {}
                (Access::Protected { required, .. }, Some(want)) => assert_eq!(required, want, "{request}"),
                (access, want) => panic!("{request}: got {access:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn method_scope_already_required_is_not_repeated() {
        let table = RouteTable::new(
            vec![route("/**", &[], &["write", "admin"], true)],
            BTreeSet::new(),
            true,
        );
        let Access::Protected { required, .. } = decide(&table, "POST", "/x") else {
            panic!("protected");
        };
        assert_eq!(required, ["admin", "write"]);
    }

    #[test]
    fn empty_table_uses_defaults() {
        let table = RouteTable::new(Vec::new(), BTreeSet::new(), false);
        assert!(table.is_empty());
        let access = decide(&table, "GET", "/anything");
        assert_eq!(
            access,
            Access::Protected {
                route: DEFAULT_ROUTE,
                required: &[]
            }
        );
        assert_eq!(access.route(), "default");
    }
}
