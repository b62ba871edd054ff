"""The webhook's certificate read from a directory (the chart's cert-manager option), reloaded
when the files change, and ignored while they are missing or broken."""

from __future__ import annotations

import os
from pathlib import Path

from kubesky_operator.admission_server import AdmissionServer
from kubesky_operator.kubeapi import KubeApi
from kubesky_operator.settings import OperatorSettings
from kubesky_operator.worker_tls import CertificateAuthority


def server(cert_dir: Path) -> AdmissionServer:
    # A mounted certificate is never asked of the API: a client without credentials is enough.
    return AdmissionServer(OperatorSettings(webhook_port=9443, webhook_cert_dir=str(cert_dir)), KubeApi())


def write(cert_dir: Path, days: int) -> None:
    cert, key = CertificateAuthority.generate().issue(
        "webhook", ["kubesky-operator-webhook.ns.svc"], days=days
    )
    (cert_dir / "tls.crt").write_bytes(cert)
    (cert_dir / "tls.key").write_bytes(key)


def test_a_mounted_certificate_is_loaded_and_reloaded_on_change(tmp_path: Path) -> None:
    s = server(tmp_path)
    assert s._load_mounted() is False  # nothing there yet: waits, does not fail
    write(tmp_path, days=30)
    assert s._load_mounted() is True
    first = s._not_after
    assert s._load_mounted() is False  # unchanged
    write(tmp_path, days=90)
    later = os.stat(tmp_path / "tls.crt").st_mtime_ns + 1_000_000
    os.utime(tmp_path / "tls.crt", ns=(later, later))
    assert s._load_mounted() is True
    assert s._not_after is not None and first is not None and s._not_after > first
    assert s.ca_bundle is None  # cert-manager's injector sets the configuration's caBundle


def test_a_broken_mounted_certificate_keeps_the_previous_one(tmp_path: Path) -> None:
    s = server(tmp_path)
    write(tmp_path, days=30)
    assert s._load_mounted() is True
    (tmp_path / "tls.key").write_bytes(b"not a key")
    later = os.stat(tmp_path / "tls.key").st_mtime_ns + 1_000_000
    os.utime(tmp_path / "tls.key", ns=(later, later))
    assert s._load_mounted() is False
