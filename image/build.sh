#!/usr/bin/env bash
# Builds the operator's OCI image without a container engine: a static musl
# `partnerplane` binary, the non-root user 65532 (image/rootfs/etc) and the
# CA bundle for backends with publicly signed certificates — no shell, no
# package manager. The same sources give the same image digest: file times
# come from SOURCE_DATE_EPOCH (default: the last commit's time), the layer is
# a sorted tar with numeric root ownership, and crane leaves the config's
# creation time at its fixed zero value.
#
#   image/build.sh            writes target/image/partnerplane-image.tar
#                             (`docker load -i` it) and prints the digest
#
# Environment: IMAGE_OUT (output folder, default target/image), IMAGE_NAME
# (default ghcr.io/partnerplane/operator), IMAGE_TAG (default: the crate
# version), SOURCE_DATE_EPOCH, IMAGE_CARGO_TARGET_DIR (default
# target/image-build), CA_BUNDLE (default: the build machine's
# /etc/ssl/certs/ca-certificates.crt).
#
# Also writes target/image/oci (an OCI layout: `crane push target/image/oci
# REF` publishes the same digest), config.json and digest.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=x86_64-unknown-linux-musl
OUT=${IMAGE_OUT:-$ROOT/target/image}
NAME=${IMAGE_NAME:-ghcr.io/partnerplane/operator}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)
TAG=${IMAGE_TAG:-$VERSION}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [[ -z ${SOURCE_DATE_EPOCH:-} ]]; then
  SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
fi
export SOURCE_DATE_EPOCH

log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

TOOLS=$("$ROOT/hack/tools.sh" crane musl)
crane() { "$TOOLS/crane" "$@"; }
[[ -f $CA_BUNDLE ]] || die "no CA bundle at $CA_BUNDLE (Debian: apt-get install ca-certificates)"

# --- the static binary ---------------------------------------------------------
# Paths of this checkout and of the cargo home are remapped, so the binary
# does not depend on where it was built.
# Its own target folder: the build never waits for (or invalidates) the
# development builds in target/.
build_dir=${IMAGE_CARGO_TARGET_DIR:-$ROOT/target/image-build}
log "building partnerplane for $TARGET in $build_dir"
cargo_home=${CARGO_HOME:-$HOME/.cargo}
export CC_x86_64_unknown_linux_musl=musl-gcc
# rustc applies the last matching prefix, so the build folder (inside the
# checkout) comes after the checkout.
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="--remap-path-prefix=$ROOT=/src --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$build_dir=/build -C strip=symbols"
(cd "$ROOT" && CARGO_TARGET_DIR=$build_dir cargo build --release --locked --target "$TARGET" -p partnerplane)
binary=$build_dir/$TARGET/release/partnerplane
file "$binary" 2>/dev/null | grep -q 'static' || ldd "$binary" 2>&1 | grep -q 'not a dynamic' ||
  die "$binary is not statically linked"

# --- the layer -----------------------------------------------------------------
work=$(mktemp -d)
registry_pid=
cleanup() {
  if [[ -n $registry_pid ]]; then kill "$registry_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

umask 022
rootfs=$work/rootfs
mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/partnerplane"
install -m 0644 "$ROOT/image/rootfs/etc/passwd" "$ROOT/image/rootfs/etc/group" "$rootfs/etc/"
install -m 0644 "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
chmod 0755 "$rootfs" "$rootfs/etc" "$rootfs/etc/ssl" "$rootfs/etc/ssl/certs"
chmod 1777 "$rootfs/tmp"
tar --sort=name --format=gnu --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner \
  -cf "$work/layer.tar" -C "$rootfs" .

# --- the image, through a registry on loopback that lives as long as this script --
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
crane registry serve --address "127.0.0.1:$port" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  crane catalog --insecure "127.0.0.1:$port" >/dev/null 2>&1 && break
  sleep 0.1
done
local_ref=127.0.0.1:$port/partnerplane
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

crane append --insecure --oci-empty-base -f "$work/layer.tar" -t "$local_ref:layer" >/dev/null 2>>"$work/crane.log"
crane mutate --insecure "$local_ref:layer" --set-platform linux/amd64 \
  --entrypoint /partnerplane --user 65532:65532 --workdir / \
  -l org.opencontainers.image.title=partnerplane \
  -l org.opencontainers.image.description="Kubernetes operator for white-label partner intelligence tenants" \
  -l org.opencontainers.image.version="$VERSION" \
  -l org.opencontainers.image.licenses=Apache-2.0 \
  -l org.opencontainers.image.created="$created" \
  -t "$local_ref:$TAG" >/dev/null 2>>"$work/crane.log"

crane validate --insecure --remote "$local_ref:$TAG" >&2 || die "crane validate failed"
config=$(crane config --insecure "$local_ref:$TAG")
python3 - "$config" <<'PY' || die "unexpected image config: $config"
import json, sys
config = json.loads(sys.argv[1])
c = config["config"]
assert c["User"] == "65532:65532", c["User"]
assert c["Entrypoint"] == ["/partnerplane"], c["Entrypoint"]
assert config["os"] == "linux" and config["architecture"] == "amd64"
assert not c.get("Env"), c.get("Env")
PY
digest=$(crane digest --insecure "$local_ref:$TAG")

# A docker-archive tarball named $NAME:$TAG (crane writes without pushing when
# given -o), and an OCI layout to push from with `crane push`.
mkdir -p "$OUT"
rm -rf "$OUT/oci" "$OUT/partnerplane-image.tar"
crane mutate --insecure "$local_ref:$TAG" -t "$NAME:$TAG" -o "$OUT/partnerplane-image.tar" >/dev/null 2>>"$work/crane.log"
crane pull --insecure --format=oci "$local_ref:$TAG" "$OUT/oci" 2>>"$work/crane.log"
crane validate --tarball "$OUT/partnerplane-image.tar" >&2 || die "the tarball does not validate"
# The OCI layout holds the very manifest (same digest); the docker-archive
# has no manifest of its own (`docker load` makes one), but the same config,
# whose digest is the image ID docker shows.
python3 - "$OUT" "$digest" "$(crane manifest --insecure "$local_ref:$TAG")" <<'PY' || die "the saved image differs from the built one"
import json, pathlib, sys
out, digest, manifest = pathlib.Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
index = json.loads((out / "oci/index.json").read_text())
assert [m["digest"] for m in index["manifests"]] == [digest], index
archive = json.loads(__import__("tarfile").open(out / "partnerplane-image.tar").extractfile("manifest.json").read())
config = archive[0]["Config"]
assert config.replace("sha256:", "").split(".")[0] == manifest["config"]["digest"].replace("sha256:", ""), (config, manifest["config"])
PY
echo "$config" >"$OUT/config.json"
echo "$NAME:$TAG@$digest" >"$OUT/digest"
log "$NAME:$TAG ($(du -h "$OUT/partnerplane-image.tar" | cut -f1)) → $OUT/partnerplane-image.tar"
echo "$digest"
