#!/usr/bin/env bash
# Installs, at pinned versions, the tools that build the image and test the
# Helm chart: Go programs into e2e/.testbed/tools/bin (git-ignored, kept by
# `e2e/testbed.sh down`), Python libraries into the test bed's venv, the Rust
# musl target and Debian's musl-tools. Each is installed once by its ordinary
# package manager (Go programs built from their modules) and again only when
# its pin changes.
#
#   hack/tools.sh [TOOL...]   install TOOL (all when none is named) and print
#                             the bin folder on stdout
#
# TOOL: helm crane helm-unittest promtool python musl
set -euo pipefail

HELM_VERSION=v3.22.1
CRANE_VERSION=v0.22.1
HELM_UNITTEST_VERSION=v1.1.2
PROMETHEUS_VERSION=v0.316.0   # promtool
LUPA_VERSION=2.8
PYYAML_VERSION=6.0.3
MUSL_TARGET=x86_64-unknown-linux-musl

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TB=$(realpath -m "$ROOT/e2e/.testbed")
TOOLS=$TB/tools
BIN=$TOOLS/bin
# The test bed's Python environment (e2e/testbed.sh makes it).
VENV=$TB/venv

log() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }
stamp_ok() { [[ -f $1 && $(cat "$1") == "$2" ]]; }

go_env() {
  command -v go >/dev/null || die "Go is required to build $1"
  export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
}

# go_tool NAME VERSION PACKAGE@VERSION [LDFLAGS]
go_tool() {
  local name=$1 version=$2 package=$3 ldflags=${4:-}
  stamp_ok "$TOOLS/.$name" "$version" && [[ -x $BIN/$name ]] && return
  go_env "$name"
  mkdir -p "$BIN"
  log "building $name $version (first run only)"
  GOBIN=$BIN go install -p 1 -trimpath -ldflags="-s -w $ldflags" "$package" >&2
  echo "$version" >"$TOOLS/.$name"
}

# A module whose go.mod has replace directives cannot be `go install`ed by
# version: build it as the main module from its downloaded source.
# module_tool NAME VERSION MODULE PACKAGE_DIR
module_tool() {
  local name=$1 version=$2 module=$3 package=$4 dir src
  stamp_ok "$TOOLS/.$name" "$version" && [[ -x $BIN/$name ]] && return
  go_env "$name"
  mkdir -p "$BIN"
  log "building $name $version from its module source (first run only)"
  dir=$(go mod download -json "$module@$version" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  src=$(mktemp -d)
  cp -r "$dir/." "$src"
  chmod -R u+w "$src"
  (cd "$src" && go build -p 1 -trimpath -ldflags='-s -w' -o "$BIN/$name" "$package" >&2)
  rm -rf "$src"
  echo "$version" >"$TOOLS/.$name"
}

install_helm() {
  go_tool helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
    "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}
install_crane() {
  go_tool crane "$CRANE_VERSION" "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
}
install_helm_unittest() {
  module_tool helm-unittest "$HELM_UNITTEST_VERSION" github.com/helm-unittest/helm-unittest ./cmd/helm-unittest
}
install_promtool() {
  go_tool promtool "$PROMETHEUS_VERSION" "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
}

# Python libraries of the chart tests: lupa (Lua 5.1, the dialect of Argo
# CD's health scripts) and PyYAML.
install_python() {
  local want="lupa==$LUPA_VERSION PyYAML==$PYYAML_VERSION"
  stamp_ok "$TOOLS/.python" "$want" && "$VENV/bin/python3" -c 'import lupa, yaml' 2>/dev/null && return
  [[ -x $VENV/bin/python3 ]] || python3 -m venv "$VENV"
  log "installing $want into $VENV"
  # shellcheck disable=SC2086
  "$VENV/bin/pip" install --quiet --disable-pip-version-check $want >&2
  mkdir -p "$TOOLS"
  echo "$want" >"$TOOLS/.python"
}

# The static binary: Rust's musl target, and musl-gcc for ring's C code.
install_musl() {
  if ! rustup target list --installed | grep -qx "$MUSL_TARGET"; then
    log "adding the Rust target $MUSL_TARGET"
    rustup target add "$MUSL_TARGET" >&2
  fi
  if ! command -v musl-gcc >/dev/null; then
    log "installing musl-tools from Debian"
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
  fi
}

# One installer at a time (tests ask for tools concurrently).
mkdir -p "$TOOLS"
exec 9>"$TOOLS/.lock"
flock 9

tools=("$@")
((${#tools[@]})) || tools=(helm crane helm-unittest promtool python musl)
for tool in "${tools[@]}"; do
  case $tool in
    helm) install_helm ;;
    crane) install_crane ;;
    helm-unittest) install_helm_unittest ;;
    promtool) install_promtool ;;
    python) install_python ;;
    musl) install_musl ;;
    *) die "unknown tool $tool" ;;
  esac
done
echo "$BIN"
