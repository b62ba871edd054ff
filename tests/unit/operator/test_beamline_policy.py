"""What a Beamline may ask of the operator (beamline_policy), decided from the spec and settings,
and the operator's client credentials: a kubeconfig's embedded private key is not left on disk."""

from __future__ import annotations

import base64
import os
import tempfile

import kopf
import pytest
from kubesky_operator.api import BeamlineSpec
from kubesky_operator.beamline_policy import image_allowed, spec_refusals
from kubesky_operator.kubeapi import KubeApi
from kubesky_operator.settings import OperatorSettings

from tests.infra.pki import write_pki

DEFAULT = OperatorSettings(worker_image="ghcr.io/kubesky/kubesky-worker:0.1.0")


@pytest.mark.parametrize(
    ("image", "allowed", "ok"),
    [
        ("ghcr.io/kubesky/kubesky-worker:0.2.0", ["ghcr.io/kubesky/kubesky-worker"], True),
        ("ghcr.io/kubesky/kubesky-worker@sha256:" + "a" * 64, ["ghcr.io/kubesky/kubesky-worker"], True),
        ("ghcr.io/kubesky/kubesky-worker-evil:1", ["ghcr.io/kubesky/kubesky-worker"], False),
        ("ghcr.io/kubesky/kubesky-worker:1/../x", ["ghcr.io/kubesky/kubesky-worker"], False),
        ("registry.lab/beamlines/i22:1", ["registry.lab/beamlines/"], True),
        ("registry.lab/beamlinesx/i22:1", ["registry.lab/beamlines/"], False),
        ("localhost:5000/evil:1", ["localhost"], False),
        ("img:1", ["img:1"], True),
        ("img:2", ["img:1"], False),
        ("anything", [""], False),
    ],
)
def test_image_allow_list(image, allowed, ok):
    assert image_allowed(image, allowed) is ok


def refusals(spec: dict, settings: OperatorSettings = DEFAULT) -> list[str]:
    return [r.field for r in spec_refusals(BeamlineSpec.model_validate(spec), settings)]


def test_spec_refusals_name_the_field():
    assert refusals({}) == []
    assert refusals({"worker": {"image": "ghcr.io/kubesky/kubesky-worker:9"}}) == []
    assert refusals({"worker": {"image": "docker.io/evil:1"}}) == ["spec.worker.image"]
    assert refusals({"worker": {"serviceAccountName": "admin"}}) == ["spec.worker.serviceAccountName"]
    listed = DEFAULT.model_copy(update={"allowed_worker_service_accounts": ["beamline-sa"]})
    assert refusals({"worker": {"serviceAccountName": "beamline-sa"}}, listed) == []
    ext = {"worker": {"endpoint": "http://10.0.0.5:8080", "tokenSecretRef": {"name": "t"}}}
    assert refusals(ext) == []  # any host unless the administrator lists some
    hosts = DEFAULT.model_copy(update={"allowed_endpoint_hosts": ["i22-ws.lab"]})
    assert refusals(ext, hosts) == ["spec.worker.endpoint"]


@pytest.mark.parametrize(
    "endpoint", ["http://h:1/path", "http://h:1?q=1", "http://user:pw@h:1", "http://h:1#x", "ftp://h"]
)
def test_endpoint_is_a_base_url(endpoint):
    with pytest.raises(ValueError, match="endpoint"):
        BeamlineSpec.model_validate({"worker": {"endpoint": endpoint, "tokenSecretRef": {"name": "t"}}})


def test_embedded_client_key_is_not_left_on_disk(tmp_path):
    pki = write_pki(tmp_path / "pki")
    before = set(os.listdir(tempfile.gettempdir()))
    info = kopf.ConnectionInfo(
        server="https://127.0.0.1:6443",
        ca_data=base64.b64encode(pki["ca.crt"].read_bytes()).decode(),
        certificate_data=base64.b64encode(pki["admin.crt"].read_bytes()).decode(),
        private_key_data=base64.b64encode(pki["admin.key"].read_bytes()).decode(),
    )
    ctx = KubeApi()._ssl(info)
    assert not isinstance(ctx, bool)
    left = {n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("kubesky-")}
    assert not left, f"credential files left behind: {left}"
