#!/usr/bin/env python3
"""Writes the Argo CD health checks of partnerplane's kinds from the one Lua
script, charts/partnerplane/files/argocd/health.lua, into:

- charts/partnerplane/files/argocd/argocd-cm-values.yaml (argo-cd chart values)
- examples/gitops/argocd/argocd-cm.yaml (a patch of the argocd-cm ConfigMap)

`--check` fails instead of writing when a file differs (the tests run it)."""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
LUA = ROOT / "charts/partnerplane/files/argocd/health.lua"
KINDS = ["PartnerTenant", "MetricPipeline", "CopilotDeployment"]


def entries(indent: str) -> list[str]:
    lua = LUA.read_text().splitlines()
    out = []
    for kind in KINDS:
        out.append(f"{indent}resource.customizations.health.partnerplane.io_{kind}: |")
        out += [f"{indent}  {line}" if line else "" for line in lua]
    return out


FILES = {
    ROOT / "charts/partnerplane/files/argocd/argocd-cm-values.yaml": [
        "# Argo CD health checks for partnerplane's kinds, as values of the argo-cd",
        "# Helm chart (`configs.cm`). Written by hack/argocd-health.py from",
        "# health.lua next to this file; do not edit.",
        "configs:",
        "  cm:",
        *entries("    "),
    ],
    ROOT / "examples/gitops/argocd/argocd-cm.yaml": [
        "# Argo CD health checks for partnerplane's kinds: merge into argocd-cm",
        "# (for example as a kustomize patch of an Argo CD installation). Argo CD has",
        "# no health for custom resources without a script, so without these it shows",
        "# tenants, pipelines and copilots with no health at all. Written by",
        "# hack/argocd-health.py from charts/partnerplane/files/argocd/health.lua; do",
        "# not edit.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "  labels:",
        "    app.kubernetes.io/name: argocd-cm",
        "    app.kubernetes.io/part-of: argocd",
        "data:",
        *entries("  "),
    ],
}


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for path, lines in FILES.items():
        text = "\n".join(lines) + "\n"
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run hack/argocd-health.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
