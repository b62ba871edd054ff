"""Example plan module, written as for blueapi: type-annotated functions returning MsgGenerator.

Mount it as a ConfigMap (Beamline spec.plans.configMaps) or point the worker's plans.directories at
this folder. Each public generator function becomes a plan; its signature becomes the parameter
schema shown in Beamline status.plans, and parameters typed as devices take device names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator


def step_scan(
    detectors: Sequence[Readable],
    motor: Movable,
    start: float,
    stop: float,
    num: int = 5,
    metadata: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Scan one motor from start to stop in num steps, reading the detectors at each point.

    Args:
        detectors: devices read at every point
        motor: the axis to move
        start: first position
        stop: last position
        num: number of points
        metadata: extra metadata for the start document
    """
    yield from bp.scan(list(detectors), motor, start, stop, num=num, md=metadata or {})


def count_slowly(detectors: list[Readable], num: int = 10, delay: float = 0.1) -> MsgGenerator:
    """Count the detectors with a delay between readings (checkpoints between points: pausable)."""
    yield from bp.count(detectors, num=num, delay=delay)


def move_to(motor: Movable, position: float) -> MsgGenerator:
    """Move a motor (opens no run: no documents)."""
    yield from bps.mv(motor, position)


def failing_plan(detectors: list[Readable], fail_after: int = 2) -> MsgGenerator:
    """Open a run, take `fail_after` readings, then raise: shows how a failing plan is reported."""

    @bpp.run_decorator(md={"plan_name": "failing_plan"})
    def inner() -> MsgGenerator:
        for _ in range(fail_after):
            yield from bps.trigger_and_read(detectors)
        raise RuntimeError(f"failing_plan failed on purpose after {fail_after} readings")

    yield from inner()
