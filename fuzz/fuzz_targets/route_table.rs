//! `policy::routes`: globs come from the config file, paths from requests.
//!
//! Input: text lines. Line 1 is `METHOD PATH` (the request); every further
//! line, up to eight, is a route `[!]METHODS GLOB [auth]` where METHODS is
//! `-` (any) or a comma-separated list and a leading `!` marks a route with
//! `auth = false`.
//!
//! Properties:
//! - compiling any glob and matching any path never panics;
//! - `PathGlob::matches` agrees with a reference matcher written here from
//!   the documented semantics (`*` within one segment, `**` a whole
//!   segment for zero or more segments), on every path;
//! - a glob compiled from a literal normalised path matches that path, and
//!   `<literal>/**` matches it and everything below it;
//! - `RouteTable::decide` picks the first route whose methods allow the
//!   request's (GET lets HEAD in) and whose glob matches the routing view
//!   of the normalised path, or the default; public routes are public.
#![no_main]

use std::collections::BTreeSet;

use http::Method;
use keygate::policy::{Access, DEFAULT_ROUTE, PathGlob, RouteSettings, RouteTable, normalize};
use libfuzzer_sys::fuzz_target;

/// `*` matches any run of bytes: the textbook dynamic programme, so the
/// reference is obviously right rather than fast.
fn wildcard(pattern: &[u8], text: &[u8]) -> bool {
    let mut row = vec![false; text.len() + 1];
    row[0] = true;
    for &p in pattern {
        let mut next = vec![false; text.len() + 1];
        if p == b'*' {
            let mut any = false;
            for j in 0..=text.len() {
                any |= row[j];
                next[j] = any;
            }
        } else {
            for j in 1..=text.len() {
                next[j] = row[j - 1] && text[j - 1] == p;
            }
        }
        row = next;
    }
    row[text.len()]
}

/// The documented glob semantics over segments.
fn reference(glob: &str, path: &str) -> bool {
    let (Some(glob), Some(path)) = (glob.strip_prefix('/'), path.strip_prefix('/')) else {
        return false;
    };
    let globs: Vec<&str> = glob.split('/').collect();
    let parts: Vec<&str> = path.split('/').collect();
    // matched[j]: the glob segments so far consume exactly parts[..j].
    let mut matched = vec![false; parts.len() + 1];
    matched[0] = true;
    for g in &globs {
        let mut next = vec![false; parts.len() + 1];
        if *g == "**" {
            let mut any = false;
            for j in 0..=parts.len() {
                any |= matched[j];
                next[j] = any;
            }
        } else {
            for j in 1..=parts.len() {
                next[j] = matched[j - 1] && wildcard(g.as_bytes(), parts[j - 1].as_bytes());
            }
        }
        matched = next;
    }
    matched[parts.len()]
}

struct Route {
    settings: RouteSettings,
    glob: String,
}

fn parse_route(line: &str) -> Option<Route> {
    let (methods, glob) = line.split_once(' ')?;
    let (public, methods) = match methods.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, methods),
    };
    let methods: Vec<String> = if methods == "-" {
        Vec::new()
    } else {
        let mut list: Vec<String> = Vec::new();
        for m in methods.split(',') {
            if !list.iter().any(|x| x == m) {
                list.push(m.to_owned());
            }
        }
        list
    };
    let path = PathGlob::new(glob).ok()?;
    Some(Route {
        settings: RouteSettings {
            path,
            methods,
            scopes: BTreeSet::new(),
            auth: !public,
        },
        glob: glob.to_owned(),
    })
}

fn check_literal(path: &str) {
    if path.contains('*') {
        return;
    }
    if let Ok(glob) = PathGlob::new(path) {
        assert!(
            glob.matches(path),
            "the literal glob {path:?} does not match itself"
        );
    }
    let base = path.strip_suffix('/').unwrap_or(path);
    if let Ok(glob) = PathGlob::new(&format!("{base}/**")) {
        assert!(glob.matches(path), "{base}/** does not match {path:?}");
        let below = format!("{base}/x");
        assert!(glob.matches(&below), "{base}/** does not match {below:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let Some(request) = lines.next() else {
        return;
    };
    let (method, raw_path) = request.split_once(' ').unwrap_or(("GET", request));
    let routes: Vec<Route> = lines.take(8).filter_map(parse_route).collect();

    // Every glob against the raw path and the normalised one.
    let normal = normalize(raw_path).ok();
    for route in &routes {
        let glob = &route.settings.path;
        for path in [Some(raw_path), normal.as_ref().map(|n| n.as_str())]
            .into_iter()
            .flatten()
        {
            assert_eq!(
                glob.matches(path),
                reference(&route.glob, path),
                "glob {:?} vs path {path:?}",
                route.glob
            );
        }
    }
    let Some(normal) = normal else {
        return;
    };
    check_literal(normal.as_str());

    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let view = normal.routing_view();
    let expected = routes.iter().find(|r| {
        let m = method.as_str();
        let allowed = r.settings.methods.is_empty()
            || r.settings.methods.iter().any(|x| x == m)
            || (m == "HEAD" && r.settings.methods.iter().any(|x| x == "GET"));
        allowed && reference(&r.glob, &view)
    });
    let table = RouteTable::new(
        routes.iter().map(|r| r.settings.clone()).collect(),
        BTreeSet::new(),
        false,
    );
    let access = table.decide(&method, &normal);
    match expected {
        None => assert_eq!(
            access,
            Access::Protected {
                route: DEFAULT_ROUTE,
                required: &[]
            }
        ),
        Some(route) => {
            assert_eq!(access.route(), route.settings.label(), "{request:?}");
            assert_eq!(
                matches!(access, Access::Public { .. }),
                !route.settings.auth,
                "{request:?}"
            );
        }
    }
});
