"""A digest of a container build context as the builder sees it: every file under the context
directory that its .dockerignore does not exclude (path, executable bit, content; symlinks by
target). build.sh uses it to skip `buildah build` entirely when nothing the build can read has
changed (buildah's own layer cache would still re-hash the COPY --from sources, about 5 s).

The matching follows .dockerignore's rules closely enough to err on the safe side: patterns are
relative to the context root, `*` and `?` stop at `/`, `**` spans directories, a pattern matching a
directory excludes everything below it, and a later `!pattern` re-includes. Where this differs
from the builder, it can only hash more than the builder reads, which costs a rebuild from cache,
never a stale image.

Usage: python context_digest.py <context dir>   (prints the hex digest)
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
from pathlib import Path


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : end]
                if body.startswith("!") or body.startswith("^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out))


def read_rules(context: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(re-include?, regex) per .dockerignore line, in order."""
    path = context / ".dockerignore"
    if not path.is_file():
        return []
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:].strip()
        line = os.path.normpath(line.lstrip("/")).replace(os.sep, "/")
        if line == ".":
            continue
        rules.append((negate, _pattern_regex(line)))
    return rules


def excluded(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether rel (a '/'-separated path) is left out: the last rule matching it or a parent wins."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negate, rx in rules:
        if any(rx.fullmatch(p) for p in prefixes):
            verdict = not negate
    return verdict


def digest(context: Path) -> str:
    rules = read_rules(context)
    h = hashlib.sha256()
    for root, dirs, files in os.walk(context):
        dirs.sort()
        rel_root = Path(root).relative_to(context).as_posix()
        prefix = "" if rel_root == "." else rel_root + "/"
        # A directory is still walked when excluded if a later `!` rule could re-include below it.
        if not any(negate for negate, _ in rules):
            dirs[:] = [d for d in dirs if not excluded(prefix + d, rules)]
        for name in sorted(files):
            rel = prefix + name
            if excluded(rel, rules):
                continue
            full = Path(root) / name
            st = full.lstat()
            h.update(rel.encode() + b"\0")
            if stat.S_ISLNK(st.st_mode):
                h.update(b"L" + os.readlink(full).encode() + b"\0")
            elif stat.S_ISREG(st.st_mode):
                h.update(b"X" if st.st_mode & 0o111 else b"F")
                with full.open("rb") as f:
                    h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(digest(Path(argv[1]).resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
