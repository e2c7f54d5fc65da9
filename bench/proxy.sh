#!/usr/bin/env bash
# Proxy overhead, in one run: the same loopback upstream (nginx answering a
# small 200) driven by wrk rotating over NKEYS keys (X-API-Key), four ways:
#
#   upstream    straight to the upstream nginx (what the hardware gives)
#   bare        through a bare hyper reverse proxy (examples/bare_proxy.rs):
#               the cost of any Rust proxy at all (tokio's default
#               multi-thread runtime: the target's yardstick)
#   bare-ct     the same proxy on a current-thread runtime, as keygate's
#               serving threads run (a reference: how much of keygate's
#               standing against `bare` is the runtime)
#   nginx-map   through nginx with a `map` of the same keys, 401 when not
#               mapped (what a user would put there instead of keygate)
#   keygate     through keygate: auth + scope check + plan lookup on cached
#               keys (every key verified once before measuring); the plan
#               is unlimited
#   keygate-local  the same with the plan limited by two windows (1 min and
#               1 h, far above what wrk sends: every request is checked and
#               counted, none denied), local counters
#   keygate-redis  the same limits counted in Redis (REDIS_URL; the row is
#               left out, with a note, when Redis does not answer)
#   keygate-token  keygate with [tokens] on, every request carrying an
#               access token (HS256 JWT) instead of the key: one token per
#               key, from POST /auth/login, rotated the same way
#
# wrk runs on LOAD_CPU, every server (proxy under test and upstream) on
# SERVER_CPU (taskset). Rows are interleaved over ROUNDS rounds, the order
# rotating each round; the table shows each row's median req/s, p50, p99 and
# the ratios. Then:
#   - warm-up: keygate is restarted with NKEYS keys in its store and a pass
#     over every key is timed (cold cache: store read + argon2 per key);
#   - floods: 100% forged keys of four kinds against keygate, counting 401s
#     and 5xx through a wrk response() hook, with keygate's CPU use.
#
# Manual only (not run in CI): needs wrk, nginx, taskset, python3, curl and
# two CPUs, and takes about six minutes plus the release build.
#
# Usage: bench/proxy.sh
# Knobs (environment): NKEYS=10000 ROUNDS=3 DURATION=10s CONNS=64
#                      LOAD_CPU=0 SERVER_CPU=1 KEEP_WORK=1 (keep the temp dir)
#                      PERF=1 (also profile the bare proxy and keygate)
#                      KEYGATE_BIN=path (measure another keygate build, e.g.
#                      an older commit's, against this tree's helpers)
#                      REDIS_URL=redis://127.0.0.1:6379 (keygate-redis row)
#                      KEYGATE_B_BIN=path (add a row: that build of
#                      keygate, same keys and config, interleaved with the
#                      others: an A/B in one run)
#
# Why wrk -t1 -c64: one wrk thread per core it owns (more threads on one core
# only contend); 64 keep-alive connections keep a one-core server saturated
# while its latency stays meaningful, and match the 64 idle upstream
# connections nginx keeps. The upstream row shows what wrk itself can drive:
# while it is well above the proxy rows, the load generator is not the limit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

NKEYS="${NKEYS:-10000}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
LOAD_CPU="${LOAD_CPU:-0}"
SERVER_CPU="${SERVER_CPU:-1}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# The path every row requests; keygate's one route requires scope `bench`
# on it.
REQ_PATH="/v1/orders/42"

need cargo wrk nginx taskset python3 curl awk top
need_cpus "$LOAD_CPU" "$SERVER_CPU"
nginx_bin="$(command -v nginx)"

note "building keygate and the bench helpers (release)"
cargo build --release --locked --quiet --bin keygate \
    --example bare_proxy --example mkkeys --example walk
kg="${KEYGATE_BIN:-$PWD/target/release/keygate}"
[[ -x "$kg" ]] || die "no keygate binary at $kg"
kg_version="$(git describe --always --dirty 2>/dev/null || echo unknown)"
[[ -z "${KEYGATE_BIN:-}" ]] || kg_version="$KEYGATE_BIN"
ex="$PWD/target/release/examples"

make_work proxy
w="$BENCH_WORK"
mkdir -p "$w/up" "$w/map"
mapfile -t ports < <(free_ports 14)
P_UP="${ports[0]}" P_BARE="${ports[1]}" P_MAP="${ports[2]}" P_KG="${ports[3]}" P_ADMIN="${ports[4]}"
P_KGB="${ports[5]}" P_ADMINB="${ports[6]}" P_KGL="${ports[7]}" P_ADMINL="${ports[8]}"
P_KGR="${ports[9]}" P_ADMINR="${ports[10]}" P_KGT="${ports[11]}" P_ADMINT="${ports[12]}"
P_BARECT="${ports[13]}"
kgb="${KEYGATE_B_BIN:-}"
[[ -z "$kgb" || -x "$kgb" ]] || die "no keygate binary at KEYGATE_B_BIN=$kgb"
on_server=(taskset -c "$SERVER_CPU")
on_load=(taskset -c "$LOAD_CPU")
clk_tck="$(getconf CLK_TCK)"

busy_before="$(busy_report)"
start_monitor

# --- keygate's config and keys ----------------------------------------------
cat >"$w/keygate.toml" <<TOML
[server]
listen = "127.0.0.1:$P_KG"
admin_listen = "127.0.0.1:$P_ADMIN"
shutdown_grace = "1s"

[database]
url = "sqlite://$w/keygate.db?mode=rwc"

[upstream]
url = "http://127.0.0.1:$P_UP"

[keys]
default_plan = "pro"

[[routes]]
path = "/v1/**"
scopes = ["bench"]

[plans.pro]
unlimited = true

[log]
level = "warn"
TOML

note "creating $NKEYS keys (examples/mkkeys.rs)"
"$ex/mkkeys" "$w/keygate.toml" "$NKEYS" "$w/keys.txt" bench pro 2>"$w/mkkeys.log" \
    || { cat "$w/mkkeys.log" >&2; die "mkkeys failed"; }
mkkeys_line="$(tail -1 "$w/mkkeys.log")"
[[ "$(wc -l <"$w/keys.txt")" -eq "$NKEYS" ]] || die "expected $NKEYS keys in $w/keys.txt"

# Forged keys, NKEYS of each kind. The checksum is recomputed here (CRC32 in
# base62, as src/keys/format.rs does) and checked against every real key
# first, so "valid checksum" below is known to be what keygate accepts.
python3 - "$w" <<'PY'
import secrets, sys, zlib
w = sys.argv[1]
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
PREFIX = "kg_live_"

def check(signed):
    crc = zlib.crc32(signed.encode())
    out = []
    for _ in range(6):
        out.append(B62[crc % 62])
        crc //= 62
    return "".join(reversed(out))

def body(n):
    return "".join(secrets.choice(B62) for _ in range(n))

real = [l.strip() for l in open(f"{w}/keys.txt") if l.strip()]
for k in real:
    assert k.startswith(PREFIX) and len(k) == len(PREFIX) + 30, k[:12]
    assert check(k[:-6]) == k[-6:], "checksum reimplementation does not match keygate's"
known = {k[len(PREFIX):len(PREFIX) + 8] for k in real}
realset = set(real)

def signed_key(short):
    k = PREFIX + short + body(16)
    return k + check(k)

kinds = {"unknown": [], "badsum": [], "oneprefix": [], "knownprefix": []}
while len(kinds["unknown"]) < len(real):
    k = signed_key(body(8))
    if k[len(PREFIX):len(PREFIX) + 8] not in known:
        kinds["unknown"].append(k)
for k in real:
    last = k[-1]
    kinds["badsum"].append(k[:-1] + ("A" if last != "A" else "B"))
one = real[0][len(PREFIX):len(PREFIX) + 8]
kinds["oneprefix"] = [signed_key(one) for _ in real]
kinds["knownprefix"] = [signed_key(k[len(PREFIX):len(PREFIX) + 8]) for k in real]
for name, keys in kinds.items():
    assert not realset.intersection(keys)
    with open(f"{w}/forged-{name}.txt", "w") as f:
        f.write("\n".join(keys) + "\n")
# nginx map entries for the real keys (base62 needs no escaping).
with open(f"{w}/keys.map", "w") as f:
    for k in real:
        f.write(f'"{k}" 1;\n')
PY

# --- nginx configs ----------------------------------------------------------
# Both instances: one worker, no access log, everything under the work dir
# (runs as root or not), keep-alive connections that last the whole run.
nginx_common() {
    local dir="$1"
    cat <<NGINX
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $dir/client_body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
NGINX
}
{
    nginx_common "$w/up"
    cat <<NGINX
    server {
        listen 127.0.0.1:$P_UP;
        location / { return 200 "ok\n"; }
    }
}
NGINX
} >"$w/up/nginx.conf"
{
    nginx_common "$w/map"
    cat <<NGINX
    map_hash_max_size 262144;
    map_hash_bucket_size 128;
    map \$http_x_api_key \$key_ok {
        default 0;
        include $w/keys.map;
    }
    upstream api {
        server 127.0.0.1:$P_UP;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$P_MAP;
        location / {
            if (\$key_ok = 0) { return 401; }
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-API-Key "";
        }
    }
}
NGINX
} >"$w/map/nginx.conf"
for d in up map; do
    "$nginx_bin" -t -q -p "$w/$d" -e "$w/$d/error.log" -c "$w/$d/nginx.conf" \
        || die "nginx rejects $w/$d/nginx.conf"
done

# variant NAME PORT ADMIN_PORT [SED_EXPR [EXTRA_TOML]]: NAME.toml and NAME.db,
# a copy of keygate's store (same keys) and config on its own ports, edited
# by SED_EXPR, with EXTRA_TOML appended.
variant() {
    python3 -c 'import sqlite3, sys; a = sqlite3.connect(sys.argv[1]); b = sqlite3.connect(sys.argv[2]); a.backup(b); b.close()' \
        "$w/keygate.db" "$w/$1.db"
    sed -e "s|127.0.0.1:$P_KG\"|127.0.0.1:$2\"|" -e "s|127.0.0.1:$P_ADMIN\"|127.0.0.1:$3\"|" \
        -e "s|$w/keygate.db|$w/$1.db|" -e "${4:-}" "$w/keygate.toml" >"$w/$1.toml"
    printf '%b\n' "${5:-}" >>"$w/$1.toml"
}
# The B build gets its own copy of the store and ports.
[[ -z "$kgb" ]] || variant keygate-b "$P_KGB" "$P_ADMINB"
# The limiter rows: plan `pro` gets two windows no run reaches.
limited='s|^unlimited = true$|limits = [ { requests = 1000000000, per = "1m" }, { requests = 1000000000, per = "1h" } ]|'
variant keygate-local "$P_KGL" "$P_ADMINL" "$limited"
# The token row: the same store and plan, with the token exchange on.
variant keygate-token "$P_KGT" "$P_ADMINT" "" \
    "\n[tokens]\nenabled = true\nsigning_key = \"bench-signing-key-$$-0123456789abcdef0123456789\""
redis_hostport="${REDIS_URL#redis://}"
redis_hostport="${redis_hostport##*@}"
redis_hostport="${redis_hostport%%/*}"
if python3 -c 'import socket, sys; h, p = sys.argv[1].rsplit(":", 1); s = socket.create_connection((h, int(p)), 1); s.sendall(b"PING\r\n"); sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)' "$redis_hostport" 2>/dev/null; then
    variant keygate-redis "$P_KGR" "$P_ADMINR" "$limited" \
        "\n[rate_limit]\nbackend = \"redis\"\nredis_url = \"$REDIS_URL\"\nredis_key_prefix = \"keygate-bench:$$:\""
    with_redis=1
else
    note "Redis does not answer at $REDIS_URL: the keygate-redis row is left out"
    with_redis=""
fi

# --- servers, all on SERVER_CPU ----------------------------------------------
# nginx_worker MASTER_PID: the pid of a one-worker nginx's worker.
nginx_worker() {
    local i
    for ((i = 0; i < 100; i++)); do
        pgrep -P "$1" -n && return 0
        sleep 0.05
    done
    die "nginx $1 has no worker"
}
start upstream "${on_server[@]}" "$nginx_bin" -p "$w/up" -e "$w/up/error.log" -c "$w/up/nginx.conf"
wait_port "$P_UP" "$LAST_PID" upstream
UP_WORKER="$(nginx_worker "$LAST_PID")"
start bare "${on_server[@]}" "$ex/bare_proxy" "127.0.0.1:$P_BARE" "127.0.0.1:$P_UP"
BARE_PID="$LAST_PID"
wait_port "$P_BARE" "$BARE_PID" bare
start bare-ct "${on_server[@]}" "$ex/bare_proxy" "127.0.0.1:$P_BARECT" "127.0.0.1:$P_UP" current-thread
BARECT_PID="$LAST_PID"
wait_port "$P_BARECT" "$BARECT_PID" bare-ct
start nginx-map "${on_server[@]}" "$nginx_bin" -p "$w/map" -e "$w/map/error.log" -c "$w/map/nginx.conf"
wait_port "$P_MAP" "$LAST_PID" nginx-map
MAP_WORKER="$(nginx_worker "$LAST_PID")"

start_keygate() {
    start keygate "${on_server[@]}" "$kg" --config "$w/keygate.toml" serve
    KG_PID="$LAST_PID"
    wait_port "$P_KG" "$KG_PID" keygate
}

walk() {
    "${on_load[@]}" "$ex/walk" "http://127.0.0.1:$P_KG$REQ_PATH" "$1" 64
}

# First start: check every key is accepted (all 200) and that's all.
start_keygate
first_walk="$(walk "$w/keys.txt")"
python3 -c 'import json,sys; d=json.loads(sys.argv[1]); sys.exit(0 if d["statuses"]=={"200": int(sys.argv[2])} else "keygate did not accept every key: %s" % d["statuses"])' \
    "$first_walk" "$NKEYS"

# Restart: a fresh process with NKEYS keys in its store, cold cache.
stop "$KG_PID"
t0="$(now_ns)"
start_keygate
t1="$(now_ns)"
cold_walk="$(walk "$w/keys.txt")"
cold_foreign="$(foreign_cpu "$((t1 / 1000000000))" "$(date +%s.%N)")"
warm_walk="$(walk "$w/keys.txt")"
kg_rss_warm="$(status_kib "$KG_PID" VmRSS)"

# start_variant NAME BIN PORT: starts a variant and warms its cache; sets
# LAST_PID.
start_variant() {
    start "$1" "${on_server[@]}" "$2" --config "$w/$1.toml" serve
    wait_port "$3" "$LAST_PID" "$1"
    "${on_load[@]}" "$ex/walk" "http://127.0.0.1:$3$REQ_PATH" "$w/keys.txt" 64 >/dev/null
}
if [[ -n "$kgb" ]]; then
    start_variant keygate-b "$kgb" "$P_KGB"
    KGB_PID="$LAST_PID"
fi
start_variant keygate-local "$kg" "$P_KGL"
KGL_PID="$LAST_PID"
start_variant keygate-token "$kg" "$P_KGT"
KGT_PID="$LAST_PID"
note "logging in with every key on keygate-token (POST /auth/login)"
python3 - "$P_KGT" "$w/keys.txt" "$w/tokens.txt" <<'PY'
import http.client, json, sys
port, keys, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port)
tokens = []
for key in (l.strip() for l in open(keys)):
    if not key:
        continue
    conn.request("POST", "/auth/login", json.dumps({"api_key": key}), {"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    assert r.status == 200, (r.status, body[:200])
    tokens.append(json.loads(body)["access_token"])
open(out, "w").write("\n".join(tokens) + "\n")
PY
if [[ -n "$with_redis" ]]; then
    start_variant keygate-redis "$kg" "$P_KGR"
    KGR_PID="$LAST_PID"
fi

# --- sanity: every row answers 200 with a key; the gates 401 without one -----
declare -A PORT=([upstream]="$P_UP" [bare]="$P_BARE" [bare-ct]="$P_BARECT" [nginx-map]="$P_MAP" [keygate]="$P_KG" [keygate-b]="$P_KGB"
    [keygate-local]="$P_KGL" [keygate-redis]="$P_KGR" [keygate-token]="$P_KGT")
# The process whose CPU time each row's proxy costs ("-": none).
declare -A PROXY_PID=([upstream]="" [bare]="$BARE_PID" [bare-ct]="$BARECT_PID" [nginx-map]="$MAP_WORKER" [keygate]="$KG_PID"
    [keygate-b]="${KGB_PID:-}" [keygate-local]="$KGL_PID" [keygate-redis]="${KGR_PID:-}" [keygate-token]="$KGT_PID")
# What each row's requests carry in X-API-Key (keys unless said here).
declare -A CREDS=([keygate-token]="$w/tokens.txt")
ROWS=(upstream bare bare-ct nginx-map keygate keygate-local keygate-token)
[[ -z "$with_redis" ]] || ROWS+=(keygate-redis)
[[ -z "$kgb" ]] || ROWS+=(keygate-b)
first_key="$(head -1 "$w/keys.txt")"
for row in "${ROWS[@]}"; do
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $first_key" "http://127.0.0.1:${PORT[$row]}$REQ_PATH")"
    [[ "$code" == 200 ]] || die "$row answered $code to a valid key"
done
for row in nginx-map keygate; do
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $(head -1 "$w/forged-unknown.txt")" "http://127.0.0.1:${PORT[$row]}$REQ_PATH")"
    [[ "$code" == 401 ]] || die "$row answered $code to an unknown key"
done

# --- measured rows ------------------------------------------------------------
# run_wrk SCRIPT PORT DURATION KEYS OUT [extra wrk args]; sets FOREIGN to
# "<mean> <max> <top process> <max steal>": other people's CPU use meanwhile.
run_wrk() {
    local script="$1" port="$2" duration="$3" keys="$4" out="$5" t0
    shift 5
    t0="$(date +%s.%N)"
    "${on_load[@]}" wrk -t1 -c"$CONNS" -d"$duration" --latency "$@" -s "bench/wrk/$script" \
        "http://127.0.0.1:$port$REQ_PATH" -- "$keys" >"$out" 2>&1 || {
        cat "$out" >&2
        die "wrk failed"
    }
    grep -q '^RESULT ' "$out" || {
        cat "$out" >&2
        die "no RESULT line from wrk"
    }
    FOREIGN="$(foreign_cpu "$t0" "$(date +%s.%N)")"
}

note "priming every row for 2 s"
for row in "${ROWS[@]}"; do
    run_wrk rotate.lua "${PORT[$row]}" 2s "${CREDS[$row]:-$w/keys.txt}" "$w/prime-$row.txt"
done

: >"$w/results.tsv"
for ((r = 0; r < ROUNDS; r++)); do
    for ((k = 0; k < ${#ROWS[@]}; k++)); do
        row="${ROWS[$(((k + r) % ${#ROWS[@]}))]}"
        note "round $((r + 1))/$ROUNDS: $row"
        out="$w/wrk-$row-$r.txt"
        proxy="${PROXY_PID[$row]}"
        p0="$(if [[ -n "$proxy" ]]; then cpu_ticks "$proxy"; else echo 0; fi)"
        u0="$(cpu_ticks "$UP_WORKER")"
        run_wrk rotate.lua "${PORT[$row]}" "$DURATION" "${CREDS[$row]:-$w/keys.txt}" "$out"
        p1="$(if [[ -n "$proxy" ]]; then cpu_ticks "$proxy"; else echo 0; fi)"
        u1="$(cpu_ticks "$UP_WORKER")"
        # RESULT fields, then CPU ticks of the proxy and of the upstream, then
        # FOREIGN.
        echo "$row $r $(grep '^RESULT ' "$out" | cut -d' ' -f2-) $((p1 - p0)) $((u1 - u0)) $FOREIGN" >>"$w/results.tsv"
    done
done

# --- optional: where the proxies' CPU goes (PERF=1, not part of the table) ---
# profile ROW PID: 8 s of perf samples of PID under the row's load.
profile() {
    local row="$1" pid="$2" load
    note "perf: profiling $row under the same load for 8 s"
    "${on_load[@]}" wrk -t1 -c"$CONNS" -d12s -s bench/wrk/rotate.lua \
        "http://127.0.0.1:${PORT[$row]}$REQ_PATH" -- "$w/keys.txt" >"$w/wrk-perf-$row.txt" 2>&1 &
    load=$!
    sleep 2
    perf record -q -F 999 -p "$pid" -o "$w/perf-$row.data" -- sleep 8 >/dev/null 2>&1 || true
    wait "$load" || true
    {
        echo "by thread:"
        perf report -i "$w/perf-$row.data" --stdio --no-children --sort comm 2>/dev/null \
            | awk '!/^#/ && NF && n++ < 6 { $1 = $1; sub(/( -)+$/, ""); print "  " $0 }'
        echo "by binary:"
        perf report -i "$w/perf-$row.data" --stdio --no-children --sort dso 2>/dev/null \
            | awk '!/^#/ && NF && n++ < 6 { $1 = $1; sub(/( -)+$/, ""); print "  " $0 }'
        echo "top symbols:"
        perf report -i "$w/perf-$row.data" --stdio --no-children --sort dso,symbol 2>/dev/null \
            | awk '!/^#/ && NF && n++ < 30 { $1 = $1; sub(/( -)+$/, ""); print "  " $0 }'
    } >"$w/perf-$row.txt"
}
if [[ -n "${PERF:-}" ]]; then
    need perf
    profile bare "$BARE_PID"
    profile keygate "$KG_PID"
    [[ -z "$kgb" ]] || profile keygate-b "$KGB_PID"
fi

# --- forged-key floods against keygate ----------------------------------------
: >"$w/flood.tsv"
# hashes_so_far: keygate's argon2 verifications since it started, from its
# /metrics (keygate_argon2_verifications_total).
hashes_so_far() {
    curl -s "http://127.0.0.1:$P_ADMIN/metrics" | awk '$1 == "keygate_argon2_verifications_total" { print $2 }'
}
for kind in badsum unknown oneprefix knownprefix; do
    note "flood: $kind"
    out="$w/flood-$kind.txt"
    h0="$(hashes_so_far)"
    c0="$(cpu_ticks "$KG_PID")"
    f0="$(now_ns)"
    run_wrk count.lua "$P_KG" "$DURATION" "$w/forged-$kind.txt" "$out" --timeout 10s
    f1="$(now_ns)"
    c1="$(cpu_ticks "$KG_PID")"
    h1="$(hashes_so_far)"
    cpu_pct="$(awk -v c="$((c1 - c0))" -v t="$clk_tck" -v ns="$((f1 - f0))" 'BEGIN { printf "%.0f", 100 * c / t / (ns / 1e9) }')"
    echo "$kind $(grep '^RESULT ' "$out" | cut -d' ' -f2-) $(grep '^STATUS ' "$out" | cut -d' ' -f2-) $cpu_pct $(status_kib "$KG_PID" VmRSS) $FOREIGN $((${h1:-0} - ${h0:-0}))" >>"$w/flood.tsv"
done
# Cached keys keep working after the floods.
after_flood="$(walk "$w/keys.txt")"

busy_after="$(busy_report)"

# --- report -------------------------------------------------------------------
python3 - "$w" "$NKEYS" "$ROUNDS" "$DURATION" "$CONNS" "$LOAD_CPU" "$SERVER_CPU" \
    "$mkkeys_line" "$(((t1 - t0) / 1000000))" "$cold_walk" "$warm_walk" "$after_flood" \
    "$kg_rss_warm" "$busy_before" "$busy_after" "$cold_foreign" "$kg_version" "$clk_tck" "$kgb" "${ROWS[*]}" <<'PY'
import json, statistics, sys
(w, nkeys, rounds, duration, conns, load_cpu, server_cpu, mkkeys_line, ready_ms,
 cold, warm, after, rss_warm, busy_before, busy_after, cold_foreign, kg_version, clk_tck, kgb, rows) = sys.argv[1:]
clk_tck = int(clk_tck)
cold, warm, after = json.loads(cold), json.loads(warm), json.loads(after)

rows = rows.split()
labels = {
    "upstream": "upstream (nginx, direct)",
    "bare": "bare hyper proxy",
    "bare-ct": "bare, current-thread",
    "nginx-map": "nginx + map of keys",
    "keygate": "keygate",
    "keygate-local": "keygate + local limits",
    "keygate-redis": "keygate + Redis limits",
    "keygate-b": "keygate B",
    "keygate-token": "keygate, access tokens",
}
runs = {r: [] for r in rows}
for line in open(f"{w}/results.tsv"):
    row, rnd, rps, p50, p99, reqs, non2xx, errs, pticks, uticks, fmean, fmax, ftop, steal = line.split()
    reqs = max(1, int(reqs))
    runs[row].append(dict(rps=float(rps), p50=int(p50), p99=int(p99), non2xx=int(non2xx), errs=int(errs),
                          pcpu=1e6 * int(pticks) / clk_tck / reqs, ucpu=1e6 * int(uticks) / clk_tck / reqs,
                          fmean=int(fmean), fmax=int(fmax), ftop=ftop, steal=int(steal)))
med = {r: {f: statistics.median(x[f] for x in runs[r]) for f in ("rps", "p50", "p99", "pcpu", "ucpu")} for r in rows}
bad = {r: sum(x["non2xx"] + x["errs"] for x in runs[r]) for r in rows}

def ms(us):
    return f"{us / 1000:.2f} ms"

print(f"keygate {kg_version}")
print(f"keygate proxy bench: wrk -t1 -c{conns} -d{duration} on CPU {load_cpu}; servers and upstream on CPU {server_cpu}")
print(f"{nkeys} keys rotated per request (X-API-Key), GET /v1/orders/42, {rounds} rounds interleaved, medians")
print()
hdr = (f"{'row':<26}{'req/s':>10}{'p50':>11}{'p99':>11}{'vs bare':>9}{'vs nginx+map':>14}{'vs upstream':>13}"
       f"{'non-200':>9}{'proxy CPU/req':>15}{'upstream CPU/req':>18}")
print(hdr)
print("-" * len(hdr))
for r in rows:
    m = med[r]
    pcpu = f"{m['pcpu']:.1f} us" if r != "upstream" else "-"
    print(f"{labels[r]:<26}{m['rps']:>10.0f}{ms(m['p50']):>11}{ms(m['p99']):>11}"
          f"{m['rps'] / med['bare']['rps']:>8.2f}x{m['rps'] / med['nginx-map']['rps']:>13.2f}x"
          f"{m['rps'] / med['upstream']['rps']:>12.2f}x{bad[r]:>9}{pcpu:>15}{m['ucpu']:>15.1f} us")
if kgb:
    print(f"keygate B = {kgb}")
print()
print("per round, req/s (p99) [CPU used meanwhile by processes not started by this bench, mean/max % of one CPU]:")
for r in rows:
    print(f"  {labels[r]:<26}" + "  ".join(f"{x['rps']:>7.0f} ({ms(x['p99'])}) [{x['fmean']}/{x['fmax']}%]" for x in runs[r]))
noisy = [(r, i, x) for r in rows for i, x in enumerate(runs[r]) if x["fmean"] >= 10 or x["steal"] >= 5]
if noisy:
    print("WARNING: the machine was busy during " + ", ".join(
        f"{labels[r]} round {i + 1} ({x['fmean']}% mean, {x['ftop']}, steal up to {x['steal']}%)" for r, i, x in noisy))
else:
    steal = max(x["steal"] for r in rows for x in runs[r])
    print(f"the machine was otherwise quiet during every measured row (< 10% of a CPU used by other processes; hypervisor steal <= {steal}%)")
print("(CPU/req: CPU time the proxy process and the upstream nginx worker used per request, medians; both share one CPU)")
kb = med["keygate"]["rps"] / med["bare"]["rps"]
kn = med["keygate"]["rps"] / med["nginx-map"]["rps"]
print()
print(f"target keygate >= 0.90x bare proxy: {kb:.2f}x -> {'met' if kb >= 0.9 else 'NOT met'}; keygate vs nginx+map: {kn:.2f}x")
print(f"keygate vs the bare proxy on a current-thread runtime (keygate's kind): {med['keygate']['rps'] / med['bare-ct']['rps']:.2f}x")
for r in ("keygate-local", "keygate-redis"):
    if r in med:
        cost = 1 - med[r]["rps"] / med["keygate"]["rps"]
        extra = med[r]["pcpu"] - med["keygate"]["pcpu"]
        target = f" (target < 5%: {'met' if cost < 0.05 else 'NOT met'})" if r == "keygate-local" else ""
        print(f"{labels[r]}: costs {100 * cost:.1f}% of keygate's throughput{target}; {extra:+.1f} us CPU/request")
if "keygate-token" in med:
    r = "keygate-token"
    print(f"{labels[r]} instead of keys: {med[r]['rps'] / med['keygate']['rps']:.2f}x keygate's throughput; "
          f"{med[r]['pcpu'] - med['keygate']['pcpu']:+.1f} us CPU/request")

print()
print(f"keys: {mkkeys_line} (examples/mkkeys.rs, argon2 generated set)")
print(f"restart with {nkeys} keys: listening {int(ready_ms) / 1000:.2f} s after launch; "
      f"first pass over every key (cold cache, 64 in flight): {cold['seconds']:.2f} s = {cold['requests_per_second']:.0f} keys/s, statuses {cold['statuses']}")
print(f"  (other processes used {cold_foreign.split()[0]}% of a CPU on average meanwhile)")
print(f"second pass (warm cache): {warm['seconds']:.2f} s = {warm['requests_per_second']:.0f} req/s, statuses {warm['statuses']}; "
      f"keygate RSS {int(rss_warm) / 1024:.0f} MiB with {nkeys} keys cached")

print()
print(f"forged-key floods against keygate ({nkeys} distinct forged keys each, wrk -t1 -c{conns} -d{duration}, status-counting script):")
hdr = (f"{'forged keys':<46}{'req/s':>9}{'p50':>10}{'p99':>11}{'401':>9}{'5xx':>6}{'other':>7}{'err':>5}{'CPU':>6}{'RSS':>8}"
       f"{'others':>10}{'argon2':>9}")
print(hdr)
print("-" * len(hdr))
names = {
    "badsum": "broken checksum",
    "unknown": "valid checksum, unknown short prefix",
    "oneprefix": "valid checksum, 1 known prefix, wrong secret",
    "knownprefix": f"valid checksum, {nkeys} known prefixes, wrong",
}
flood = {}
flood_hashes = {}
for line in open(f"{w}/flood.tsv"):
    kind, rps, p50, p99, reqs, non2xx, errs, s2, s401, s4, s5, so, cpu, rss, fmean, fmax, ftop, steal, hashes = line.split()
    flood[kind] = float(rps)
    other = int(s2) + int(s4) + int(so)
    print(f"{names[kind]:<46}{float(rps):>9.0f}{ms(int(p50)):>10}{ms(int(p99)):>11}{int(s401):>9}{int(s5):>6}"
          f"{other:>7}{int(errs):>5}{cpu:>5}%{int(rss) / 1024:>6.0f}Mi{fmean + '/' + fmax + '%':>10}{int(hashes):>9}")
    flood_hashes[kind] = (int(hashes), int(reqs))
print()
print("argon2 = verifications keygate ran during the flood (keygate_argon2_verifications_total on /metrics):")
for kind in ("badsum", "unknown", "oneprefix", "knownprefix"):
    hashes, reqs = flood_hashes[kind]
    print(f"  {names[kind]:<46} {hashes:>7} hashes for {reqs:>8} requests ({hashes / max(1, reqs):.5f} per request)")
print(f"after the floods, a pass over the real keys: statuses {after['statuses']} ({after['requests_per_second']:.0f} req/s)")
import os
for row in ("bare", "keygate", "keygate-b"):
    if os.path.exists(f"{w}/perf-{row}.txt"):
        print()
        print(f"perf profile of {labels[row]} under its row's load (PERF=1; % of its samples, flat):")
        print(open(f"{w}/perf-{row}.txt").read().rstrip())
print()
print("before:", busy_before.replace("\n", "\n  "))
print("after: ", busy_after.replace("\n", "\n  "))
PY
