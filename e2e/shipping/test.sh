#!/usr/bin/env bash
# Checks of what the project ships.
#
#   e2e/shipping/test.sh image   builds the OCI image (image/build.sh) into
#                                target/image, builds it again elsewhere and
#                                compares digests, then checks the layer holds
#                                only the expected files and that its binary
#                                runs as uid 65532; prints the digest.
#                                IMAGE_TEST_FRESH=1 compiles the second build
#                                in an empty cargo target folder.
#   e2e/shipping/test.sh chart   helm lint, helm-unittest, the alert rules
#                                (promtool check + unit tests), the dashboard's
#                                queries, the Argo CD health script; then the
#                                suites chart_render and gitops_health against
#                                the test bed (`make up`).
#
# Tools come from hack/tools.sh at pinned versions.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CHART=$ROOT/charts/partnerplane
HERE=$ROOT/e2e/shipping

log() { printf '[shipping] %s\n' "$*" >&2; }
die() { printf '[shipping] FAIL: %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

test_image() {
  local first second out2=$work/second
  # One time for both builds, even if a commit lands in between.
  SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}
  export SOURCE_DATE_EPOCH
  log "building the image"
  first=$("$ROOT/image/build.sh")
  log "building it again from the same inputs${IMAGE_TEST_FRESH:+, compiling from scratch}"
  if [[ -n ${IMAGE_TEST_FRESH:-} ]]; then
    second=$(IMAGE_OUT=$out2 IMAGE_CARGO_TARGET_DIR=$work/cargo "$ROOT/image/build.sh")
  else
    second=$(IMAGE_OUT=$out2 "$ROOT/image/build.sh")
  fi
  [[ $first == "$second" ]] || die "two builds gave different digests: $first and $second"
  cmp -s "$ROOT/target/image/partnerplane-image.tar" "$out2/partnerplane-image.tar" ||
    die "two builds gave different tarballs"
  log "reproducible: both builds are $first"

  # The docker-archive as `docker load` reads it: one image, tagged, one layer.
  local unpacked=$work/unpacked rootfs=$work/rootfs
  mkdir -p "$unpacked" "$rootfs"
  tar -xf "$ROOT/target/image/partnerplane-image.tar" -C "$unpacked"
  python3 - "$unpacked" <<'EOF' >"$work/layer" || die "unexpected docker-archive manifest"
import json, sys, pathlib
root = pathlib.Path(sys.argv[1])
manifest = json.loads((root / "manifest.json").read_text())
assert len(manifest) == 1, manifest
image = manifest[0]
assert image["RepoTags"] and image["RepoTags"][0].startswith("ghcr.io/partnerplane/operator:"), image["RepoTags"]
assert len(image["Layers"]) == 1, image["Layers"]
config = json.loads((root / image["Config"]).read_text())
c = config["config"]
assert c["User"] == "65532:65532", c
assert c["Entrypoint"] == ["/partnerplane"], c
assert not c.get("Cmd") and not c.get("Env"), c
print(image["Layers"][0])
EOF
  # Exactly these files: the binary, the user database, the CA bundle, /tmp.
  local listing
  listing=$(tar -tzf "$unpacked/$(cat "$work/layer")" | sed 's|^\./||; /^$/d' | sort | tr '\n' ' ')
  [[ $listing == "etc/ etc/group etc/passwd etc/ssl/ etc/ssl/certs/ etc/ssl/certs/ca-certificates.crt partnerplane tmp/ " ]] ||
    die "unexpected files in the layer: $listing"
  tar -tvzf "$unpacked/$(cat "$work/layer")" --numeric-owner | awk '$2 != "0/0" {exit 1}' ||
    die "a file in the layer is not owned by 0/0"
  tar -xzf "$unpacked/$(cat "$work/layer")" -C "$rootfs"
  grep -qx 'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' "$rootfs/etc/passwd" ||
    die "no user 65532 in /etc/passwd"
  file "$rootfs/partnerplane" | grep -q 'static' || die "the binary is not statically linked: $(file "$rootfs/partnerplane")"

  # No container runtime here: run the binary from the layer as the image's user.
  chmod 755 "$work" "$rootfs"
  local version
  version=$(setpriv --reuid 65532 --regid 65532 --clear-groups --no-new-privs -- "$rootfs/partnerplane" --version) ||
    die "the binary does not run as uid 65532"
  local want
  want="partnerplane $(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -1)"
  [[ $version == "$want" ]] || die "--version printed '$version', want '$want'"
  log "runs as 65532: $version"
  echo "$first"
}

test_chart() {
  local bin helm venv=$ROOT/e2e/.testbed/venv
  bin=$("$ROOT/hack/tools.sh" helm helm-unittest promtool python)
  helm=$bin/helm

  log "helm lint"
  "$helm" lint --strict "$CHART" >/dev/null
  "$helm" lint --strict "$CHART" --set leaderElection.enabled=true --set replicas=2 \
    --set serviceMonitor.enabled=true --set prometheusRule.enabled=true \
    --set grafanaDashboard.enabled=true >/dev/null
  log "values.schema.json refuses what the operator would refuse"
  local bad
  for bad in "replicas=2" "config.redis.password=x" "operator.logFormat=yaml" \
    "image.digest=latest" "config.vault.address=vault:8200"; do
    if "$helm" template x "$CHART" --set "$bad" >/dev/null 2>&1; then
      die "the chart accepted --set $bad"
    fi
  done

  log "helm-unittest"
  "$bin/helm-unittest" "$CHART"

  log "CRD copies and Argo CD health script"
  "$ROOT/hack/argocd-health.py" --check
  for crd in "$ROOT"/crds/*.partnerplane.io.yaml; do
    cmp -s "$crd" "$CHART/files/crds/$(basename "$crd")" ||
      die "charts/partnerplane/files/crds/$(basename "$crd") is stale: run hack/sync-chart-crds.sh"
  done
  "$venv/bin/python3" "$HERE/argocd_health.py" --self-test

  log "alert rules: promtool check and unit tests"
  # rules.yaml: the PrometheusRule's spec as Prometheus loads it;
  # rules-test.yaml: the same without the static runbook texts, which the
  # unit tests (alerts_test.yaml) need not repeat.
  local variant
  for variant in "--set leaderElection.enabled=true" ""; do
    # shellcheck disable=SC2086
    "$helm" template partnerplane "$CHART" -n partnerplane-system --set prometheusRule.enabled=true $variant \
      --show-only templates/prometheusrule.yaml >"$work/prometheusrule.yaml"
    "$venv/bin/python3" - "$work/prometheusrule.yaml" "$work/rules.yaml" "$work/rules-test.yaml" <<'EOF'
import sys, yaml
spec = yaml.safe_load(open(sys.argv[1]))["spec"]
yaml.safe_dump(spec, open(sys.argv[2], "w"), sort_keys=False)
for group in spec["groups"]:
    for r in group["rules"]:
        assert r["annotations"].get("runbook"), f"{r['alert']} has no runbook"
        r["annotations"].pop("runbook")
        r["annotations"].pop("runbook_url", None)
yaml.safe_dump(spec, open(sys.argv[3], "w"), sort_keys=False)
EOF
    "$bin/promtool" check rules "$work/rules.yaml"
  done
  # The last variant rendered is the default one, which the unit tests cover.
  cp "$HERE/alerts_test.yaml" "$work/"
  "$bin/promtool" test rules "$work/alerts_test.yaml"

  log "Grafana dashboard: JSON, layout and every query parses"
  "$venv/bin/python3" - "$CHART/files/grafana/partnerplane.json" "$work/dashboard-rules.yaml" <<'EOF'
import json, sys, yaml
dash = json.load(open(sys.argv[1]))
assert dash["uid"] and dash["title"], "uid and title"
ids, exprs = set(), []
def walk(panels):
    for p in panels:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['title']} is off the grid"
        if p["type"] != "row":
            assert p.get("targets"), f"panel {p['title']} has no query"
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p.get("targets", []):
            exprs.append(t["expr"])
        walk(p.get("panels", []))
walk(dash["panels"])
names = {v["name"] for v in dash["templating"]["list"]}
assert {"datasource", "job", "namespace"} <= names, names
# Grafana's variables as Prometheus would see them after substitution.
subst = {"$__rate_interval": "5m", "$__range": "6h", "$job": ".+", "$namespace": ".*"}
rules = []
for i, e in enumerate(exprs):
    for k, v in subst.items():
        e = e.replace(k, v)
    assert "$" not in e, e
    rules.append({"record": f"dashboard:query{i}", "expr": e})
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
print(f"{len(ids)} panels, {len(exprs)} queries")
EOF
  "$bin/promtool" check rules "$work/dashboard-rules.yaml"

  [[ ${1:-} == static ]] && return
  log "suites against the test bed: chart_render, gitops_health"
  (cd "$ROOT" && cargo build -p partnerplane --bins &&
    # shellcheck source=/dev/null
    source e2e/.testbed/env &&
    cargo test -p partnerplane-e2e --test chart_render --test gitops_health)
}

case "${1:-}" in
  image) test_image ;;
  chart) test_chart ;;
  # Everything but the suites against the test bed (which `make test` runs).
  chart-static) test_chart static ;;
  *) echo "usage: $0 image|chart|chart-static" >&2; exit 2 ;;
esac
