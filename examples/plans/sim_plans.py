"""Example plan module, shipped to the worker in the sim-plans ConfigMap.

Written as for blueapi: type-annotated functions returning a MsgGenerator. Parameters typed as
devices take device names in a PlanRun (e.g. detector: det, motor: x)."""

from __future__ import annotations

from typing import Any

import bluesky.plans as bp
from bluesky.protocols import Movable, Readable
from bluesky.utils import MsgGenerator


def line_scan(
    detector: Readable,
    motor: Movable,
    start: float,
    stop: float,
    num: int = 11,
    metadata: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Scan one motor in a line, reading one detector at each point."""
    yield from bp.scan([detector], motor, start, stop, num, md=metadata or {})
