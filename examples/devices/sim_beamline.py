"""A simulated beamline for kubesky: no hardware, only ophyd-async's simulated devices.

Each public function annotated to return a device is a factory; the worker calls it once at start,
names the device after the function (unless it named itself) and connects it.

- x, y: simulated motors; their positions drive the pattern the detectors see
- det: a three-channel point detector (SimPointDetector) reading the pattern at (x, y)
- blob_det: an area detector writing Gaussian-blob frames to HDF5 (SimBlobDetector)
- fast_det: a soft counter for fast counting (no acquisition delay)
"""

from __future__ import annotations

import os
import tempfile
from pathlib import PurePath

from bluesky.protocols import Reading
from ophyd_async.core import (
    AsyncStatus,
    StandardReadable,
    StaticPathProvider,
    UUIDFilenameProvider,
    soft_signal_r_and_setter,
)
from ophyd_async.core import StandardReadableFormat as Format
from ophyd_async.sim import PatternGenerator, SimBlobDetector, SimMotor, SimPointDetector

# One pattern generator shared by all devices: the "sample" the detectors look at.
PATTERN = PatternGenerator()
# The Beamline's spec.worker.dataVolume when it has one (shared with Tiled), else a temporary directory.
DATA_DIR = PurePath(tempfile.mkdtemp(prefix="kubesky-sim-", dir=os.environ.get("KUBESKY_DATA_DIR") or None))


class PatternMotor(SimMotor):
    """A SimMotor that reports its position to the pattern generator while staged."""

    def __init__(self, axis: str, name: str = "") -> None:
        self._axis = axis
        super().__init__(name=name, instant=True)

    def _follow(self, readings: dict[str, Reading[float]]) -> None:
        (reading,) = readings.values()
        (PATTERN.set_x if self._axis == "x" else PATTERN.set_y)(reading["value"])

    def stage(self) -> AsyncStatus:
        self.user_readback.subscribe_reading(self._follow)
        return super().stage()

    def unstage(self) -> AsyncStatus:
        self.user_readback.clear_sub(self._follow)
        return super().unstage()


class SoftCounter(StandardReadable):
    """A detector with no acquisition time: each trigger increments its value. For fast counting."""

    def __init__(self, name: str = "") -> None:
        with self.add_children_as_readables(Format.HINTED_SIGNAL):
            self.value, self._set_value = soft_signal_r_and_setter(float, 0.0)
        self._count = 0
        super().__init__(name=name)

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        self._count += 1
        self._set_value(float(self._count))


def x() -> PatternMotor:
    return PatternMotor("x")


def y() -> PatternMotor:
    return PatternMotor("y")


async def det() -> SimPointDetector:
    detector = SimPointDetector(PATTERN, num_channels=3, name="det")
    await detector.connect()
    await detector.acquire_time.set(0.01)  # 10 ms exposures keep examples and tests quick
    return detector


def blob_det() -> SimBlobDetector:
    return SimBlobDetector(StaticPathProvider(UUIDFilenameProvider(), DATA_DIR), PATTERN)


def fast_det() -> SoftCounter:
    return SoftCounter()
