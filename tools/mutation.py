"""Mutation testing of the unit layer's pure modules with mutmut (`make mutation`), and its score.

    .venv/bin/python tools/mutation.py              # a fresh run, then the table
    .venv/bin/python tools/mutation.py --score      # the table of the last run again
    .venv/bin/python tools/mutation.py --survivors  # ... with the diff of every surviving mutant
    .venv/bin/python tools/mutation.py '*[05]'      # a sample: the mutants whose number ends in 0 or 5

The modules mutated are pyproject.toml's [tool.mutmut] only_mutate, and only there. mutmut imports
a mutated module under the name its path gives (src/ stripped), so it runs in build/mutation: a
copy of the work tree in build/mutation/mutants (the tests read the repository's files: CRDs,
chart, docs) where src/<package> stands for the package's directory (setuptools' `where` roots:
operator/, worker_image/, cli/). mutmut puts mutants/src first on sys.path, ahead of the editable
install; each mutant runs the unit tests that called the mutated function (tests/unit only).

The score of a module is killed / (total - equivalent - skipped - not run): a timeout counts as
killed, a mutant no test reached ("no tests") as survived; "not run" are those a sample left out.
Equivalent mutants (no behaviour can tell them from the code) are listed with the reason in
tools/mutation_equivalents.toml, each by its function and its changed lines, so a renumbering of
mutmut's mutants does not move them; an entry that matches no mutant any more is reported as stale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "build" / "mutation"
EQUIVALENTS = ROOT / "tools" / "mutation_equivalents.toml"
# Not copied into the stage: version control, environments, caches, and the stage itself.
NOT_COPIED = {
    ".git",
    ".venv",
    "build",
    "mutants",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
}

# mutmut's exit codes (mutmut.stats.status_by_exit_code), folded into the table's columns.
KILLED, TIMEOUT, SURVIVED, NO_TESTS, SKIPPED, OTHER, NOT_RUN = (
    "killed",
    "timeout",
    "survived",
    "no tests",
    "skipped",
    "other",
    "not run",
)
STATUS = {1: KILLED, 3: KILLED, 0: SURVIVED, 5: NO_TESTS, 33: NO_TESTS, 34: SKIPPED, 36: TIMEOUT}
STATUS |= {code: TIMEOUT for code in (-24, 24, 152, 255)}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def package_dirs(project: dict) -> dict[str, Path]:
    """{package: its directory} for the packages under setuptools' `where` roots."""
    roots = project["tool"]["setuptools"]["packages"]["find"]["where"]
    return {
        init.parent.name: init.parent
        for root in roots
        for init in sorted((ROOT / root).glob("*/__init__.py"))
    }


def stage(config: dict, packages: dict[str, Path]) -> None:
    """A fresh build/mutation: the config, src/<package> links, and the work tree in mutants/."""
    if STAGE.exists():
        shutil.rmtree(STAGE)
    (STAGE / "src").mkdir(parents=True)
    (STAGE / "pyproject.toml").symlink_to(ROOT / "pyproject.toml")
    for source in config["source_paths"]:
        where = Path(source)
        if where.parent != Path("src") or where.name not in packages:
            raise SystemExit(
                f"mutation: source_paths entry {source!r} is not src/<one of {sorted(packages)}>"
            )
        (STAGE / where).symlink_to(packages[where.name], target_is_directory=True)
    shutil.copytree(
        ROOT,
        STAGE / "mutants",
        ignore=lambda _dir, names: [n for n in names if n in NOT_COPIED or n.endswith(".egg-info")],
        symlinks=True,
    )


@dataclass
class Equivalent:
    function: str  # mutmut's name of the function, without the __mutmut_<n> suffix
    change: str  # the changed lines, "-" / "+" and the line stripped
    reason: str
    matched: int = 0


def load_equivalents() -> list[Equivalent]:
    if not EQUIVALENTS.exists():
        return []
    return [
        Equivalent(e["function"], e["change"].strip(), e["reason"])
        for e in tomllib.loads(EQUIVALENTS.read_text()).get("equivalent", [])
    ]


def change_of(diff: str) -> str:
    """The changed lines of a unified diff, sign kept and indentation dropped."""
    return "\n".join(
        line[0] + line[1:].strip()
        for line in diff.splitlines()
        if line[:1] in "-+" and not line.startswith(("---", "+++"))
    )


def score(config: dict, *, survivors: bool) -> int:
    """Print the table of the last run in build/mutation; 1 when it has no results."""
    if not (STAGE / "mutants").is_dir():
        print("mutation: no run in build/mutation yet (make mutation)", file=sys.stderr)
        return 1
    os.chdir(STAGE)  # mutmut reads its config from the working directory on import
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    equivalents = load_equivalents()
    rows: list[tuple[str, Counter]] = []
    left: list[tuple[str, str]] = []
    for source in config["only_mutate"]:
        meta = STAGE / "mutants" / (source + ".meta")
        if not meta.exists():
            print(f"mutation: no results for {source}", file=sys.stderr)
            return 1
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts: Counter = Counter(total=len(codes))
        for name, code in sorted(codes.items()):
            status = STATUS.get(code, OTHER) if code is not None else NOT_RUN
            if status in (SURVIVED, NO_TESTS, OTHER):
                diff = get_diff_for_mutant(name, path=source)
                function = name.rpartition("__mutmut_")[0]
                known = next(
                    (e for e in equivalents if e.function == function and e.change == change_of(diff)), None
                )
                if known is not None:
                    known.matched += 1
                    status = "equivalent"
                else:
                    left.append((name, diff))
            counts[status] += 1
        rows.append((source.removeprefix("src/"), counts))

    def line(name: str, c: Counter) -> str:
        scored = c["total"] - c["equivalent"] - c[SKIPPED] - c[NOT_RUN]
        detected = c[KILLED] + c[TIMEOUT]
        pct = f"{100 * detected / scored:5.1f}%" if scored else "    -"
        undetected = c[SURVIVED] + c[NO_TESTS] + c[OTHER]
        return (
            f"{name:42} {c[KILLED]:6} {c[TIMEOUT]:7} {undetected:8} {c['equivalent']:10} "
            f"{c[SKIPPED]:7} {c[NOT_RUN]:7} {c['total']:5}  {pct}"
        )

    print()
    print(
        f"{'module':42} {'killed':>6} {'timeout':>7} {'survived':>8} {'equivalent':>10} {'skipped':>7} {'not run':>7} {'total':>5}  score"
    )
    total: Counter = Counter()
    for name, counts in rows:
        print(line(name, counts))
        total.update(counts)
    print(line("all", total))
    print(
        "score = (killed + timeout) / (total - equivalent - skipped - not run); survived includes 'no tests'"
    )
    for e in equivalents:
        if not e.matched and not total[NOT_RUN]:
            print(f"mutation: stale entry in {EQUIVALENTS.name}: {e.function}: {e.change!r}", file=sys.stderr)
    if left:
        print(f"\n{len(left)} surviving mutants (`cd build/mutation && mutmut show NAME`):")
        for name, diff in left:
            print(f"  {name}")
            if survivors:
                print("    " + "\n    ".join(diff.splitlines()[2:]))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--score", action="store_true", help="print the table of the last run, do not run")
    parser.add_argument("--survivors", action="store_true", help="print each surviving mutant's diff")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="mutants run at once")
    parser.add_argument(
        "mutants",
        nargs="*",
        help="run only these mutmut mutant names or globs, e.g. 'kubesky_operator.queue.*', or '*[05]' for "
        "about one mutant in five (the others count as not run)",
    )
    args = parser.parse_args(argv)
    project = pyproject()
    config = project["tool"]["mutmut"]
    if not args.score:
        stage(config, package_dirs(project))
        started = time.monotonic()
        mutmut = Path(sys.executable).with_name("mutmut")
        done = subprocess.run(
            [str(mutmut), "run", f"--max-children={args.max_children}", *args.mutants], cwd=STAGE, check=False
        )
        print(f"mutation: mutmut ran {time.monotonic() - started:.0f} s (exit {done.returncode})")
        if done.returncode != 0:
            return done.returncode
    return score(config, survivors=args.survivors)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
