#!/usr/bin/env bash
# A million keys in Postgres (issue 5, "Scale"): shows that startup does not
# load the keys, that the hot-path lookup by short prefix is index-only, and
# that keygate's memory is bounded by `cache.max_entries`, not by the store.
#
# Steps: a fresh database; REAL keys issued through the library
# (examples/mkkeys.rs: real secrets, light argon2 set); filler rows up to
# TOTAL keys written by one INSERT … SELECT generate_series (distinct short
# prefixes, a copied hash: the index and table sizes of a million real keys
# without hashing a million secrets); ANALYZE; EXPLAIN (ANALYZE, BUFFERS) of
# the gateway's candidate lookup; then for each cache size in CACHES a fresh
# `keygate serve`: time until /readyz answers 200 and VmRSS at that point,
# then two passes over the REAL keys (examples/walk.rs) with VmRSS after each.
#
# Manual only (not run in CI). Needs a Postgres it may create a database on.
#
# Usage: bench/scale.sh
# Knobs (environment): TOTAL=1000000 REAL=20000 CACHES="1000 100000"
#   PG_URL=postgres://postgres@127.0.0.1:5432 DB=keygate_scale KEEP_DB=1
#   KEEP_WORK=1
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

TOTAL="${TOTAL:-1000000}"
REAL="${REAL:-20000}"
CACHES="${CACHES:-1000 100000}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
DB="${DB:-keygate_scale}"

need cargo psql curl python3 awk
((REAL >= 1 && TOTAL >= REAL)) || die "need 1 <= REAL <= TOTAL (REAL=$REAL TOTAL=$TOTAL)"
[[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "DB must be a plain lowercase identifier"

note "building keygate, mkkeys, walk and the echo upstream (release)"
cargo build --release --locked --quiet --bin keygate --example mkkeys --example walk --example echo
kg="$PWD/target/release/keygate"
ex="$PWD/target/release/examples"

make_work scale
w="$BENCH_WORK"
mapfile -t ports < <(free_ports 3)
P_ECHO="${ports[0]}" P_KG="${ports[1]}" P_ADMIN="${ports[2]}"

sql() {
    psql -X -q -v ON_ERROR_STOP=1 "$PG_URL/$1" "${@:2}"
}

drop_db() {
    sql postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
}
note "creating database $DB"
drop_db
sql postgres -c "CREATE DATABASE $DB"
if [[ -z "${KEEP_DB:-}" ]]; then
    trap 'drop_db || true; cleanup' EXIT
fi

start echo "$ex/echo" "127.0.0.1:$P_ECHO"
wait_port "$P_ECHO" "$LAST_PID" echo

# config CACHE: writes the gateway config with cache.max_entries = CACHE.
config() {
    cat >"$w/keygate.toml" <<TOML
[server]
listen = "127.0.0.1:$P_KG"
admin_listen = "127.0.0.1:$P_ADMIN"
shutdown_grace = "1s"

[database]
url = "$PG_URL/$DB"

[upstream]
url = "http://127.0.0.1:$P_ECHO"

[keys]
default_plan = "pro"

[cache]
max_entries = $1

[[routes]]
path = "/v1/**"
scopes = ["bench"]

[plans.pro]
unlimited = true

[log]
level = "warn"
TOML
}
config 1000

note "issuing $REAL real keys"
t0=$(now_ns)
"$ex/mkkeys" "$w/keygate.toml" "$REAL" "$w/keys.txt" bench >"$w/mkkeys.log" 2>&1 \
    || { cat "$w/mkkeys.log" >&2; die "mkkeys failed"; }
issue_s=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

filler=$((TOTAL - REAL))
note "writing $filler filler keys"
t0=$(now_ns)
sql "$DB" <<SQL
BEGIN;
-- Ids: key_ + 26 Crockford characters (a 0 and 25 hex digits, which are
-- valid Crockford), so a listing can parse them. Short prefixes: 'z' and 7
-- hex digits of the row number: distinct, and the chance that one equals a
-- real key's random base62 prefix is about REAL * TOTAL / 62^8 (< 1e-4).
CREATE TEMP TABLE filler AS
    SELECT i,
           'key_0' || upper(substr(md5(i::text), 1, 25)) AS id,
           'z' || lpad(to_hex(i), 7, '0') AS short_prefix
    FROM generate_series(1, $filler) AS i;
INSERT INTO keys (id, name, owner, scopes, plan, status, prefix, short_prefix, source,
                  created_at, updated_at)
    SELECT id, 'filler ' || i, NULL, '["bench"]'::jsonb, 'pro', 'active', 'kg_live_',
           short_prefix, 'generated', now(), now()
    FROM filler;
INSERT INTO key_secrets (key_id, prefix, short_prefix, hash, source, valid_until, created_at)
    SELECT f.id, 'kg_live_', f.short_prefix, s.hash, 'generated', NULL, now()
    FROM filler f, (SELECT hash FROM key_secrets LIMIT 1) s;
COMMIT;
-- What autovacuum would do soon after such a load: statistics, and the
-- visibility map that lets index-only scans skip the heap.
VACUUM ANALYZE;
SQL
fill_s=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')

keys_total=$(sql "$DB" -At -c "SELECT count(*) FROM keys")
sizes=$(sql "$DB" -At -F'|' -c "SELECT pg_size_pretty(pg_total_relation_size('keys')),
    pg_size_pretty(pg_total_relation_size('key_secrets')),
    pg_size_pretty(pg_relation_size('key_secrets_short_prefix'))")

# The gateway's candidate lookup (src/store/postgres.rs find_candidates),
# for the short prefix of one real key.
probe_short=$(sql "$DB" -At -c "SELECT short_prefix FROM keys WHERE name NOT LIKE 'filler %' LIMIT 1")
sql "$DB" -At -c "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
    SELECT k.*, s.prefix, s.short_prefix, s.hash, s.valid_until
    FROM key_secrets s JOIN keys k ON k.id = s.key_id
    WHERE s.short_prefix = '$probe_short' ORDER BY s.id" >"$w/explain.txt"

rows=()
for cache in $CACHES; do
    config "$cache"
    t0=$(now_ns)
    start keygate "$kg" --config "$w/keygate.toml" serve
    pid=$LAST_PID
    for ((i = 0; i < 3000; i++)); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_ADMIN/readyz" || true)
        [[ "$code" == 200 ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$w/keygate.log" >&2; die "keygate exited"; }
        sleep 0.01
    done
    [[ "$code" == 200 ]] || die "keygate not ready within 30 s"
    ready_s=$(awk -v a="$t0" -v b="$(now_ns)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    rss_ready=$(status_kib "$pid" VmRSS)
    pass1=$("$ex/walk" "http://127.0.0.1:$P_KG/v1/scale" "$w/keys.txt" 64)
    rss1=$(status_kib "$pid" VmRSS)
    pass2=$("$ex/walk" "http://127.0.0.1:$P_KG/v1/scale" "$w/keys.txt" 64)
    rss2=$(status_kib "$pid" VmRSS)
    stop "$pid"
    rows+=("$(python3 - "$cache" "$ready_s" "$rss_ready" "$rss1" "$rss2" "$pass1" "$pass2" <<'PY'
import json, sys
cache, ready, r0, r1, r2, p1, p2 = sys.argv[1:]
p1, p2 = json.loads(p1), json.loads(p2)
mib = lambda kib: f"{int(kib) / 1024:.0f}"
st = lambda p: ",".join(f"{k}:{v}" for k, v in sorted(p["statuses"].items()))
print(f"| {int(cache):,} | {ready} s | {mib(r0)} MiB | {p1['requests_per_second']:,.0f} req/s ({st(p1)}) | {mib(r1)} MiB "
      f"| {p2['requests_per_second']:,.0f} req/s ({st(p2)}) | {mib(r2)} MiB |")
PY
)")
done

echo
echo "keys in the store: $keys_total ($REAL real, issued in $issue_s s; filler written in $fill_s s)"
echo "sizes: keys $(cut -d'|' -f1 <<<"$sizes"), key_secrets $(cut -d'|' -f2 <<<"$sizes") (short-prefix index $(cut -d'|' -f3 <<<"$sizes"))"
echo
echo "candidate lookup for short prefix $probe_short:"
sed 's/^/    /' "$w/explain.txt"
if grep -q "Index Only Scan using key_secrets_short_prefix" "$w/explain.txt"; then
    echo "=> index-only on key_secrets_short_prefix"
else
    echo "=> NOT index-only on key_secrets_short_prefix"
fi
echo
echo "| cache.max_entries | ready after start | RSS ready | pass 1 over $REAL keys | RSS | pass 2 | RSS |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
