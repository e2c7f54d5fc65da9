#!/usr/bin/env bash
# Measures `keygate keys import` of N existing keys (default 10,000), hashed
# with the imported (OWASP) argon2id parameter set on all cores.
# Usage: bench/import.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-10000}"
cargo build --release --locked --quiet
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/keygate.toml" <<TOML
[database]
url = "sqlite://$work/keygate.db?mode=rwc"
TOML
python3 - "$n" > "$work/keys.jsonl" <<'PY'
import json, secrets, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"key": "sk_live_" + secrets.token_hex(16), "name": f"customer {i}", "scopes": ["read"], "plan": "pro", "owner": f"acct_{i % 500}"}))
PY
echo "importing $n keys on $(nproc) cores"
./target/release/keygate --config "$work/keygate.toml" keys import "$work/keys.jsonl" --json \
    | python3 -c 'import json, sys; d = json.load(sys.stdin); print("imported %d keys in %.1f s: %.0f keys/s" % (d["imported"], d["seconds"], d["keys_per_second"]))'
