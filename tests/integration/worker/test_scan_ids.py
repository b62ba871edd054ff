"""Scan numbers unique and increasing per beamline across worker restarts: reserved in the
Beamline's status.lastScanId, recorded in the PlanRun's status.scanIds, moved up by the Beamline's
spec.nextScanId. (bluesky's own count restarted at 1 with every worker.)"""

from __future__ import annotations

import pytest
from kubernetes import client
from kubesky_operator.api import GROUP, VERSION

from tests.helpers.worker_process import sim_config, worker_process

from .test_worker_e2e import create_planrun, dispatch, terminal, wait_record, wait_status

pytestmark = pytest.mark.timeout(240)


def test_scan_ids_survive_worker_restarts(cluster, crds, namespace, kafka, tmp_path):
    api = client.CustomObjectsApi(cluster.api_client())
    bl = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Beamline", "metadata": {"name": "sim"}, "spec": {}}
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", bl)
    cfg = sim_config("sim", kafka=kafka.bootstrap, topic=f"{namespace}.scan", kubeconfig=cluster.kubeconfig)

    def run_once(w) -> list[int]:
        pr = create_planrun(api, namespace, "count", {"detectors": ["det"], "num": 1})
        assert dispatch(w, pr).status_code == 202
        rec = wait_record(w, pr["metadata"]["uid"], terminal)
        assert rec["phase"] == "Succeeded", rec
        status = wait_status(api, pr, lambda s: s.get("phase") == "Succeeded" and s.get("scanIds"))
        assert status["scanIds"] == rec["scanIds"]
        return rec["scanIds"]

    def last() -> int:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "sim")["status"][
            "lastScanId"
        ]

    with worker_process(cfg, tmp_path / "w") as w:
        assert run_once(w) == [1] and run_once(w) == [2] and last() == 2
        w.restart(kill=True)
        assert run_once(w) == [3]
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "beamlines", "sim", {"spec": {"nextScanId": 100}}
        )
        assert run_once(w) == [100]
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "beamlines", "sim", {"spec": {"nextScanId": 50}}
        )
        assert run_once(w) == [101] and last() == 101
