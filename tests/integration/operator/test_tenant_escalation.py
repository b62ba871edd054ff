"""The operator is no confused deputy: a tenant who may write Beamlines and PlanRuns in one
namespace (and nothing else: no Secrets, pods, Deployments or RBAC) cannot make the operator run
another identity or image, hand them a Secret, send a token where they like, or take over objects.
Each refusal names the field; the same Beamline asking for what is allowed gets its worker."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import yaml
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.beamline_policy import SECRET_OPT_IN

from .conftest import wait_for

pytestmark = pytest.mark.timeout(180)

TENANT = "alice"
# What a Beamline author holds in their namespace: the kubesky resources and plan ConfigMaps.
TENANT_RULES = [
    {"apiGroups": [GROUP], "resources": ["beamlines", "planruns"], "verbs": ["*"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]},
]


@pytest.fixture
def tenant(cluster, namespace) -> str:
    """`kubectl --as` flag of a ServiceAccount holding only TENANT_RULES in `namespace`."""
    docs = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": TENANT}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "beamline-author"},
            "rules": TENANT_RULES,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "beamline-author"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "beamline-author"},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": namespace}],
        },
    ]
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(docs))
    as_tenant = f"--as=system:serviceaccount:{namespace}:{TENANT}"
    denied = cluster.kubectl(as_tenant, "get", "secrets", "-n", namespace, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr, "the tenant must not read Secrets"
    return as_tenant


def secret(name: str, data: dict[str, str], *, opted_in: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if opted_in:
        meta["labels"] = {SECRET_OPT_IN: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def beamline(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("kafka", {"bootstrapServers": "kafka:9092"})
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Beamline", "metadata": {"name": name}, "spec": spec}


def apply_as(cluster, as_tenant: str, namespace: str, *objs: dict[str, Any], check: bool = True):
    return cluster.kubectl(
        as_tenant, "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(list(objs)), check=check
    )


def refused(api, namespace: str, name: str) -> dict[str, Any]:
    """The Beamline's status once the operator refused it: Degraded, WorkerReady=False NotAllowed."""

    def check() -> dict[str, Any] | None:
        bl = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", name)
        st = bl.get("status") or {}
        ready = next((c for c in st.get("conditions") or () if c["type"] == "WorkerReady"), None)
        return st if st.get("phase") == "Degraded" and ready and ready["reason"] == "NotAllowed" else None

    return wait_for(f"Beamline {name} refused", check, 30)


def message(status: dict[str, Any]) -> str:
    return next(c["message"] for c in status["conditions"] if c["type"] == "WorkerReady")


def exists(cluster, namespace: str, kind: str, name: str) -> bool:
    return cluster.kubectl("get", kind, name, "-n", namespace, check=False).returncode == 0


class TokenTrap:
    """An HTTP listener recording every Authorization header it is sent."""

    def __init__(self) -> None:
        seen = self.seen = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.headers.get("Authorization"))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"secret-looking answer " * 50)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_beamline_cannot_borrow_identity_image_or_secrets(cluster, api, namespace, operator, tenant):
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-",
        input=yaml.safe_dump_all([
            secret("db-password", {"username": "root", "password": "hunter2"}),
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "admin-sa"}},
        ]),
    )  # fmt: skip
    apply_as(
        cluster,
        tenant,
        namespace,
        beamline("bad-sa", worker={"serviceAccountName": "admin-sa"}),
        beamline("bad-image", worker={"image": "evil.example/miner:1"}),
        beamline("bad-kafka", kafka={"bootstrapServers": "kafka:9092", "credentialsSecret": "db-password"}),
    )
    for name, field in (
        ("bad-sa", "spec.worker.serviceAccountName"),
        ("bad-image", "spec.worker.image"),
        ("bad-kafka", "spec.kafka.credentialsSecret"),
    ):
        st = refused(api, namespace, name)
        assert message(st).startswith(field), message(st)
        assert not exists(cluster, namespace, "deployment", f"{name}-worker"), f"{name}: a worker was created"
    configmaps = cluster.kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout
    assert "hunter2" not in configmaps and '"root"' not in configmaps

    # The same Beamlines asking for what is allowed get their workers.
    cluster.kubectl("label", "secret", "db-password", "-n", namespace, f"{SECRET_OPT_IN}=true")
    apply_as(
        cluster,
        tenant,
        namespace,
        beamline("bad-image", worker={"image": "ghcr.io/kubesky/kubesky-worker:0.2.0"}),
        beamline("bad-sa"),
        # a spec change has the operator look again at once (else within a minute)
        beamline(
            "bad-kafka",
            kafka={"bootstrapServers": "kafka:9092", "credentialsSecret": "db-password", "lingerMs": 100},
        ),
    )
    for name in ("bad-sa", "bad-image", "bad-kafka"):
        wait_for(
            f"{name} worker", lambda name=name: exists(cluster, namespace, "deployment", f"{name}-worker")
        )
    dep = json.loads(
        cluster.kubectl("get", "deployment", "bad-kafka-worker", "-n", namespace, "-o", "json").stdout
    )
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "bad-kafka-worker"
    assert {"secretName": "db-password", "defaultMode": 0o440} in [v.get("secret") for v in pod["volumes"]]
    configmaps = cluster.kubectl("get", "configmaps", "-n", namespace, "-o", "json").stdout
    assert "hunter2" not in configmaps and '"root"' not in configmaps  # still only in the Secret
    image = json.loads(
        cluster.kubectl("get", "deployment", "bad-image-worker", "-n", namespace, "-o", "json").stdout
    )
    assert (
        image["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/kubesky/kubesky-worker:0.2.0"
    )


def test_beamline_cannot_send_a_secret_anywhere(cluster, api, namespace, operator, tenant):
    cluster.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=yaml.safe_dump(secret("db-password", {"password": "hunter2"})),
    )
    trap = TokenTrap()
    try:
        bad = apply_as(
            cluster,
            tenant,
            namespace,
            beamline(
                "ssrf",
                worker={"endpoint": f"{trap.url}/steal?x=1", "tokenSecretRef": {"name": "db-password"}},
            ),
            check=False,
        )
        assert bad.returncode != 0 and "spec.worker.endpoint" in bad.stderr, bad.stderr
        apply_as(
            cluster,
            tenant,
            namespace,
            beamline(
                "ssrf",
                worker={"endpoint": trap.url, "tokenSecretRef": {"name": "db-password", "key": "password"}},
            ),
        )
        st = refused(api, namespace, "ssrf")
        assert message(st).startswith("spec.worker.tokenSecretRef.name"), message(st)
        assert "hunter2" not in json.dumps(st) and "secret-looking" not in json.dumps(st)
        assert not trap.seen, f"the operator called the endpoint: {trap.seen}"

        # Opted in by an administrator, the Secret is used: the worker's answer never reaches status.
        cluster.kubectl("label", "secret", "db-password", "-n", namespace, f"{SECRET_OPT_IN}=true")
        apply_as(
            cluster,
            tenant,
            namespace,
            beamline(
                "ssrf",
                worker={
                    "endpoint": trap.url + "/",
                    "tokenSecretRef": {"name": "db-password", "key": "password"},
                },
            ),
        )
        wait_for("the endpoint called", lambda: trap.seen, 30)
        assert trap.seen[0] == "Bearer hunter2"
        bl = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "ssrf")
        assert "secret-looking" not in json.dumps(bl.get("status") or {})
    finally:
        trap.close()


def test_beamline_cannot_take_over_objects_it_does_not_own(cluster, api, namespace, operator, tenant):
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "payroll-worker"},
        "rules": rules,
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(role))
    apply_as(cluster, tenant, namespace, beamline("payroll"))
    st = refused(api, namespace, "payroll")
    assert "payroll-worker" in message(st) and "does not belong to this Beamline" in message(st), message(st)
    after = json.loads(cluster.kubectl("get", "role", "payroll-worker", "-n", namespace, "-o", "json").stdout)
    assert after["rules"] == rules and not after["metadata"].get("ownerReferences")
    assert not exists(cluster, namespace, "deployment", "payroll-worker")
    cluster.kubectl(tenant, "delete", "beamline", "payroll", "-n", namespace, "--wait=true", "--timeout=30s")
    assert exists(cluster, namespace, "role", "payroll-worker"), "someone else's Role was garbage-collected"


def test_tiled_writer_follows_spec_tiled_with_only_what_it_needs(cluster, api, namespace, operator, tenant):
    cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(secret("tiled-key", {"api-key": "abc123"}))
    )
    tiled = {
        "uri": "http://tiled.data:8000",
        "apiKeySecret": {"name": "tiled-key"},
        "readablePaths": ["/data"],
    }
    apply_as(
        cluster,
        tenant,
        namespace,
        beamline("tl", tiled=tiled),
        beamline("tl-image", tiled={**tiled, "image": "evil.example/miner:1"}),
    )
    for name, field in (("tl", "spec.tiled.apiKeySecret.name"), ("tl-image", "spec.tiled.image")):
        st = refused(api, namespace, name)
        assert field in message(st), message(st)
        assert not exists(cluster, namespace, "deployment", f"{name}-tiled-writer")
    # Opted in: the writer runs with a ServiceAccount and Role of its own, the key from the Secret.
    cluster.kubectl("label", "secret", "tiled-key", "-n", namespace, f"{SECRET_OPT_IN}=true")
    apply_as(cluster, tenant, namespace, beamline("tl", tiled={**tiled, "batchSize": 500}))
    wait_for("the writer", lambda: exists(cluster, namespace, "deployment", "tl-tiled-writer"))
    dep = json.loads(
        cluster.kubectl("get", "deployment", "tl-tiled-writer", "-n", namespace, "-o", "json").stdout
    )
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "tl-tiled-writer"
    assert pod["containers"][0]["command"] == ["kubesky-tiled-writer"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    key_volume = next(v for v in pod["volumes"] if v["name"] == "api-key")
    assert key_volume["secret"]["secretName"] == "tiled-key"
    role = json.loads(cluster.kubectl("get", "role", "tl-tiled-writer", "-n", namespace, "-o", "json").stdout)
    assert role["rules"] == [
        {"apiGroups": [GROUP], "resources": ["planruns"], "verbs": ["get"]},
        {"apiGroups": [GROUP], "resources": ["planruns/status"], "verbs": ["patch"]},
    ]
    config = yaml.safe_load(
        json.loads(
            cluster.kubectl("get", "configmap", "tl-tiled-writer", "-n", namespace, "-o", "json").stdout
        )["data"]["config.yaml"]
    )
    assert config["tiledUri"] == "http://tiled.data:8000" and config["batchSize"] == 500
    assert config["readablePaths"] == ["/data"] and config["namespace"] == namespace
    assert "abc123" not in json.dumps(config)
    # Without spec.tiled the writer goes.
    apply_as(cluster, tenant, namespace, beamline("tl"))
    wait_for("the writer removed", lambda: not exists(cluster, namespace, "deployment", "tl-tiled-writer"))


def test_data_volume_only_an_opted_in_claim(cluster, api, namespace, operator, tenant):
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "detector-data"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(pvc))
    apply_as(
        cluster, tenant, namespace, beamline("dv", worker={"dataVolume": {"claimName": "detector-data"}})
    )
    st = refused(api, namespace, "dv")
    assert message(st).startswith("spec.worker.dataVolume.claimName"), message(st)
    assert "not opted in" in message(st)
    assert not exists(cluster, namespace, "deployment", "dv-worker")
    cluster.kubectl("label", "pvc", "detector-data", "-n", namespace, f"{SECRET_OPT_IN}=true")
    apply_as(
        cluster,
        tenant,
        namespace,
        beamline("dv", worker={"dataVolume": {"claimName": "detector-data", "mountPath": "/srv/data"}}),
    )
    wait_for("the worker", lambda: exists(cluster, namespace, "deployment", "dv-worker"))
    dep = json.loads(cluster.kubectl("get", "deployment", "dv-worker", "-n", namespace, "-o", "json").stdout)
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "detector-data"}} in pod["volumes"]
    container = pod["containers"][0]
    assert {"name": "data", "mountPath": "/srv/data"} in container["volumeMounts"]
    assert {"name": "KUBESKY_DATA_DIR", "value": "/srv/data"} in container["env"]
