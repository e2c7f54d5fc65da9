#!/usr/bin/env bash
# Streaming through keygate with bounded memory (SPEC §6): for each size
# (default 64 MiB and 1 GiB) a fresh `keygate serve` proxies one download
# (GET …/bytes/<n> from the built-in echo upstream, examples/echo.rs) and one
# upload (a chunked PUT of n zero bytes, which the echo upstream counts and
# discards), while keygate's VmRSS is sampled from /proc every 20 ms. Prints
# throughput through keygate and straight to the echo upstream, the peak
# sampled VmRSS and VmHWM. Memory is flat when the peak does not grow with
# the size.
#
# Manual only (not run in CI). curl and the `head` feeding uploads run on
# LOAD_CPU, keygate and the echo upstream on SERVER_CPU (taskset).
#
# Usage: bench/stream.sh
# Knobs (environment): SIZES_MIB="64 1024" LOAD_CPU=0 SERVER_CPU=1 KEEP_WORK=1
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh

SIZES_MIB="${SIZES_MIB:-64 1024}"
LOAD_CPU="${LOAD_CPU:-0}"
SERVER_CPU="${SERVER_CPU:-1}"

need cargo curl taskset python3 awk head top
need_cpus "$LOAD_CPU" "$SERVER_CPU"

note "building keygate and the echo upstream (release)"
cargo build --release --locked --quiet --bin keygate --example echo
kg="$PWD/target/release/keygate"
ex="$PWD/target/release/examples"

make_work stream
w="$BENCH_WORK"
mapfile -t ports < <(free_ports 3)
P_ECHO="${ports[0]}" P_KG="${ports[1]}" P_ADMIN="${ports[2]}"
on_server=(taskset -c "$SERVER_CPU")
on_load=(taskset -c "$LOAD_CPU")

busy_before="$(busy_report)"
start_monitor

start echo "${on_server[@]}" "$ex/echo" "127.0.0.1:$P_ECHO"
wait_port "$P_ECHO" "$LAST_PID" echo

cat >"$w/keygate.toml" <<TOML
[server]
listen = "127.0.0.1:$P_KG"
admin_listen = "127.0.0.1:$P_ADMIN"
shutdown_grace = "1s"

[database]
url = "sqlite://$w/keygate.db?mode=rwc"

[upstream]
url = "http://127.0.0.1:$P_ECHO"

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
key="$("$kg" --config "$w/keygate.toml" keys create --name stream --scopes bench --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')"

# sample_rss PID OUT: appends PID's VmRSS (KiB) to OUT every 20 ms until
# killed or PID exits.
sample_rss() {
    while kill -0 "$1" 2>/dev/null; do
        awk '$1 == "VmRSS:" { print $2 }' "/proc/$1/status" 2>/dev/null >>"$2" || true
        sleep 0.02
    done
}

# transfer DIRECTION BYTES PORT: one download or upload; prints
# "<seconds> <MiB/s>" and fails unless every byte arrived.
transfer() {
    local direction="$1" n="$2" port="$3" out
    if [[ "$direction" == download ]]; then
        out="$("${on_load[@]}" curl -sS -o /dev/null -H "X-API-Key: $key" \
            -w '%{http_code} %{size_download} %{time_total}' "http://127.0.0.1:$port/v1/bytes/$n")"
        read -r code size secs <<<"$out"
        [[ "$code" == 200 && "$size" == "$n" ]] || die "download of $n bytes: status $code, $size bytes"
    else
        out="$(head -c "$n" /dev/zero | "${on_load[@]}" curl -sS -T - -H 'Expect:' -H "X-API-Key: $key" \
            -o "$w/upload.json" -w '%{http_code} %{size_upload} %{time_total}' "http://127.0.0.1:$port/v1/upload")"
        read -r code size secs <<<"$out"
        local got
        got="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["body_bytes"])' "$w/upload.json")"
        [[ "$code" == 200 && "$got" == "$n" ]] || die "upload of $n bytes: status $code, upstream counted $got bytes"
    fi
    awk -v s="$secs" -v n="$n" 'BEGIN { printf "%.2f %.0f\n", s, n / 1048576 / s }'
}

: >"$w/rows.tsv"
m0="$(date +%s.%N)"
for mib in $SIZES_MIB; do
    n=$((mib * 1048576))
    note "$mib MiB: fresh keygate, download then upload"
    start keygate "${on_server[@]}" "$kg" --config "$w/keygate.toml" serve
    kg_pid="$LAST_PID"
    wait_port "$P_KG" "$kg_pid" keygate
    # One small request first, so the idle figure includes a verified key.
    transfer download 1024 "$P_KG" >/dev/null
    idle="$(status_kib "$kg_pid" VmRSS)"
    for direction in download upload; do
        : >"$w/rss-$mib-$direction.txt"
        start sampler-"$mib-$direction" sample_rss "$kg_pid" "$w/rss-$mib-$direction.txt"
        sampler="$LAST_PID"
        read -r secs rate < <(transfer "$direction" "$n" "$P_KG")
        stop "$sampler"
        peak="$(sort -n "$w/rss-$mib-$direction.txt" | tail -1)"
        hwm="$(status_kib "$kg_pid" VmHWM)"
        read -r dsecs drate < <(transfer "$direction" "$n" "$P_ECHO")
        echo "$mib $direction $secs $rate $drate $idle ${peak:-0} $hwm" >>"$w/rows.tsv"
    done
    stop "$kg_pid"
done

foreign="$(foreign_cpu "$m0" "$(date +%s.%N)")"
busy_after="$(busy_report)"

python3 - "$w/rows.tsv" "$busy_before" "$busy_after" "$foreign" <<'PY'
import sys
fmean, fmax, ftop, steal = sys.argv[4].split()
rows = [l.split() for l in open(sys.argv[1])]
print("streaming through keygate (curl on one CPU, keygate + echo upstream on the other; fresh keygate per size)")
print()
hdr = f"{'size':>9} {'direction':<10}{'keygate':>13}{'direct':>13}{'ratio':>7}{'idle RSS':>10}{'peak RSS':>10}{'VmHWM':>9}"
print(hdr)
print("-" * len(hdr))
def mb(kib):
    return f"{int(kib) / 1024:.1f}M"
for mib, direction, secs, rate, drate, idle, peak, hwm in rows:
    size = f"{int(mib)} MiB" if int(mib) < 1024 else f"{int(mib) // 1024} GiB"
    print(f"{size:>9} {direction:<10}{rate + ' MiB/s':>13}{drate + ' MiB/s':>13}{float(rate) / float(drate):>6.2f}x"
          f"{mb(idle):>10}{mb(peak):>10}{mb(hwm):>9}")
peaks = {}
for mib, direction, *_ , peak, hwm in rows:
    peaks.setdefault(direction, []).append((int(mib), int(hwm)))
print()
for direction, values in peaks.items():
    values.sort()
    (small, hs), (large, hl) = values[0], values[-1]
    print(f"{direction}: VmHWM {hs / 1024:.1f} MiB at {small} MiB vs {hl / 1024:.1f} MiB at {large} MiB "
          f"({'flat' if hl - hs < 16 * 1024 else 'GROWS with size'})")
print(f"other processes used {fmean}% of a CPU on average (max {fmax}%, {ftop}) during the transfers; hypervisor steal <= {steal}%")
print()
print("before:", sys.argv[2].replace("\n", "\n  "))
print("after: ", sys.argv[3].replace("\n", "\n  "))
PY
