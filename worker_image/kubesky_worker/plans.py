"""Plan loading: the plan set served and its reloads.

A *plan set* is an immutable snapshot of the plans served: loaded from directories of plan modules
(a mounted ConfigMap) and from installed modules. Reloading builds a new plan set and swaps it in
only when every module imported; otherwise the previous one keeps serving and the errors are
reported."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime

from kubesky_operator.api import LoadError, PlanConfig, PlanInfo
from kubesky_operator.api.common import now

from .modules import (
    forget_sibling_modules,
    import_installed,
    load_error,
    load_file_module,
    python_files,
    sources_hash,
)
from .plan_discovery import plans_of_module
from .plan_entry import PlanEntry, build_plan_entry, cached_plan_entry

log = logging.getLogger(__name__)


@dataclass
class PlanSet:
    hash: str
    plans: dict[str, PlanEntry] = field(default_factory=dict)
    loaded_at: datetime | None = None
    errors: list[LoadError] = field(default_factory=list)

    def catalogue(self) -> list[PlanInfo]:
        return [self.plans[n].info() for n in sorted(self.plans)]


def current_hash(config: PlanConfig) -> str:
    files = [f for d in config.directories for f in python_files(d)]
    return sources_hash(files, list(config.modules), list(config.include))


_load_counter = 0
_load_counter_lock = threading.Lock()


def load_plan_set(config: PlanConfig) -> PlanSet:
    """Import all plan sources. Returns a PlanSet; `errors` lists modules that failed (with the plans
    that did load still present, for the first load)."""
    global _load_counter
    with _load_counter_lock:
        _load_counter += 1
        generation = _load_counter
    files_by_dir = [(d, python_files(d)) for d in config.directories]
    all_files = [f for _, fs in files_by_dir for f in fs]
    digest = sources_hash(all_files, list(config.modules), list(config.include))
    plans: dict[str, PlanEntry] = {}
    errors: list[LoadError] = []
    # installed modules first; plan modules from directories override them by name
    for mod_name in config.modules:
        try:
            module = import_installed(mod_name)
        except Exception as exc:
            errors.append(load_error(exc, mod_name))
            continue
        for name, fn in plans_of_module(module, defined_here=False).items():
            if config.include and name not in config.include:
                continue
            try:
                plans[name] = build_plan_entry(name, fn, mod_name)
            except Exception as exc:
                errors.append(LoadError(file=mod_name, message=f"plan {name}: {type(exc).__name__}: {exc}"))
    if config.include and config.modules:
        for name in config.include:
            if name not in plans:
                errors.append(
                    LoadError(file=",".join(config.modules), message=f"plan {name!r} not found in modules")
                )
    for i, (_, files) in enumerate(files_by_dir):
        forget_sibling_modules(files)
        for src in files:
            try:
                module = load_file_module(src, f"kubesky_plans_g{generation}_{i}")
            except Exception as exc:
                errors.append(load_error(exc, str(src.path)))
                log.warning("plan module %s failed to load: %s", src.path, exc)
                continue
            for name, fn in plans_of_module(module, defined_here=True).items():
                try:
                    plans[name] = cached_plan_entry(name, fn, src.path.stem)
                except Exception as exc:
                    line = getattr(getattr(fn, "__code__", None), "co_firstlineno", None)
                    errors.append(
                        LoadError(
                            file=str(src.path), line=line, message=f"plan {name}: {type(exc).__name__}: {exc}"
                        )
                    )
    return PlanSet(hash=digest, plans=plans, loaded_at=now(), errors=errors)


class PlanManager:
    """Holds the plan set being served; `reload()` swaps in a new one only when it loaded cleanly."""

    def __init__(self, config: PlanConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self.current: PlanSet = PlanSet(hash=sources_hash([], [], []))
        self.load_errors: list[LoadError] = []

    def reload(self) -> tuple[bool, PlanSet]:
        """Load the sources; returns (swapped, plan set now serving)."""
        new = load_plan_set(self.config)
        with self._lock:
            first = self.current.loaded_at is None
            if not new.errors or first:
                self.current = new
                self.load_errors = list(new.errors)
                return True, new
            self.load_errors = list(new.errors)
            return False, self.current

    def changed_on_disk(self) -> bool:
        """True when the files describe another plan set than the one served. When they describe
        the served one (a broken change rolled back), the errors of the refused set no longer
        hold: they are reset to the served set's own."""
        if current_hash(self.config) != self.current.hash:
            return True
        with self._lock:
            if self.load_errors != self.current.errors:
                log.info("plan sources are back to the plan set served: its load errors only")
                self.load_errors = list(self.current.errors)
        return False
