"""The committed CRD YAML is exactly what the contract models render."""

from __future__ import annotations

from kubesky_operator.api import chart_schema, crd

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


def test_committed_chart_values_schema_matches_models():
    committed = (REPO_ROOT / "charts" / "kubesky" / "values.schema.json").read_text()
    assert committed == chart_schema.render(), "charts/kubesky/values.schema.json is stale: run `make crds`"


def test_chart_crds_are_the_crds():
    """The chart's crds/ is crds/ itself (one source), not a copy that could drift."""
    chart_crds = REPO_ROOT / "charts" / "kubesky" / "crds"
    assert chart_crds.is_symlink()
    assert chart_crds.resolve() == (REPO_ROOT / "crds").resolve()
