"""Importing user modules (plans, devices) from files or installed packages, with errors located."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from kubesky_operator.api import LoadError
from kubesky_operator.api.plan_sources import is_plan_file, plan_set_hash


@dataclass
class SourceFile:
    path: Path
    name: str  # file name, e.g. my_plans.py
    content: bytes


def python_files(directory: str | Path) -> list[SourceFile]:
    """The *.py files of a directory (a mounted ConfigMap: files are symlinks into ..data), sorted."""
    d = Path(directory)
    out: list[SourceFile] = []
    if not d.is_dir():
        return out
    for p in sorted(d.iterdir(), key=lambda x: x.name):
        if not is_plan_file(p.name):
            continue
        try:
            if not p.is_file():
                continue
            out.append(SourceFile(p, p.name, p.read_bytes()))
        except OSError:
            continue
    return out


def sources_hash(files: list[SourceFile], modules: list[str], include: list[str] | None = None) -> str:
    """The plan-set hash of the files served (kubesky_operator.api.plan_set_hash, shared with the operator)."""
    return plan_set_hash([(f.name, f.content) for f in files], modules, include)


def error_location(exc: BaseException, filename: str) -> int | None:
    """Line in `filename` where `exc` was raised (SyntaxError's own line, else the deepest frame there)."""
    if isinstance(exc, SyntaxError) and exc.lineno is not None:
        return exc.lineno
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


def load_file_module(src: SourceFile, prefix: str) -> ModuleType:
    """Import a file as a fresh module named `<prefix>.<stem>`; its own directory is importable for
    helpers it imports. Raises whatever the module raises."""
    mod_name = f"{prefix}_{src.path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, str(src.path))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {src.path}")
    module = importlib.util.module_from_spec(spec)
    directory = str(src.path.parent)
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    sys.modules[mod_name] = module
    try:
        # Compile from the bytes we hashed, so the hash names exactly the code that runs.
        code = compile(src.content, str(src.path), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    finally:
        if added:
            try:
                sys.path.remove(directory)
            except ValueError:
                pass
    return module


def forget_sibling_modules(files: list[SourceFile]) -> None:
    """Drop plain-name imports of the directory's helper modules so a reload sees fresh code."""
    for f in files:
        mod = sys.modules.get(f.path.stem)
        mod_file = getattr(mod, "__file__", None) if mod is not None else None
        if mod_file and Path(mod_file).parent == f.path.parent:
            del sys.modules[f.path.stem]


def import_installed(name: str) -> ModuleType:
    return importlib.import_module(name)


def load_error(exc: BaseException, file: str, line: int | None = None) -> LoadError:
    msg = f"{type(exc).__name__}: {exc}"
    if line is None:
        line = error_location(exc, file)
    return LoadError(file=file, line=line, message=msg)
