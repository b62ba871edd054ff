"""Configuration loading, the command line's refusals, and the bearer token."""

from __future__ import annotations

import pytest
from kubesky_worker.auth import TokenSource
from kubesky_worker.config import ConfigError, load_config
from kubesky_worker.main import main


def test_invalid_field_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\nport: not-a-port\nkafka:\n  bootstrapServers: ''\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert "port" in str(info.value) and "kafka.bootstrapServers" in str(info.value)


def test_main_exits_nonzero_on_bad_config(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\nplans: {directories: 3}\n")
    assert main(["--config", str(p)]) == 2
    assert "plans.directories" in capsys.readouterr().err
    p.write_text("beamline: [unclosed\n")
    assert main(["--config", str(p)]) == 2
    assert "not valid YAML" in capsys.readouterr().err


def test_main_refuses_to_start_without_token(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KUBESKY_WORKER_TOKEN", raising=False)
    p = tmp_path / "c.yaml"
    p.write_text("beamline: bl\n")
    assert main(["--config", str(p)]) == 2
    assert "token" in capsys.readouterr().err


def test_token_source(tmp_path):
    f = tmp_path / "token"
    f.write_text("s3cret\n")
    ts = TokenSource(str(f))
    assert ts.check("Bearer s3cret")
    assert not ts.check("Bearer wrong")
    assert not ts.check("s3cret")
    assert not ts.check(None)
    f.write_text("rotated")
    import os

    os.utime(f, (1, 1))  # a new mtime: the rotated Secret is picked up
    assert ts.check("Bearer rotated")
    assert TokenSource(None, "envtoken").check("bearer envtoken")
    with pytest.raises(ConfigError):
        TokenSource(None, None)
