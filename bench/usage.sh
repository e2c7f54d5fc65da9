#!/usr/bin/env bash
# Usage history at scale (the usage-history issue, "Scale"): what the usage
# flush costs Postgres under full proxy load, how fast the history grows per
# key, and how long a 30-day hourly series takes for one key and for an
# owner of 1,000 keys (target: under 50 ms each on Postgres).
#
# Phase 1, traffic: a fresh database `DB`; NKEYS real keys issued through
# the library (examples/mkkeys.rs), spread over OWNERS owners by one UPDATE;
# an unlimited plan; the upstream nginx (`return 200`) and `keygate serve`
# on SERVER_CPU, `usage.flush_interval` FLUSH_INTERVAL (default 5 s, the
# built-in default). After a WARMUP pass (every key verified once, then the
# usage tables emptied) and IDLE seconds measuring Postgres at rest, wrk
# (-t1 -cCONNS, bench/wrk/rotate.lua: every request carries the next key)
# runs DURATION on LOAD_CPU. Reported: req/s; keygate's CPU; the CPU time
# Postgres spent meanwhile (utime + stime from /proc of the backends keygate
# holds on `DB`, and of every Postgres process, including the reaped
# children the postmaster accounts for, net of the idle rate) per second of
# traffic: the flush's cost; the time statements ran in `DB`
# (pg_stat_database.active_time); the rows and sizes of usage_buckets and
# owner_usage_buckets after the run, and from them the growth per key per
# day of a key active every minute, tier by tier, arithmetic printed.
# Every flush updates rows already there (a new row version each time), so
# the sizes depend on vacuuming: on a server running without autovacuum (a
# test server), a VACUUM of the tables every VACUUM_EVERY seconds stands in
# for it during the traffic, and its CPU is in the every-process figure.
#
# Phase 2, history: a fresh database `DB`_history with HISTORY_KEYS keys
# (one issued by mkkeys, the rest filler rows as in bench/scale.sh: distinct
# ids and short prefixes, a copied hash); `owner-big` owns BIG_OWNER_KEYS of
# them, the others KEYS_PER_OWNER per owner. DAYS of synthetic hour buckets
# written by INSERT … SELECT generate_series in time order (as flushes write
# them): owner-big's keys (the measured key is one) every hour, and a
# sliding window of ACTIVE of the other keys each hour; outcomes `ok`, some
# `rate_limited` (10% of key-hours) and `invalid_key` (2%). Day buckets are
# the sums of the hours, owner buckets the sums over each owner's keys,
# key_usage the all-time sums; MINUTE_KEYS keys (owner-big's first) also get
# a minute bucket for every minute of the last 48 h. VACUUM ANALYZE. Then a
# `keygate serve` on that database answers, through the admin API (curl
# `-w %{time_total}`, one warm-up, then RUNS requests: median and max), the
# 30-day hourly series of one key and of owner-big, `GET /v1/keys/{id}` as
# the floor of an admin round trip, and once the busiest keys of 24 h; and
# EXPLAIN (ANALYZE, BUFFERS) shows the store's series statements at first
# touch (values inline, before the API runs) and prepared with parameters
# after five runs (the plan a long-lived pooled connection keeps), and the
# owner endpoint's other statement (its all-time totals over its keys).
# PASS/FAIL against 50 ms. Last, a markdown table of the figures for the
# README.
#
# Manual only (not run in CI): needs wrk, nginx, taskset, psql, curl,
# python3, two CPUs and a Postgres it may create databases on (dropped at
# the end unless KEEP_DB=1); the history is written faster as a superuser
# (foreign-key triggers off while generating). About 20 minutes with the
# defaults, plus the release build; phase 2 needs about 3 GB of disk.
#
# Usage: bench/usage.sh
#        DURATION=20s HISTORY_KEYS=20000 bench/usage.sh    # a quick run
# Knobs (environment): NKEYS=10000 OWNERS=100 DURATION=600s CONNS=64
#   WARMUP=15s IDLE=10 FLUSH_INTERVAL=5s LOAD_CPU=0 SERVER_CPU=1
#   VACUUM_EVERY=60 (seconds; only used when the server runs without
#   autovacuum, 0: never)
#   HISTORY_KEYS=100000 BIG_OWNER_KEYS=1000 KEYS_PER_OWNER=100 DAYS=30
#   ACTIVE=0.1 MINUTE_KEYS=1000 RUNS=20 PHASES="traffic history"
#   PG_URL=postgres://postgres@127.0.0.1:5432 DB=keygate_usage KEEP_DB=1
#   KEEP_WORK=1 (keep the temp dir with every log and wrk output)
#
# Why ACTIVE=0.1: every key active every hour of a month is 72 million hour
# rows for 100,000 keys, about 15 GB and the better part of an hour of
# writing on two cores; a tenth keeps the history near 3 GB and its writing
# to about five minutes, while the measured key and owner-big's keys are
# active every hour, which is the worst case for their queries (one row per
# hour and outcome, each hour's rows on other heap pages than the previous
# hour's).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

NKEYS="${NKEYS:-10000}"
OWNERS="${OWNERS:-100}"
DURATION="${DURATION:-600s}"
CONNS="${CONNS:-64}"
WARMUP="${WARMUP:-15s}"
IDLE="${IDLE:-10}"
VACUUM_EVERY="${VACUUM_EVERY:-60}"
FLUSH_INTERVAL="${FLUSH_INTERVAL:-5s}"
LOAD_CPU="${LOAD_CPU:-0}"
SERVER_CPU="${SERVER_CPU:-1}"
HISTORY_KEYS="${HISTORY_KEYS:-100000}"
BIG_OWNER_KEYS="${BIG_OWNER_KEYS:-1000}"
KEYS_PER_OWNER="${KEYS_PER_OWNER:-100}"
DAYS="${DAYS:-30}"
ACTIVE="${ACTIVE:-0.1}"
MINUTE_KEYS="${MINUTE_KEYS:-1000}"
RUNS="${RUNS:-20}"
PHASES="${PHASES:-traffic history}"
PG_URL="${PG_URL:-postgres://postgres@127.0.0.1:5432}"
DB="${DB:-keygate_usage}"
DB2="${DB}_history"
TARGET_MS=50
REQ_PATH="/v1/orders/42"

# seconds DURATION: a wrk-style duration (600, 600s, 10m, 1h) in seconds.
seconds() {
    [[ "$1" =~ ^([0-9]+)([smh]?)$ ]] || die "not a duration: $1 (use e.g. 600s, 10m)"
    local n="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in
    m) echo $((n * 60)) ;;
    h) echo $((n * 3600)) ;;
    *) echo "$n" ;;
    esac
}
duration_s="$(seconds "$DURATION")"
flush_s="$(seconds "$FLUSH_INTERVAL")"
seconds "$WARMUP" >/dev/null
((duration_s >= 10 && flush_s >= 1)) || die "DURATION must be at least 10 s and FLUSH_INTERVAL at least 1 s"
[[ "$IDLE" =~ ^[0-9]+$ && "$VACUUM_EVERY" =~ ^[0-9]+$ ]] || die "IDLE and VACUUM_EVERY are numbers of seconds"
[[ "$DB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "DB must be a plain lowercase identifier"
for n in NKEYS OWNERS HISTORY_KEYS BIG_OWNER_KEYS KEYS_PER_OWNER DAYS MINUTE_KEYS RUNS; do
    [[ "${!n}" =~ ^[0-9]+$ ]] || die "$n must be a whole number"
done
((NKEYS >= OWNERS && OWNERS >= 1)) || die "need 1 <= OWNERS <= NKEYS"
((HISTORY_KEYS > BIG_OWNER_KEYS && BIG_OWNER_KEYS >= 1)) || die "need 1 <= BIG_OWNER_KEYS < HISTORY_KEYS"
((MINUTE_KEYS <= HISTORY_KEYS && KEYS_PER_OWNER >= 1 && DAYS >= 1 && RUNS >= 1)) || die "bad MINUTE_KEYS, KEYS_PER_OWNER, DAYS or RUNS"
python3 -c 'import sys; a = float(sys.argv[1]); sys.exit(0 if 0 <= a <= 1 else 1)' "$ACTIVE" \
    || die "ACTIVE is a fraction from 0 to 1"
phase() { [[ " $PHASES " == *" $1 "* ]]; }
phase traffic || phase history || die "PHASES names neither traffic nor history"

need cargo psql curl python3 awk taskset
phase traffic && need wrk nginx
need_cpus "$LOAD_CPU" "$SERVER_CPU"

note "building keygate, mkkeys (release)"
cargo build --release --locked --quiet --bin keygate --example mkkeys
kg="$PWD/target/release/keygate"
ex="$PWD/target/release/examples"
kg_version="$(git describe --always --dirty 2>/dev/null || echo unknown)"

make_work usage
w="$BENCH_WORK"
mapfile -t ports < <(free_ports 3)
P_UP="${ports[0]}" P_KG="${ports[1]}" P_ADMIN="${ports[2]}"
on_server=(taskset -c "$SERVER_CPU")
on_load=(taskset -c "$LOAD_CPU")
clk_tck="$(getconf CLK_TCK)"
KEYGATE_ADMIN_TOKEN="bench-usage-$$-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
export KEYGATE_ADMIN_TOKEN

sql() {
    psql -X -q -v ON_ERROR_STOP=1 "$PG_URL/$1" "${@:2}"
}
drop_dbs() {
    sql postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "DROP DATABASE IF EXISTS $DB2 WITH (FORCE)"
}
# The EXIT trap: drops the databases, then common.sh's cleanup, which reads
# the exit status from $? (errexit and the ERR trap off first, or the
# `(exit status)` that hands it on would end the trap before cleanup runs).
drop_then_cleanup() {
    local status=$?
    set +e
    trap - ERR
    drop_dbs
    (exit "$status")
    cleanup
}
[[ -n "${KEEP_DB:-}" ]] || trap drop_then_cleanup EXIT

# The figures, one `name=value` a line, read by the report at the end.
figures="$w/figures"
: >"$figures"
fig() {
    echo "$1=$2" >>"$figures"
}
secs_since() {
    awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'
}

# Postgres' CPU time, from /proc (so only when the server runs on this
# machine): `pgcpu snap FILE` records every postgres process's own and
# reaped children's ticks; `pgcpu diff A B [PID...]` prints the total delta
# (every process: live ones' own ticks plus the postmaster's children's,
# where a backend's time goes when it exits) and the delta of the PIDs.
cat >"$w/pgcpu.py" <<'PY'
import os, sys

def snap():
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        procs[int(name)] = (comm, int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return {pid: p for pid, p in procs.items() if p[0] == "postgres"}, procs

def load(path):
    rows = {}
    for line in open(path):
        pid, ppid, own, children, root = map(int, line.split())
        rows[pid] = (ppid, own, children, root)
    return rows

def total(rows):
    return sum(own + (children if root else 0) for _, own, children, root in rows.values())

if sys.argv[1] == "snap":
    pg, procs = snap()
    with open(sys.argv[2], "w") as out:
        for pid, (_, ppid, own, children) in pg.items():
            root = int(ppid not in pg)
            out.write(f"{pid} {ppid} {own} {children} {root}\n")
else:
    a, b = load(sys.argv[2]), load(sys.argv[3])
    pids = [int(p) for p in sys.argv[4:]]
    ours = sum(b[p][1] - (a[p][1] if p in a else 0) for p in pids if p in b)
    print(total(b) - total(a), ours, len(b))
PY
pgcpu() {
    python3 "$w/pgcpu.py" "$@"
}
pgcpu snap "$w/pg-probe.txt"
if [[ -s "$w/pg-probe.txt" ]] && [[ "$(sql postgres -At -c "SELECT inet_server_addr() IS NULL OR host(inet_server_addr()) IN ('127.0.0.1', '::1')")" == t ]]; then
    pg_local=1
else
    pg_local=""
    note "no Postgres process visible in /proc or a remote server: Postgres' CPU time is not measured"
fi

# db_stats DB: the database's counters: commits, statement time (ms),
# rows inserted, updated, deleted, blocks read and hit.
db_stats() {
    sql postgres -At -F' ' -c "SELECT xact_commit, round(active_time), tup_inserted, tup_updated, tup_deleted, blks_read, blks_hit
        FROM pg_stat_database WHERE datname = '$1'"
}
# other_commits DB: commits in every other database (another user's work).
other_commits() {
    sql postgres -At -c "SELECT COALESCE(SUM(xact_commit), 0) FROM pg_stat_database WHERE datname IS DISTINCT FROM '$1'"
}

# config FILE DBNAME: the gateway's config on DBNAME.
config() {
    cat >"$1" <<TOML
[server]
listen = "127.0.0.1:$P_KG"
admin_listen = "127.0.0.1:$P_ADMIN"
shutdown_grace = "1s"

[database]
url = "$PG_URL/$2"

[upstream]
url = "http://127.0.0.1:$P_UP"

[keys]
default_plan = "pro"

[[routes]]
path = "/v1/**"
scopes = ["bench"]

[plans.pro]
unlimited = true

[usage]
flush_interval = "$FLUSH_INTERVAL"

[log]
level = "warn"
TOML
}

start_keygate() {
    start keygate "${on_server[@]}" "$kg" --config "$1" serve
    KG_PID="$LAST_PID"
    wait_port "$P_ADMIN" "$KG_PID" keygate
    local i code=""
    for ((i = 0; i < 3000; i++)); do
        code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_ADMIN/readyz" || true)"
        [[ "$code" == 200 ]] && return 0
        kill -0 "$KG_PID" 2>/dev/null || { cat "$w/keygate.log" >&2; die "keygate exited"; }
        sleep 0.01
    done
    die "keygate not ready within 30 s"
}

# rows_sizes DB: rows per table and tier, sizes (heap, indexes, total),
# key_usage's, and how many keys and owners have history. After traffic
# the sizes include dead row versions: every flush adds to rows already
# there.
rows_sizes() {
    sql "$1" -At -F' ' -c "SELECT
        (SELECT count(*) FROM usage_buckets WHERE width = 60),
        (SELECT count(*) FROM usage_buckets WHERE width = 3600),
        (SELECT count(*) FROM usage_buckets WHERE width = 86400),
        (SELECT count(*) FROM owner_usage_buckets WHERE width = 60),
        (SELECT count(*) FROM owner_usage_buckets WHERE width = 3600),
        (SELECT count(*) FROM owner_usage_buckets WHERE width = 86400),
        pg_relation_size('usage_buckets'), pg_indexes_size('usage_buckets'), pg_total_relation_size('usage_buckets'),
        pg_relation_size('owner_usage_buckets'), pg_indexes_size('owner_usage_buckets'), pg_total_relation_size('owner_usage_buckets'),
        (SELECT count(*) FROM key_usage), pg_total_relation_size('key_usage'),
        (SELECT count(DISTINCT key_id) FROM usage_buckets),
        (SELECT count(DISTINCT owner) FROM owner_usage_buckets)"
}

# The machine's other load, sampled every second into foreign.log in
# common.sh's start_monitor format (read by foreign_cpu), but leaving out the
# Postgres processes too: their CPU is what phase 1 measures (work on other
# databases shows in pg_stat_database instead).
cat >"$w/monitor.py" <<'PY'
import os, sys, time
root, out = int(sys.argv[1]), sys.argv[2]
hz = os.sysconf("SC_CLK_TCK")

def snapshot():
    procs = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        procs[int(name)] = (comm, int(fields[1]), int(fields[11]) + int(fields[12]))
    return procs

def foreign(procs):
    ours, kernel = {root}, {2}
    changed = True
    while changed:
        changed = False
        for pid, (_, ppid, _) in procs.items():
            for group in (ours, kernel):
                if pid not in group and ppid in group:
                    group.add(pid)
                    changed = True
    return {pid: p for pid, p in procs.items() if pid not in ours and pid not in kernel and p[0] != "postgres"}

def steal():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[7], sum(fields)

prev, t_prev, st_prev = snapshot(), time.time(), steal()
with open(out, "a", buffering=1) as log:
    while True:
        time.sleep(1)
        now, t, st = snapshot(), time.time(), steal()
        used = {}
        for pid, (comm, _, ticks) in foreign(now).items():
            before = prev.get(pid)
            delta = ticks - (before[2] if before and before[0] == comm else 0)
            if delta > 0:
                used[comm] = used.get(comm, 0) + delta
        total = 100 * sum(used.values()) / hz / (t - t_prev)
        top = max(used, key=used.get) if used else "-"
        stolen = 100 * (st[0] - st_prev[0]) / max(1, st[1] - st_prev[1])
        log.write(f"{t:.1f} {total:.0f} {stolen:.0f} {top}\n")
        prev, t_prev, st_prev = now, t, st
PY
busy_before="$(busy_report)"
fig busy_before "$(head -1 <<<"$busy_before")"
start monitor python3 "$w/monitor.py" "$$" "$w/foreign.log"

fig kg_version "$kg_version"
fig pg_version "$(sql postgres -At -c "SHOW server_version")"
fig pg_shared_buffers "$(sql postgres -At -c "SHOW shared_buffers")"

# --- phase 1: traffic -------------------------------------------------------
if phase traffic; then
    fig traffic 1
    note "phase 1: creating database $DB"
    sql postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
    config "$w/keygate.toml" "$DB"

    mkdir -p "$w/up"
    cat >"$w/up/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $w/up/nginx.pid;
error_log $w/up/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path $w/up/client_body;
    proxy_temp_path $w/up/proxy;
    fastcgi_temp_path $w/up/fastcgi;
    uwsgi_temp_path $w/up/uwsgi;
    scgi_temp_path $w/up/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$P_UP;
        location / { return 200 "ok\n"; }
    }
}
NGINX
    nginx_bin="$(command -v nginx)"
    start upstream "${on_server[@]}" "$nginx_bin" -p "$w/up" -e "$w/up/error.log" -c "$w/up/nginx.conf"
    wait_port "$P_UP" "$LAST_PID" upstream

    note "issuing $NKEYS keys (examples/mkkeys.rs)"
    t0="$(now_ns)"
    "$ex/mkkeys" "$w/keygate.toml" "$NKEYS" "$w/keys.txt" bench pro 2>"$w/mkkeys.log" \
        || { cat "$w/mkkeys.log" >&2; die "mkkeys failed"; }
    [[ "$(wc -l <"$w/keys.txt")" -eq "$NKEYS" ]] || die "expected $NKEYS keys in $w/keys.txt"
    fig issue_s "$(secs_since "$t0")"
    # Owners: mkkeys sets none; keys go round-robin to owner-000 … by id.
    sql "$DB" -c "UPDATE keys SET owner = 'owner-' || lpad((n % $OWNERS)::text, 3, '0')
        FROM (SELECT id AS kid, row_number() OVER (ORDER BY id) AS n FROM keys) AS o WHERE keys.id = o.kid"

    start_keygate "$w/keygate.toml"
    code="$(curl -s -o /dev/null -w '%{http_code}' -H "X-API-Key: $(head -1 "$w/keys.txt")" "http://127.0.0.1:$P_KG$REQ_PATH")"
    [[ "$code" == 200 ]] || die "keygate answered $code to a valid key"

    # run_wrk DURATION OUT: wrk on LOAD_CPU over every key.
    run_wrk() {
        "${on_load[@]}" wrk -t1 -c"$CONNS" -d"$1" --latency -s bench/wrk/rotate.lua \
            "http://127.0.0.1:$P_KG$REQ_PATH" -- "$w/keys.txt" >"$2" 2>&1 || {
            cat "$2" >&2
            die "wrk failed"
        }
        grep -q '^RESULT ' "$2" || {
            cat "$2" >&2
            die "no RESULT line from wrk"
        }
    }
    note "warm-up: $WARMUP of traffic (every key verified once), then the usage tables emptied"
    run_wrk "$WARMUP" "$w/wrk-warmup.txt"
    sleep "$((flush_s + 1))"
    sql "$DB" -c "TRUNCATE usage_buckets, owner_usage_buckets, key_usage"
    sleep 1

    if [[ -n "$pg_local" ]]; then
        note "Postgres at rest for $IDLE s (keygate idle)"
        pgcpu snap "$w/pg-idle-a.txt"
        t0="$(now_ns)"
        sleep "$IDLE"
        pgcpu snap "$w/pg-idle-b.txt"
        fig idle_ticks "$(pgcpu diff "$w/pg-idle-a.txt" "$w/pg-idle-b.txt" | cut -d' ' -f1)"
        fig idle_s "$(secs_since "$t0")"
    fi

    # Without autovacuum, dead row versions pile up without end and the
    # sizes and the flush's cost are those of no deployment: a VACUUM every
    # VACUUM_EVERY seconds (autovacuum's naptime) stands in for it.
    vacuum_loop() {
        trap 'exit 0' TERM
        local t0
        while true; do
            sleep "$VACUUM_EVERY" &
            wait $!
            t0="$(now_ns)"
            sql "$DB" -c "VACUUM usage_buckets, owner_usage_buckets, key_usage, keys" || true
            echo "$(date +%s) $(secs_since "$t0")" >>"$w/vacuums.txt"
        done
    }
    : >"$w/vacuums.txt"
    autovacuum="$(sql "$DB" -At -c "SHOW autovacuum")"
    fig autovacuum "$autovacuum"
    vac_pid=""
    if [[ "$autovacuum" == off ]]; then
        if ((VACUUM_EVERY > 0)); then
            note "the server runs without autovacuum: a VACUUM of the usage tables every $VACUUM_EVERY s stands in for it"
            fig vacuum_every "$VACUUM_EVERY"
        else
            note "the server runs without autovacuum and VACUUM_EVERY=0: dead row versions pile up"
        fi
    fi
    note "traffic: wrk -t1 -c$CONNS -d$DURATION over $NKEYS keys"
    stats_a="$(db_stats "$DB")"
    others_a="$(other_commits "$DB")"
    [[ -z "$pg_local" ]] || pgcpu snap "$w/pg-a.txt"
    k0="$(cpu_ticks "$KG_PID")"
    t0="$(now_ns)"
    tw0="$(date +%s.%N)"
    if [[ "$autovacuum" == off ]] && ((VACUUM_EVERY > 0)); then
        start vacuum vacuum_loop
        vac_pid="$LAST_PID"
    fi
    run_wrk "$DURATION" "$w/wrk.txt"
    t1="$(now_ns)"
    # A VACUUM under way finishes first.
    [[ -z "$vac_pid" ]] || stop "$vac_pid"
    fig vacuums "$(awk '{ n++; s += $2 } END { printf "%d %.1f", n, s }' "$w/vacuums.txt")"
    fig minutes_spanned "$((t1 / 60000000000 - t0 / 60000000000 + 1))"
    k1="$(cpu_ticks "$KG_PID")"
    fig foreign "$(foreign_cpu "$tw0" "$(date +%s.%N)")"
    # The last flush of the traffic's counts comes up to one interval later.
    sleep "$((flush_s + 1))"
    t2="$(now_ns)"
    if [[ -n "$pg_local" ]]; then
        pgcpu snap "$w/pg-b.txt"
        backends="$(sql postgres -At -c "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND backend_type = 'client backend' AND pid <> pg_backend_pid()" | tr '\n' ' ')"
        # shellcheck disable=SC2086 # one argument per pid
        read -r pg_all pg_ours pg_nprocs <<<"$(pgcpu diff "$w/pg-a.txt" "$w/pg-b.txt" $backends)"
        fig pg_all_ticks "$pg_all"
        fig pg_our_ticks "$pg_ours"
        fig pg_backends "$(wc -w <<<"$backends")"
        fig pg_nprocs "$pg_nprocs"
    fi
    # Idle backends report their statistics within 10 s.
    sleep 11
    stats_b="$(db_stats "$DB")"
    others_b="$(other_commits "$DB")"
    fig traffic_s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')"
    fig window_s "$(awk -v a="$t0" -v b="$t2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')"
    fig kg_ticks "$((k1 - k0))"
    fig wrk_result "$(grep '^RESULT ' "$w/wrk.txt" | cut -d' ' -f2-)"
    fig db_stats_a "$stats_a"
    fig db_stats_b "$stats_b"
    fig other_commits "$((others_b - others_a))"
    fig kg_rss_kib "$(status_kib "$KG_PID" VmRSS)"

    fig p1_rows "$(rows_sizes "$DB")"
    fig p1_dead "$(sql "$DB" -At -F' ' -c "SELECT
        (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'usage_buckets'),
        (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'owner_usage_buckets'),
        (SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'usage_buckets'),
        (SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'usage_buckets'),
        (SELECT autovacuum_count FROM pg_stat_user_tables WHERE relname = 'usage_buckets')")"
    stop "$KG_PID"
fi

# --- phase 2: a month of history ----------------------------------------------
if phase history; then
    fig history 1
    K="$HISTORY_KEYS" BIG="$BIG_OWNER_KEYS"
    HOURS=$((DAYS * 24))
    MINUTES=2878 # the last 48 h but two minutes: none is pruned at start
    M=$((K - BIG))
    N="$(python3 -c 'import sys; print(round(float(sys.argv[1]) * int(sys.argv[2])))' "$ACTIVE" "$M")"
    ((N <= M)) || N=$M
    NOW="$(date +%s)"
    NOW_H=$((NOW / 3600 * 3600))
    NOW_M=$((NOW / 60 * 60))
    FROM_S=$((NOW_H - HOURS * 3600))
    rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }
    FROM="$(rfc3339 "$FROM_S")" TO="$(rfc3339 "$NOW_H")"

    # Rough size: hour rows (1.12 outcomes per key-hour), day rows (about
    # one per key-day), minute rows, owner rows; 190 bytes a row with its
    # two indexes.
    est_rows=$((HOURS * (BIG + N) * 112 / 100 + (DAYS + 1) * K * 105 / 100 + MINUTE_KEYS * MINUTES + (K / KEYS_PER_OWNER + 1) * (HOURS + DAYS + 1) * 3))
    est_bytes=$((est_rows * 190))
    data_dir="$(sql postgres -At -c "SHOW data_directory" 2>/dev/null || true)"
    if [[ -n "$pg_local" && -d "$data_dir" ]]; then
        free_kib="$(df -Pk "$data_dir" | awk 'NR == 2 { print $4 }')"
        note "phase 2 will write about $((est_rows / 1000000)) million rows, ~$((est_bytes / 1048576)) MiB; $((free_kib / 1024)) MiB free under $data_dir"
        ((free_kib * 1024 > 2 * est_bytes)) || die "not enough free disk for phase 2 (want twice the estimate); lower HISTORY_KEYS, ACTIVE or MINUTE_KEYS"
    else
        note "phase 2 will write about $((est_rows / 1000000)) million rows, ~$((est_bytes / 1048576)) MiB (free space not checked: the data directory is not visible here)"
    fi

    note "phase 2: creating database $DB2"
    sql postgres -c "DROP DATABASE IF EXISTS $DB2 WITH (FORCE)" -c "CREATE DATABASE $DB2"
    config "$w/history.toml" "$DB2"
    "$ex/mkkeys" "$w/history.toml" 1 "$w/history-key.txt" bench pro 2>"$w/mkkeys-history.log" \
        || { cat "$w/mkkeys-history.log" >&2; die "mkkeys failed"; }

    # Writing as a superuser, the foreign-key triggers are off for the bulk
    # inserts (every row's key exists by construction).
    if [[ "$(sql "$DB2" -At -c "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")" == t ]]; then
        gen_opts="-c session_replication_role=replica -c maintenance_work_mem=256MB -c work_mem=256MB"
    else
        gen_opts="-c work_mem=256MB"
        note "not a superuser: the history is written with its foreign-key checks (slower)"
    fi
    # gen STEP SQL: runs one generation step, timed.
    gen() {
        local t0
        note "history: $1"
        t0="$(now_ns)"
        PGOPTIONS="$gen_opts" sql "$DB2" -v K="$K" -v BIG="$BIG" -v PER="$KEYS_PER_OWNER" -v M="$M" -v N="$N" \
            -v HOURS="$HOURS" -v MINUTES="$MINUTES" -v NOW_H="$NOW_H" -v NOW_M="$NOW_M" \
            -v MINUTE_KEYS="$MINUTE_KEYS" <<<"$2"
        fig "gen_$1" "$(secs_since "$t0")"
    }
    g0="$(now_ns)"
    # Ids as bench/scale.sh's filler: key_0 + 25 hex digits of md5(i), short
    # prefix z + 7 hex digits of i; key 1 is the issued key. owner-big owns
    # keys 1 … BIG; the others go KEYS_PER_OWNER to an owner.
    gen keys "$(cat <<'SQL'
CREATE UNLOGGED TABLE bench_hk AS
    SELECT i,
           CASE WHEN i = 1 THEN (SELECT id FROM keys LIMIT 1)
                ELSE 'key_0' || upper(substr(md5(i::text), 1, 25)) END COLLATE "C" AS id,
           CASE WHEN i <= :BIG THEN 'owner-big'
                ELSE 'owner-' || lpad(((i - :BIG - 1) / :PER)::text, 5, '0') END AS owner,
           'z' || lpad(to_hex(i), 7, '0') AS short_prefix
    FROM generate_series(1, :K) AS i;
ALTER TABLE bench_hk ADD PRIMARY KEY (i);
UPDATE keys SET owner = 'owner-big';
INSERT INTO keys (id, name, owner, scopes, plan, status, prefix, short_prefix, source, created_at, updated_at)
    SELECT id, 'filler ' || i, owner, '["bench"]'::jsonb, 'pro', 'active', 'kg_live_', short_prefix,
           'generated', now(), now()
    FROM bench_hk WHERE i > 1;
INSERT INTO key_secrets (key_id, prefix, short_prefix, hash, source, valid_until, created_at)
    SELECT h.id, 'kg_live_', h.short_prefix, s.hash, 'generated', NULL, now()
    FROM bench_hk h, (SELECT hash FROM key_secrets LIMIT 1) AS s WHERE h.i > 1;
ANALYZE bench_hk;
SQL
)"
    # Hour by hour, oldest first (the order flushes write them in): every
    # owner-big key, and the N keys of a window over the others that moves
    # 7919 keys an hour (each key active in a fraction N/M of the hours).
    gen hours "$(cat <<'SQL'
INSERT INTO usage_buckets (key_id, width, bucket, outcome, count)
SELECT k.id, 3600, :NOW_H - h * 3600, o.outcome, o.count
FROM generate_series(:HOURS, 1, -1) AS h
CROSS JOIN LATERAL (
    SELECT i FROM generate_series(1, :BIG) AS i
    UNION ALL
    SELECT :BIG + 1 + ((h * 7919 + j) % :M) FROM generate_series(0, :N - 1) AS j
) AS a
JOIN bench_hk k ON k.i = a.i
CROSS JOIN LATERAL (VALUES
    ('ok', 1 + (a.i * 7 + h * 13) % 400),
    ('rate_limited', CASE WHEN (a.i + h) % 10 = 0 THEN 1 + (a.i + h) % 50 END),
    ('invalid_key', CASE WHEN (a.i * 3 + h) % 50 = 0 THEN 1 END)
) AS o(outcome, count)
WHERE o.count IS NOT NULL;
SQL
)"
    gen days "$(cat <<'SQL'
INSERT INTO usage_buckets (key_id, width, bucket, outcome, count)
SELECT key_id, 86400, bucket / 86400 * 86400 AS day, outcome, sum(count)
FROM usage_buckets WHERE width = 3600
GROUP BY day, key_id, outcome ORDER BY day, key_id, outcome;
SQL
)"
    gen minutes "$(cat <<'SQL'
INSERT INTO usage_buckets (key_id, width, bucket, outcome, count)
SELECT k.id, 60, :NOW_M - m * 60, 'ok', 1 + (k.i + m) % 30
FROM generate_series(:MINUTES, 1, -1) AS m
CROSS JOIN (SELECT i, id FROM bench_hk WHERE i <= :MINUTE_KEYS ORDER BY i) AS k;
SQL
)"
    gen owners "$(cat <<'SQL'
INSERT INTO owner_usage_buckets (owner, width, bucket, outcome, count)
SELECT k.owner, u.width, u.bucket, u.outcome, sum(u.count)
FROM usage_buckets u JOIN bench_hk k ON k.id = u.key_id
GROUP BY u.bucket, u.width, k.owner, u.outcome ORDER BY u.bucket, u.width, k.owner, u.outcome;
INSERT INTO key_usage (key_id, outcome, count)
SELECT key_id, outcome, sum(count) FROM usage_buckets WHERE width = 86400 GROUP BY key_id, outcome;
DROP TABLE bench_hk;
SQL
)"
    gen vacuum "VACUUM (ANALYZE) keys, key_secrets, key_usage, usage_buckets, owner_usage_buckets"
    fig gen_total "$(secs_since "$g0")"
    key_id="$(sql "$DB2" -At -c "SELECT id FROM keys WHERE name NOT LIKE 'filler %' LIMIT 1")"
    # First touch since the generation (VACUUM reads through a small ring,
    # so the pages come from the OS cache, not Postgres' buffers): a plain
    # EXPLAIN ANALYZE with the values inline, as a first execution plans.
    sql "$DB2" -At -c "EXPLAIN (ANALYZE, BUFFERS) SELECT bucket, outcome, count FROM usage_buckets WHERE key_id = '$key_id' AND width = 3600 AND bucket >= $FROM_S AND bucket < $NOW_H ORDER BY bucket, outcome" >"$w/explain-key-first.txt"
    fig sql_key_first "$(awk '/Execution Time/ { print $3 }' "$w/explain-key-first.txt")"
    sql "$DB2" -At -c "EXPLAIN (ANALYZE, BUFFERS) SELECT bucket, outcome, count FROM owner_usage_buckets WHERE owner = 'owner-big' AND width = 3600 AND bucket >= $FROM_S AND bucket < $NOW_H ORDER BY bucket, outcome" >"$w/explain-owner-first.txt"
    fig sql_owner_first "$(awk '/Execution Time/ { print $3 }' "$w/explain-owner-first.txt")"

    fig p2_rows "$(rows_sizes "$DB2")"
    fig p2_keys "$(sql "$DB2" -At -F' ' -c "SELECT count(*), count(*) FILTER (WHERE owner = 'owner-big'), count(DISTINCT owner) FROM keys")"
    fig p2_db_size "$(sql "$DB2" -At -c "SELECT pg_database_size(current_database())")"
    fig p2_correlation "$(sql "$DB2" -At -c "SELECT round(correlation::numeric, 3) FROM pg_stats WHERE tablename = 'usage_buckets' AND attname = 'bucket'")"

    fig p2_key "$key_id"
    fig p2_range "$FROM $TO"
    # What the series must add up to.
    fig p2_key_sum "$(sql "$DB2" -At -F' ' -c "SELECT count(*), sum(count) FROM usage_buckets WHERE key_id = '$key_id' AND width = 3600 AND bucket >= $FROM_S AND bucket < $NOW_H")"
    fig p2_owner_sum "$(sql "$DB2" -At -F' ' -c "SELECT count(*), sum(count) FROM owner_usage_buckets WHERE owner = 'owner-big' AND width = 3600 AND bucket >= $FROM_S AND bucket < $NOW_H")"

    # explain NAME TABLE COLUMN WHO: the store's series statement (the text
    # of src/store/sql.rs usage_buckets), prepared with parameters and run
    # five times first, so the plan is the one a pooled connection keeps.
    explain() {
        sql "$DB2" -At >"$w/$1.txt" <<SQL
PREPARE series(text, integer, bigint, bigint) AS
    SELECT bucket, outcome, count FROM $2 WHERE $3 = \$1 AND width = \$2 AND bucket >= \$3 AND bucket < \$4 ORDER BY bucket, outcome;
\o /dev/null
EXECUTE series('$4', 3600, $FROM_S, $NOW_H);
EXECUTE series('$4', 3600, $FROM_S, $NOW_H);
EXECUTE series('$4', 3600, $FROM_S, $NOW_H);
EXECUTE series('$4', 3600, $FROM_S, $NOW_H);
EXECUTE series('$4', 3600, $FROM_S, $NOW_H);
\o
EXPLAIN (ANALYZE, BUFFERS) EXECUTE series('$4', 3600, $FROM_S, $NOW_H);
SQL
        fig "$1" "$(awk '/Execution Time/ { print $3 }' "$w/$1.txt")"
    }
    start_keygate "$w/history.toml"
    # Let the pruning keygate runs at start finish before timing.
    sleep 2
    # api NAME PATH: one warm-up request, then RUNS timed ones; checks the
    # answer (200, every hour of the range) once.
    api() {
        local i out
        : >"$w/api-$1.txt"
        for ((i = 0; i <= RUNS; i++)); do
            out="$("${on_load[@]}" curl -s -o "$w/api-$1.json" -w '%{http_code} %{time_total}' \
                -H "Authorization: Bearer $KEYGATE_ADMIN_TOKEN" "http://127.0.0.1:$P_ADMIN$2")"
            [[ "${out%% *}" == 200 ]] || { cat "$w/api-$1.json" >&2; die "$2 answered ${out%% *}"; }
            echo "${out#* }" >>"$w/api-$1.txt"
        done
    }
    # The floor: the same round trip for one key's record (auth, one row).
    api floor "/v1/keys/$key_id"
    fig api_floor "$(tr '\n' ' ' <"$w/api-floor.txt")"
    api key "/v1/keys/$key_id/usage?from=$FROM&to=$TO&granularity=hour"
    api owner "/v1/owners/owner-big/usage?from=$FROM&to=$TO&granularity=hour"
    for who in key owner; do
        fig "api_$who" "$(tr '\n' ' ' <"$w/api-$who.txt")"
        fig "api_${who}_check" "$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1]))["series"]; print(len(d["data"]), sum(p["total"] for p in d["data"]), d["granularity"])' "$w/api-$who.json")"
    done
    out="$(curl -s -o "$w/api-top.json" -w '%{http_code} %{time_total}' \
        -H "Authorization: Bearer $KEYGATE_ADMIN_TOKEN" "http://127.0.0.1:$P_ADMIN/v1/usage/top")"
    [[ "${out%% *}" == 200 ]] || { cat "$w/api-top.json" >&2; die "/v1/usage/top answered ${out%% *}"; }
    fig api_top "${out#* } $(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["data"]))' "$w/api-top.json")"
    # The owner endpoint also reads the owner's all-time totals over its
    # keys (src/store/sql.rs owner_usage), warm.
    # Its time is taken with TIMING OFF (per-node clocks on 100,000s of
    # rows would inflate it), its plan with them; then the same with hash
    # and merge joins off, for comparison: what probing key_usage's
    # primary key once per key of the owner costs.
    owner_totals="SELECT m.last_used_at, u.outcome, u.count
        FROM (SELECT MAX(last_used_at) AS last_used_at FROM keys WHERE owner = 'owner-big') AS m
        LEFT JOIN (SELECT ku.outcome, CAST(SUM(ku.count) AS BIGINT) AS count
                   FROM key_usage ku JOIN keys k ON k.id = ku.key_id
                   WHERE k.owner = 'owner-big' GROUP BY ku.outcome) AS u ON TRUE
        ORDER BY u.outcome"
    sql "$DB2" -At -c "EXPLAIN (ANALYZE, BUFFERS) $owner_totals" >"$w/explain-owner-totals.txt"
    sql "$DB2" -At -c "EXPLAIN (ANALYZE, TIMING OFF) $owner_totals" >"$w/owner-totals-timing-off.txt"
    fig sql_owner_totals "$(awk '/Execution Time/ { print $3 }' "$w/owner-totals-timing-off.txt")"
    sql "$DB2" -At -c "SET enable_hashjoin = off" -c "SET enable_mergejoin = off" \
        -c "EXPLAIN (ANALYZE, TIMING OFF) $owner_totals" >"$w/owner-totals-nested.txt"
    fig sql_owner_totals_nested "$(awk '/Execution Time/ { print $3 }' "$w/owner-totals-nested.txt")"
    explain sql_key usage_buckets key_id "$key_id"
    explain sql_owner owner_usage_buckets owner owner-big
    stop "$KG_PID"
fi

busy_after="$(busy_report)"
fig busy_after "$(head -1 <<<"$busy_after")"

# --- report ---------------------------------------------------------------------
python3 - "$w" "$figures" "$clk_tck" "$NKEYS" "$OWNERS" "$DURATION" "$CONNS" "$FLUSH_INTERVAL" "$flush_s" \
    "$LOAD_CPU" "$SERVER_CPU" "$HISTORY_KEYS" "$BIG_OWNER_KEYS" "$KEYS_PER_OWNER" "$DAYS" "$ACTIVE" \
    "$MINUTE_KEYS" "$RUNS" "$TARGET_MS" "$DB" "$DB2" <<'PY'
import statistics, sys
(w, figures, clk_tck, nkeys, owners, duration, conns, flush, flush_s, load_cpu, server_cpu, hkeys, big, per,
 days, active, minute_keys, runs, target, db, db2) = sys.argv[1:]
clk_tck, nkeys, owners, hkeys, big, per, days, minute_keys, runs, target = map(
    int, (clk_tck, nkeys, owners, hkeys, big, per, days, minute_keys, runs, target))
f = {}
for line in open(figures):
    k, _, v = line.rstrip("\n").partition("=")
    f[k] = v
table = []  # (figure, value) rows of the markdown summary

def mib(b):
    return f"{b / 1048576:,.1f} MiB"

def kib(b):
    return f"{b / 1024:,.1f} KiB"

def size(b):
    return mib(b) if b >= 1048576 else kib(b)

def rows_of(v):
    (um, uh, ud, om, oh, od, uheap, uidx, utot, oheap, oidx, otot, kurows, kusize, ukeys, oowners) = map(int, v.split())
    return dict(um=um, uh=uh, ud=ud, om=om, oh=oh, od=od, uheap=uheap, uidx=uidx, utot=utot, oheap=oheap,
                oidx=oidx, otot=otot, kurows=kurows, kusize=kusize, ukeys=ukeys, oowners=oowners,
                urows=um + uh + ud, orows=om + oh + od)

print(f"keygate {f['kg_version']}, Postgres {f['pg_version']} (shared_buffers {f['pg_shared_buffers']})")
print(f"before: {f['busy_before']}")
print()
p1 = p2 = None
MINUTE_KEEP, HOUR_KEEP, DAY_KEEP = 2, 90, 730  # usage.retention defaults, in days
per_day = (1440, 24, 1)
kept = (1440 * MINUTE_KEEP, 24 * HOUR_KEEP, DAY_KEEP)
if "traffic" in f:
    rps, p50, p99, reqs, non2xx, errs = f["wrk_result"].split()
    rps, reqs = float(rps), int(reqs)
    traffic_s, window_s = float(f["traffic_s"]), float(f["window_s"])
    kg_cpu = int(f["kg_ticks"]) / clk_tck / traffic_s
    fmean, fmax, ftop, steal = f["foreign"].split()
    print(f"== phase 1: {nkeys:,} keys over {owners} owners, wrk -t1 -c{conns} -d{duration} on CPU {load_cpu}, "
          f"keygate + nginx upstream on CPU {server_cpu}, usage.flush_interval {flush}, database {db}")
    print(f"keys issued in {f['issue_s']} s (examples/mkkeys.rs)")
    print(f"traffic: {rps:,.0f} req/s, p50 {int(p50) / 1000:.2f} ms, p99 {int(p99) / 1000:.2f} ms, {reqs:,} requests, "
          f"{int(non2xx)} non-2xx, {int(errs)} socket errors")
    print(f"keygate: {100 * kg_cpu:.0f}% of a core ({1e6 * int(f['kg_ticks']) / clk_tck / max(reqs, 1):.1f} us CPU per request), "
          f"RSS {int(f['kg_rss_kib']) / 1024:.0f} MiB")
    table.append(("phase 1", f"{nkeys:,} keys, {owners} owners, wrk -t1 -c{conns} {duration}, flush every {flush}"))
    table.append(("requests/s through keygate (unlimited plan, every request counted)", f"{rps:,.0f} (keygate {100 * kg_cpu:.0f}% of a core)"))
    flushes = traffic_s / int(flush_s) if int(flush_s) > 0 else None
    sa, sb = [list(map(int, x.split())) for x in (f["db_stats_a"], f["db_stats_b"])]
    d = [b - a for a, b in zip(sa, sb)]
    commits, active_ms, ins, upd, dele, bread, bhit = d
    print(f"database {db} over the traffic and one more flush interval: {commits:,} commits, statements ran "
          f"{active_ms:,} ms (pg_stat_database.active_time) = {active_ms / traffic_s:.1f} ms per second of traffic; "
          f"{ins:,} rows inserted, {upd:,} updated, {bread:,} blocks read, {bhit:,} hit")
    if "pg_all_ticks" in f:
        idle_rate = int(f["idle_ticks"]) / clk_tck / float(f["idle_s"])  # s of CPU per s
        pg_all = int(f["pg_all_ticks"]) / clk_tck
        pg_net = max(0.0, pg_all - idle_rate * window_s)
        ours = int(f["pg_our_ticks"]) / clk_tck
        print(f"Postgres CPU time from /proc, over {window_s:.1f} s (the traffic's {traffic_s:.1f} s and the last flush):")
        print(f"  keygate's {f['pg_backends']} backends on {db}: {1000 * ours:,.0f} ms = "
              f"{1000 * ours / traffic_s:.1f} ms per second of traffic = {100 * ours / traffic_s:.2f}% of one core"
              + (f"; {1000 * ours / flushes:.0f} ms per flush ({flushes:.0f} flushes)" if flushes else ""))
        print(f"  every Postgres process ({f['pg_nprocs']} now; WAL writer, checkpointer, autovacuum included): "
              f"{1000 * pg_all:,.0f} ms, minus the idle rate ({1000 * idle_rate:.1f} ms/s over {f['idle_s']} s at rest): "
              f"{1000 * pg_net:,.0f} ms = {1000 * pg_net / traffic_s:.1f} ms per second of traffic = {100 * pg_net / traffic_s:.2f}% of one core")
        print(f"  per request: {1e6 * ours / max(reqs, 1):.2f} us of backend CPU (keygate itself: {1e6 * kg_cpu * traffic_s / max(reqs, 1):.1f} us)"
              + (f"; per key and flush: {1e6 * ours / flushes / nkeys:.0f} us (the cost follows the active keys, not the requests)" if flushes else ""))
        table.append(("Postgres CPU for the flushes, keygate's backends", f"{1000 * ours / traffic_s:.1f} ms per s of traffic ({100 * ours / traffic_s:.2f}% of a core)"
                      + (f", {1000 * ours / flushes:.0f} ms per flush" if flushes else "")))
        table.append(("same, every Postgres process, net of idle", f"{1000 * pg_net / traffic_s:.1f} ms per s ({100 * pg_net / traffic_s:.2f}% of a core)"))
    table.append(("statement time in the database (active_time)", f"{active_ms / traffic_s:.1f} ms per s of traffic, {commits:,} commits"))
    nvac, vac_s = f["vacuums"].split()
    if f.get("autovacuum") == "off":
        if "vacuum_every" in f:
            print(f"the server runs without autovacuum: {nvac} VACUUMs of the usage tables (every {f['vacuum_every']} s) stood in for it, "
                  f"{vac_s} s in all (in the every-process figure, not in the backends')")
            table.append(("autovacuum", f"off on this server: a VACUUM every {f['vacuum_every']} s instead ({nvac} runs, {vac_s} s)"))
        else:
            print("WARNING: the server runs without autovacuum and nothing vacuumed: sizes include every dead row version")
    oc = int(f["other_commits"])
    if oc > 50:
        print(f"WARNING: other databases committed {oc:,} transactions meanwhile: the all-process figure includes their work")
    if int(fmean) >= 10 or int(steal) >= 5:
        print(f"WARNING: the machine was busy during the traffic ({fmean}% of a CPU on average used by other processes, "
              f"top {ftop}, steal up to {steal}%)")
    else:
        print(f"the machine was otherwise quiet during the traffic (others {fmean}% of a CPU on average, steal <= {steal}%)")

    p1 = rows_of(f["p1_rows"])
    dead_u, dead_o, n_upd, n_hot, n_av = (int(x) if x else 0 for x in f["p1_dead"].split())
    print()
    print(f"after the run: usage_buckets {p1['urows']:,} rows ({p1['um']:,} minute, {p1['uh']:,} hour, {p1['ud']:,} day) "
          f"for {p1['ukeys']:,} keys: {size(p1['utot'])} ({size(p1['uheap'])} heap + {size(p1['uidx'])} indexes)")
    print(f"               owner_usage_buckets {p1['orows']:,} rows ({p1['om']:,} minute, {p1['oh']:,} hour, {p1['od']:,} day) "
          f"for {p1['oowners']} owners: {size(p1['otot'])} ({size(p1['oheap'])} heap + {size(p1['oidx'])} indexes)")
    print(f"               key_usage {p1['kurows']:,} rows, {size(p1['kusize'])}; usage_buckets: {n_upd:,} updates ({n_hot:,} HOT), "
          f"{dead_u:,} dead row versions, {n_av} autovacuums")
    table.append(("rows after the run", f"usage_buckets {p1['urows']:,} ({p1['um']:,} minute, {p1['uh']:,} hour, {p1['ud']:,} day), "
                  f"owner_usage_buckets {p1['orows']:,}"))
    bpr1 = p1["utot"] / max(p1["urows"], 1)
    obpr1 = p1["otot"] / max(p1["orows"], 1)
    run_days = traffic_s / 86400
    naive = (p1["utot"] + p1["otot"]) / nkeys / run_days
    print(f"bytes per row (table + indexes, dead versions included): usage_buckets {p1['utot']:,} / {p1['urows']:,} = {bpr1:.0f} B; "
          f"owner_usage_buckets {p1['otot']:,} / {p1['orows']:,} = {obpr1:.0f} B")
    print(f"naive growth: ({p1['utot']:,} + {p1['otot']:,}) B / {nkeys:,} keys / {run_days:.5f} days = {kib(naive)} per key per day "
          f"(a short run's hour and day rows counted as if every run of its length wrote new ones: an over-estimate)")
    print(f"minute buckets per key: {p1['um'] / max(p1['ukeys'], 1):.2f}; the traffic spanned {f['minutes_spanned']} minutes "
          f"(equal: every key active in every minute)")
    table.append(("bytes per row, after the run (dead versions incl.)", f"usage_buckets {bpr1:.0f} B, owner_usage_buckets {obpr1:.0f} B"))

def growth(label, bpr, obpr):
    """Steady-state growth for a key active every minute, one outcome."""
    w = sum(per_day)
    k = sum(kept)
    print(f"growth of a key active every minute, one outcome ({label}, {bpr:.0f} B per row):")
    print(f"  written per day: {per_day[0]} minute + {per_day[1]} hour + {per_day[2]} day = {w} rows x {bpr:.0f} B = {kib(w * bpr)} per key per day"
          f" (for the first {MINUTE_KEEP} days, until minute rows are pruned as fast as they come)")
    print(f"  then: {per_day[1] + per_day[2]} rows/day x {bpr:.0f} B = {kib((per_day[1] + per_day[2]) * bpr)} per key per day until day {HOUR_KEEP}, "
          f"then {per_day[2]} row/day = {bpr:.0f} B until day {DAY_KEEP}, then 0")
    print(f"  kept at steady state: {kept[0]} minute ({MINUTE_KEEP} d) + {kept[1]} hour ({HOUR_KEEP} d) + {kept[2]} day ({DAY_KEEP} d) "
          f"= {k} rows x {bpr:.0f} B = {mib(k * bpr)} per key ({k * bpr * 10000 / 2**30:,.1f} GiB per 10,000 such keys)")
    print(f"  owners: the same rows per owner at {obpr:.0f} B = {mib(k * obpr)} per owner, "
          f"{kib(k * obpr / per)} per key with {per} keys an owner")
    return w * bpr, k * bpr

if p1:
    print()
    d1, s1 = growth("rows sizes measured after phase 1", bpr1, obpr1)
    table.append(("growth per key active every minute (phase 1 row size)",
                  f"{kib(d1)}/day for {MINUTE_KEEP} d ({sum(per_day)} rows/day), then {kib(25 * bpr1)}/day; {mib(s1)} kept at steady state ({sum(kept)} rows)"))
    table.append(("naive: size / keys / run's days", f"{kib(naive)} per key per day"))

if "history" in f:
    p2 = rows_of(f["p2_rows"])
    nk, nbig, nowners = map(int, f["p2_keys"].split())
    print()
    print(f"== phase 2: {nk:,} keys ({nbig:,} of owner-big, {nowners:,} owners), {days} days of history, "
          f"ACTIVE={active}, minute tier for {minute_keys:,} keys over 48 h, database {db2}")
    steps = [s for s in ("keys", "hours", "days", "minutes", "owners", "vacuum") if f"gen_{s}" in f]
    print(f"written in {f['gen_total']} s (" + ", ".join(f"{s} {f['gen_' + s]} s" for s in steps) + ")")
    print(f"usage_buckets {p2['urows']:,} rows ({p2['uh']:,} hour, {p2['ud']:,} day, {p2['um']:,} minute): "
          f"{size(p2['utot'])} ({size(p2['uheap'])} heap + {size(p2['uidx'])} indexes)")
    print(f"owner_usage_buckets {p2['orows']:,} rows ({p2['oh']:,} hour, {p2['od']:,} day, {p2['om']:,} minute): "
          f"{size(p2['otot'])} ({size(p2['oheap'])} heap + {size(p2['oidx'])} indexes)")
    print(f"key_usage {p2['kurows']:,} rows, {size(p2['kusize'])}; database {mib(int(f['p2_db_size']))}; "
          f"physical order of usage_buckets.bucket: correlation {f['p2_correlation']} (1: time order, as flushes write)")
    bpr2 = p2["utot"] / max(p2["urows"], 1)
    obpr2 = p2["otot"] / max(p2["orows"], 1)
    print(f"bytes per row (written once, vacuumed): usage_buckets {bpr2:.0f} B, owner_usage_buckets {obpr2:.0f} B")
    table.append(("phase 2", f"{nk:,} keys, owner-big {nbig:,} keys, {days} d, ACTIVE={active}, minutes for {minute_keys:,} keys, written in {f['gen_total']} s"))
    table.append(("history sizes", f"usage_buckets {p2['urows']:,} rows, {size(p2['utot'])}; owner_usage_buckets {p2['orows']:,} rows, {size(p2['otot'])}"))
    table.append(("bytes per row, written once", f"usage_buckets {bpr2:.0f} B, owner_usage_buckets {obpr2:.0f} B"))
    print()
    d2, s2 = growth("row sizes of the written-once history", bpr2, obpr2)
    table.append(("growth per key active every minute (written-once row size)",
                  f"{kib(d2)}/day for {MINUTE_KEEP} d, then {kib(25 * bpr2)}/day; {mib(s2)} kept at steady state"))

    print()
    frm, to = f["p2_range"].split()
    print(f"30-day hourly series, {frm} to {to}, through the admin API (curl on CPU {load_cpu}, keygate on CPU {server_cpu}, "
          f"1 warm-up + {runs} runs) and the store's statement alone:")
    floor = [1000 * float(x) for x in f["api_floor"].split()][1:]
    print(f"  the floor, GET /v1/keys/{{id}} (auth, one row): median {statistics.median(floor):.1f} ms, max {max(floor):.1f} ms")
    for who, label, sums in (("key", f"key {f['p2_key']} (owner-big)", f["p2_key_sum"]), ("owner", f"owner-big ({big:,} keys)", f["p2_owner_sum"])):
        t = [1000 * float(x) for x in f[f"api_{who}"].split()]
        first, rest = t[0], t[1:]
        med, mx = statistics.median(rest), max(rest)
        npts, total, gran = f[f"api_{who}_check"].split()
        nrows, rsum = sums.split()
        ok = "matches" if int(total) == int(rsum or 0) else f"DOES NOT match the rows' {rsum}"
        first_sql, warm_sql = float(f[f"sql_{who}_first"]), float(f[f"sql_{who}"])
        verdict = "PASS" if med < target and warm_sql < target else "FAIL"
        print(f"  {label}: API median {med:.1f} ms, max {mx:.1f} ms (warm-up {first:.1f} ms); SQL {warm_sql:.2f} ms warm, "
              f"{first_sql:.2f} ms at first touch; {int(nrows):,} rows -> {npts} {gran} points, total {int(total):,} ({ok}) -> {verdict} (< {target} ms)")
        table.append((f"30-day hourly query, {'one key' if who == 'key' else f'owner of {big:,} keys'}",
                      f"API median {med:.1f} ms, max {mx:.1f} ms; SQL {warm_sql:.2f} ms ({first_sql:.2f} ms first) — **{verdict}**"))
    print(f"  the owner endpoint's all-time totals over its keys' key_usage rows: {float(f['sql_owner_totals']):.2f} ms "
          f"(EXPLAIN ANALYZE, TIMING OFF; plan below); with hash and merge joins off (index nested loop): {float(f['sql_owner_totals_nested']):.2f} ms")
    table.append(("admin API floor, GET /v1/keys/{id}", f"median {statistics.median(floor):.1f} ms"))
    table.append(("owner endpoint's all-time totals statement (SQL)", f"{float(f['sql_owner_totals']):.2f} ms "
                  f"({float(f['sql_owner_totals_nested']):.2f} ms as an index nested loop)"))
    top_s, top_n = f["api_top"].split()
    print(f"  GET /v1/usage/top (24 h, hour tier): {1000 * float(top_s):.0f} ms, {top_n} keys")
    table.append(("GET /v1/usage/top, 24 h (once)", f"{1000 * float(top_s):.0f} ms"))
    for name, title in (("explain-key-first", "(ANALYZE, BUFFERS), key, first touch"),
                        ("sql_key", "(ANALYZE, BUFFERS), key, prepared, 6th run"),
                        ("explain-owner-first", "(ANALYZE, BUFFERS), owner-big, first touch"),
                        ("sql_owner", "(ANALYZE, BUFFERS), owner-big, prepared, 6th run"),
                        ("explain-owner-totals", "(ANALYZE, BUFFERS), owner-big's all-time totals (the owner endpoint's other statement)"),
                        ("owner-totals-nested", "(ANALYZE, TIMING OFF), the same with hash and merge joins off")):
        print(f"  EXPLAIN {title}:")
        for line in open(f"{w}/{name}.txt"):
            if line.strip():
                print("      " + line.rstrip())

print()
print(f"after: {f['busy_after']}")
print()
print("| figure | value |")
print("|---|---|")
for k, v in table:
    print(f"| {k} | {v} |")
PY
if [[ -n "${KEEP_WORK:-}" ]]; then
    echo
    echo "logs, wrk output, EXPLAIN plans and the raw figures are in $w"
fi
