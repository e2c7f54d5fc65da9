#!/bin/sh
# Creates a stub source file for every target that Cargo.toml declares
# ([lib], [[bin]], [[bench]], [[test]], [[example]]), at its `path` or at
# Cargo's default path for its `name`, so that the Dockerfile can build the
# dependencies alone, as a cached layer, before the real sources are copied
# in. Undeclared (auto-discovered) benches, tests and examples need no stub.
# A stub never overwrites an existing file.
#
# Usage: deploy/cargo-stubs.sh [DIR]   (DIR holds Cargo.toml; default .)
set -eu
cd "${1:-.}"

awk '
function unquote(line,   v) {
    v = line
    sub(/^[^=]*=[ \t]*/, "", v)
    sub(/[ \t]*(#.*)?$/, "", v)
    gsub(/^["\047]|["\047]$/, "", v)
    return v
}
function flush(   p) {
    if (kind == "") return
    p = path
    if (p == "") {
        if (kind == "lib") p = "src/lib.rs"
        else if (kind == "bin") p = "src/bin/" name ".rs"
        else if (kind == "bench") p = "benches/" name ".rs"
        else if (kind == "test") p = "tests/" name ".rs"
        else if (kind == "example") p = "examples/" name ".rs"
    }
    print kind, p
    kind = ""; name = ""; path = ""
}
/^[ \t]*\[/ {
    flush()
    if ($0 ~ /^[ \t]*\[lib\]/) kind = "lib"
    else if (match($0, /^[ \t]*\[\[(bin|bench|test|example)\]\]/)) {
        kind = $0
        gsub(/[][ \t]/, "", kind)
        sub(/#.*/, "", kind)
    }
    next
}
kind != "" && /^[ \t]*name[ \t]*=/ { name = unquote($0) }
kind != "" && /^[ \t]*path[ \t]*=/ { path = unquote($0) }
END { flush() }
' Cargo.toml | while read -r kind path; do
    [ -e "$path" ] && continue
    mkdir -p "$(dirname "$path")"
    if [ "$kind" = lib ]; then
        echo '//! Stub: replaced by the real sources.' >"$path"
    else
        echo 'fn main() {}' >"$path"
    fi
done
