"""The Tiled side of the writer: what Tiled already holds of a run, and writing one run.

The run layout is bluesky's `TiledWriter` layout (a `BlueskyRun` container per run, keyed by its
start uid, a `BlueskyEventStream` container per stream with an appendable `internal` table and
external arrays registered from StreamResource/StreamDatum), so every Tiled client of bluesky data
reads it. bluesky writes a run with `_RunWriter` behind a `RunNormalizer`; we use both, and add
the one thing their batching lacks: flushing on time, so a slow run's events show up within the
flush interval instead of at its stop. The stop document is written last, into the run's
metadata: a run whose node has `stop` is complete."""

from __future__ import annotations

import logging
import posixpath
from enum import Enum
from typing import Any
from urllib.parse import unquote, urlparse

from bluesky.callbacks.tiled_writer import RunNormalizer, _RunWriter
from tiled.client.base import BaseClient

log = logging.getLogger(__name__)


class InTiled(Enum):
    ABSENT = "absent"
    PARTIAL = "partial"  # started, never completed: rewritten from its start
    COMPLETE = "complete"


def run_in_tiled(client: BaseClient, uid: str) -> InTiled:
    try:
        node = client[uid]
    except KeyError:
        return InTiled.ABSENT
    return InTiled.COMPLETE if "stop" in (node.metadata or {}) else InTiled.PARTIAL


def delete_run(client: BaseClient, uid: str) -> None:
    """Remove a partial run, its tables included (they are Tiled's own data, not external)."""
    client[uid].delete(recursive=True, external_only=False)


EVENT_KEYS = ("uid", "time", "descriptor", "seq_num", "data", "timestamps")


class _Normalizer(RunNormalizer):
    """bluesky's normalizer validates every document against its JSON schema before passing it
    on: for events that is most of the writer's CPU. Events get a structural check instead (what
    `_RunWriter.event` reads); every other document is still validated in full."""

    def emit(self, name: Any, doc: Any) -> None:
        if name == "event" or getattr(name, "value", None) == "event":
            missing = [k for k in EVENT_KEYS if k not in doc]
            if missing or not isinstance(doc["data"], dict) or not isinstance(doc["timestamps"], dict):
                raise ValueError(f"event {doc.get('uid')!r} is malformed (missing {missing or 'a mapping'})")
            self.dispatcher.process(name, doc)
            return
        super().emit(name, doc)


class _RunWriterWithFlush(_RunWriter):
    def flush(self) -> int:
        """Write the events and stream datums gathered so far; returns how many rows went out."""
        rows = 0
        for desc_name, cache in self._internal_data_cache.items():
            if cache:
                rows += len(cache)
                self._write_internal_data(cache, desc_node=self._desc_nodes[desc_name])
                cache.clear()
        pending = list(self._external_data_cache.values())
        self._external_data_cache.clear()
        for sdatum in pending:
            self._write_external_data(sdatum)
        return rows + len(pending)


def is_tiled_failure(exc: BaseException) -> bool:
    """True when Tiled (or the way to it) failed, so the writer must stop and resume later; False
    when Tiled refused what one run's documents asked for (a malformed document, a column whose
    type changed), which no retry will change: that run is given up, the others go on."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code >= 500 or code in (401, 403, 429)
    return isinstance(exc, (httpx.TransportError, OSError))


def file_path(uri: str) -> str | None:
    """The local path of a stream resource's file:// URI, or None for other schemes."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else None


def outside(path: str, readable: list[str]) -> bool:
    norm = posixpath.normpath("/" + path)  # "/data/../etc" is not under /data
    roots = [posixpath.normpath("/" + r) for r in readable]
    return not any(norm == r or norm.startswith(r.rstrip("/") + "/") for r in roots)


class RunSink:
    """One run's writer. Calls may raise anything tiled or httpx raises: the caller treats every
    exception as fatal for the process (nothing committed past the run's start)."""

    def __init__(self, client: BaseClient, *, batch_size: int, readable_paths: list[str]) -> None:
        self._writer = _RunWriterWithFlush(client, batch_size=batch_size)
        self._normalizer = _Normalizer()
        self._normalizer.subscribe(self._writer)
        self._readable = readable_paths
        self._refused: set[str] = set()  # stream resources not registered (outside readable paths)
        self.problems: list[str] = []

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        if name == "stream_resource" and self._readable:
            path = file_path(str(doc.get("uri", "")))
            if path is not None and outside(path, self._readable):
                self._refused.add(doc["uid"])
                self.problems.append(
                    f"data_key {doc.get('data_key')!r}: {path} is outside the Tiled server's readable "
                    f"paths ({', '.join(self._readable)}): not registered"
                )
                return
        if name == "stream_datum" and doc.get("stream_resource") in self._refused:
            return
        self._normalizer(name, doc)

    def flush(self) -> int:
        return self._writer.flush()
