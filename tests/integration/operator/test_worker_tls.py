"""TLS between the operator and its workers, and the workers' NetworkPolicy, against the real
apiserver: an in-cluster Beamline gets its TLS Secret (a certificate from the operator's CA, kept
in a Secret of the operator's namespace) and its NetworkPolicy, both restored and the certificate
renewed when due; a real worker serves HTTPS with that certificate and picks up a renewed one
without a restart; an external https worker is verified against the CA in its token Secret, and
without it against the system's trust store, which refuses it before any token is sent."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from kubesky_operator.api import GROUP, VERSION
from kubesky_operator.beamline_monitor import NOT_READY_REFRESH
from kubesky_operator.beamline_resources import labels as worker_pod_labels
from kubesky_operator.worker_tls import CertificateAuthority, worker_dns_names

from tests.helpers.beamlines import external_beamline
from tests.helpers.operator_process import OPERATOR_NAMESPACE, OperatorProcess
from tests.helpers.worker_process import WorkerProcess, sim_config
from tests.integration.conftest import WORKER_OBJECTS_RESYNC

from .conftest import kubectl_apply, new_name, planrun_manifest, wait_for, wait_phase

pytestmark = pytest.mark.timeout(240)

CA_SECRET = "kubesky-worker-ca"


class TLSWorkerProcess(WorkerProcess):
    """A worker serving HTTPS (its URL printed as https://); readiness polled without verifying."""

    _https = re.compile(r"kubesky-worker listening on (https://\S+)")

    def _line_since(self, offset: int) -> str | None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        m = self._https.search(text)
        return m.group(1) if m else None

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2, verify=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"worker not ready:\n{self.log_tail()}"
            time.sleep(0.1)


def peer_certificate(port: int, context: ssl.SSLContext, host: str) -> x509.Certificate:
    """The certificate a TLS server on 127.0.0.1:`port` presents, verified for `host`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def secret_data(cluster, namespace: str, name: str) -> dict[str, bytes] | None:
    p = cluster.kubectl("get", "secret", name, "-n", namespace, "-o", "json", check=False)
    if p.returncode != 0:
        return None
    return {k: base64.b64decode(v) for k, v in (json.loads(p.stdout).get("data") or {}).items()}


def get_json(cluster, *args: str) -> dict[str, Any] | None:
    p = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else None


@pytest.fixture
def operator_in_namespace(operator_process: OperatorProcess) -> Iterator[OperatorProcess]:
    """The shared operator, restarted knowing its namespace (as $POD_NAMESPACE tells it in a pod):
    its CA then lives in a Secret there, and NetworkPolicies admit its pods. Restarted as it was
    afterwards (the `operator` fixture starts it again)."""
    saved = list(operator_process.extra_args)
    operator_process.stop()
    operator_process.extra_args = [*saved, "--operator-namespace", OPERATOR_NAMESPACE]
    operator_process.start()
    try:
        yield operator_process
    finally:
        operator_process.stop()
        operator_process.extra_args = saved


def test_in_cluster_beamline_gets_its_tls_secret_and_network_policy(
    cluster, api, namespace, operator_in_namespace
):
    op = operator_in_namespace
    kubectl_apply(
        cluster,
        namespace,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Beamline",
            "metadata": {"name": "tls"},
            "spec": {"plans": {"modules": ["bluesky.plans"]}, "kafka": {"bootstrapServers": "kafka:9092"}},
        },
    )
    uid = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "tls")["metadata"]["uid"]

    # The CA: a Secret in the operator's namespace, a CA certificate and its key.
    ca_data = wait_for("the CA Secret", lambda: secret_data(cluster, OPERATOR_NAMESPACE, CA_SECRET), 30)
    ca = CertificateAuthority.load(ca_data["ca.crt"], ca_data["ca.key"])

    # The worker's TLS Secret, owned by the Beamline: a certificate from that CA for its Service.
    secret = wait_for(
        "the TLS Secret", lambda: get_json(cluster, "secret", "tls-worker-tls", "-n", namespace), 30
    )
    assert secret["type"] == "kubernetes.io/tls"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["uid"] == uid and owner["kind"] == "Beamline" and owner["controller"] is True
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    names = worker_dns_names("tls", namespace)
    assert names == [f"tls-worker.{namespace}.svc", f"tls-worker.{namespace}.svc.cluster.local"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    assert ca.signed(cert) and data["ca.crt"] == ca.cert_pem
    assert ca.renewal_reason(data["tls.crt"], data["tls.key"], names) is None
    days = (cert.not_valid_after_utc - datetime.now(UTC)).days
    assert 88 <= days <= 90

    # The Deployment mounts it and is probed over HTTPS; the worker is configured to serve it.
    dep = wait_for(
        "the Deployment", lambda: get_json(cluster, "deployment", "tls-worker", "-n", namespace), 30
    )
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["tls"]["secret"]["secretName"] == "tls-worker-tls"
    assert all(
        c[p]["httpGet"]["scheme"] == "HTTPS" for p in ("startupProbe", "livenessProbe", "readinessProbe")
    )
    config = yaml.safe_load(
        get_json(cluster, "configmap", "tls-worker-config", "-n", namespace)["data"]["config.yaml"]
    )
    mounted = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert (
        config["tlsCertFile"] == f"{mounted['tls']}/tls.crt"
        and config["tlsKeyFile"] == f"{mounted['tls']}/tls.key"
    )

    # The NetworkPolicy: the worker's pods, its API port, from the operator's pods only.
    policy = wait_for(
        "the NetworkPolicy", lambda: get_json(cluster, "networkpolicy", "tls-worker", "-n", namespace), 30
    )
    assert policy["metadata"]["ownerReferences"][0]["uid"] == uid
    spec = policy["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert pod_labels == worker_pod_labels("tls")
    assert all(pod_labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kubesky-operator"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 8080}],
        }
    ]

    # The operator dials https://<worker>.<ns>.svc (no kubelet here: nothing answers).
    def endpoint():
        st = (
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "tls").get("status")
            or {}
        )
        return st.get("endpoint")

    assert wait_for("the Beamline's endpoint", endpoint, 20) == f"https://tls-worker.{namespace}.svc:8080"

    # Deleted by hand, the TLS Secret and the NetworkPolicy come back; the certificate is a new one
    # from the same CA.
    cluster.kubectl("delete", "secret/tls-worker-tls", "networkpolicy/tls-worker", "-n", namespace)
    again = wait_for("the TLS Secret restored", lambda: secret_data(cluster, namespace, "tls-worker-tls"), 30)
    restored = x509.load_pem_x509_certificate(again["tls.crt"])
    assert restored.serial_number != cert.serial_number and ca.signed(restored)
    wait_for(
        "the NetworkPolicy restored",
        lambda: get_json(cluster, "networkpolicy", "tls-worker", "-n", namespace),
        30,
    )

    # A certificate close to its expiry is reissued in place (by the resync, every few seconds here).
    soon_pem, soon_key = ca.issue("tls-worker", names, days=10)
    cluster.kubectl(
        "patch", "secret", "tls-worker-tls", "-n", namespace, "--type", "merge", "-p",
        json.dumps({"data": {"tls.crt": base64.b64encode(soon_pem).decode(), "tls.key": base64.b64encode(soon_key).decode()}}),
    )  # fmt: skip

    def renewed() -> x509.Certificate | None:
        d = secret_data(cluster, namespace, "tls-worker-tls") or {}
        c = x509.load_pem_x509_certificate(d["tls.crt"]) if d.get("tls.crt") else None
        return c if c is not None and (c.not_valid_after_utc - datetime.now(UTC)).days >= 88 else None

    assert ca.signed(wait_for("the certificate renewed", renewed, 30))
    assert "worker certificate reissued (its certificate expires" in op.log_path.read_text()

    # Restarted, the operator keeps its CA and the worker's certificate.
    current = secret_data(cluster, namespace, "tls-worker-tls")
    op.stop()
    op.start()
    # A resume pass (when the restarted operator lists the Beamline) and two resync passes, every
    # WORKER_OBJECTS_RESYNC from then, each run by the Beamline's monitor at its first loop after
    # it is due (a loop a second while the worker is not ready, as here: no kubelet): nothing
    # reissued.
    time.sleep(2 * WORKER_OBJECTS_RESYNC + NOT_READY_REFRESH)
    assert secret_data(cluster, OPERATOR_NAMESPACE, CA_SECRET) == ca_data
    assert secret_data(cluster, namespace, "tls-worker-tls") == current


def test_worker_serves_the_issued_certificate_and_reloads_a_renewed_one(tmp_path: Path):
    ca = CertificateAuthority.generate()
    names = worker_dns_names("sim", "lab")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert_pem, key_pem = ca.issue("sim-worker", names)
    (tls_dir / "tls.crt").write_bytes(cert_pem)
    (tls_dir / "tls.key").write_bytes(key_pem)
    cfg = sim_config("sim", tlsCertFile=str(tls_dir / "tls.crt"), tlsKeyFile=str(tls_dir / "tls.key"))
    w = TLSWorkerProcess(cfg, tmp_path / "worker")
    w.start()
    try:
        assert w.url.startswith("https://")
        context = ca.client_context()
        first = peer_certificate(w.port, context, names[0])
        assert first.serial_number == x509.load_pem_x509_certificate(cert_pem).serial_number
        # The API over TLS, verified with the CA for the Service's name, with the token.
        with httpx.Client(verify=context, timeout=10) as http:
            request = http.build_request(
                "GET",
                f"https://127.0.0.1:{w.port}/v1/state",
                headers=w.headers,
                extensions={"sni_hostname": names[1]},
            )
            r = http.send(request)
        assert r.status_code == 200 and r.json()["state"] == "idle"
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{w.port}/healthz", timeout=3)
        # A renewed certificate, swapped in as the kubelet does (a new directory, one rename).
        new_pem, new_key = ca.issue("sim-worker", names)
        new_dir = tmp_path / "tls-new"
        new_dir.mkdir()
        (new_dir / "tls.crt").write_bytes(new_pem)
        (new_dir / "tls.key").write_bytes(new_key)
        (tmp_path / "swap").symlink_to(new_dir)
        for f in ("tls.crt", "tls.key"):
            (tls_dir / f).unlink()
            (tls_dir / f).symlink_to(new_dir / f)
        want = x509.load_pem_x509_certificate(new_pem).serial_number
        wait_for(
            "the renewed certificate served",
            lambda: peer_certificate(w.port, context, names[0]).serial_number == want,
            30,
            0.5,
        )
        assert "TLS certificate reloaded" in w.log_path.read_text()
        assert w.alive() and w.starts == 1
    finally:
        w.stop()


def test_worker_refuses_to_start_without_a_usable_certificate(tmp_path: Path):
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    cfg = sim_config("sim", tlsCertFile=str(tmp_path / "tls.crt"), tlsKeyFile=str(tmp_path / "tls.key"))
    w = TLSWorkerProcess(cfg, tmp_path / "worker")
    with pytest.raises(RuntimeError, match="exited with 2"):
        w.start(timeout=30)
    assert "not a PEM certificate and its key" in w.log_tail()


@pytest.fixture
def https_worker(
    kafka, worker_kubeconfig, namespace, tmp_path
) -> Iterator[tuple[TLSWorkerProcess, CertificateAuthority]]:
    """A worker outside the cluster serving https://localhost with a certificate from its own CA."""
    ca = CertificateAuthority.generate("beamline host CA")
    cert_pem, key_pem = ca.issue("localhost", ["localhost"])
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    topic = f"{namespace}.ext.bluesky.runengine.documents"
    cfg = sim_config(
        "ext",
        kafka=kafka.bootstrap,
        topic=topic,
        kubeconfig=worker_kubeconfig,
        tlsCertFile=str(tmp_path / "tls.crt"),
        tlsKeyFile=str(tmp_path / "tls.key"),
    )
    w = TLSWorkerProcess(cfg, tmp_path / "worker")
    w.start()
    try:
        yield w, ca
    finally:
        w.stop(timeout=5)


def beamline_condition(api, namespace: str, name: str) -> dict[str, Any]:
    st = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", name).get("status") or {}
    return next((c for c in st.get("conditions") or () if c["type"] == "WorkerReady"), {})


def test_external_https_worker_verified_with_the_ca_of_its_token_secret(
    cluster, api, namespace, operator, https_worker
):
    w, ca = https_worker
    url = f"https://localhost:{w.port}"
    secret, beamline = external_beamline(
        "ext", namespace, url, w.token, topic=f"{namespace}.ext.bluesky.runengine.documents"
    )

    # Without a CA, the system's trust store does not know the worker's: refused (in the
    # handshake, before any request carries the token: tests/unit/operator/test_worker_tls.py).
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, beamline]))

    def refused():
        c = beamline_condition(api, namespace, "ext")
        return (
            c if c.get("status") == "False" and "certificate verify failed" in c.get("message", "") else None
        )

    assert url in wait_for("the worker's certificate refused", refused, 30)["message"]

    # The administrator's CA in the token Secret (key ca.crt): verified, Ready, runs succeed.
    secret["data"]["ca.crt"] = base64.b64encode(ca.cert_pem).decode()
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    wait_for("WorkerReady", lambda: beamline_condition(api, namespace, "ext").get("status") == "True", 45)
    status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "beamlines", "ext")["status"]
    assert status["endpoint"] == url
    name = new_name("ext")
    kubectl_apply(
        cluster, namespace, planrun_manifest(name, "ext", "count", {"detectors": ["det"], "num": 2})
    )
    assert (
        wait_phase(api, namespace, name, {"Succeeded", "Failed"}, timeout=60)["status"]["phase"]
        == "Succeeded"
    )

    # A certificate from another CA for the same name: refused again.
    other = CertificateAuthority.generate("someone else")
    secret["data"]["ca.crt"] = base64.b64encode(other.cert_pem).decode()
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))
    wait_for("the worker refused again", refused, 45)

    # ca.crt that holds no certificate: the Beamline says so.
    secret["data"]["ca.crt"] = base64.b64encode(b"garbage").decode()
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(secret))

    def unusable():
        c = beamline_condition(api, namespace, "ext")
        return "ca.crt of Secret ext-token cannot verify the worker" in c.get("message", "")

    wait_for("the unusable ca.crt named", unusable, 45)
