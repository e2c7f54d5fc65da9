# Shared helpers for the manual benchmarks in bench/ (sourced, not run).
# They start background processes, remember their pids and kill every one of
# them (and remove the work dir) when the script exits, however it exits.

# Every process a bench starts, killed by cleanup().
BENCH_PIDS=()
BENCH_WORK=""

die() {
    echo "error: $*" >&2
    exit 1
}

note() {
    echo "# $*" >&2
}

# need CMD...: fail with a clear message when a tool is missing.
need() {
    local missing=()
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    if ((${#missing[@]})); then
        die "missing tool(s): ${missing[*]} (install them first, e.g. apt-get install wrk nginx util-linux curl python3)"
    fi
}

# need_cpus A B: both CPU numbers must be usable by taskset.
need_cpus() {
    local cpu
    for cpu in "$@"; do
        taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu with taskset (this machine has $(nproc) usable CPUs; set LOAD_CPU/SERVER_CPU)"
    done
    [[ "$1" != "$2" ]] || die "the load generator and the servers must be pinned to different CPUs"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM ERR
    ((status == 0)) || note "stopping every process this bench started (exit status $status)"
    local pid
    for pid in "${BENCH_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${BENCH_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$BENCH_WORK" && -d "$BENCH_WORK" ]]; then
        if [[ -n "${KEEP_WORK:-}" ]]; then
            note "work dir kept: $BENCH_WORK"
        else
            rm -rf "$BENCH_WORK"
        fi
    fi
    exit "$status"
}

# make_work NAME: creates the work dir and installs the cleanup trap.
make_work() {
    BENCH_WORK="$(mktemp -d "${TMPDIR:-/tmp}/keygate-$1.XXXXXX")"
    trap cleanup EXIT
    set -o errtrace
    trap 'echo "error: ${BASH_SOURCE[0]}:$LINENO: \"$BASH_COMMAND\" failed" >&2' ERR
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# free_ports N: N distinct loopback ports free right now, one per line.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
}

# start NAME CMD...: runs CMD in the background with its output in
# $BENCH_WORK/NAME.log; sets LAST_PID.
start() {
    local name="$1"
    shift
    "$@" >"$BENCH_WORK/$name.log" 2>&1 &
    LAST_PID=$!
    BENCH_PIDS+=("$LAST_PID")
}

# stop PID: terminates one process we started and waits for it.
stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() pid
    for pid in "${BENCH_PIDS[@]}"; do
        [[ "$pid" == "$1" ]] || keep+=("$pid")
    done
    BENCH_PIDS=("${keep[@]}")
}

# wait_port PORT PID NAME: waits until 127.0.0.1:PORT accepts connections,
# failing early (with the log) if the process dies.
wait_port() {
    local port="$1" pid="$2" name="$3" i
    for ((i = 0; i < 3000; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            cat "$BENCH_WORK/$name.log" >&2 || true
            die "$name exited before listening on port $port"
        fi
        sleep 0.01
    done
    cat "$BENCH_WORK/$name.log" >&2 || true
    die "$name did not listen on port $port within 30 s"
}

# now_ns: monotonic-enough wall clock in nanoseconds.
now_ns() {
    date +%s%N
}

# cpu_ticks PID: user + system CPU time of a process, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# status_kib PID FIELD: a /proc/PID/status field in KiB (VmRSS, VmHWM).
status_kib() {
    awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# busy_report: how busy the whole machine was over the last second, and any
# process using a lot of CPU, so a reader can tell whether it was quiet.
busy_report() {
    local a b
    a=($(head -1 /proc/stat))
    sleep 1
    b=($(head -1 /proc/stat))
    local total=0 i
    for ((i = 1; i < ${#a[@]}; i++)); do
        total=$((total + b[i] - a[i]))
    done
    local idle=$((b[4] - a[4] + b[5] - a[5]))
    echo "machine: $(nproc) CPUs, $((100 * (total - idle) / (total > 0 ? total : 1)))% busy over 1 s, load average $(cut -d' ' -f1-3 /proc/loadavg)"
    top -b -n 2 -d 0.5 -w 200 2>/dev/null | awk '
        /^top -/ { block++ }
        block == 2 && $1 ~ /^[0-9]+$/ && $9 + 0 >= 20 { printf "  busy: %s%% cpu  pid %s  %s\n", $9, $1, $12 }' || true
}

# start_monitor: samples, every second, the CPU used by processes that are
# not descendants of this script (other people's builds and tests on a
# shared machine) into $BENCH_WORK/foreign.log: "<epoch> <percent of one
# CPU> <steal: percent of the machine's CPU time the hypervisor took> <top
# process>". Kernel threads are left out (loopback traffic runs in them on
# our behalf).
start_monitor() {
    cat >"$BENCH_WORK/monitor.py" <<'PY'
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
            if pid not in ours and ppid in ours:
                ours.add(pid)
                changed = True
            if pid not in kernel and ppid in kernel:
                kernel.add(pid)
                changed = True
    return {pid: p for pid, p in procs.items() if pid not in ours and pid not in kernel}

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
    start monitor python3 "$BENCH_WORK/monitor.py" "$$" "$BENCH_WORK/foreign.log"
}

# foreign_cpu START END: mean and max of the monitor's samples between two
# epochs, as "<mean> <max> <top process> <max steal>" (percent of one CPU;
# steal in percent of the machine).
foreign_cpu() {
    python3 - "$BENCH_WORK/foreign.log" "$1" "$2" <<'PY'
import sys
log, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = []
for line in open(log):
    t, pct, stolen, top = line.split(maxsplit=3)
    if start < float(t) <= end + 1:
        rows.append((float(pct), top.strip(), float(stolen)))
if not rows:
    print("0 0 - 0")
else:
    worst = max(rows)
    print(f"{sum(p for p, _, _ in rows) / len(rows):.0f} {worst[0]:.0f} {worst[1] if worst[0] >= 5 else '-'} {max(s for _, _, s in rows):.0f}")
PY
}
