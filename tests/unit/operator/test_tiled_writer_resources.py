"""Rendering of a Beamline's Tiled writer objects (spec.tiled)."""

from __future__ import annotations

import yaml
from kubesky_operator.api import GROUP, BeamlineSpec
from kubesky_operator.api.tiled import TiledWriterConfig
from kubesky_operator.beamline_resources import CONTAINER_SECURITY, POD_SECURITY
from kubesky_operator.tiled_writer_resources import API_KEY_DIR, render, writer_name

SPEC = BeamlineSpec.model_validate(
    {
        "kafka": {"bootstrapServers": "kafka:9092", "credentialsSecret": "kafka-creds", "topic": "i22.docs"},
        "tiled": {
            "uri": "http://tiled.data:8000",
            "apiKeySecret": {"name": "i22-tiled", "key": "token"},
            "batchSize": 500,
            "readablePaths": ["/data"],
        },
    }
)


def objs() -> dict[str, dict]:
    return {o["kind"]: o for o in render("i22", "bl", "uid-1", SPEC, image="worker:1")}


def test_every_object_is_the_beamlines_and_named_for_the_writer() -> None:
    rendered = render("i22", "bl", "uid-1", SPEC, image="worker:1")
    assert [o["kind"] for o in rendered] == [
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Deployment",
    ]
    for o in rendered:
        meta = o["metadata"]
        assert meta["name"] == writer_name("i22") == "i22-tiled-writer" and meta["namespace"] == "bl"
        assert meta["labels"]["app.kubernetes.io/component"] == "tiled-writer"
        assert meta["labels"][f"{GROUP}/beamline"] == "i22"
        assert [r["uid"] for r in meta["ownerReferences"]] == ["uid-1"]


def test_the_writer_may_read_planruns_and_write_their_status_only() -> None:
    o = objs()
    assert o["Role"]["rules"] == [
        {"apiGroups": [GROUP], "resources": ["planruns"], "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": ["planruns/status"], "verbs": ["patch"]},
    ]
    assert o["RoleBinding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "i22-tiled-writer", "namespace": "bl"}
    ]
    pod = o["Deployment"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "i22-tiled-writer"
    assert pod["securityContext"] == POD_SECURITY
    (container,) = pod["containers"]
    assert container["securityContext"] == CONTAINER_SECURITY
    assert container["image"] == "worker:1" and container["command"] == ["kubesky-tiled-writer"]
    assert (
        o["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
        and o["Deployment"]["spec"]["replicas"] == 1
    )
    selector = o["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= o["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    assert selector["app.kubernetes.io/name"] == "kubesky-tiled-writer"  # not the worker's pods


def test_the_config_points_at_mounted_credentials_never_holds_them() -> None:
    o = objs()
    cfg = TiledWriterConfig.model_validate(yaml.safe_load(o["ConfigMap"]["data"]["config.yaml"]))
    assert cfg.tiled_uri == "http://tiled.data:8000" and cfg.batch_size == 500
    assert cfg.readable_paths == ["/data"] and cfg.namespace == "bl" and cfg.kafka.topic == "i22.docs"
    assert cfg.api_key_file == f"{API_KEY_DIR}/api-key"
    volumes = {v["name"]: v for v in o["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["api-key"]["secret"]["secretName"] == "i22-tiled"
    assert volumes["api-key"]["secret"]["items"] == [{"key": "token", "path": "api-key"}]
    assert volumes["kafka-credentials"]["secret"]["secretName"] == "kafka-creds"
