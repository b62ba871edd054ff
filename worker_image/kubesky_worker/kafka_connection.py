"""How an aiokafka client of the worker connects: TLS and SASL settings from the Kafka config or
the credentials mounted for it (the publisher's producer and the Tiled writer's consumer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubesky_operator.api import KafkaConfig


def connection_kwargs(k: KafkaConfig) -> dict[str, Any]:
    """TLS and SASL settings of an aiokafka client, from the config or its mounted credentials."""
    kw: dict[str, Any] = {}
    creds = Path(k.credentials_dir) if k.credentials_dir else None
    ca_file = k.ca_file
    username = k.sasl_username
    password_file = k.sasl_password_file
    if creds is not None:
        if (creds / "ca.crt").is_file():
            ca_file = str(creds / "ca.crt")
        if (creds / "username").is_file():
            username = (creds / "username").read_text().strip()
        if (creds / "password").is_file():
            password_file = str(creds / "password")
    if ca_file:
        from aiokafka.helpers import create_ssl_context

        kw["ssl_context"] = create_ssl_context(cafile=ca_file)
        kw["security_protocol"] = "SSL"
    if username:
        password = Path(password_file).read_text().strip() if password_file else ""
        kw["sasl_mechanism"] = "PLAIN"
        kw["sasl_plain_username"] = username
        kw["sasl_plain_password"] = password
        kw["security_protocol"] = "SASL_SSL" if ca_file else "SASL_PLAINTEXT"
    return kw
