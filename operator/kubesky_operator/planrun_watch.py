"""PlanRuns watched by the operator itself, not through kopf.

kopf keeps a memory for every object it has seen (a memo, an error throttler, index and daemon
records) until the object is deleted: about a kilobyte for each finished PlanRun, so a year of
history grew the operator without bound. The store needs each body only once, so here: a chunked
list of every watched scope (the namespaces given, else the cluster), then a watch from the list's
resourceVersion, each event handed to `on_event`. A watch the server ends is reopened from the last
resourceVersion seen (bookmarks included); one too old to resume (410 Gone) is listed again, and
`on_relisted` is told which runs exist, so the store forgets those deleted meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from .api import API_VERSION
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import PLANRUNS_LISTED
from .store import RunKey

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # the server ends each watch after this; it is reopened where it stopped


class PlanRunWatch:
    def __init__(
        self,
        api: KubeApi,
        namespaces: list[str],
        on_event: Callable[[str, Mapping[str, Any]], None],
        on_relisted: Callable[[str | None, set[RunKey]], None],
        on_primed: Callable[[], None],
    ) -> None:
        self.api = api
        self.scopes: list[str | None] = list(namespaces) or [None]
        self.on_event = on_event
        self.on_relisted = on_relisted
        self.on_primed = on_primed
        self._listed: set[str | None] = set()
        self._counts: dict[str | None, int] = {}

    async def run(self) -> None:
        await asyncio.gather(*(self._follow(ns) for ns in self.scopes))

    async def _follow(self, namespace: str | None) -> None:
        path = resource_path(API_VERSION, "planruns", namespace)
        version: str | None = None
        delay = 0.2
        while True:
            try:
                if version is None:
                    version = await self._list(path, namespace)
                version = await self._watch(path, version)
                delay = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # not logged in yet, the API away, a watch cut
                if isinstance(exc, ApiError) and exc.status == 410:
                    version = None  # too old to resume: list again
                    continue
                log.info(
                    "PlanRuns of %s not watched (%s): again in %.1f s",
                    namespace or "all namespaces",
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _list(self, path: str, namespace: str | None) -> str:
        """Every PlanRun of the scope, page by page, to the store; the list's resourceVersion."""
        seen: set[RunKey] = set()
        version = ""
        async for page in self.api.list_pages(path):  # 410: the continue token expired
            version = version or (page.get("metadata") or {}).get("resourceVersion") or ""
            for item in page.get("items") or ():
                m = item.get("metadata") or {}
                seen.add((m.get("namespace", ""), m.get("name", "")))
                self.on_event("ADDED", item)
        self._counts[namespace] = len(seen)
        PLANRUNS_LISTED.set(sum(self._counts.values()))
        if namespace in self._listed:
            self.on_relisted(namespace, seen)
        else:
            self._listed.add(namespace)
            if len(self._listed) == len(self.scopes):
                self.on_primed()
        return version

    async def _watch(self, path: str, version: str) -> str:
        params = {
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        async for event in self.api.watch(path, params, read_timeout=WATCH_SECONDS + 30):
            kind = event.get("type")
            obj = event.get("object") or {}
            if kind == "ERROR":
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message") or obj), "WATCH", path)
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self.on_event(kind, obj)
        return version
