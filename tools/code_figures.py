"""Figures on the shape of the code, for reviews of its architecture: the largest modules, the
members each operator component reads of the objects it was given, and the import graph between
the operator's modules (imports under TYPE_CHECKING included: a cycle hidden there is a cycle).

    python tools/code_figures.py [--top N]
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {
    "kubesky_operator": ROOT / "operator" / "kubesky_operator",
    "kubesky_worker": ROOT / "worker_image" / "kubesky_worker",
}


def modules(package: str) -> dict[str, Path]:
    base = PACKAGES[package]
    found = {}
    for path in sorted(base.rglob("*.py")):
        parts = path.relative_to(base).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((package, *parts))] = path
    return found


def line_count(path: Path) -> int:
    return len(path.read_text().splitlines())


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's own modules `name` imports, at any depth of its body."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    found.add(sub)
                elif target in known:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
    found.discard(name)
    # A package's __init__ is imported by every module under it: not an edge worth drawing.
    return {m for m in found if not name.startswith(m + ".")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return found


def collaborator_reads(path: Path) -> dict[str, dict[str, set[str]]]:
    """Per class: for each attribute the class holds (`self.x`), the members it reads of it
    (`self.x.y`). Only objects handed in through __init__ count: the class's collaborators."""
    tree = ast.parse(path.read_text())
    result: dict[str, dict[str, set[str]]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        init = next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__"), None)
        if init is None:
            continue
        params = {a.arg for a in [*init.args.args[1:], *init.args.kwonlyargs]}
        handed: set[str] = set()
        for node in ast.walk(init):
            if isinstance(node, ast.Assign):
                value_names = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
                if value_names & params:
                    for t in node.targets:
                        if (
                            isinstance(t, ast.Attribute)
                            and isinstance(t.value, ast.Name)
                            and t.value.id == "self"
                        ):
                            handed.add(t.attr)
        reads: dict[str, set[str]] = defaultdict(set)
        for node in ast.walk(cls):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"
                and node.value.attr in handed
            ):
                reads[node.value.attr].add(node.attr)
        # A local alias of the controller (`ctl = self.ctl`) reads members too.
        for fn in (f for f in ast.walk(cls) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)):
            aliases = {
                t.id: node.value.attr
                for node in ast.walk(fn)
                if isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"
                and node.value.attr in handed
                for t in node.targets
                if isinstance(t, ast.Name)
            }
            for node in ast.walk(fn):
                if (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in aliases
                ):
                    reads[aliases[node.value.id]].add(node.attr)
        if reads:
            result[cls.name] = dict(reads)
    return result


# The operator's long-lived components: what each reads of the objects it is given.
COMPONENTS = (
    "dispatch",
    "active_runs",
    "beamline_monitor",
    "plan_rollout",
    "retention",
    "transition_events",
    "admission",
    "run_intake",
)
# Registries of the per-beamline tasks: a component reading what it got from one of these reads
# another component's members.
REGISTRIES = {"monitors", "dispatchers"}
COMPONENT_CLASSES = {"BeamlineMonitor": "monitors", "BeamlineDispatcher": "dispatchers"}


def other_component_reads(path: Path) -> set[str]:
    """Members read of another component fetched from a registry (`x = ....monitors.get(key)`)."""
    tree = ast.parse(path.read_text())
    own = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    found: set[str] = set()
    for fn in (f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)):
        names: dict[str, str] = {}
        for arg in [*fn.args.args, *fn.args.kwonlyargs]:
            annotation = ast.unparse(arg.annotation) if arg.annotation is not None else ""
            for cls, registry in COMPONENT_CLASSES.items():
                if cls in annotation and cls not in own:
                    names[arg.arg] = registry
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute)
                and node.value.func.attr == "get"
                and isinstance(node.value.func.value, ast.Attribute)
                and node.value.func.value.attr in REGISTRIES
            ):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        names[t.id] = node.value.func.value.attr
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in names
            ):
                found.add(f"{names[node.value.id]}.{node.attr}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()

    sizes = [(line_count(p), n) for pkg in PACKAGES for n, p in modules(pkg).items()]
    print(f"Largest modules (lines), top {args.top}:")
    for lines, name in sorted(sizes, reverse=True)[: args.top]:
        print(f"  {lines:5d}  {name}")

    op = modules("kubesky_operator")
    print("\nWhat each operator component reads of other components (the Controller, a monitor, a")
    print("dispatcher), and of the collaborators handed to it:")
    for name, path in op.items():
        short = name.rsplit(".", 1)[-1]
        if short not in COMPONENTS:
            continue
        other = other_component_reads(path)
        for cls, reads in collaborator_reads(path).items():
            of_controller = {f"controller.{m}" for m in reads.pop("ctl", set())}
            foreign = sorted(of_controller | other)
            by_kind = defaultdict(int)
            for member in foreign:
                by_kind[member.split(".")[0]] += 1
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(by_kind.items()))
            handed = sum(len(m) for m in reads.values())
            print(
                f"  {short}.{cls}: {len(foreign)} members of other components{f' ({kinds})' if kinds else ''};"
                f" {len(reads)} collaborators handed in, {handed} of their members read"
            )
            other = set()  # one class per module holds them

    for pkg in PACKAGES:
        mods = modules(pkg)
        graph = {n: imports(n, p, set(mods)) for n, p in mods.items()}
        edges = sum(len(v) for v in graph.values())
        found = cycles(graph)
        print(f"\nImport graph of {pkg}: {len(graph)} modules, {edges} edges, {len(found)} cycle(s)")
        for c in found:
            print("  cycle: " + " <-> ".join(m.removeprefix(pkg + ".") for m in c))
    return 0


if __name__ == "__main__":
    sys.exit(main())
