"""Documents as Kafka records: bluesky-kafka's serialization (msgpack + msgpack-numpy of
`[name, doc]`), checked against the Kafka record limit (`kafka.maxRequestSize`). An event_page over
the limit is split into halves until each fits; any other document over it, or one msgpack has no
form for, is `Unpublishable` and fails its run. Pure: no threads, asyncio or Kafka."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgpack
import msgpack_numpy as mpn

RECORD_OVERHEAD = 512  # bytes reserved for record + batch framing when checking the size limit
NO_LIMIT = 1 << 62  # publishing off: no record limit to check against

Headers = list[tuple[str, bytes]]


def serializer() -> Callable[[Any], bytes]:
    """The bluesky-kafka serialization: msgpack with msgpack-numpy's encoder. A packer is not
    thread-safe: one per thread."""
    packer = msgpack.Packer(default=mpn.encode)
    return packer.pack


class Unpublishable(Exception):
    """A document that cannot reach Kafka at all: its run fails with `reason`."""

    reason = "DocumentUnpublishable"


class DocumentTooLarge(Unpublishable):
    reason = "DocumentTooLarge"


class DocumentUnserializable(Unpublishable):
    reason = "DocumentUnserializable"


def serialize(
    name: str,
    doc: dict[str, Any],
    key: bytes | None,
    headers: Headers,
    pack: Callable[[Any], bytes],
    max_request_size: int,
    uid: str | None = None,
) -> list[tuple[str, dict[str, Any], bytes]]:
    """The records (name, document, value) `doc` is published as: one, or the parts of a split
    event_page. Raises Unpublishable; `uid` names the document in the message (default its own)."""
    if uid is None:
        uid = str(doc.get("uid") or doc.get("datum_id") or "")
    what = f"{name} document {uid}" if uid else f"the {name} document"
    try:
        value = pack([name, doc])
    except (TypeError, ValueError, OverflowError) as exc:
        # msgpack refuses objects it has no form for, too-deep nesting and ints past 64 bits
        raise DocumentUnserializable(
            f"{what} cannot be serialized for Kafka ({type(exc).__name__}: {exc}); the run is failed"
        ) from None
    limit = max_request_size - RECORD_OVERHEAD
    hsize = sum(len(k) + len(v) for k, v in headers)
    size = len(value) + (len(key) if key else 0) + hsize
    if size <= limit:
        return [(name, doc, value)]
    if name == "event_page" and len(doc.get("seq_num", ())) > 1:
        out = []
        for part in split_event_page(doc):
            out.extend(serialize(name, part, key, headers, pack, max_request_size))
        return out
    raise DocumentTooLarge(
        f"{what} is {size} bytes serialized, over the Kafka limit of "
        f"{max_request_size} bytes (kafka.maxRequestSize); the run is failed"
    )


def check_start_document(md: dict[str, Any], headers: Headers, max_request_size: int) -> None:
    """Raise Unpublishable when the start document made of `md` could not reach Kafka."""
    uid = "0" * 36  # the size of the uid the RunEngine adds
    doc = {**md, "uid": uid, "time": time.time()}
    # a packer of its own: this runs on the RunEngine's thread, not the publisher's
    serialize("start", doc, uid.encode(), headers, serializer(), max_request_size, "")


def split_event_page(page: dict[str, Any]) -> list[dict[str, Any]]:
    """Split an event_page into two halves (columns sliced); documents are not mutated."""
    n = len(page["seq_num"])
    mid = n // 2
    out = []
    for sl in (slice(0, mid), slice(mid, n)):
        part = dict(page)
        for col in ("seq_num", "time", "uid"):
            part[col] = list(page[col])[sl]
        for col in ("data", "timestamps", "filled"):
            if col in page:
                part[col] = {k: list(v)[sl] for k, v in page[col].items()}
        out.append(part)
    return out
