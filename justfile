# rlay recipes. `just --list` shows them; `just deploy` needs DEPLOY_HOST.

# SSH target for deploy/logs/status, e.g. me@relay.example.com
DEPLOY_HOST := env_var_or_default("DEPLOY_HOST", "")
# Where the source is unpacked and built on the server
DEPLOY_DIR := env_var_or_default("DEPLOY_DIR", "rlay")
# Kubernetes namespace of the deployment (see deploy/k3s.yaml)
NAMESPACE := env_var_or_default("DEPLOY_NAMESPACE", "rlay")

default:
    @just --list

# Run the relay on the embedded defaults (SQLite + RocksDB in ./data)
run *ARGS:
    cargo run --release -- serve {{ARGS}}

# Run the test suite (starts throwaway PostgreSQL clusters)
test *ARGS:
    cargo test --release {{ARGS}}

# Run every benchmark, or one: `just bench index`
bench NAME="":
    #!/usr/bin/env bash
    set -euo pipefail
    if [ -n "{{NAME}}" ]; then exec cargo bench --bench "{{NAME}}"; fi
    for b in verify store fanout sim index relay; do cargo bench --bench "$b"; done

# A simulated network of 20 hosts crawled by a dev-mode relay; prints the live event rate
demo HOSTS="20" RATE="500":
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release
    bin=${CARGO_TARGET_DIR:-target}/release/rlay
    rm -rf ./demo-data
    RELAY_ALLOW_INSECURE_HOSTS=true RELAY_BOOTSTRAP_HOST= RELAY_TRUSTED_DOMAINS=localhost \
      RELAY_PLC_HOST=http://127.0.0.1:2582 RELAY_ADMIN_PASSWORD=demo RELAY_DATA_DIR=./demo-data \
      RELAY_LOG_LEVEL=warn "$bin" serve > demo-relay.log 2>&1 &
    relay=$!
    "$bin" sim --hosts {{HOSTS}} --accounts-per-host 5 --rate {{RATE}} \
      --crawl http://127.0.0.1:3000 --admin-password demo > demo-sim.log 2>&1 &
    sim=$!
    trap 'kill $relay $sim 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
    echo "relay on :3000 (firehose ws://localhost:3000/xrpc/com.atproto.sync.subscribeRepos), metrics on :3001"
    echo "logs: demo-relay.log demo-sim.log; Ctrl-C stops both"
    seq_now() { curl -sf localhost:3001/metrics | awk '/^rlay_events_sequenced_total /{print int($2)}'; }
    last=$(seq_now || echo 0); last=${last:-0}
    while sleep 5; do
      now=$(seq_now || echo "$last"); now=${now:-$last}
      hosts=$(curl -sf localhost:3001/metrics | awk '/^rlay_hosts_connected /{print int($2)}')
      echo "$(date +%T)  ${now} events  $(( (now - last) / 5 )) verified events/s  ${hosts:-0} hosts connected"
      last=$now
    done

# Bluesky's verifying consumer and reference PDS against a live relay (needs node and npm)
external:
    tests/external/run.sh

# Format the code
fmt:
    cargo fmt

# Formatting check and clippy, warnings as errors
lint:
    cargo fmt --check
    cargo clippy --release --all-targets -- -D warnings

# Build on DEPLOY_HOST, image with buildah, import into k3s, roll out, follow the logs
deploy: _need-host
    #!/usr/bin/env bash
    set -euo pipefail
    tag=$(git rev-parse --short=12 HEAD)
    git diff --quiet HEAD || echo "note: uncommitted changes are not deployed (only HEAD is shipped)"
    echo "shipping $tag to {{DEPLOY_HOST}}:{{DEPLOY_DIR}}"
    git archive --format=tar HEAD | ssh {{DEPLOY_HOST}} "rm -rf {{DEPLOY_DIR}} && mkdir -p {{DEPLOY_DIR}} && tar -x -C {{DEPLOY_DIR}}"
    ssh {{DEPLOY_HOST}} bash -se <<REMOTE
    set -euo pipefail
    cd {{DEPLOY_DIR}}
    export CARGO_TARGET_DIR=\$HOME/.cache/rlay-target
    cargo build --release --locked
    mkdir -p image && cp \$CARGO_TARGET_DIR/release/rlay image/rlay
    buildah bud --layers -f deploy/Containerfile -t localhost/rlay:$tag image
    rm -f /tmp/rlay-$tag.tar
    buildah push localhost/rlay:$tag docker-archive:/tmp/rlay-$tag.tar:localhost/rlay:$tag
    sudo k3s ctr images import /tmp/rlay-$tag.tar
    rm -f /tmp/rlay-$tag.tar
    sudo k3s kubectl -n {{NAMESPACE}} set image deployment/rlay rlay=localhost/rlay:$tag
    sudo k3s kubectl -n {{NAMESPACE}} rollout status deployment/rlay --timeout=300s
    REMOTE
    just logs

# Follow the deployed relay's logs
logs: _need-host
    ssh -t {{DEPLOY_HOST}} sudo k3s kubectl -n {{NAMESPACE}} logs -f --tail=100 deployment/rlay

# Pods, rollout and health of the deployed relay
status: _need-host
    ssh {{DEPLOY_HOST}} 'sudo k3s kubectl -n {{NAMESPACE}} get deployment,pods,svc -o wide && sudo k3s kubectl -n {{NAMESPACE}} rollout status deployment/rlay --timeout=5s; sudo k3s kubectl -n {{NAMESPACE}} exec deployment/rlay -- rlay version'
    ssh {{DEPLOY_HOST}} 'curl -sf http://$(sudo k3s kubectl -n {{NAMESPACE}} get svc rlay -o jsonpath={.spec.clusterIP}):3000/xrpc/_health && echo'

_need-host:
    @test -n "{{DEPLOY_HOST}}" || { echo "set DEPLOY_HOST=user@server (and optionally DEPLOY_DIR, DEPLOY_NAMESPACE)"; exit 1; }
