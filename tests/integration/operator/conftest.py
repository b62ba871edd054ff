"""Helpers of the operator end-to-end tests. Their fixtures (`operator`, `beamlines`, `api`, ...)
are in tests/integration/conftest.py, shared with the GitOps tests."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import yaml
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.eventually import eventually
from tests.helpers.worker_process import WorkerProcess
from tests.integration.conftest import Beamline, apply_beamline

__all__ = ["Beamline", "apply_beamline"]  # imported from here by the tests of this directory

TERMINAL = {"Succeeded", "Failed", "Stopped", "Aborted", "Rejected", "Cancelled"}

# Helpers ------------------------------------------------------------------------------------


def planrun_manifest(
    name: str, beamline: str, plan: str, params: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "PlanRun",
        "metadata": {"name": name},
        "spec": {"beamline": beamline, "plan": plan, "params": params, **spec},
    }


def kubectl_apply(cluster, namespace: str, *objs: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(list(objs)))


def get_pr(api, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, "planruns", name)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


wait_for = eventually  # the name these tests know it by


def wait_phase(
    api, namespace: str, name: str, phases: set[str] | str, timeout: float = 60.0
) -> dict[str, Any]:
    wanted = {phases} if isinstance(phases, str) else phases
    state: dict[str, Any] = {}

    def check() -> dict[str, Any] | None:
        obj = get_pr(api, namespace, name)
        state["last"] = (obj or {}).get("status")
        if obj and (obj.get("status") or {}).get("phase") in wanted:
            return obj
        return None

    try:
        return wait_for(f"{namespace}/{name} in {wanted}", check, timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status {state.get('last')}") from None


def list_prs(api, namespace: str) -> list[dict[str, Any]]:
    return api.list_namespaced_custom_object(GROUP, VERSION, namespace, "planruns")["items"]


def worker_history(w: WorkerProcess) -> list[dict[str, Any]]:
    r = httpx.get(f"{w.url}/v1/runs", headers=w.headers, timeout=10)
    r.raise_for_status()
    return r.json()


def new_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"
