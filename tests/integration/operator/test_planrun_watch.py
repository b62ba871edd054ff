"""The operator's own PlanRun watch (planrun_watch) against the real apiserver, under the operator's
ServiceAccount token: the chunked listing, then every change as it happens, events larger than a
line reader takes, and a new listing telling which runs still exist."""

from __future__ import annotations

import asyncio

import kopf
import yaml
from kubesky_operator.api import API_VERSION
from kubesky_operator.kubeapi import KubeApi, resource_path
from kubesky_operator.planrun_watch import PlanRunWatch

from tests.integration.operator.conftest import kubectl_apply, planrun_manifest


async def eventually(what: str, check, within: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_list_then_watch_every_change(cluster, namespace, operator_kubeconfig):
    token = yaml.safe_load(operator_kubeconfig.read_text())["users"][0]["user"]["token"]
    api = KubeApi()
    api.set_credentials(kopf.ConnectionInfo(server=cluster.server, ca_path=str(cluster.ca_file), token=token))
    # 200 KB of params: one watch event is one line longer than aiohttp's line limit (64 KiB)
    big = {"detectors": ["det"], "note": "x" * 200_000}
    kubectl_apply(
        cluster,
        namespace,
        planrun_manifest("before", "nowhere", "count", {"detectors": ["det"]}),
        planrun_manifest("big", "nowhere", "count", big),
    )
    events: list[tuple[str, str, int]] = []
    priorities: dict[str, int] = {}
    relisted: list[tuple[str | None, set[tuple[str, str]]]] = []
    primed = asyncio.Event()
    watch = PlanRunWatch(
        api,
        [namespace],
        lambda kind, body: (
            events.append((kind, body["metadata"]["name"], len(str((body.get("spec") or {}).get("params"))))),
            priorities.__setitem__(body["metadata"]["name"], (body.get("spec") or {}).get("priority", 0)),
        ),
        lambda ns, present: relisted.append((ns, present)),
        primed.set,
    )
    task = asyncio.create_task(watch.run())
    try:
        await asyncio.wait_for(primed.wait(), 30)
        listed = {(k, n) for k, n, _ in events}
        assert listed == {("ADDED", "before"), ("ADDED", "big")}
        assert max(size for _, n, size in events if n == "big") > 200_000

        kubectl_apply(cluster, namespace, planrun_manifest("after", "nowhere", "count", big))
        await eventually("the new run", lambda: ("ADDED", "after") in {(k, n) for k, n, _ in events})
        cluster.kubectl(
            "patch", "planrun", "before", "-n", namespace, "--type=merge", "-p", '{"spec":{"priority":7}}'
        )
        await eventually("the change", lambda: priorities.get("before") == 7)
        cluster.kubectl("delete", "planrun", "big", "-n", namespace, "--wait=false")
        await eventually("the deletion", lambda: ("DELETED", "big") in {(k, n) for k, n, _ in events})
        assert relisted == []

        # What a watch too old to resume (410 Gone) leads to: a new listing, and the store told
        # which runs exist so it forgets the ones deleted meanwhile.
        await watch._list(resource_path(API_VERSION, "planruns", namespace), namespace)
        assert relisted == [(namespace, {(namespace, "before"), (namespace, "after")})]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()
