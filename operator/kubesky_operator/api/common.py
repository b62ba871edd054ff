"""Shared pieces of the contract: API group, the camelCase base model, conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

GROUP = "kubesky.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "kubesky"


class ApiModel(BaseModel):
    """Base of every contract model: camelCase on the wire, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )

    def wire(self) -> dict:
        """The JSON-ready dict as Kubernetes and the worker API carry it."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A Kubernetes-convention condition (metav1.Condition)."""

    type: str = Field(description="Type of condition in CamelCase, e.g. Succeeded, WorkerReady, PlansLoaded.")
    status: ConditionStatus = Field(description="Status of the condition: True, False or Unknown.")
    reason: str = Field(description="Machine-readable CamelCase reason for the last transition.")
    message: str = Field(default="", description="Human-readable detail of the last transition.")
    last_transition_time: datetime = Field(description="When the condition last changed status (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation the condition was set against."
    )


def now() -> datetime:
    """The current time, UTC, truncated to seconds as Kubernetes timestamps are."""
    return datetime.now(UTC).replace(microsecond=0)


def stored_conditions(status: dict | None) -> list[Condition]:
    """The valid conditions of a stored status: one edited by hand into something invalid is
    dropped (and so rewritten), never fatal to whoever writes the status next."""
    out: list[Condition] = []
    for raw in (status or {}).get("conditions") or ():
        try:
            out.append(Condition.model_validate(raw))
        except ValidationError:
            continue
    return out


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str = "",
    observed_generation: int | None = None,
) -> list[Condition]:
    """Return conditions with `type_` set; lastTransitionTime only moves when the status changes."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type != type_:
            out.append(cond)
            continue
        found = True
        changed = cond.status != status
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now() if changed else cond.last_transition_time,
                observed_generation=observed_generation,
            )
        )
    if not found:
        out.append(
            Condition(
                type=type_,
                status=status,
                reason=reason,
                message=message,
                last_transition_time=now(),
                observed_generation=observed_generation,
            )
        )
    return out
