"""TLS between the operator and its in-cluster workers: the operator's CA, each worker's serving
certificate, and the contexts the operator verifies workers with.

The CA (ECDSA P-256, valid 10 years) is kept in the Secret `worker_ca_secret` of the operator's
namespace (created if absent, never rewritten), or in a directory (`worker_ca_dir`: ca.crt and
ca.key) for an operator run outside a cluster; with neither it lives in memory for the process's
life, and workers get new certificates after a restart. Each in-cluster worker serves a
certificate (ECDSA P-256, valid 90 days) naming its Service, `<worker>.<ns>.svc` and
`<worker>.<ns>.svc.<cluster domain>`, from its TLS Secret; the operator reissues it when it has
less than 30 days left, names other hosts, does not match its key or was not signed by the current
CA. The operator verifies in-cluster workers against this CA alone, and an external https
endpoint against the CA in its token Secret's `ca.crt` or else the system's trust store."""

from __future__ import annotations

import base64
import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .api.common import now as current_time
from .beamline_resources import MANAGED_BY, worker_name
from .kubeapi import ApiError, KubeApi, resource_path
from .settings import OperatorSettings

log = logging.getLogger(__name__)

CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"
CA_DAYS = 3650
CERT_DAYS = 90
RENEW_BEFORE = timedelta(days=30)
CLOCK_SKEW = timedelta(minutes=5)  # certificates are valid from a little before they are issued


class CAUnusable(Exception):
    """The CA's Secret or directory exists but does not hold a usable CA (never overwritten)."""


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _same_key(a: Any, b: Any) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(a.public_bytes(*fmt) == b.public_bytes(*fmt))


def worker_dns_names(beamline: str, namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    """The names the operator reaches an in-cluster worker by: its Service's DNS names."""
    service = f"{worker_name(beamline)}.{namespace}.svc"
    return [service, f"{service}.{cluster_domain}"]


@dataclass
class CertificateAuthority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    @classmethod
    def generate(
        cls, common_name: str = "kubesky worker CA", *, now: datetime | None = None
    ) -> CertificateAuthority:
        now = now or current_time()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kubesky"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """A CA from its PEM certificate and key; CAUnusable says what is wrong with them."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CAUnusable(f"not a PEM certificate and unencrypted key: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not _same_key(
            key.public_key(), cert.public_key()
        ):
            raise CAUnusable("the key is not the certificate's (an ECDSA key is expected)")
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise CAUnusable("the certificate is not a CA's (basicConstraints CA:TRUE)")
        return cls(cert, key)

    def issue(
        self,
        common_name: str,
        dns_names: Sequence[str],
        *,
        now: datetime | None = None,
        days: int = CERT_DAYS,
    ) -> tuple[bytes, bytes]:
        """A serving certificate for `dns_names` signed by this CA, and its new key (both PEM)."""
        now = now or current_time()
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def signed(self, cert: x509.Certificate) -> bool:
        """Whether `cert` was issued by this CA (issuer name and signature)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def client_context(self) -> ssl.SSLContext:
        """What the operator verifies its in-cluster workers with: this CA alone, and the host name."""
        if self._context is None:
            self._context = ssl.create_default_context(cadata=self.cert_pem.decode())
        return self._context

    def renewal_reason(
        self,
        cert_pem: bytes,
        key_pem: bytes,
        dns_names: Sequence[str],
        *,
        now: datetime | None = None,
        renew_before: timedelta = RENEW_BEFORE,
    ) -> str | None:
        """Why a worker's certificate must be reissued, or None while it is good."""
        now = now or current_time()
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError):
            return "it holds no PEM certificate and key"
        if not self.signed(cert):
            return "its certificate was not issued by the operator's current CA"
        if not _same_key(key.public_key(), cert.public_key()):  # type: ignore[arg-type]
            return "its key is not the certificate's"
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return "its certificate names no host"
        if sorted(names.get_values_for_type(x509.DNSName)) != sorted(dns_names):
            return "its certificate names other hosts"
        if cert.not_valid_after_utc - now < renew_before:
            return f"its certificate expires {cert.not_valid_after_utc.isoformat()}"
        return None


# One CA per place it is kept (in practice one per operator process).
_authorities: dict[tuple[str, ...], CertificateAuthority] = {}


def _place(settings: OperatorSettings) -> tuple[str, ...]:
    if settings.worker_ca_dir:
        return ("dir", settings.worker_ca_dir)
    if settings.operator_namespace:
        return ("secret", settings.operator_namespace, settings.worker_ca_secret)
    return ("memory",)


def describe_place(settings: OperatorSettings) -> str:
    place = _place(settings)
    if place[0] == "dir":
        return f"directory {place[1]}"
    if place[0] == "secret":
        return f"Secret {place[1]}/{place[2]}"
    return "memory (no operator namespace or CA directory: workers get new certificates at each restart)"


async def authority(api: KubeApi, settings: OperatorSettings) -> CertificateAuthority:
    """The operator's CA for workers, loaded (or created) once per process."""
    place = _place(settings)
    ca = _authorities.get(place)
    if ca is not None:
        return ca
    if place[0] == "dir":
        ca = _from_dir(Path(place[1]))
    elif place[0] == "secret":
        ca = await _from_secret(api, place[1], place[2])
    else:
        ca = CertificateAuthority.generate()
    ca = _authorities.setdefault(place, ca)  # a concurrent first call may have won: keep one
    log.info("workers' CA from %s (expires %s)", describe_place(settings), ca.cert.not_valid_after_utc.date())
    return ca


def forget_authorities() -> None:
    """Drop the cached CAs (tests)."""
    _authorities.clear()


def _from_dir(path: Path) -> CertificateAuthority:
    cert_file, key_file = path / CA_CERT_KEY, path / CA_KEY_KEY
    if cert_file.exists() or key_file.exists():
        try:
            return CertificateAuthority.load(cert_file.read_bytes(), key_file.read_bytes())
        except OSError as exc:
            raise CAUnusable(f"{path}: {exc}") from None
        except CAUnusable as exc:
            raise CAUnusable(f"{path}: {exc}") from None
    ca = CertificateAuthority.generate()
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(ca.key_pem)
    cert_file.write_bytes(ca.cert_pem)
    log.info("created the workers' CA in %s", path)
    return ca


def ca_secret(name: str, namespace: str, ca: CertificateAuthority) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "kubesky",
                "app.kubernetes.io/component": "worker-ca",
                "app.kubernetes.io/managed-by": MANAGED_BY,
            },
        },
        "data": {
            CA_CERT_KEY: base64.b64encode(ca.cert_pem).decode(),
            CA_KEY_KEY: base64.b64encode(ca.key_pem).decode(),
        },
    }


def _from_data(data: dict[str, str], what: str) -> CertificateAuthority:
    try:
        cert_pem = base64.b64decode(data.get(CA_CERT_KEY) or "")
        key_pem = base64.b64decode(data.get(CA_KEY_KEY) or "")
    except ValueError:
        raise CAUnusable(f"{what}: not base64") from None
    try:
        return CertificateAuthority.load(cert_pem, key_pem)
    except CAUnusable as exc:
        raise CAUnusable(f"{what} ({CA_CERT_KEY}, {CA_KEY_KEY}): {exc}") from None


async def _from_secret(api: KubeApi, namespace: str, name: str) -> CertificateAuthority:
    path = resource_path("v1", "secrets", namespace, name)
    existing = await api.get(path)
    if existing is None:
        ca = CertificateAuthority.generate(f"kubesky worker CA ({namespace})")
        try:
            await api.create(resource_path("v1", "secrets", namespace), ca_secret(name, namespace, ca))
        except ApiError as exc:
            if exc.status != 409:
                raise
            existing = await api.get(path)  # created meanwhile: use that one
        else:
            log.info("created the workers' CA in Secret %s/%s", namespace, name)
            return ca
    if existing is None:
        raise CAUnusable(f"Secret {namespace}/{name} vanished while it was being created")
    return _from_data(existing.get("data") or {}, f"Secret {namespace}/{name}")


@lru_cache(maxsize=64)
def context_for_ca(ca_pem: bytes) -> ssl.SSLContext:
    """A client context trusting only the CA certificate(s) in `ca_pem` (ValueError if none)."""
    try:
        certs = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from None
    pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
    return ssl.create_default_context(cadata=pem)


@lru_cache(maxsize=1)
def system_context() -> ssl.SSLContext:
    """A client context trusting the system's certificate authorities."""
    return ssl.create_default_context()
