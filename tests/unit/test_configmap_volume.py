"""The test stand-in for the kubelet's ConfigMap projection behaves like the kubelet."""

from __future__ import annotations

import os

from tests.helpers.configmap_volume import project


def test_projection_swaps_data_atomically(tmp_path):
    first = project(tmp_path, {"a.py": "A = 1\n", "b.py": "B = 1\n"})
    assert (tmp_path / "a.py").read_text() == "A = 1\n"
    assert os.readlink(tmp_path / "a.py") == "..data/a.py"
    assert os.readlink(tmp_path / "..data") == first.name
    second = project(tmp_path, {"a.py": "A = 2\n", "c.py": "C = 1\n"})
    assert os.readlink(tmp_path / "..data") == second.name
    assert (tmp_path / "a.py").read_text() == "A = 2\n"
    assert (tmp_path / "c.py").read_text() == "C = 1\n"
    assert not (tmp_path / "b.py").exists() and not (tmp_path / "b.py").is_symlink()
    assert not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("..")) == ["a.py", "c.py"]
