"""Certificates and keys for the test control plane: a CA, the apiserver's serving cert, an admin
client cert (group system:masters), the service-account signing key pair, and for a real node the
kubelet's client cert (system:node:<name>) and the apiserver's client cert for the kubelet."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=7))


def write_pki(
    directory: Path, extra_ips: tuple[str, ...] = (), node_name: str = "kubesky-node"
) -> dict[str, Path]:
    """Write all the files the control plane needs into `directory` and return their paths.
    `extra_ips`: more addresses the apiserver serves on (a node's pods reach it on the bridge)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        name: directory / name
        for name in (
            "ca.crt",
            "ca.key",
            "apiserver.crt",
            "apiserver.key",
            "admin.crt",
            "admin.key",
            "sa.key",
            "sa.pub",
            "kubelet.crt",
            "kubelet.key",
            "apiserver-kubelet-client.crt",
            "apiserver-kubelet-client.key",
        )
    }
    ca_key = _key()
    ca_name = _name("kubesky-test-ca")
    ca_cert = (
        _validity(x509.CertificateBuilder())
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths["ca.crt"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(ca_key, paths["ca.key"])

    def leaf(cn: str, org: str | None, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _key()
        builder = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(cn, org))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
                    ]
                ),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = leaf("kube-apiserver", None, server=True)
    paths["apiserver.crt"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, paths["apiserver.key"])

    for stem, cn, org in (
        ("admin", "kubesky-admin", "system:masters"),
        ("kubelet", f"system:node:{node_name}", "system:nodes"),  # the Node authorizer's identity
        ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
    ):
        cert, key = leaf(cn, org, server=False)
        paths[f"{stem}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, paths[f"{stem}.key"])

    sa_key = _key()
    _write_key(sa_key, paths["sa.key"])
    paths["sa.pub"].write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return paths
