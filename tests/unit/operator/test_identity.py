"""The operator's kopf identity in a container whose uid has no entry in the user database (the
chart runs it as 65532): kopf's default, getpass.getuser(), raises KeyError there and the operator
died at start. The node tests run the real image under that uid; this pins the cause."""

from __future__ import annotations

import getpass

import pytest
from kubesky_operator.main import own_identity


@pytest.fixture
def no_user_database(monkeypatch: pytest.MonkeyPatch) -> None:
    def getuser() -> str:
        raise KeyError("getpwuid(): uid not found: 65532")

    monkeypatch.setattr(getpass, "getuser", getuser)
    for name in ("POD_NAME", "USER", "LOGNAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("no_user_database")
def test_identity_needs_no_user_database() -> None:
    assert own_identity().startswith("kubesky-operator@")


@pytest.mark.usefixtures("no_user_database")
def test_identity_is_the_pod_name_in_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "kubesky-operator-7d9f-abcde")
    assert own_identity() == "kubesky-operator-7d9f-abcde"
