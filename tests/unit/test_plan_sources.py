"""The operator predicts the worker's plan-set hash from the ConfigMaps it rolls out."""

from __future__ import annotations

from kubesky_operator.api import PlanConfig
from kubesky_operator.api.plan_sources import configmaps_plan_set_hash
from kubesky_worker.plans import current_hash

from tests.helpers.configmap_volume import project


def test_operator_and_worker_agree_on_the_hash(tmp_path):
    plans = {"a.py": "A = 1\n", "b.py": "B = 2\n", "README.md": "not a module\n"}
    more = {"c.py": "C = 3\n"}
    project(tmp_path / "one", plans)
    project(tmp_path / "two", more)
    cfg = PlanConfig(
        directories=[str(tmp_path / "one"), str(tmp_path / "two")],
        modules=["bluesky.plans"],
        include=["count"],
    )
    expected = configmaps_plan_set_hash([plans, more], ["bluesky.plans"], ["count"])
    assert current_hash(cfg) == expected
    assert (
        configmaps_plan_set_hash([{**plans, "a.py": "A = 2\n"}, more], ["bluesky.plans"], ["count"])
        != expected
    )
