"""The worker: composition of plans, devices, RunEngine thread, publisher, status writer, metrics."""

from __future__ import annotations

import logging
from typing import Any

from kubesky_operator.api import FieldError, RunRecord, RunRequest, ValidateResponse, WorkerConfig
from kubesky_operator.api.limits import start_key_errors

from .auth import TokenSource
from .config import worker_name
from .engine import Engine
from .metrics import Metrics
from .plan_entry import ParamError, PlanEntry
from .plans import PlanManager, PlanSet
from .publisher import Publisher
from .runs import Run, RunHistory
from .status import StatusWriter
from .watcher import PlanWatcher

log = logging.getLogger(__name__)


class Worker:
    def __init__(self, config: WorkerConfig, token: TokenSource, kube_api_client: Any | None = None) -> None:
        self.config = config
        self.token = token
        self.name = worker_name(config)
        self.metrics = Metrics()
        self.history = RunHistory(config.history_size)
        self.plans = PlanManager(config.plans)
        self.publisher = Publisher(
            config.kafka,
            self.metrics,
            on_run_failure=self._publish_failure,
            client_id=f"kubesky-worker-{self.name}",
        )
        self.status = StatusWriter(config.kube, self.metrics, api_client=kube_api_client)
        self.engine = Engine(
            config, self.publisher, self.status, self.metrics, self.plans, self.history, self.name
        )
        self.watcher = PlanWatcher(config.plans.directories, self.plans, self.engine)

    def _publish_failure(self, run: Run, message: str) -> None:
        self.engine.abort_for_publish_failure(run, message)

    def start(self, timeout: float = 120.0) -> None:
        """Start everything; returns when devices are connected and plans loaded."""
        self.publisher.start()
        self.status.start()
        self.engine.start(timeout)
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.engine.stop()
        self.publisher.stop()
        self.status.stop()

    @property
    def ready(self) -> bool:
        return self.engine.ready.is_set() and self.engine.start_error is None and self.engine.alive

    def submit(self, req: RunRequest) -> tuple[int, RunRecord]:
        """Validate and start a run: (202, record) or (200, record) for a known id.
        Raises ParamError (422) or engine.Busy (409)."""
        existing = self.history.get(req.id)
        if existing is not None:
            return 200, existing.record()
        ps, entry, args, kwargs = self.check(req)
        run = Run(
            req.id,
            req.plan,
            planrun=req.planrun,
            params=req.params,
            metadata=req.metadata,
            timeout_seconds=req.timeout_seconds,
            plan_set_hash=ps.hash,
            worker=self.name,
            topic=self.publisher.topic,
        )
        got = self.engine.submit(run, entry, args, kwargs)
        return (202 if got is run else 200), got.record()

    def validate(self, req: RunRequest) -> ValidateResponse:
        """What POST /v1/runs would say of `req`, without running it (the operator's admission
        webhook asks this). Raises ParamError (422)."""
        ps, *_ = self.check(req)
        return ValidateResponse(plan_set_hash=ps.hash)

    def check(self, req: RunRequest) -> tuple[PlanSet, PlanEntry, list[Any], dict[str, Any]]:
        """The plan set, plan and bound arguments of `req`; ParamError naming each bad field."""
        ps = self.plans.current
        entry = ps.plans.get(req.plan)
        if entry is None and self.plans.changed_on_disk():
            # A PlanRun for a plan just rolled out can arrive before the watcher's reload: reload
            # now (when idle) rather than reject a plan that is already on disk.
            self.engine.reload()
            ps = self.plans.current
            entry = ps.plans.get(req.plan)
        if entry is None:
            known = ", ".join(sorted(ps.plans)) or "none"
            raise ParamError(
                [
                    FieldError(
                        loc=["plan"],
                        msg=f"unknown plan {req.plan!r} (known plans: {known})",
                        type="unknown_plan",
                    )
                ]
            )
        args, kwargs = entry.validate(req.params, self.engine.devices.devices)
        # Found here, not by event-model mid-run with its whole schema in the message; a plan's own
        # `md` parameter goes into its start document too.
        plan_md = kwargs.get("md")
        bad = [
            FieldError(loc=[*where, k], msg=why, type="invalid_key")
            for where, md in ((["metadata"], req.metadata), (["params", "md"], plan_md))
            if isinstance(md, dict)
            for k, why in start_key_errors(md).items()
        ]
        if bad:
            raise ParamError(bad)
        return ps, entry, args, kwargs
