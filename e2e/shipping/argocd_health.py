#!/usr/bin/env python3
"""Runs the Argo CD health script of partnerplane's kinds
(charts/partnerplane/files/argocd/health.lua) as Argo CD does: Lua 5.1 (the
dialect of gopher-lua), the object as the global `obj`, the returned table as
the health.

    argocd_health.py < objects.json    a JSON list of objects in, a JSON list
                                       of {"status", "message"} out
    argocd_health.py --self-test       checks the script on hand-written
                                       objects in every state

Needs lupa (`hack/tools.sh python` installs it into the test bed's venv)."""

import json
import pathlib
import sys

import lupa.lua51 as lua51

SCRIPT = (
    pathlib.Path(__file__).resolve().parents[2] / "charts/partnerplane/files/argocd/health.lua"
).read_text()


def to_lua(lua, value):
    """JSON as Argo CD hands it to Lua: objects and arrays become tables
    (arrays indexed from 1), null fields are absent."""
    if isinstance(value, dict):
        return lua.table_from({k: to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, v) for v in value if v is not None])
    return value


def health(obj: dict) -> dict:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    assert lua.lua_version == (5, 1), lua.lua_version
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(SCRIPT)
    return {"status": result["status"], "message": result["message"]}


def tenant(generation=1, status=None, deleting=False):
    meta = {"name": "t", "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obj = {"apiVersion": "partnerplane.io/v1alpha1", "kind": "PartnerTenant", "metadata": meta}
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_, status, reason="R", message=""):
    return {"type": type_, "status": status, "reason": reason, "message": message}


def self_test() -> None:
    cases = [
        ("no status", tenant(), "Progressing"),
        ("status default before a controller", tenant(status={"observedGeneration": -1, "conditions": []}), "Progressing"),
        ("no observedGeneration", tenant(status={"conditions": [cond("Ready", "True")]}), "Progressing"),
        ("older generation", tenant(2, {"observedGeneration": 1, "conditions": [cond("Ready", "True")]}), "Progressing"),
        ("reconciling", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "False"), cond("Reconciling", "True", "Provisioning")]}), "Progressing"),
        ("ready", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "True", "Ready", "all parts ready"), cond("Reconciling", "False"), cond("Stalled", "False")]}), "Healthy"),
        ("ready false", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "False")]}), "Progressing"),
        ("stalled after ready in the list", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "True"), cond("Stalled", "True", "NamespaceNotOwned", "namespace x is not the tenant's")]}), "Degraded"),
        ("suspended", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "True"), cond("Reconciling", "False", "Suspended"), cond("Suspended", "True", "Suspended")]}), "Suspended"),
        ("suspended false", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "True"), cond("Suspended", "False")]}), "Healthy"),
        ("being deleted", tenant(status={"observedGeneration": 1, "conditions": [cond("Ready", "True")]}, deleting=True), "Progressing"),
        ("no conditions", tenant(status={"observedGeneration": 1}), "Progressing"),
    ]
    failed = 0
    for name, obj, want in cases:
        got = health(obj)
        ok = got["status"] == want
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got['status']} ({got['message']}){'' if ok else f', want {want}'}")
    degraded = health(cases[7][1])
    if degraded["message"] != "namespace x is not the tenant's":
        failed += 1
        print(f"FAIL the Degraded message is the Stalled condition's: {degraded['message']}")
    if failed:
        sys.exit(f"{failed} case(s) failed")


def main() -> None:
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    objects = json.load(sys.stdin)
    json.dump([health(o) for o in objects], sys.stdout)


if __name__ == "__main__":
    main()
