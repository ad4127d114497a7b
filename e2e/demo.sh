#!/usr/bin/env bash
# The main job on the local test bed: install the CRDs, run the operator and
# reconcile examples/. Expects `e2e/testbed.sh up` to have run (`make demo` does it).
#
#   e2e/demo.sh         start (or restart) the operator and apply the examples
#   e2e/demo.sh stop    stop the operator
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TB=$ROOT/e2e/.testbed
PIDFILE=$TB/operator.pid
LOG=$TB/logs/operator.log
HTTP_ADDR=127.0.0.1:${PARTNERPLANE_DEMO_PORT:-18080}

log() { printf '[demo] %s\n' "$*" >&2; }

stop() {
  [[ -f $PIDFILE ]] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  if kill -TERM "$pid" 2>/dev/null; then
    log "stopping the operator (pid $pid)"
    timeout 30 tail --pid="$pid" -f /dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

start() {
  # shellcheck source=/dev/null
  source "$TB/env"
  log "building the operator"
  cargo build --quiet -p partnerplane --manifest-path "$ROOT/Cargo.toml"
  local bin=$ROOT/target/debug/partnerplane

  if compgen -G "$ROOT/crds/*.yaml" >/dev/null; then
    log "installing the CRDs"
    kubectl apply --server-side --force-conflicts --field-manager=partnerplane.io/demo -k "$ROOT/crds/" >/dev/null
    kubectl wait --for=condition=Established crd -l app.kubernetes.io/part-of=partnerplane --timeout=60s >/dev/null
  fi

  stop
  log "starting the operator (log: $LOG)"
  # Tenants labelled with a shard belong to the end-to-end suites' operators.
  nohup "$bin" run --http-addr "$HTTP_ADDR" --tenant-selector '!partnerplane.io/shard' >>"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  local deadline=$((SECONDS + 60))
  until curl -fsS "http://$HTTP_ADDR/readyz" >/dev/null 2>&1; do
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { tail -20 "$LOG"; log "the operator exited"; exit 1; }
    ((SECONDS < deadline)) || { log "the operator is not ready after 60s (see $LOG)"; exit 1; }
    sleep 0.2
  done
  log "operator ready: http://$HTTP_ADDR/metrics"

  log "applying the example tenants (examples/gitops)"
  # Tenants first: pipelines and copilots live in the namespaces they create.
  local files=()
  while IFS= read -r f; do files+=(-f "$f"); done < <(find -L "$ROOT/examples" -name tenant.yaml | sort)
  kubectl apply --server-side --field-manager=partnerplane.io/demo "${files[@]}" >/dev/null
  if ! kubectl wait --for=condition=Ready partnertenants -l '!partnerplane.io/shard' --timeout=120s >/dev/null; then
    log "not every tenant is Ready; their conditions:"
    kubectl get partnertenants -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,MESSAGE:.status.conditions[?(@.type=="Ready")].message'
    exit 1
  fi
  # The example copilots' model keys. No model can be reached from here, so
  # they are placeholders: the copilots' workloads run on KWOK nodes.
  log "placing the example copilots' model keys (placeholders) in OpenBao and a Secret"
  curl -fsS -o /dev/null -H "X-Vault-Token: $VAULT_TOKEN" -X POST \
    -d '{"data":{"api_key":"demo-placeholder-key"}}' \
    "$VAULT_ADDR/v1/secret/data/tenants/northwind-manufacturing/models/openai"
  kubectl -n contoso-logistics create secret generic channel-manager-model \
    --from-literal=api-key=demo-placeholder-key --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  kubectl apply --server-side --field-manager=partnerplane.io/demo -k "$ROOT/examples/gitops" >/dev/null
  log "seeding the example pipelines' sources with the tenants' own credentials"
  cargo build --quiet -p partnerplane-e2e --bin seed_demo --manifest-path "$ROOT/Cargo.toml"
  "$ROOT/target/debug/seed_demo"
  kubectl wait --for=condition=Ready copilotdeployments -A -l '!partnerplane.io/shard' --timeout=120s >/dev/null ||
    log "not every copilot is Ready yet (kubectl describe cop -A)"
  echo
  kubectl get partnerplane -A -l '!partnerplane.io/shard'
  echo
  kubectl get partnertenant contoso-logistics -o jsonpath='{range .status.conditions[*]}{.type}{"\t"}{.status}{"\t"}{.message}{"\n"}{end}'
  echo
  kubectl get metricpipelines -A -l '!partnerplane.io/shard' \
    -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{"\n"}{range .status.metrics[*]}{"  "}{.name}{"\t"}{.value}{"\tmet="}{.objectiveMet}{"\tworst="}{.breaches[0].partner}{"\n"}{end}{end}'
  log "the operator keeps running; stop everything with: make down"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
