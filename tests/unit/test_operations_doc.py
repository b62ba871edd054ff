"""docs/operations.md lists exactly the metrics the operator, the worker and the Tiled writer
export, and its alert rules use only those."""

from __future__ import annotations

import re

from kubesky_operator import metrics as operator_metrics
from kubesky_worker.metrics import Metrics
from kubesky_worker.tiled.metrics import WriterMetrics
from prometheus_client import REGISTRY

from tests.infra.services import REPO_ROOT

DOC = REPO_ROOT / "docs" / "operations.md"


def _family(name: str) -> str:
    return name.removesuffix("_total")


def _exported() -> dict[str, str]:
    assert operator_metrics.QUEUE_DEPTH is not None  # the operator's metrics are registered on import
    families = {}
    for registry in (REGISTRY, Metrics().registry, WriterMetrics().registry):
        for metric in registry.collect():
            if metric.name.startswith("kubesky_"):
                families[_family(metric.name)] = metric.type
    return families


def test_metric_tables_match_the_code():
    text = DOC.read_text()
    rows = re.findall(r"^\| `(kubesky_\w+)` \| (\w+) \|", text, flags=re.M)
    documented = {_family(name): kind for name, kind in rows}
    assert len(documented) == len(rows), "a metric is listed twice"
    assert documented == _exported()
    for name, kind in rows:  # counters are exposed, and so documented, with _total
        assert name.endswith("_total") == (kind == "counter"), name


def test_alert_rules_use_exported_metrics():
    text = DOC.read_text()
    rules = text.split("### Alerts worth having", 1)[1]
    used = set(re.findall(r"\bkubesky_\w+", rules))
    assert used
    exported = _exported()
    for name in used:
        assert _family(name.removesuffix("_bucket")) in exported, name
