"""Reload reuses a plan's parameter model only while its signature and docstring are unchanged."""

from __future__ import annotations

import inspect
import uuid

import pytest
from kubesky_operator.api import PlanConfig
from kubesky_worker import plan_entry
from kubesky_worker.plan_entry import cached_plan_entry
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
    # A module name of its own: the loader forgets the sibling modules of its own directories only,
    # and a `modes` left in sys.modules by an earlier run of this test (mutmut runs the suite
    # again in one process) would be imported instead.
    modes = f"modes_{uuid.uuid4().hex[:8]}"
    sibling = "import enum\n\nclass Mode(enum.Enum):\n    FAST = 'fast'\n"
    plan = (
        f"from bluesky.utils import MsgGenerator\nimport bluesky.plan_stubs as bps\nfrom {modes} import Mode\n\n\n"
        "def go(mode: Mode = Mode.FAST) -> MsgGenerator:\n    yield from bps.null()\n"
    )
    project(tmp_path, {f"{modes}.py": sibling, "go.py": plan})
    cfg = PlanConfig(directories=[str(tmp_path)])
    first = load_plan_set(cfg).plans["go"]
    project(tmp_path, {f"{modes}.py": sibling + "    SLOW = 'slow'\n", "go.py": plan})
    second = load_plan_set(cfg).plans["go"]
    assert second.model is not first.model
    assert "slow" in str(second.info().parameters)


def plan_from(source: str, name: str = "wait", module: str = "p"):
    namespace: dict = {"__name__": module}
    exec(source, namespace)
    return namespace[name]


@pytest.fixture
def empty_cache(monkeypatch):
    monkeypatch.setattr(plan_entry, "_ENTRY_CACHE", {})


def test_reused_entry_serves_the_new_function_and_the_built_schema(empty_cache):
    first = cached_plan_entry("wait", plan_from(V1), "p")
    info = first.info()
    again = plan_from(V1)
    second = cached_plan_entry("wait", again, "p")
    assert second.model is first.model and second.info() is info
    assert second.func is again and second.params == list(inspect.signature(again).parameters.values())


def test_changed_default_rebuilds(empty_cache):
    first = cached_plan_entry("wait", plan_from(V1), "p")
    second = cached_plan_entry("wait", plan_from(V1.replace("= 1.0", "= 2.0")), "p")
    assert second.model is not first.model
    assert second.info().parameters["properties"]["seconds"]["default"] == 2.0


def test_same_plan_in_another_module_or_name_is_its_own_entry(empty_cache):
    fn = plan_from(V1)
    assert cached_plan_entry("wait", fn, "p").info().module == "p"
    assert cached_plan_entry("wait", fn, "q").info().module == "q"
    assert cached_plan_entry("pause", fn, "p").info().name == "pause"


def test_unhashable_annotation_builds_without_the_cache(empty_cache):
    source = V1.replace("seconds: float", "seconds: Annotated[float, {'unit': 's'}]")
    source = "from typing import Annotated\n" + source
    first = cached_plan_entry("wait", plan_from(source), "p")
    second = cached_plan_entry("wait", plan_from(source), "p")
    assert second.model is not first.model and plan_entry._ENTRY_CACHE == {}
    assert second.validate({"seconds": 2}, {}) == ([], {"seconds": 2.0})


def test_full_cache_starts_over(empty_cache, monkeypatch):
    monkeypatch.setattr(plan_entry, "_ENTRY_CACHE_MAX", 2)
    one = cached_plan_entry("one", plan_from(V1), "p")
    cached_plan_entry("two", plan_from(V1), "p")
    assert cached_plan_entry("one", plan_from(V1), "p").model is one.model  # still there
    cached_plan_entry("three", plan_from(V1), "p")  # full: cleared, then three
    assert len(plan_entry._ENTRY_CACHE) == 1
    assert cached_plan_entry("one", plan_from(V1), "p").model is not one.model


def test_axis_forms_are_part_of_the_key(empty_cache):
    """Only bluesky.plans' own `scan` gets the named axis forms, so a plan of that name with the same
    signature and docstring elsewhere, or under another function name, is another entry."""
    source = "def scan(detectors, *args, num=None):\n    yield from ()\n"
    blueskys = cached_plan_entry("scan", plan_from(source, "scan", module="bluesky.plans"), "p")
    assert blueskys.axis_shape == ("motor", "start", "stop")
    assert cached_plan_entry("scan", plan_from(source, "scan"), "p").axis_shape == ()
    renamed = plan_from(source.replace("def scan", "def step"), "step", module="bluesky.plans")
    assert cached_plan_entry("scan", renamed, "p").axis_shape == ()
