"""Reading Prometheus text exposition in tests (the operator's, a worker's, the apiserver's)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample_sum(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples called `name` (e.g. `x_total`, `x_count`) whose labels include `labels`."""
    wanted = labels or {}
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in wanted.items())
    )
