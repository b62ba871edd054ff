"""The validating admission webhook: `kubectl apply` of a PlanRun its beamline cannot run is refused
at once, with the message its `Rejected` status would carry, naming the field.

PlanRun (CREATE; its spec cannot change afterwards but for state and priority, which the CRD
checks):
- the limits of `api.limits` (nesting, size, start-document keys) and nulls `kubectl apply` dropped
  (`api.applied`) are checked here, as the operator checks them before dispatch;
- the plan, its parameters and devices are checked by the beamline's worker itself
  (`POST /v1/validate`): one implementation, so the messages are the worker's own;
- a plan the worker does not serve yet while a rollout of the Beamline's plan ConfigMaps is under
  way is admitted with a warning: it waits for the rollout (WaitingForPlans), as without the webhook.
Whatever cannot be checked now (no Beamline yet, a worker that does not answer within
`webhook_worker_timeout_seconds`, an error of the webhook's own) is admitted with a warning: the
operator checks it again before dispatch and marks it `Rejected`. The webhook never refuses for a
reason of its own.

Beamline (CREATE, UPDATE): what the CRD schema cannot express (`BeamlineSpec`'s own checks) and
what the administrator does not allow (`beamline_policy.spec_refusals`: images, ServiceAccounts,
endpoint hosts) are refused naming the field. Referenced Secrets and plan ConfigMaps that are
missing or not opted in are only warned about: in a GitOps sync they may come a moment later.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import kopf
from pydantic import ValidationError

from .api import GROUP, VERSION, BeamlineSpec, PlanRunRef, RunRequest
from .api.applied import dropped_nulls, dropped_nulls_message
from .api.limits import spec_limit_error, start_key_errors
from .beamline_policy import describe, opt_in_refusals, spec_refusals
from .kubeapi import ApiError, KubeApi, resource_path
from .metrics import ADMISSION_LATENCY, ADMISSION_REVIEWS
from .plan_rollout import PlanRollout
from .settings import OperatorSettings
from .store import BeamlineView, Store, WorkerView
from .workerclient import SubmitOutcome, WorkerAuthError, WorkerUnreachable

log = logging.getLogger(__name__)

REFUSED = 422  # the apiserver shows the message to the user as "denied the request: <message>"


def _pydantic_message(exc: ValidationError) -> str:
    return "; ".join(
        f"spec.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" if e["loc"] else e["msg"]
        for e in exc.errors()
    )


class Admission:
    def __init__(
        self, *, settings: OperatorSettings, store: Store, api: KubeApi, rollout: PlanRollout
    ) -> None:
        self.settings = settings
        self.store = store
        self.api = api
        self.rollout = rollout

    # PlanRuns ------------------------------------------------------------------------------

    async def planrun(self, body: kopf.Body, warnings: list[str]) -> None:
        """Raise kopf.AdmissionError naming the field, or return (admitted, maybe with warnings)."""
        spec = dict(body.get("spec") or {})
        params = spec.get("params") or {}
        metadata = spec.get("metadata") or {}
        limit = spec_limit_error(params=params, metadata=metadata)
        if limit is not None:
            raise kopf.AdmissionError(limit, code=REFUSED)
        bad_keys = start_key_errors(metadata)
        if bad_keys:
            raise kopf.AdmissionError(
                "; ".join(f"metadata.{k}: {why}" for k, why in bad_keys.items()), code=REFUSED
            )
        dropped = dropped_nulls(body)
        if dropped:
            raise kopf.AdmissionError(dropped_nulls_message(dropped), code=REFUSED)
        meta = body.get("metadata") or {}
        namespace, beamline = meta.get("namespace") or "", spec.get("beamline") or ""
        key = (namespace, beamline)
        bl = self.store.beamlines.get(key)
        if bl is None or bl.deleting:
            warnings.append(
                f'Beamline "{beamline}" not found in namespace {namespace}: the run waits for it '
                "(Pending, BeamlineNotFound) and its plan and parameters are checked then"
            )
            return
        worker = self.store.workers.get(key)
        client = worker.client if worker is not None and worker.ready else None
        if client is None:
            warnings.append(
                f"the worker of beamline {beamline} is not ready: plan and parameters are checked "
                "before dispatch"
            )
            return
        request = RunRequest(
            id=meta.get("uid") or str(uuid.uuid4()),
            planrun=PlanRunRef(namespace=namespace, name=meta.get("name") or meta.get("generateName") or "-"),
            plan=spec.get("plan") or "",
            params=dict(params),
            metadata=dict(metadata),
            timeout_seconds=spec.get("timeoutSeconds"),
        )
        try:
            result = await asyncio.wait_for(
                client.validate(request), self.settings.webhook_worker_timeout_seconds
            )
        except (WorkerUnreachable, WorkerAuthError, TimeoutError) as exc:
            log.info(
                "admission of %s/%s: worker of %s not asked: %r",
                namespace,
                request.planrun.name,
                beamline,
                exc,
            )
            warnings.append(
                f"the worker of beamline {beamline} did not answer: plan and parameters are checked "
                "before dispatch"
            )
            return
        if result.outcome != SubmitOutcome.REJECTED:
            return
        if worker is not None and await self._rollout_pending(bl, worker):
            warnings.append(
                f"beamline {beamline}'s plans are being rolled out: the run waits for the new plans "
                f"and is checked against them (the current ones say: {result.message})"
            )
            return
        raise kopf.AdmissionError(result.message or "rejected by the worker", code=REFUSED)

    async def _rollout_pending(self, bl: BeamlineView, worker: WorkerView) -> bool:
        """A change of the Beamline's plan ConfigMaps has not reached its worker yet (as the
        dispatcher's WaitingForPlans decides; the ConfigMaps are read afresh, since one applied
        with this PlanRun may not have reached the operator's watch yet)."""
        rollout = self.rollout
        if rollout.in_progress((bl.namespace, bl.name)):
            return True
        if not bl.spec.plans.config_maps or worker.state is None:
            return False
        try:
            expected = await rollout.expected_hash(bl)
        except ApiError:
            return False
        return expected is not None and expected != worker.state.plan_set_hash

    # Beamlines -----------------------------------------------------------------------------

    async def beamline(self, body: kopf.Body, warnings: list[str]) -> None:
        meta = body.get("metadata") or {}
        namespace = meta.get("namespace") or ""
        try:
            spec = BeamlineSpec.model_validate(dict(body.get("spec") or {}))
        except ValidationError as exc:
            raise kopf.AdmissionError(_pydantic_message(exc), code=REFUSED) from None
        refused = spec_refusals(spec, self.settings)
        if refused:
            raise kopf.AdmissionError(describe(refused), code=REFUSED)
        try:
            for r in await opt_in_refusals(self.api, namespace, spec):
                warnings.append(f"{r} (the worker is not started until it is)")
            for ref in spec.plans.config_maps:
                path = resource_path("v1", "configmaps", namespace, ref.name)
                if await self.api.get_metadata(path) is None:
                    warnings.append(f"spec.plans.configMaps: ConfigMap {ref.name!r} not found (yet)")
        except ApiError as exc:
            log.info(
                "admission of Beamline %s/%s: references not checked: %s", namespace, meta.get("name"), exc
            )


def register(registry: kopf.OperatorRegistry, admission: Admission) -> None:

    async def timed(kind: str, check: Any, body: kopf.Body, warnings: list[str]) -> None:
        t0 = time.monotonic()
        verdict = "admitted"
        try:
            await check(body, warnings)
        except kopf.AdmissionError:
            verdict = "refused"
            raise
        except Exception:
            # Never refuse for a fault of our own: the operator's checks before dispatch still apply.
            log.exception("admission of a %s failed; admitted", kind)
            warnings.append("kubesky's admission check failed; the operator checks the object later")
            verdict = "error"
        finally:
            ADMISSION_REVIEWS.labels(kind, verdict).inc()
            ADMISSION_LATENCY.labels(kind).observe(time.monotonic() - t0)

    @kopf.on.validate(GROUP, VERSION, "planruns", id="planruns", operations=["CREATE"], registry=registry)
    async def validate_planrun(body: kopf.Body, warnings: list[str], **_: Any) -> None:
        await timed("PlanRun", admission.planrun, body, warnings)

    @kopf.on.validate(
        GROUP, VERSION, "beamlines", id="beamlines", operations=["CREATE", "UPDATE"], registry=registry
    )
    async def validate_beamline(
        body: kopf.Body, old: kopf.Body | None, warnings: list[str], **_: Any
    ) -> None:
        # Only a change of the spec is checked: the operator's own updates (kopf's annotations,
        # the finalizer) pass on any Beamline, an old one the rules now refuse included.
        if old is not None and old.get("spec") == body.get("spec"):
            return
        await timed("Beamline", admission.beamline, body, warnings)
