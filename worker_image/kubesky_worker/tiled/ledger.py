"""Which Kafka offset the Tiled writer may commit, per partition.

A committed offset is where a restarted writer resumes. It must never pass the start document of a
run that is not yet complete in Tiled: resuming in the middle of a run would lose its start and
descriptors, and with them the rest of the run. So each partition keeps the offsets of the starts
of its open runs; the commit point is the lowest of them, or past the last record handled when no
run is open. Pure bookkeeping: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionLedger:
    next_offset: int | None = None  # one past the last record handled
    open_starts: dict[str, int] = field(default_factory=dict)  # run uid -> offset of its start
    committed: int | None = None  # what was last committed

    def handled(self, offset: int) -> None:
        if self.next_offset is None or offset + 1 > self.next_offset:
            self.next_offset = offset + 1

    def opened(self, uid: str, offset: int) -> None:
        # A repeated start keeps the first offset: the run must be re-read from there.
        self.open_starts.setdefault(uid, offset)

    def closed(self, uid: str) -> None:
        self.open_starts.pop(uid, None)

    def commit_point(self) -> int | None:
        """The offset safe to commit now, or None when nothing new may be committed."""
        if self.next_offset is None:
            return None
        point = min([self.next_offset, *self.open_starts.values()])
        if self.committed is not None and point <= self.committed:
            return None
        return point


@dataclass
class Ledger:
    partitions: dict[int, PartitionLedger] = field(default_factory=dict)

    def of(self, partition: int) -> PartitionLedger:
        return self.partitions.setdefault(partition, PartitionLedger())

    def commit_points(self) -> dict[int, int]:
        return {p: point for p, led in self.partitions.items() if (point := led.commit_point()) is not None}

    def committed(self, points: dict[int, int]) -> None:
        for p, point in points.items():
            self.of(p).committed = point
