#!/usr/bin/env bash
# Checks the Docker deployment (Dockerfile, docker-compose.yml, deploy/)
# without a Docker engine: images cannot be built or run on CI's machine, so
# this checks everything that can be checked without them.
#
#   1. Dockerfile: every `cargo build` is exactly `cargo build --release
#      --locked`; the runtime stage runs as a non-root user; build and runtime
#      bases are the same Debian release; every COPY source exists and is not
#      excluded by .dockerignore; the dependency layer's stubs
#      (deploy/cargo-stubs.sh) satisfy the current Cargo.toml.
#   2. docker-compose.yml: `docker compose config -q` when the compose plugin
#      is installed; always a YAML parse and a structural check (services,
#      depends_on, healthchecks, ports, mounts, interpolation, the admin token
#      without default), and that nginx.conf and prometheus.yml name exactly
#      the keygate replicas of the compose file.
#   3. deploy/nginx.conf: `nginx -t`, with the replicas' hostnames resolving
#      to loopback in a private mount namespace (the file itself is tested
#      unchanged); where no namespace can be made, a copy with the hostnames
#      replaced by 127.0.0.1.
#   4. deploy/grafana-dashboard.json: valid JSON, only known keygate metric
#      names and labels, histograms only through _bucket/_sum/_count,
#      counters only inside rate()/increase(); the Grafana and Prometheus
#      YAML files parse.
#   5. deploy/keygate.toml and config/keygate.toml: `keygate check-config`
#      with the environment the compose file and the Dockerfile set; then a
#      smoke run of `keygate serve --config deploy/keygate.toml` (SQLite in a
#      temp dir, loopback ports, a local echo upstream): the image's
#      healthcheck script answers healthy while it serves and unhealthy after
#      it stopped, and a key created with the CLI gets through.
#
# The keygate binary comes from KEYGATE_BIN (default target/debug/keygate,
# which `cargo test` builds); .ci/run runs this after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

KEYGATE_BIN="${KEYGATE_BIN:-target/debug/keygate}"
tmp="$(mktemp -d)"
serve_pid=""
upstream_pid=""
cleanup() {
    [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
    [ -n "$upstream_pid" ] && kill "$upstream_pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "deploy/check.sh: $*" >&2
    exit 1
}
passed=0
ok() {
    echo "ok: $*"
    passed=$((passed + 1))
}

# PyYAML for the YAML checks (present on CI's machine; installed if not).
if ! python3 -c 'import yaml' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check pyyaml ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages pyyaml
fi

# ---------------------------------------------------------------- Dockerfile
python3 - <<'PY' || fail "Dockerfile"
import fnmatch, os, re, sys

text = open("Dockerfile").read()
# Join continuation lines, drop comments and blank lines.
lines, cur = [], ""
for raw in text.splitlines():
    s = raw.strip()
    if not s or s.startswith("#"):
        continue
    if s.endswith("\\"):
        cur += s[:-1] + " "
        continue
    lines.append(cur + s)
    cur = ""
if cur:
    lines.append(cur)
problems = []

builds = re.findall(r"cargo[ \t]+build\b[^&;|\n]*", "\n".join(lines))
if not builds:
    problems.append("no `cargo build --release --locked` in the Dockerfile")
for b in builds:
    if " ".join(b.split()) != "cargo build --release --locked":
        problems.append(f"build command is `{b.strip()}`, must be exactly `cargo build --release --locked`")

stages = []  # (base image, [instructions])
for line in lines:
    word, _, rest = line.partition(" ")
    if word.upper() == "FROM":
        stages.append((rest.split()[0], []))
    elif stages:
        stages[-1][1].append((word.upper(), rest.strip()))
if len(stages) < 2:
    problems.append("not a multi-stage build")
else:
    base, body = stages[-1]
    users = [rest for word, rest in body if word == "USER"]
    if not users:
        problems.append("the runtime stage sets no USER (it would run as root)")
    else:
        user = users[-1].split(":")[0]
        if user in ("root", "0", ""):
            problems.append(f"the runtime stage runs as {users[-1]!r}")
    build_release = re.search(r"-(bookworm|bullseye|trixie)\b", stages[0][0])
    if not build_release or build_release.group(1) not in base:
        problems.append(f"build stage {stages[0][0]} and runtime stage {base} are not the same Debian release (glibc)")
    for word in ("HEALTHCHECK", "ENTRYPOINT", "EXPOSE"):
        if not any(w == word for w, _ in body):
            problems.append(f"the runtime stage has no {word}")

# Every COPY source from the build context exists and is not .dockerignored.
ignored = []
if os.path.exists(".dockerignore"):
    for raw in open(".dockerignore"):
        s = raw.strip()
        if s and not s.startswith("#"):
            ignored.append(s.rstrip("/"))
def is_ignored(path):
    parts = path.split("/")
    for pat in ignored:
        for i in range(1, len(parts) + 1):
            head = "/".join(parts[:i])
            if fnmatch.fnmatch(head, pat) or (pat.startswith("**/") and fnmatch.fnmatch(parts[i - 1], pat[3:])):
                return pat
    return None
for _, body in stages:
    for word, rest in body:
        if word not in ("COPY", "ADD"):
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        if any(a.startswith("--from") for a in rest.split()):
            continue
        if args and args[0].startswith("["):
            continue  # JSON form: not used here
        for src in args[:-1]:
            src = src.rstrip("/") or "."
            if not os.path.exists(src):
                problems.append(f"COPY source {src} does not exist")
            elif src != "." and (pat := is_ignored(src)):
                problems.append(f"COPY source {src} is excluded by .dockerignore ({pat})")

for p in problems:
    print("Dockerfile:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
ok "Dockerfile: build command, non-root runtime user, COPY sources"

# The dependency layer: the stubs must make Cargo accept the manifest (a new
# [[bench]] or [[test]] the stub script cannot place would break the image).
mkdir -p "$tmp/stubs"
cp Cargo.toml Cargo.lock "$tmp/stubs/"
sh deploy/cargo-stubs.sh "$tmp/stubs"
host_triple="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$tmp/stubs" && cargo fetch --locked --offline --target "$host_triple" --quiet) ||
    (cd "$tmp/stubs" && cargo fetch --locked --target "$host_triple" --quiet) ||
    fail "the Dockerfile's dependency layer: Cargo rejects Cargo.toml with the stubs of deploy/cargo-stubs.sh"
ok "Dockerfile: the dependency layer's stubs satisfy Cargo.toml"

# ---------------------------------------------------------------- compose
if docker compose version >/dev/null 2>&1; then
    KEYGATE_ADMIN_TOKEN=check docker compose -f docker-compose.yml config -q ||
        fail "docker compose config rejects docker-compose.yml"
    # Without the token, compose must refuse to start.
    if env -u KEYGATE_ADMIN_TOKEN docker compose -f docker-compose.yml config -q >/dev/null 2>&1; then
        fail "docker-compose.yml accepts a missing KEYGATE_ADMIN_TOKEN"
    fi
    ok "docker-compose.yml: docker compose config"
else
    echo "note: the docker compose plugin is not installed; checking docker-compose.yml with python3 only"
fi

python3 - "$tmp/compose-env" <<'PY' || fail "docker-compose.yml"
import os, re, sys
import yaml

out_env = sys.argv[1]
text = open("docker-compose.yml").read()
doc = yaml.safe_load(text)
problems = []
def bad(msg):
    problems.append(msg)

# Interpolation: $$, $NAME, ${NAME}, ${NAME:-x}, ${NAME-x}, ${NAME:?x}, ${NAME?x}, ${NAME:+x}, ${NAME+x}.
# Compose interpolates string values (not comments).
def strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node
for s in strings(doc):
    for m in re.finditer(r"\$(\{[^}]*\}?|[A-Za-z_][A-Za-z0-9_]*|.?)", s.replace("$$", "")):
        tok = m.group(0)
        if not re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*(:?[-?+][^}$]*)?\})", tok):
            bad(f"bad interpolation {tok!r} in {s!r}")

TOP = {"version", "name", "services", "networks", "volumes", "configs", "secrets", "include"}
for k in doc:
    if k not in TOP and not k.startswith("x-"):
        bad(f"unknown top-level key {k!r}")
SERVICE_KEYS = {
    "annotations", "attach", "blkio_config", "build", "cap_add", "cap_drop", "cgroup", "cgroup_parent",
    "command", "configs", "container_name", "cpu_count", "cpu_percent", "cpu_period", "cpu_quota",
    "cpu_rt_period", "cpu_rt_runtime", "cpu_shares", "cpus", "cpuset", "credential_spec", "depends_on",
    "deploy", "develop", "device_cgroup_rules", "devices", "dns", "dns_opt", "dns_search", "domainname",
    "entrypoint", "env_file", "environment", "expose", "extends", "external_links", "extra_hosts",
    "group_add", "healthcheck", "hostname", "image", "init", "ipc", "isolation", "labels", "links",
    "logging", "mac_address", "mem_limit", "mem_reservation", "mem_swappiness", "memswap_limit",
    "network_mode", "networks", "oom_kill_disable", "oom_score_adj", "pid", "pids_limit", "platform",
    "ports", "privileged", "profiles", "pull_policy", "read_only", "restart", "runtime", "scale",
    "secrets", "security_opt", "shm_size", "stdin_open", "stop_grace_period", "stop_signal",
    "storage_opt", "sysctls", "tmpfs", "tty", "ulimits", "user", "userns_mode", "uts", "volumes",
    "volumes_from", "working_dir",
}
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
services = doc.get("services") or {}
volumes_top = set((doc.get("volumes") or {}).keys())
for need in ("postgres", "redis", "upstream", "keygate-1", "keygate-2", "lb"):
    if need not in services:
        bad(f"service {need!r} is missing")
host_ports = {}
for name, svc in services.items():
    if not isinstance(svc, dict):
        bad(f"{name}: not a mapping")
        continue
    for k in svc:
        if k not in SERVICE_KEYS and not k.startswith("x-"):
            bad(f"{name}: unknown key {k!r}")
    if "image" not in svc and "build" not in svc:
        bad(f"{name}: neither image nor build")
    if svc.get("restart") not in (None, "no", "always", "unless-stopped", "on-failure") and not str(svc.get("restart")).startswith("on-failure:"):
        bad(f"{name}: restart {svc.get('restart')!r}")
    for k in ("stop_grace_period",):
        if k in svc and not DURATION.match(str(svc[k])):
            bad(f"{name}.{k}: {svc[k]!r} is not a duration")
    hc = svc.get("healthcheck")
    if hc is not None:
        t = hc.get("test")
        if isinstance(t, list):
            if not t or t[0] not in ("CMD", "CMD-SHELL", "NONE"):
                bad(f"{name}.healthcheck.test must start with CMD, CMD-SHELL or NONE")
        elif not isinstance(t, str):
            bad(f"{name}.healthcheck.test is missing")
        for k in ("interval", "timeout", "start_period"):
            if k in hc and not DURATION.match(str(hc[k])):
                bad(f"{name}.healthcheck.{k}: {hc[k]!r} is not a duration")
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        deps = {d: {"condition": "service_started"} for d in deps}
    for dep, spec in deps.items():
        if dep not in services:
            bad(f"{name}: depends_on unknown service {dep!r}")
            continue
        cond = (spec or {}).get("condition", "service_started")
        if cond not in ("service_started", "service_healthy", "service_completed_successfully"):
            bad(f"{name}: depends_on {dep}: unknown condition {cond!r}")
        if cond == "service_healthy" and not (services[dep] or {}).get("healthcheck"):
            bad(f"{name}: waits for {dep} to be healthy, but {dep} has no healthcheck")
        if "profiles" in (services[dep] or {}) and "profiles" not in svc:
            bad(f"{name}: depends on {dep}, which only runs in a profile")
    for p in svc.get("ports") or []:
        p = str(p)
        m = re.fullmatch(r"(?:(\d{1,3}(?:\.\d{1,3}){3}|\[[0-9a-fA-F:]+\]):)?(?:(\d+):)?(\d+)(?:/(tcp|udp))?", p)
        if not m:
            bad(f"{name}: bad port mapping {p!r}")
        elif m.group(2):
            key = (m.group(1) or "0.0.0.0", m.group(2))
            if key in host_ports:
                bad(f"{name}: host port {p!r} is also published by {host_ports[key]}")
            host_ports[key] = name
    for v in svc.get("volumes") or []:
        if not isinstance(v, str):
            continue
        src = v.split(":")[0]
        if src.startswith(("./", "../", "/")):
            if not os.path.exists(src):
                bad(f"{name}: mounted file {src} does not exist")
        elif src not in volumes_top:
            bad(f"{name}: named volume {src!r} is not declared under volumes:")

replicas = sorted(n for n in services if re.fullmatch(r"keygate-\d+", n))
if len(replicas) < 2:
    bad("fewer than two keygate replicas (keygate-1, keygate-2, …)")
images = {str((services[r] or {}).get("image")) for r in replicas}
if len(images) != 1:
    bad(f"the keygate replicas use different images: {sorted(images)}")
env = {}
for r in replicas:
    svc = services[r]
    b = svc.get("build")
    ctx = b if isinstance(b, str) else (b or {}).get("context", ".")
    if b is not None and os.path.normpath(ctx) != "." :
        bad(f"{r}: build context {ctx!r} is not the repository root")
    e = svc.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) for x in e)
    env = e
    tok = str(e.get("KEYGATE_ADMIN_TOKEN", ""))
    if not re.fullmatch(r"\$\{KEYGATE_ADMIN_TOKEN:\?[^}]+\}", tok):
        bad(f"{r}: KEYGATE_ADMIN_TOKEN must be ${{KEYGATE_ADMIN_TOKEN:?message}} (required, no default)")
    mounts = [v for v in svc.get("volumes") or [] if isinstance(v, str)]
    cfg = e.get("KEYGATE_CONFIG", "/etc/keygate/keygate.toml")
    if not any(m.split(":")[0] == "./deploy/keygate.toml" and m.split(":")[1] == cfg for m in mounts):
        bad(f"{r}: ./deploy/keygate.toml is not mounted at KEYGATE_CONFIG ({cfg})")
    if not str(e.get("KEYGATE_DATABASE__URL", "postgres://")).startswith("postgres"):
        bad(f"{r}: KEYGATE_DATABASE__URL is not a postgres:// URL")
    if (svc.get("depends_on") or {}).get("postgres", {}).get("condition") != "service_healthy":
        bad(f"{r}: must wait for postgres to be healthy")

# The load balancer and Prometheus name exactly these replicas.
nginx = open("deploy/nginx.conf").read()
lb_servers = sorted(set(re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+):8080\b", nginx, re.M)))
if lb_servers != replicas:
    bad(f"deploy/nginx.conf balances over {lb_servers}, the compose file runs {replicas}")
prom = yaml.safe_load(open("deploy/prometheus.yml"))
targets = sorted(t.split(":")[0] for sc in prom["scrape_configs"] for c in sc.get("static_configs", []) for t in c["targets"])
if targets != replicas:
    bad(f"deploy/prometheus.yml scrapes {targets}, the compose file runs {replicas}")

# The replicas' environment, for keygate check-config (values interpolated
# with their defaults, or a placeholder).
def interp(v):
    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?[^}]*\}", lambda m: m.group(2) if m.group(2) is not None else "placeholder", str(v))
with open(out_env, "w") as f:
    for k, v in env.items():
        if k.startswith("KEYGATE_") and k != "KEYGATE_CONFIG":
            f.write(f"{k}={interp(v)}\n")

for p in problems:
    print("docker-compose.yml:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
ok "docker-compose.yml: structure, replicas, load balancer and Prometheus targets"

# ---------------------------------------------------------------- nginx
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || fail "nginx is not installed (apt-get install nginx-light)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
mkdir -p "$tmp/nginx"
hosts="$(grep -oE '^\s*server\s+[A-Za-z0-9_.-]+:[0-9]+' deploy/nginx.conf | awk '{print $2}' | cut -d: -f1 | sort -u | tr '\n' ' ')"
{ echo "127.0.0.1 localhost"; echo "127.0.0.1 $hosts"; } >"$tmp/nginx/hosts"
conf="$PWD/deploy/nginx.conf"
if unshare -m sh -c "mount --bind '$tmp/nginx/hosts' /etc/hosts" 2>/dev/null; then
    # A private mount namespace where /etc/hosts maps the replicas to loopback.
    unshare -m sh -c "mount --bind '$tmp/nginx/hosts' /etc/hosts && '$NGINX' -t -q -c '$conf' -p '$tmp/nginx/'" ||
        fail "nginx -t rejects deploy/nginx.conf"
    ok "deploy/nginx.conf: nginx -t"
else
    sed -E 's/^(\s*server\s+)[A-Za-z0-9_.-]+(:[0-9]+)/\1127.0.0.1\2/' deploy/nginx.conf >"$tmp/nginx/nginx.conf"
    "$NGINX" -t -q -c "$tmp/nginx/nginx.conf" -p "$tmp/nginx/" ||
        fail "nginx -t rejects deploy/nginx.conf (tested with the upstream hosts replaced by 127.0.0.1)"
    ok "deploy/nginx.conf: nginx -t (upstream hosts replaced by 127.0.0.1: no mount namespace here)"
fi

# ---------------------------------------------------------------- dashboards
python3 - <<'PY' || fail "deploy/grafana-dashboard.json"
import json, re, sys
import yaml

COUNTERS = {"keygate_requests_total", "keygate_auth_cache_hits_total", "keygate_auth_cache_misses_total",
            "keygate_auth_cache_invalidations_total", "keygate_argon2_verifications_total",
            "keygate_auth_throttled_total", "keygate_store_errors_total",
            "keygate_ratelimit_redis_fallbacks_total", "keygate_usage_dropped_total"}
GAUGES = {"keygate_auth_cache_entries", "keygate_argon2_queue_depth", "keygate_auth_flood",
          "keygate_store_up", "keygate_change_feed_lag_seconds", "keygate_ratelimit_backend",
          "keygate_proxy_connections"}
HISTOGRAMS = {"keygate_request_duration_seconds", "keygate_gateway_duration_seconds",
              "keygate_upstream_duration_seconds"}
LABELS = {"keygate_requests_total": {"outcome", "route"}, "keygate_ratelimit_backend": {"state"}}
KNOWN = COUNTERS | GAUGES | HISTOGRAMS

dash = json.load(open("deploy/grafana-dashboard.json"))
problems = []
exprs = []
def walk(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                exprs.append((path, v))
            walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{path}[{i}]")
walk(dash, "")
if not exprs:
    problems.append("no queries")
text = json.dumps(dash)
for name in sorted(set(re.findall(r"keygate_[a-z0-9_]+", text))):
    base = name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in HISTOGRAMS:
            base = name[: -len(suffix)]
    if base not in KNOWN:
        problems.append(f"unknown metric {name}")
for path, e in exprs:
    for h in HISTOGRAMS:
        if re.search(rf"\b{h}\b(?!_)", e):
            problems.append(f"{path}: histogram {h} used without _bucket/_sum/_count")
    for c in COUNTERS:
        for m in re.finditer(rf"\b{c}\b", e):
            if not re.search(r"(rate|increase|irate)\(\s*$", e[: m.start()]):
                problems.append(f"{path}: counter {c} used outside rate()/increase()")
    for metric, labels in LABELS.items():
        for m in re.finditer(rf"\b{metric}\{{([^}}]*)\}}", e):
            for label in re.findall(r"([a-z_]+)\s*[=!~]", m.group(1)):
                if label not in labels | {"instance", "job"}:
                    problems.append(f"{path}: {metric} has no label {label!r}")
    if not re.search(r"keygate_[a-z0-9_]+", e):
        problems.append(f"{path}: query names no keygate metric: {e}")
ids = [p.get("id") for p in dash.get("panels", [])]
if len(ids) != len(set(ids)):
    problems.append("duplicate panel ids")
for f in ("deploy/prometheus.yml", "deploy/grafana/datasources.yml", "deploy/grafana/dashboards.yml"):
    yaml.safe_load(open(f))
for p in problems:
    print("deploy/grafana-dashboard.json:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
ok "deploy/grafana-dashboard.json: JSON, metric names and types; Prometheus and Grafana YAML"

# ---------------------------------------------------------------- keygate
[ -x "$KEYGATE_BIN" ] || fail "no keygate binary at $KEYGATE_BIN (run cargo build, or set KEYGATE_BIN)"
# Only the variables a check sets reach keygate (none of the caller's KEYGATE_*).
kg() { env -i PATH="$PATH" HOME="${HOME:-/tmp}" "$@"; }

# The compose stack's file, with the replicas' environment.
mapfile -t compose_env <"$tmp/compose-env"
kg "${compose_env[@]}" "$KEYGATE_BIN" check-config --config deploy/keygate.toml >/dev/null ||
    fail "keygate check-config rejects deploy/keygate.toml with the compose file's environment"
kg "$KEYGATE_BIN" check-config --config deploy/keygate.toml >/dev/null ||
    fail "keygate check-config rejects deploy/keygate.toml"
# The image's default file, with the Dockerfile's ENV.
mapfile -t image_env < <(python3 - <<'PY'
import re
text = re.sub(r"\\\n", " ", open("Dockerfile").read())
for line in text.splitlines():
    s = line.strip()
    if s.upper().startswith("ENV "):
        for k, v in re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", s):
            if k.startswith("KEYGATE_") and k != "KEYGATE_CONFIG":
                print(f"{k}={v}")
PY
)
kg "${image_env[@]}" "$KEYGATE_BIN" check-config --config config/keygate.toml >/dev/null ||
    fail "keygate check-config rejects config/keygate.toml with the Dockerfile's ENV"
ok "keygate check-config: deploy/keygate.toml (with the compose environment), config/keygate.toml (with the image's ENV)"

# Smoke run: deploy/keygate.toml served locally, probed by the image's
# healthcheck, one request through with a CLI-made key.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
proxy_port="$(free_port)"
admin_port="$(free_port)"
upstream_port="$(free_port)"
cat >"$tmp/upstream.py" <<'PY'
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Echo).serve_forever()
PY
python3 "$tmp/upstream.py" "$upstream_port" &
upstream_pid=$!
run_env=(
    KEYGATE_DATABASE__URL="sqlite://$tmp/keygate.db?mode=rwc"
    KEYGATE_SERVER__LISTEN="127.0.0.1:$proxy_port"
    KEYGATE_SERVER__ADMIN_LISTEN="127.0.0.1:$admin_port"
    KEYGATE_UPSTREAM__URL="http://127.0.0.1:$upstream_port"
    KEYGATE_RATE_LIMIT__REDIS_URL="${KEYGATE_TEST_REDIS:-redis://127.0.0.1:6379}"
    KEYGATE_SERVER__SHUTDOWN_GRACE=2s
)
# Not through kg(): $! must be keygate's own pid (env execs it).
env -i PATH="$PATH" HOME="${HOME:-/tmp}" "${run_env[@]}" "$KEYGATE_BIN" serve --config deploy/keygate.toml \
    >"$tmp/serve.log" 2>&1 &
serve_pid=$!
healthy=""
for _ in $(seq 1 100); do
    if kg "KEYGATE_SERVER__ADMIN_LISTEN=127.0.0.1:$admin_port" bash deploy/healthcheck.sh >/dev/null; then
        healthy=1
        break
    fi
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.2
done
[ -n "$healthy" ] || { cat "$tmp/serve.log" >&2; fail "the healthcheck never passed against keygate serve --config deploy/keygate.toml"; }
# The wildcard form the image uses is probed on loopback.
kg "KEYGATE_SERVER__ADMIN_LISTEN=0.0.0.0:$admin_port" bash deploy/healthcheck.sh ||
    fail "the healthcheck fails for a 0.0.0.0 admin address"
# A listener that answers, but not 200 (the proxy wants a key for /healthz).
if kg "KEYGATE_SERVER__ADMIN_LISTEN=127.0.0.1:$proxy_port" bash deploy/healthcheck.sh >"$tmp/probe.out"; then
    fail "the healthcheck passes on a 401 answer"
fi
grep -q ' 401 ' "$tmp/probe.out" || fail "the healthcheck does not report the status it got: $(cat "$tmp/probe.out")"

status="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$proxy_port/v1/orders/1")"
[ "$status" = 401 ] || fail "a request without a key got $status, not 401"
key="$(kg "${run_env[@]}" "$KEYGATE_BIN" keys create --config deploy/keygate.toml \
    --name deploy-check --scopes can_read_order --plan pro --json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])')"
curl -s -o "$tmp/answer.json" -w '%{http_code}' -H "Authorization: Bearer $key" \
    "http://127.0.0.1:$proxy_port/v1/orders/1" >"$tmp/status"
python3 - "$tmp/answer.json" "$(cat "$tmp/status")" <<'PY' || { cat "$tmp/serve.log" >&2; fail "a request with a key did not reach the upstream as expected"; }
import json, sys
status = sys.argv[2]
assert status == "200", f"status {status}"
answer = json.load(open(sys.argv[1]))
h = answer["headers"]
assert answer["path"] == "/v1/orders/1", answer["path"]
assert "authorization" not in h, "the credential reached the upstream"
assert h.get("x-keygate-plan") == "pro" and h.get("x-keygate-key-id", "").startswith("key_"), h
PY

kill -TERM "$serve_pid"
wait "$serve_pid" 2>/dev/null || true
serve_pid=""
if kg "KEYGATE_SERVER__ADMIN_LISTEN=127.0.0.1:$admin_port" bash deploy/healthcheck.sh >"$tmp/probe.out"; then
    fail "the healthcheck passes with keygate stopped"
fi
ok "deploy/keygate.toml serves: healthcheck healthy, unhealthy on a non-200 answer and after SIGTERM; 401 without a key, 200 with one"

echo "deploy/check.sh: all checks passed"
echo "deploy: $passed passed, 0 failed"
