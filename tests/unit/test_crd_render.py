"""The committed CRD YAML is exactly what the contract models render."""

from __future__ import annotations

from kubesky_operator.api import crd

from tests.infra.services import REPO_ROOT


def test_committed_crds_match_models():
    rendered = crd.render()
    committed = {p.name: p.read_text() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert set(committed) == set(rendered), "crds/ files differ from the rendered set: run `make crds`"
    for name, text in rendered.items():
        assert committed[name] == text, f"crds/{name} is stale: run `make crds`"


def test_render_is_deterministic():
    assert crd.render() == crd.render()


def test_every_field_documented():
    spec = crd.planrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert all(sub.get("description") for sub in spec["properties"].values())


def test_free_form_params_preserved_and_defaulted():
    spec = crd.planrun_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    params = spec["properties"]["params"]
    assert params["type"] == "object"
    assert params["x-kubernetes-preserve-unknown-fields"] is True
    assert params["default"] == {}
    assert params["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"
