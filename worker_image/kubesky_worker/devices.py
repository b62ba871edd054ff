"""Device registry: devices built from factory functions of device modules, connected once at start
on the RunEngine's event loop. Devices survive plan reloads; they change only on restart."""

from __future__ import annotations

import asyncio
import inspect
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from kubesky_operator.api import DeviceConfig, DeviceInfo, LoadError

from .modules import import_installed, load_error, load_file_module, python_files

log = logging.getLogger(__name__)

try:  # ophyd-async is the device framework the worker targets
    from ophyd_async.core import Device as AsyncDevice
except ImportError:  # pragma: no cover
    AsyncDevice = None  # type: ignore[assignment,misc]


def _is_device_type(tp: object) -> bool:
    origin = typing.get_origin(tp) or tp
    if not inspect.isclass(origin):
        return False
    if AsyncDevice is not None and issubclass(origin, AsyncDevice):
        return True
    return False


def find_factories(module: ModuleType) -> dict[str, Callable[[], Any]]:
    """Public functions defined in `module` that take no required argument and are annotated to
    return a device."""
    out: dict[str, Callable[[], Any]] = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj) or obj.__module__ != module.__name__:
            continue
        try:
            hints = typing.get_type_hints(obj)
        except Exception:
            hints = getattr(obj, "__annotations__", {})
        ret = hints.get("return")
        if ret is None or not _is_device_type(ret):
            continue
        sig = inspect.signature(obj)
        required = [
            p
            for p in sig.parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if required:
            continue
        out[name] = obj
    return out


@dataclass
class DeviceRegistry:
    devices: dict[str, Any] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)

    def get(self, name: str) -> Any | None:
        return self.devices.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.devices

    def names(self) -> list[str]:
        return sorted(self.devices)

    def catalogue(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(name=n, type=f"{type(d).__module__}.{type(d).__qualname__}")
            for n, d in sorted(self.devices.items())
        ]


def collect_factories(
    config: DeviceConfig,
) -> tuple[list[tuple[str, str, Callable[[], Any]]], list[LoadError]]:
    """(device name, source, factory) for every factory of the configured modules, and import errors."""
    factories: list[tuple[str, str, Callable[[], Any]]] = []
    errors: list[LoadError] = []
    modules: list[tuple[str, ModuleType]] = []
    for name in config.modules:
        try:
            modules.append((name, import_installed(name)))
        except Exception as exc:
            errors.append(load_error(exc, name))
    for i, directory in enumerate(config.directories):
        for src in python_files(directory):
            try:
                modules.append((str(src.path), load_file_module(src, f"kubesky_devices_{i}")))
            except Exception as exc:
                errors.append(load_error(exc, str(src.path)))
    for source, module in modules:
        for fname, fn in find_factories(module).items():
            factories.append((fname, source, fn))
    return factories, errors


async def build_devices(
    factories: list[tuple[str, str, Callable[[], Any]]], connect_timeout: float = 10.0
) -> DeviceRegistry:
    """Call the factories and connect the devices; runs on the RunEngine's loop."""
    reg = DeviceRegistry()
    built: list[tuple[str, str, Any]] = []
    for fname, source, fn in factories:
        try:
            dev = fn()
            if inspect.isawaitable(dev):
                dev = await dev
        except Exception as exc:
            reg.errors.append(load_error(exc, source))
            continue
        if not getattr(dev, "name", ""):
            setter = getattr(dev, "set_name", None)
            if setter is not None:
                setter(fname)
        name = getattr(dev, "name", "") or fname
        if name in reg.devices or any(name == b[0] for b in built):
            reg.errors.append(
                LoadError(file=source, message=f"duplicate device name {name!r} (factory {fname})")
            )
            continue
        built.append((name, source, dev))

    async def _connect(dev: Any) -> None:
        connect = getattr(dev, "connect", None)
        if connect is None:
            return
        result = connect(timeout=connect_timeout)
        if inspect.isawaitable(result):
            await result

    results = await asyncio.gather(*(_connect(d) for _, _, d in built), return_exceptions=True)
    for (name, source, dev), res in zip(built, results, strict=True):
        if isinstance(res, BaseException):
            reg.errors.append(LoadError(file=source, message=f"device {name!r} failed to connect: {res}"))
            log.error("device %s failed to connect: %s", name, res)
            continue
        reg.devices[name] = dev
    return reg
