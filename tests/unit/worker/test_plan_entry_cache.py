"""Reload reuses a plan's parameter model only while its signature and docstring are unchanged."""

from __future__ import annotations

from kubesky_operator.api import PlanConfig
from kubesky_worker.plans import load_plan_set

from tests.helpers.configmap_volume import project

V1 = '''
from bluesky.utils import MsgGenerator
import bluesky.plan_stubs as bps


def wait(seconds: float = 1.0) -> MsgGenerator:
    """Wait a while."""
    yield from bps.sleep(seconds)
'''


def test_unchanged_plan_reuses_model_with_new_function(tmp_path):
    project(tmp_path, {"p.py": V1})
    cfg = PlanConfig(directories=[str(tmp_path)])
    first = load_plan_set(cfg).plans["wait"]
    project(tmp_path, {"p.py": V1 + "\n# a comment changes the file, not the plan\n"})
    second = load_plan_set(cfg).plans["wait"]
    assert second.model is first.model
    assert second.func is not first.func  # the re-imported code runs, not the old one


def test_changed_signature_or_doc_rebuilds(tmp_path):
    project(tmp_path, {"p.py": V1})
    cfg = PlanConfig(directories=[str(tmp_path)])
    first = load_plan_set(cfg).plans["wait"]
    project(tmp_path, {"p.py": V1.replace("seconds: float = 1.0", "seconds: int = 2")})
    changed = load_plan_set(cfg).plans["wait"]
    assert changed.model is not first.model
    assert changed.info().parameters["properties"]["seconds"]["type"] == "integer"
    project(tmp_path, {"p.py": V1.replace("Wait a while.", "Wait some time.")})
    redoc = load_plan_set(cfg).plans["wait"]
    assert redoc.info().description == "Wait some time."


def test_type_from_changed_sibling_rebuilds(tmp_path):
    sibling = "import enum\n\nclass Mode(enum.Enum):\n    FAST = 'fast'\n"
    plan = (
        "from bluesky.utils import MsgGenerator\nimport bluesky.plan_stubs as bps\nfrom modes import Mode\n\n\n"
        "def go(mode: Mode = Mode.FAST) -> MsgGenerator:\n    yield from bps.null()\n"
    )
    project(tmp_path, {"modes.py": sibling, "go.py": plan})
    cfg = PlanConfig(directories=[str(tmp_path)])
    first = load_plan_set(cfg).plans["go"]
    project(tmp_path, {"modes.py": sibling + "    SLOW = 'slow'\n", "go.py": plan})
    second = load_plan_set(cfg).plans["go"]
    assert second.model is not first.model
    assert "slow" in str(second.info().parameters)
