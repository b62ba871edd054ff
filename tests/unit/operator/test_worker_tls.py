"""The operator's CA for in-cluster workers and the certificates it issues them: names, lifetime,
key usage, verification with the CA alone, renewal, the TLS Secret's life cycle, and where the CA
is kept."""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubesky_operator import worker_tls
from kubesky_operator.beamline_resources import tls_secret_name
from kubesky_operator.kubeapi import ApiError
from kubesky_operator.settings import OperatorSettings
from kubesky_operator.worker_objects import NotAllowed, ensure_tls_secret
from kubesky_operator.worker_tls import CAUnusable, CertificateAuthority, worker_dns_names

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
NAMES = ["sim-worker.lab.svc", "sim-worker.lab.svc.cluster.local"]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate(now=NOW)


def test_worker_names_are_its_service_dns_names() -> None:
    assert worker_dns_names("sim", "lab") == NAMES
    assert worker_dns_names("sim", "lab", "example.org") == [
        "sim-worker.lab.svc",
        "sim-worker.lab.svc.example.org",
    ]
    long = worker_dns_names("b" * 70, "lab")[0]
    assert long.split(".")[0].endswith("-worker") and len(long.split(".")[0]) <= 63


def test_ca_certificate(ca: CertificateAuthority) -> None:
    cert = ca.cert
    assert cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    assert cert.not_valid_after_utc - NOW == timedelta(days=worker_tls.CA_DAYS)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    # A round trip through its PEM (as kept in the Secret or directory) is the same CA.
    again = CertificateAuthority.load(ca.cert_pem, ca.key_pem)
    assert again.cert == ca.cert and again.key_pem == ca.key_pem


def test_serving_certificate(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.issue("sim-worker", NAMES, now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert not san.get_values_for_type(x509.IPAddress)
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert not (ku.value.key_cert_sign or ku.value.crl_sign or ku.value.key_encipherment)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    # Valid from a few minutes before issue (clock skew) for 90 days; signed by the CA.
    assert cert.not_valid_before_utc == NOW - worker_tls.CLOCK_SKEW
    assert cert.not_valid_after_utc == NOW + timedelta(days=worker_tls.CERT_DAYS)
    assert ca.signed(cert)
    assert not CertificateAuthority.generate(now=NOW).signed(cert)
    # A new key each time.
    assert ca.issue("sim-worker", NAMES, now=NOW)[1] != key_pem


def test_never_outlives_its_ca() -> None:
    old = CertificateAuthority.generate(now=NOW - timedelta(days=worker_tls.CA_DAYS - 10))
    cert = x509.load_pem_x509_certificate(old.issue("sim-worker", NAMES, now=NOW)[0])
    assert cert.not_valid_after_utc == old.cert.not_valid_after_utc


def _serve_once(cert_pem: bytes, key_pem: bytes, tmp_path: Path) -> int:
    (tmp_path / "tls.crt").write_bytes(cert_pem)
    (tmp_path / "tls.key").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass
        finally:
            listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1]


def _handshake(context: ssl.SSLContext, port: int, host: str) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.send(b"x")
            return tls.getpeercert()


def test_client_context_trusts_the_ca_alone_and_checks_the_host(ca: CertificateAuthority, tmp_path) -> None:
    context = ca.client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # what newer Pythons check by default
    cert_pem, key_pem = ca.issue("sim-worker", NAMES)
    for host in NAMES:
        peer = _handshake(context, _serve_once(cert_pem, key_pem, tmp_path), host)
        assert ("DNS", host) in peer["subjectAltName"]
    # Another worker's name: refused (a worker cannot stand in for another).
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(context, _serve_once(cert_pem, key_pem, tmp_path), "other-worker.lab.svc")
    # A certificate from another CA for the same names: refused.
    foreign = CertificateAuthority.generate().issue("sim-worker", NAMES)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(context, _serve_once(*foreign, tmp_path), NAMES[0])
    # The system's trust store knows nothing of the operator's CA.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(worker_tls.system_context(), _serve_once(cert_pem, key_pem, tmp_path), NAMES[0])


def test_context_for_an_endpoint_ca(ca: CertificateAuthority, tmp_path) -> None:
    context = worker_tls.context_for_ca(ca.cert_pem)
    assert context is worker_tls.context_for_ca(ca.cert_pem)  # cached: a client is kept while it holds
    port = _serve_once(*ca.issue("beamline-host", ["bl.example.org"]), tmp_path)
    assert _handshake(context, port, "bl.example.org")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        worker_tls.context_for_ca(b"not a certificate")


def test_renewal_reasons(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.issue("sim-worker", NAMES, now=NOW)
    assert ca.renewal_reason(cert_pem, key_pem, NAMES, now=NOW) is None
    assert ca.renewal_reason(cert_pem, key_pem, list(reversed(NAMES)), now=NOW) is None
    # 30 days before it expires, and after.
    due = NOW + timedelta(days=worker_tls.CERT_DAYS) - worker_tls.RENEW_BEFORE
    assert ca.renewal_reason(cert_pem, key_pem, NAMES, now=due - timedelta(minutes=1)) is None
    assert "expires" in (ca.renewal_reason(cert_pem, key_pem, NAMES, now=due + timedelta(minutes=1)) or "")
    assert "expires" in (ca.renewal_reason(cert_pem, key_pem, NAMES, now=NOW + timedelta(days=365)) or "")
    # Another namespace or Beamline name, another CA, a foreign key, garbage.
    assert "other hosts" in (
        ca.renewal_reason(cert_pem, key_pem, worker_dns_names("sim", "x"), now=NOW) or ""
    )
    other = CertificateAuthority.generate(now=NOW)
    assert "current CA" in (other.renewal_reason(cert_pem, key_pem, NAMES, now=NOW) or "")
    _, other_key = ca.issue("sim-worker", NAMES, now=NOW)
    assert "key" in (ca.renewal_reason(cert_pem, other_key, NAMES, now=NOW) or "")
    assert "no PEM" in (ca.renewal_reason(b"", b"", NAMES, now=NOW) or "")


def test_unusable_ca_refused(ca: CertificateAuthority) -> None:
    leaf_pem, leaf_key = ca.issue("sim-worker", NAMES)
    with pytest.raises(CAUnusable, match="not a CA"):
        CertificateAuthority.load(leaf_pem, leaf_key)
    with pytest.raises(CAUnusable, match="not the certificate's"):
        CertificateAuthority.load(ca.cert_pem, leaf_key)
    with pytest.raises(CAUnusable, match="PEM"):
        CertificateAuthority.load(b"x", b"y")


# Where the CA is kept ----------------------------------------------------------------------------


class FakeApi:
    """The KubeApi calls worker_tls and ensure_tls_secret make, on a dict of objects."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.refuse_patch = False

    async def get(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("GET", path))
        return self.objects.get(path)

    async def get_metadata(self, path: str) -> dict[str, Any] | None:
        self.calls.append(("GET metadata", path))
        obj = self.objects.get(path)
        return {"metadata": obj["metadata"]} if obj is not None else None

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("POST", path))
        full = f"{path}/{body['metadata']['name']}"
        if full in self.objects:
            raise ApiError(409, "AlreadyExists")
        self.objects[full] = body
        return body

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("PATCH", path))
        if self.refuse_patch:
            raise ApiError(403, "Forbidden")
        self.objects[path] = {**self.objects[path], "data": patch["data"]}
        return self.objects[path]


@pytest.fixture(autouse=True)
def _no_cached_ca():
    worker_tls.forget_authorities()
    yield
    worker_tls.forget_authorities()


async def test_ca_secret_created_once_in_the_operator_namespace() -> None:
    api = FakeApi()
    settings = OperatorSettings(operator_namespace="kubesky-system")
    ca = await worker_tls.authority(api, settings)  # type: ignore[arg-type]
    path = "/api/v1/namespaces/kubesky-system/secrets/kubesky-worker-ca"
    secret = api.objects[path]
    assert base64.b64decode(secret["data"]["ca.crt"]) == ca.cert_pem
    assert base64.b64decode(secret["data"]["ca.key"]) == ca.key_pem
    assert "ownerReferences" not in secret["metadata"]  # outlives any Beamline
    assert await worker_tls.authority(api, settings) is ca  # type: ignore[arg-type]
    # Another process (a restart) reads the same CA back, and writes nothing.
    worker_tls.forget_authorities()
    api.calls.clear()
    again = await worker_tls.authority(api, settings)  # type: ignore[arg-type]
    assert again.cert == ca.cert and api.calls == [("GET", path)]


async def test_ca_secret_that_is_not_a_ca_is_never_overwritten() -> None:
    api = FakeApi()
    path = "/api/v1/namespaces/kubesky-system/secrets/kubesky-worker-ca"
    api.objects[path] = {"metadata": {"name": "kubesky-worker-ca"}, "data": {"ca.crt": "eA=="}}
    with pytest.raises(CAUnusable, match="kubesky-worker-ca"):
        await worker_tls.authority(api, OperatorSettings(operator_namespace="kubesky-system"))  # type: ignore[arg-type]
    assert [c for c in api.calls if c[0] != "GET"] == []


async def test_ca_directory(tmp_path) -> None:
    settings = OperatorSettings(worker_ca_dir=str(tmp_path / "ca"))
    ca = await worker_tls.authority(FakeApi(), settings)  # type: ignore[arg-type]
    assert (tmp_path / "ca" / "ca.crt").read_bytes() == ca.cert_pem
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    worker_tls.forget_authorities()
    assert (await worker_tls.authority(FakeApi(), settings)).cert == ca.cert  # type: ignore[arg-type]


async def test_ca_in_memory_without_a_place() -> None:
    api = FakeApi()
    ca = await worker_tls.authority(api, OperatorSettings())  # type: ignore[arg-type]
    assert api.calls == [] and await worker_tls.authority(api, OperatorSettings()) is ca  # type: ignore[arg-type]
    assert "memory" in worker_tls.describe_place(OperatorSettings())


# The worker's TLS Secret -------------------------------------------------------------------------

SECRET = "/api/v1/namespaces/lab/secrets/" + tls_secret_name("sim")


async def test_tls_secret_created_then_kept_then_renewed(monkeypatch) -> None:
    api = FakeApi()
    settings = OperatorSettings(operator_namespace="kubesky-system")
    assert await ensure_tls_secret(api, settings, "sim", "lab", "uid-1") == "created"  # type: ignore[arg-type]
    secret = api.objects[SECRET]
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    ca = await worker_tls.authority(api, settings)  # type: ignore[arg-type]
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    assert ca.signed(cert) and base64.b64decode(secret["data"]["ca.crt"]) == ca.cert_pem
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == NAMES
    # Good for 90 days: nothing written again.
    api.calls.clear()
    assert await ensure_tls_secret(api, settings, "sim", "lab", "uid-1") is None  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["GET metadata", "GET"]
    # 61 days on, it is reissued in place (same Secret, so the Deployment does not change).
    later = datetime.now(UTC) + timedelta(days=61)
    real = CertificateAuthority.renewal_reason
    monkeypatch.setattr(
        CertificateAuthority, "renewal_reason", lambda self, *a, **k: real(self, *a, **{**k, "now": later})
    )
    assert await ensure_tls_secret(api, settings, "sim", "lab", "uid-1") == "renewed"  # type: ignore[arg-type]
    renewed = x509.load_pem_x509_certificate(base64.b64decode(api.objects[SECRET]["data"]["tls.crt"]))
    assert renewed.serial_number != cert.serial_number  # a new certificate (and key) in place
    assert api.objects[SECRET]["data"]["tls.key"] != secret["data"]["tls.key"]
    # A renewal the apiserver refuses is not fatal: logged, and tried again on the next pass.
    api.refuse_patch = True
    monkeypatch.setattr(
        CertificateAuthority, "renewal_reason", lambda self, *a, **k: "its certificate expires soon"
    )
    assert await ensure_tls_secret(api, settings, "sim", "lab", "uid-1") is None  # type: ignore[arg-type]


async def test_tls_secret_from_another_ca_is_reissued() -> None:
    api = FakeApi()
    await ensure_tls_secret(api, OperatorSettings(), "sim", "lab", "uid-1")  # type: ignore[arg-type]
    worker_tls.forget_authorities()  # an operator restarted with a CA in memory: a new CA
    assert await ensure_tls_secret(api, OperatorSettings(), "sim", "lab", "uid-1") == "renewed"  # type: ignore[arg-type]
    ca = await worker_tls.authority(api, OperatorSettings())  # type: ignore[arg-type]
    cert = x509.load_pem_x509_certificate(base64.b64decode(api.objects[SECRET]["data"]["tls.crt"]))
    assert ca.signed(cert)


async def test_tls_secret_of_someone_else_is_not_taken_over() -> None:
    api = FakeApi()
    api.objects[SECRET] = {"metadata": {"name": tls_secret_name("sim")}, "data": {}}
    with pytest.raises(NotAllowed, match="does not belong to this Beamline"):
        await ensure_tls_secret(api, OperatorSettings(), "sim", "lab", "uid-1")  # type: ignore[arg-type]
    assert [c[0] for c in api.calls] == ["GET metadata"]  # its contents never read


# The token goes out only to a verified worker -----------------------------------------------------


def _recording_server(cert_pem: bytes, key_pem: bytes, tmp_path: Path) -> tuple[int, list[bytes]]:
    """A TLS server on 127.0.0.1 that records what it receives after the handshake."""
    (tmp_path / "s.crt").write_bytes(cert_pem)
    (tmp_path / "s.key").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            try:
                with server.wrap_socket(conn, server_side=True) as tls:
                    received.append(tls.recv(65536))
                    tls.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], received


async def test_the_token_goes_only_to_a_worker_whose_certificate_verifies(tmp_path) -> None:
    import aiohttp
    from kubesky_operator.workerclient import WorkerClient, WorkerUnreachable

    ca = CertificateAuthority.generate()
    cert_pem, key_pem = ca.issue("localhost", ["localhost"])
    async with aiohttp.ClientSession() as session:
        # The system's trust store does not know the CA: the handshake fails, nothing is sent.
        port, received = _recording_server(cert_pem, key_pem, tmp_path)
        client = WorkerClient(session, f"https://localhost:{port}", "s3cret")
        with pytest.raises(WorkerUnreachable) as refused:
            await client.state()
        assert refused.value.connect_failed and "certificate verify failed" in str(refused.value)
        await asyncio.sleep(0.2)
        assert received == []
        # The same, verified against the CA: the request (and the token) goes through.
        port, received = _recording_server(cert_pem, key_pem, tmp_path)
        client = WorkerClient(session, f"https://localhost:{port}", "s3cret", ssl=ca.client_context())
        with pytest.raises(WorkerUnreachable, match="HTTP 503"):
            await client.state()
        assert b"Authorization: Bearer s3cret" in received[0]
