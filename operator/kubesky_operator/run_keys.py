"""Run keys: a PlanRun labelled `kubesky.io/run-key` runs at most once per key on its beamline.

A GitOps engine may replace an object it cannot update. Flux with `force` (or `kubectl replace
--force`) deletes an edited PlanRun and creates it again, and the new object (a new uid) would run
again. A run key names the run, not the object. Before dispatch, the operator refuses (`Rejected`,
reason `RunKeyUsed`, the earlier run named) a PlanRun whose key already ran on the beamline:
- another PlanRun with that key on that beamline that was dispatched (found by a label-selected
  list);
- or one deleted after it was dispatched, remembered for a day from its deletion event.

An operator restart forgets those deletions: then only the PlanRuns that still exist count
(docs/gitops.md)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api import API_VERSION, RUN_KEY_LABEL, Phase
from .kubeapi import KubeApi, resource_path
from .queue import RunView

RUN_KEY_USED = "RunKeyUsed"
# Phases of a run that reached a worker: its key is spent.
RAN = frozenset(
    {
        Phase.DISPATCHED,
        Phase.RUNNING,
        Phase.PAUSED,
        Phase.SUCCEEDED,
        Phase.FAILED,
        Phase.STOPPED,
        Phase.ABORTED,
    }
)
REMEMBER_SECONDS = 86400.0
REMEMBER_MAX = 10_000  # deletions remembered at most (the oldest forgotten first)
KeyRef = tuple[str, str, str]  # (namespace, beamline, run key)


@dataclass(frozen=True)
class KeyUse:
    name: str
    uid: str
    phase: str
    at: float  # when it was seen deleted (monotonic), or 0 for a PlanRun that exists


def _use(body: Mapping[str, Any], at: float = 0.0) -> tuple[KeyRef, KeyUse] | None:
    meta = body.get("metadata") or {}
    key = (meta.get("labels") or {}).get(RUN_KEY_LABEL)
    phase = (body.get("status") or {}).get("phase")
    if not key or phase not in RAN:
        return None
    ref = (meta.get("namespace", ""), (body.get("spec") or {}).get("beamline", ""), key)
    return ref, KeyUse(meta.get("name", ""), meta.get("uid", ""), phase, at)


class RunKeys:
    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._gone: OrderedDict[KeyRef, KeyUse] = OrderedDict()

    def deleted(self, body: Mapping[str, Any]) -> None:
        """A PlanRun was deleted: if it ran with a key, remember the key as spent."""
        found = _use(body, time.monotonic())
        if found is None:
            return
        ref, use = found
        self._gone[ref] = use
        self._gone.move_to_end(ref)
        while len(self._gone) > REMEMBER_MAX:
            self._gone.popitem(last=False)

    async def refusal(self, run: RunView) -> tuple[str, str] | None:
        """(reason, message) when `run`'s key already ran on its beamline; None when it may run.
        An API error propagates: the run is not dispatched until the key can be checked."""
        if not run.run_key:
            return None
        ref = (run.namespace, run.beamline, run.run_key)
        used = self._gone.get(ref)
        if used is not None and time.monotonic() - used.at > REMEMBER_SECONDS:
            del self._gone[ref]
            used = None
        if used is None or used.uid == run.uid:
            used = None
            path = resource_path(API_VERSION, "planruns", run.namespace)
            page = await self.api.request(
                "GET", path, params={"labelSelector": f"{RUN_KEY_LABEL}={run.run_key}"}
            )
            for item in page.get("items") or ():
                found = _use(item)
                if found is not None and found[0] == ref and found[1].uid != run.uid:
                    used = found[1]
                    break
        if used is None:
            return None
        how = "was deleted after it ran" if used.at else "exists"
        return RUN_KEY_USED, (
            f"run key {run.run_key!r} already ran on beamline {run.beamline}: PlanRun {used.name} "
            f"(uid {used.uid}, {used.phase}) {how}. A run key runs once: give this run a new key "
            f"(label {RUN_KEY_LABEL}) to run it"
        )
