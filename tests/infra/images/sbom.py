"""`make sbom`: a CycloneDX 1.6 SBOM of each image `make images` built, from what the image holds.

    .venv/bin/python tests/infra/images/sbom.py [<out dir>]      (default build/sbom)

For the operator and the worker (the docker archives listed in $KUBESKY_CACHE/images/images.json,
default ~/.cache/kubesky/images), reads the image's layers, no container engine needed:

- the Python distributions of the venv (/opt/kubesky), by `cyclonedx-py environment` over their
  *.dist-info (names, versions, licences, the dependency graph), each also carrying the sha256 of
  the files the image's lock admits (pip installed them with --require-hashes); the set must equal
  the lock's pins plus kubesky itself, else this fails;
- the Debian packages in /var/lib/dpkg/status, which the Dockerfiles' runtime step writes for the
  packages its files come from (pkg:deb purls with the os-release of the image);
- the image itself as the SBOM's subject (its ref and buildah image ID).

Writes <out dir>/<name>.cdx.json, validated against the CycloneDX 1.6 schema, and prints one line
per image with the counts. Deterministic for an unchanged image (no serial number; a timestamp
only from SOURCE_DATE_EPOCH).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import venv
from datetime import UTC, datetime
from pathlib import Path

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("KUBESKY_CACHE", Path.home() / ".cache" / "kubesky")) / "images"
IMAGES = {
    "operator": REPO / "operator" / "requirements.lock",
    "worker": REPO / "worker_image" / "requirements.lock",
}
SITE = re.compile(r"opt/kubesky/lib/python3\.\d+/site-packages/([^/]+\.dist-info)/(.+)")
WANTED = {"var/lib/dpkg/status", "etc/os-release", "usr/lib/os-release"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_files(archive: Path) -> tuple[dict[str, dict[str, bytes]], dict[str, bytes]]:
    """({dist-info dir: {file: bytes}}, {path: bytes} of WANTED) of a docker archive's layers,
    applied in order (whiteouts honoured, symlinks among WANTED followed)."""
    dists: dict[str, dict[str, bytes]] = {}  # by the dist-info directory's path
    files: dict[str, bytes] = {}
    links: dict[str, str] = {}
    with tarfile.open(archive) as outer:
        (manifest,) = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer_name in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer_name)) as layer:
                for member in layer:
                    path = os.path.normpath(member.name).lstrip("/")
                    parent, base = os.path.split(path)
                    if base.startswith(".wh."):
                        gone = parent if base == ".wh..wh..opq" else os.path.join(parent, base[4:])
                        for table in (dists, files, links):
                            for key in [k for k in table if k == gone or k.startswith(gone + "/")]:
                                del table[key]
                        continue
                    if (m := SITE.fullmatch(path)) and member.isfile():
                        dist_dir = path[: m.end(1)]
                        dists.setdefault(dist_dir, {})[m[2]] = layer.extractfile(member).read()  # type: ignore[union-attr]
                    elif path in WANTED and member.isfile():
                        files[path] = layer.extractfile(member).read()  # type: ignore[union-attr]
                        links.pop(path, None)
                    elif path in WANTED and member.issym():
                        links[path] = os.path.normpath(os.path.join(parent, member.linkname)).lstrip("/")
                        files.pop(path, None)
    for path, target in links.items():
        if target in files:
            files[path] = files[target]
    return dists, files


def python_bom(dists: dict[str, dict[str, bytes]], work: Path) -> dict:
    """cyclonedx-py's BOM of a venv holding only the image's dist-info directories."""
    env = work / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    (site,) = (env / "lib").glob("python3.*/site-packages")
    for dist_dir, contents in dists.items():
        for rel, data in contents.items():
            target = site / os.path.basename(dist_dir) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    out = work / "python.cdx.json"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "cyclonedx-py"),
            "environment",
            "--no-validate",  # the merged BOM is validated below
            "--output-reproducible",
            "--sv",
            "1.6",
            "-o",
            str(out),
            str(env),
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def lock_hashes(lock: Path) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for line in lock.read_text().replace("\\\n", " ").splitlines():
        if line and not line.startswith("#"):
            pin, *options = line.split()
            name, version = pin.split("==")
            out[name] = (version, [o.removeprefix("--hash=sha256:") for o in options])
    return out


def os_release(files: dict[str, bytes]) -> dict[str, str]:
    text = (files.get("etc/os-release") or files.get("usr/lib/os-release") or b"").decode()
    return {k: v.strip('"') for k, _, v in (ln.partition("=") for ln in text.splitlines()) if k}


def debian_components(status: bytes, distro: str) -> list[dict]:
    out = []
    for para in status.decode().split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if not fields.get("Package") or not fields.get("Status", "").endswith(" installed"):
            continue
        purl = PackageURL(
            type="deb",
            namespace="debian",
            name=fields["Package"],
            version=fields["Version"],
            qualifiers={"arch": fields.get("Architecture", ""), "distro": distro},
        ).to_string()
        component = {
            "type": "library",
            "bom-ref": purl,
            "name": fields["Package"],
            "version": fields["Version"],
            "purl": purl,
        }
        if source := fields.get("Source"):
            component["properties"] = [{"name": "deb:source", "value": source}]
        out.append(component)
    return sorted(out, key=lambda c: c["name"])


def image_bom(name: str, entry: dict, work: Path) -> tuple[dict, int, int]:
    dists, files = image_files(Path(entry["archive"]))
    bom = python_bom(dists, work)
    python = bom.get("components", [])
    locked = lock_hashes(IMAGES[name])
    have = {_norm(c["name"]): c["version"] for c in python}
    want = {n: v for n, (v, _) in locked.items()} | {"kubesky": have.get("kubesky", "<missing>")}
    if have != want:
        extra = sorted(set(have.items()) - set(want.items()))
        missing = sorted(set(want.items()) - set(have.items()))
        raise SystemExit(f"sbom: {name}: the image's venv is not its lock: extra {extra}, missing {missing}")
    for component in python:
        _, hashes = locked.get(_norm(component["name"]), ("", []))
        if hashes:
            component.setdefault("externalReferences", []).append(
                {
                    "type": "distribution",
                    "url": f"https://pypi.org/simple/{_norm(component['name'])}/",
                    "comment": "sha256 of the files the image's lock admits (pip --require-hashes)",
                    "hashes": [{"alg": "SHA-256", "content": h} for h in hashes],
                }
            )
    release = os_release(files)
    distro = f"{release.get('ID', 'debian')}-{release.get('VERSION_ID', '')}".rstrip("-")
    debian = debian_components(files.get("var/lib/dpkg/status", b""), distro)
    os_ref = f"os:{distro}"
    ref, _, tag = entry["ref"].rpartition(":")
    subject = {
        "type": "container",
        "bom-ref": entry["ref"],
        "name": ref,
        "version": tag,
        "properties": [{"name": "kubesky:image-id", "value": f"sha256:{entry['id']}"}],
    }
    operating_system = {
        "type": "operating-system",
        "bom-ref": os_ref,
        "name": release.get("ID", "debian"),
        "version": release.get("VERSION_ID", ""),
        "description": release.get("PRETTY_NAME", ""),
    }
    bom["metadata"]["component"] = subject
    if epoch := os.environ.get("SOURCE_DATE_EPOCH"):
        bom["metadata"]["timestamp"] = datetime.fromtimestamp(int(epoch), UTC).isoformat()
    bom["components"] = [*python, operating_system, *debian]
    kubesky = next(c["bom-ref"] for c in python if _norm(c["name"]) == "kubesky")
    bom["dependencies"] = [
        *bom.get("dependencies", []),
        {"ref": entry["ref"], "dependsOn": [kubesky, os_ref]},
        {"ref": os_ref, "dependsOn": [c["bom-ref"] for c in debian]},
        *({"ref": c["bom-ref"]} for c in debian),
    ]
    return bom, len(python), len(debian)


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1]) if len(argv) > 1 else REPO / "build" / "sbom"
    index = CACHE / "images.json"
    if not index.is_file():
        raise SystemExit(f"sbom: no {index}: run `make images` first")
    entries = json.loads(index.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    validator = JsonStrictValidator(SchemaVersion.V1_6)
    for name in IMAGES:
        with tempfile.TemporaryDirectory(prefix=f"kubesky-sbom-{name}-") as tmp:
            bom, n_python, n_debian = image_bom(name, entries[name], Path(tmp))
        text = json.dumps(bom, indent=2, sort_keys=True) + "\n"
        if error := validator.validate_str(text):
            raise SystemExit(f"sbom: {name}: not valid CycloneDX 1.6: {error}")
        target = out_dir / f"{name}.cdx.json"
        target.write_text(text)
        print(
            f"{name}: {target} ({entries[name]['ref']}): {n_python} Python distributions, "
            f"{n_debian} Debian packages, {len(bom['components'])} components"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
