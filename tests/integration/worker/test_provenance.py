"""The Beamline's provenance in every start document: its metadata and name win over what a PlanRun
or a plan's own `md` says, and no PlanRun sets scan_id (it would repeat the beamline's numbers)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from kubernetes import client

from tests.helpers.kafka_docs import read_range
from tests.helpers.worker_process import WorkerProcess, sim_config, worker_process

from .test_worker_e2e import create_planrun, dispatch, terminal, wait_record


@pytest.fixture(scope="module")
def topic() -> str:
    return f"prov-{uuid.uuid4().hex[:8]}.bluesky.runengine.documents"


@pytest.fixture(scope="module")
def worker(cluster, crds, kafka, topic, tmp_path_factory) -> WorkerProcess:
    cfg = sim_config("sim", kafka=kafka.bootstrap, topic=topic, kubeconfig=cluster.kubeconfig)
    cfg["metadata"] = {"facility": "kubesky-tests", "proposal": "p-1"}
    with worker_process(cfg, tmp_path_factory.mktemp("worker")) as w:
        yield w


def test_beamline_provenance_wins_over_planrun_and_plan_metadata(worker, cluster, namespace, kafka, topic):
    api = client.CustomObjectsApi(cluster.api_client())
    forged = {"beamline": "elsewhere", "facility": "forged", "proposal": "p-2"}
    params = {"detectors": ["det"], "num": 1, "md": {**forged, "from_plan": True}}
    pr = create_planrun(api, namespace, "count", params)
    assert dispatch(worker, pr, metadata={**forged, "sample": "si"}).status_code == 202
    rec = wait_record(worker, pr["metadata"]["uid"], terminal)
    assert rec["phase"] == "Succeeded", rec
    k = rec["kafka"]
    docs = read_range(kafka.bootstrap, topic, k["partition"], k["firstOffset"], k["lastOffset"])
    start = docs[0].doc
    assert (start["beamline"], start["facility"], start["proposal"]) == ("sim", "kubesky-tests", "p-1")
    assert start["sample"] == "si" and start["from_plan"] is True  # the rest is the user's
    assert start["kubesky"]["planrun"]["uid"] == pr["metadata"]["uid"]


def test_scan_id_is_refused_in_planrun_metadata(worker, cluster, namespace):
    api = client.CustomObjectsApi(cluster.api_client())
    pr = create_planrun(api, namespace, "count", {"detectors": ["det"], "num": 1})
    r = dispatch(worker, pr, metadata={"scan_id": 7})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["metadata", "scan_id"]
    # and at apply, by the CRD
    body = {
        "apiVersion": "kubesky.io/v1alpha1",
        "kind": "PlanRun",
        "metadata": {"name": "scan-id"},
        "spec": {"beamline": "sim", "plan": "count", "metadata": {"scan_id": 7}},
    }
    with pytest.raises(client.ApiException) as info:
        api.create_namespaced_custom_object("kubesky.io", "v1alpha1", namespace, "planruns", body)
    assert info.value.status == 422 and "spec.metadata" in info.value.body and "scan_id" in info.value.body
    assert httpx.get(f"{worker.url}/healthz", timeout=10).status_code == 200
