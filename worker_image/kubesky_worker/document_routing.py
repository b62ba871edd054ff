"""The Kafka key of each document: the uid of its run's start document, as bluesky-kafka keys them,
so that the partitioner puts all of a run's documents on one partition, in the order emitted.
Pure: no threads, asyncio or Kafka."""

from __future__ import annotations

from typing import Any


class DocumentRouter:
    """Keys documents by their run's start uid, following the references between them.

    - start: its own uid; a descriptor, resource or stream_resource: its run_start's;
    - event, event_page: their descriptor's; datum, datum_page: their resource's; stream_datum:
      its descriptor's, else its stream_resource's;
    - stop: its run_start's, and the run's descriptors and resources are forgotten.

    A document whose reference is unknown goes with the latest start's key (None before any)."""

    def __init__(self) -> None:
        self._start_keys: dict[str, bytes] = {}
        self._descriptors: dict[str, tuple[bytes | None, bool]] = {}  # uid -> (key, primary stream)
        self._resource_keys: dict[str, bytes | None] = {}
        self._last_key: bytes | None = None

    def route(self, name: str, doc: dict[str, Any]) -> tuple[bytes | None, bool]:
        """The key of `doc`, and whether it holds events of a primary stream (a run's progress)."""
        if name == "event" or name == "event_page":
            return self._descriptors.get(doc.get("descriptor", ""), (self._last_key, False))
        if name == "start":
            key = doc["uid"].encode()
            self._start_keys[doc["uid"]] = key
            self._last_key = key
            return key, False
        if name == "descriptor":
            key = self._start_keys.get(doc.get("run_start", ""), self._last_key)
            self._descriptors[doc["uid"]] = (key, doc.get("name") == "primary")
            return key, False
        if name == "stop":
            key = self._start_keys.pop(doc.get("run_start", ""), self._last_key)
            for d in [d for d, (k, _) in self._descriptors.items() if k == key]:
                del self._descriptors[d]
            for r in [r for r, k in self._resource_keys.items() if k == key]:
                del self._resource_keys[r]
            return key, False
        if name == "resource" or name == "stream_resource":
            key = self._start_keys.get(doc.get("run_start", ""), self._last_key)
            self._resource_keys[doc.get("uid", "")] = key
            return key, False
        if name == "datum" or name == "datum_page":
            return self._resource_keys.get(doc.get("resource", ""), self._last_key), False
        if name == "stream_datum":
            if "descriptor" in doc and doc["descriptor"] in self._descriptors:
                return self._descriptors[doc["descriptor"]][0], False
            return self._resource_keys.get(doc.get("stream_resource", ""), self._last_key), False
        return self._last_key, False
