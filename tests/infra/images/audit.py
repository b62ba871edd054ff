"""`make audit`: pip-audit of the images' locks against PyPI's vulnerability data.

    .venv/bin/python tests/infra/images/audit.py [pip-audit options, e.g. --ignore-vuln ID]

Audits worker_image/requirements.lock and operator/requirements.lock as they are (pip-audit
--disable-pip: the locks are complete and hashed, nothing is resolved or installed), prints every
finding (package, version, advisory id and aliases, fixed versions) and every pin that could not
be audited, and exits
    0  every pin audited, no known vulnerability;
    1  at least one known vulnerability (a finding fails the target: fix it by a new lock, or
       pass --ignore-vuln <id> with the reason written down where the call is made);
    2  some pin could not be audited (PyPI's per-release JSON, which pip-audit reads, did not
       answer for it), so "nothing found" would not be true.
PyPI's advisories carry no severity; the ids (GHSA-/PYSEC-/CVE-) lead to it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LOCKS = {
    "worker": REPO / "worker_image" / "requirements.lock",
    "operator": REPO / "operator" / "requirements.lock",
}


def audit(lock: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "pip_audit", "--progress-spinner", "off", "--disable-pip", "--desc", "off"]
    done = subprocess.run(
        [*cmd, "--format", "json", "--requirement", str(lock), *extra], capture_output=True, text=True
    )
    try:
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"audit: pip-audit gave no report for {lock} (exit {done.returncode})") from None


def main(argv: list[str]) -> int:
    found = unaudited = 0
    for name, lock in LOCKS.items():
        report = audit(lock, argv[1:])
        deps = report["dependencies"]
        vulnerable = [d for d in deps if d.get("vulns")]
        skipped = [d for d in deps if "skip_reason" in d]
        n_vulns = sum(len(d["vulns"]) for d in vulnerable)
        print(
            f"{name}: {lock.relative_to(REPO)}: {len(deps)} pins, {len(deps) - len(skipped)} audited, "
            f"{n_vulns} known vulnerabilities in {len(vulnerable)} packages"
        )
        for d in vulnerable:
            for v in d["vulns"]:
                aliases = f" ({', '.join(v['aliases'])})" if v.get("aliases") else ""
                fixed = ", ".join(v.get("fix_versions") or []) or "none yet"
                print(f"  {d['name']}=={d['version']}: {v['id']}{aliases}; fixed in {fixed}")
        if skipped:
            print(f"  not audited ({len(skipped)}): {skipped[0]['skip_reason']}", end="")
            print(f" ... and {len(skipped) - 1} more" if len(skipped) > 1 else "")
        found += n_vulns
        unaudited += len(skipped)
    if found:
        print(f"audit: {found} known vulnerabilities (see above)")
        return 1
    if unaudited:
        print(f"audit: {unaudited} pins could not be audited; nothing is known about them")
        return 2
    print("audit: every pin audited, no known vulnerabilities")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
