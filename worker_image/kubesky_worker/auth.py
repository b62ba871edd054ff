"""Bearer-token authentication of the /v1 API."""

from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path

from kubesky_operator.api import WorkerConfig

from .config import TOKEN_ENV, ConfigError


class TokenSource:
    """The expected API token: from a file (re-read when it changes, so a rotated Secret applies
    without a restart) or from $KUBESKY_WORKER_TOKEN."""

    def __init__(self, token_file: str | None = None, env_token: str | None = None) -> None:
        self._file = Path(token_file) if token_file else None
        self._env = env_token
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._token: str = ""
        if self._file is not None:
            self._reload()
            if not self._token:
                raise ConfigError(f"token file {self._file} is empty")
        elif not env_token:
            raise ConfigError(f"no API token: set token_file in the configuration or ${TOKEN_ENV}")
        else:
            self._token = env_token.strip()
            if not self._token:
                raise ConfigError(f"${TOKEN_ENV} is empty")

    @classmethod
    def from_config(cls, config: WorkerConfig) -> TokenSource:
        return cls(config.token_file, os.environ.get(TOKEN_ENV))

    def _reload(self) -> None:
        assert self._file is not None
        try:
            st = self._file.stat()
            if self._mtime == st.st_mtime:
                return
            token = self._file.read_text().strip()
        except OSError as exc:
            if self._mtime is None:
                raise ConfigError(f"cannot read token file {self._file}: {exc.strerror or exc}") from None
            return  # keep the last good token while the file is being swapped
        if token:
            self._token = token
            self._mtime = st.st_mtime

    def token(self) -> str:
        if self._file is not None:
            with self._lock:
                self._reload()
        return self._token

    def check(self, authorization: str | None) -> bool:
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return False
        return hmac.compare_digest(value.strip().encode(), self.token().encode())
