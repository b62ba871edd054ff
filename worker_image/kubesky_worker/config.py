"""Loading the worker configuration (YAML, model `kubesky_operator.api.WorkerConfig`)."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import TypeVar

import yaml
from kubesky_operator.api import WorkerConfig
from pydantic import BaseModel, ValidationError

TOKEN_ENV = "KUBESKY_WORKER_TOKEN"

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """The configuration cannot be used; the message says which field or file is wrong."""


def _format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ())) or "(root)"
        lines.append(f"  {loc}: {err.get('msg')}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "config", model: type[M] = WorkerConfig) -> M:  # type: ignore[assignment]
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration:\n{_format_validation_error(exc)}") from None


def load_config(path: str | os.PathLike[str], model: type[M] = WorkerConfig) -> M:  # type: ignore[assignment]
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None
    return parse_config(data if data is not None else {}, str(p), model)


def worker_name(config: WorkerConfig) -> str:
    return config.worker_name or os.environ.get("POD_NAME") or socket.gethostname()


def check_tls(config: WorkerConfig) -> bool:
    """Whether the API serves HTTPS; ConfigError when its certificate and key cannot be used."""
    if not config.tls_cert_file:
        return False
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            config.tls_cert_file, config.tls_key_file
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"{config.tls_cert_file}, {config.tls_key_file}: not a PEM certificate and its key: {exc}"
        ) from None
    except OSError as exc:  # after ssl.SSLError, which is one
        raise ConfigError(
            f"cannot read the TLS certificate or key {exc.filename or ''}: {exc.strerror or exc}"
        ) from None
    return True
