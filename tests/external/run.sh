#!/usr/bin/env bash
# The relay checked from outside by Bluesky's own code (issue 5), and its Jetstream by published
# Jetstream clients from npm and PyPI (issue 16):
#   rlay sim (20 hosts, 6 with faults) + Bluesky's reference PDS  ->  rlay serve (SQLite default, insecure hosts)
#   ->  @atproto/sync's verifying Firehose (keys from the simulated PLC), which must report zero errors.
# The PDS's events as seen through the relay must match what the PDS's own firehose says.
# Needs node >= 18 and npm, Python >= 3.12 and openssl (registry access for the first install).
# Run: `just external`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
seconds=${EXTERNAL_SECONDS:-40}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

cd "$here"
if [ ! -d node_modules/@atproto/pds ]; then
  npm ci --no-audit --no-fund
  # better-sqlite3 (the PDS's database) builds from source when no prebuilt binary fits.
  node -e "require('better-sqlite3')" 2>/dev/null || npm_config_nodedir=${NODEDIR:-/usr} npm rebuild better-sqlite3
fi

(cd "$root" && cargo build --release --quiet)
bin=${CARGO_TARGET_DIR:-$root/target}/release/rlay

echo "relay, simulator and PDS logs in $work"
RELAY_ALLOW_INSECURE_HOSTS=true RELAY_BOOTSTRAP_HOST= RELAY_TRUSTED_DOMAINS=localhost \
  RELAY_PLC_HOST=http://127.0.0.1:2582 RELAY_ADMIN_PASSWORD=external RELAY_DATA_DIR="$work/relay" \
  "$bin" serve > "$work/relay.log" 2>&1 & pids+=($!)
# One host in twenty for each defect that a verifying consumer would notice if it were forwarded.
faults=()
for f in forged-signature wrong-key bad-block-hash missing-blocks wrong-prev-data impersonation; do
  faults+=(--fault "$f:0.05")
done
"$bin" sim --hosts 20 --accounts-per-host 3 --rate 100 --crawl http://127.0.0.1:3000 \
  --admin-password external "${faults[@]}" > "$work/sim.log" 2>&1 & pids+=($!)

mkdir -p "$work/pds/blobs"
PDS_HOSTNAME=localhost PDS_PORT=2583 PDS_DATA_DIRECTORY="$work/pds" \
  PDS_BLOBSTORE_DISK_LOCATION="$work/pds/blobs" PDS_JWT_SECRET=external PDS_ADMIN_PASSWORD=external \
  PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX=$(printf 'ab%.0s' {1..32}) \
  PDS_DID_PLC_URL=http://127.0.0.1:2582 PDS_DEV_MODE=true PDS_INVITE_REQUIRED=false \
  PDS_SERVICE_HANDLE_DOMAINS=.test PDS_CRAWLERS=http://localhost:3000 \
  node pds.js > "$work/pds.log" 2>&1 & pids+=($!)

for _ in $(seq 60); do
  curl -sf localhost:2583/xrpc/_health > /dev/null && curl -sf localhost:3000/xrpc/_health > /dev/null && break
  sleep 1
done
curl -sf -u admin:external -H 'content-type: application/json' \
  -d '{"hostname":"localhost:2583"}' localhost:3000/admin/pds/requestCrawl > /dev/null
dids=$(node drive.js 5 60)
echo "reference PDS accounts: $dids"
sleep 3

status=0
DIDS="$dids" node check.js ws://127.0.0.1:3000 http://127.0.0.1:2582 "$seconds" > "$work/relay.json" || status=1
DIDS="$dids" node check.js ws://localhost:2583 http://127.0.0.1:2582 10 > "$work/pds.json" || status=1
cat "$work/relay.json" "$work/pds.json"
echo "relay's counters for what it refused:"
curl -sf localhost:3001/metrics | grep -E '^rlay_(events_dropped|validation_failures|bad_frames)_total' || true
# The PDS follows each new account's first commit with a #sync at the same rev; a relay ignores a
# rev it already has (spec: rev <= stored), so `sync` is left out of the comparison.
node -e '
  const [r, p] = process.argv.slice(1).map((f) => JSON.parse(require("fs").readFileSync(f, "utf8")).watched);
  const keys = ["identity", "account", "create", "update", "delete"];
  const diff = keys.filter((k) => (r[k] || 0) !== (p[k] || 0));
  if (diff.length) { console.error("PDS events differ through the relay:", diff.join(", ")); process.exit(1); }
  console.log("reference PDS events through the relay match its own firehose");
' "$work/relay.json" "$work/pds.json" || status=1
# A fresh consumer with no saved cursor (it sends an empty `?cursor=`) reads the live stream.
START=live node check.js ws://127.0.0.1:3000 http://127.0.0.1:2582 10 > "$work/live.json" || status=1
cat "$work/live.json"
# A published Jetstream client (@skyware/jetstream) on the relay's /subscribe, filtered to posts.
node jetstream.js ws://127.0.0.1:3000/subscribe 10 > "$work/jetstream.json" || status=1
cat "$work/jetstream.json"
# And from Python (PyPI): atproto_jetstream over a past window, against a compressed reader
# decoding with the v1 dictionary; both must hold the same events.
py=""
# $PYTHON if set, else the newest python3.1x on PATH or installed by pyenv.
for c in ${PYTHON:-} python3.14 python3.13 python3.12 python3 $(ls -d "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 2> /dev/null | sort -rV); do
  if command -v "$c" > /dev/null && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2> /dev/null; then
    py=$c; break
  fi
done
if [ -z "$py" ]; then
  echo "no Python >= 3.12 (atproto_jetstream needs it): the Python Jetstream check cannot run"; status=1
else
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  .venv/bin/pip install -q -r requirements.txt
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/tls.key" -out "$work/tls.pem" -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost 2> /dev/null
  SSL_CERT_FILE="$work/tls.pem" .venv/bin/python jetstream.py 3000 "$root/../shared/jetstream/legacy_subscribe.zdict" \
    "$work/tls.pem" "$work/tls.key" > "$work/jetstream-py.json" || status=1
  cat "$work/jetstream-py.json"
fi

# Throttled accounts made whole: a relay with an account limit of 1 on one simulated host of three
# accounts drops the throttled accounts' commits; raising the limit emits a #sync for each, which
# the verifying consumer must accept.
RELAY_ALLOW_INSECURE_HOSTS=true RELAY_BOOTSTRAP_HOST= RELAY_TRUSTED_DOMAINS= RELAY_DEFAULT_ACCOUNT_LIMIT=1 \
  RELAY_PLC_HOST=http://127.0.0.1:2592 RELAY_ADMIN_PASSWORD=external RELAY_DATA_DIR="$work/relay2" \
  RELAY_API_LISTEN=127.0.0.1:3010 RELAY_METRICS_LISTEN= "$bin" serve > "$work/relay2.log" 2>&1 & pids+=($!)
for _ in $(seq 30); do curl -sf localhost:3010/xrpc/_health > /dev/null && break; sleep 1; done
"$bin" sim --hosts 1 --accounts-per-host 3 --rate 10 --plc-listen 127.0.0.1:2592 --first-port 2700 \
  --crawl http://127.0.0.1:3010 --admin-password external > "$work/sim2.log" 2>&1 & pids+=($!)
sleep 10
curl -sf -u admin:external -d '{"host":"localhost:2700","repo_limit":10}' localhost:3010/admin/pds/changeLimits > /dev/null
sleep 5
node check.js ws://127.0.0.1:3010 http://127.0.0.1:2592 10 > "$work/throttled.json" || status=1
cat "$work/throttled.json"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  if ((r.counts.sync || 0) < 2) { console.error("expected a #sync for each of the 2 throttled accounts"); process.exit(1); }
  console.log("throttled accounts made whole: " + r.counts.sync + " #sync accepted by @atproto/sync");
' "$work/throttled.json" || status=1

[ "$status" = 0 ] && echo "external check: ok" || echo "external check: FAILED (logs in $work)"
exit "$status"
