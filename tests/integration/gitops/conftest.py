"""Fixtures of the GitOps tests: a real Flux (source-controller + kustomize-controller, as local
processes) syncing from a git repository served on loopback into the test control plane, where
the real operator (tests/integration/conftest.py) runs what it applies.

`gitops` gives each test its own repository and a GitRepository for it in the test namespace;
Kustomizations sync on request (a `reconcile.fluxcd.io/requestedAt` annotation), never by waiting
out an interval."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.infra.flux import Flux, Repository
from tests.infra.services import ControlPlane
from tests.integration.operator.conftest import wait_for

SOURCE_GROUP, SOURCE_VERSION = "source.toolkit.fluxcd.io", "v1"
KUSTOMIZE_GROUP, KUSTOMIZE_VERSION = "kustomize.toolkit.fluxcd.io", "v1"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
SOURCE = "repo"  # the GitRepository of each test


@pytest.fixture(scope="session")
def flux(built, cluster, services_root) -> Iterator[Flux]:
    bin_dir, _ = built
    f = Flux(services_root / "flux", bin_dir, cluster)
    try:
        f.start()
        yield f
    finally:
        f.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        f = item.funcargs.get("flux")
        ops = item.funcargs.get("gitops")
        if isinstance(ops, GitOps):
            f = ops.flux
            report.sections.append(("flux objects", ops.describe()))
        if isinstance(f, Flux):
            report.sections.append(("flux logs", f.log_tails(60)))


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition `type_` of `obj` ({} if it has none yet)."""
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == type_), {})


class GitOps:
    """One test's repository, its GitRepository and Kustomizations, in the test namespace."""

    def __init__(self, flux: Flux, cluster: ControlPlane, namespace: str) -> None:
        self.flux = flux
        self.cluster = cluster
        self.namespace = namespace
        self.api = client.CustomObjectsApi(cluster.api_client())
        self.repo: Repository = flux.repository(namespace)
        self.revision = ""
        self._apply(
            {
                "apiVersion": f"{SOURCE_GROUP}/{SOURCE_VERSION}",
                "kind": "GitRepository",
                "metadata": {"name": SOURCE},
                "spec": {"url": flux.url(self.repo), "ref": {"branch": "main"}, "interval": "1m"},
            }
        )

    def _apply(self, obj: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=yaml.safe_dump(obj))

    def kustomization(self, name: str, path: str, **spec: Any) -> None:
        """A Kustomization applying `path` of the repository into the test namespace. A long
        interval (syncs are requested), a short retry, pruning on unless `spec` says otherwise."""
        self._apply(
            {
                "apiVersion": f"{KUSTOMIZE_GROUP}/{KUSTOMIZE_VERSION}",
                "kind": "Kustomization",
                "metadata": {"name": name},
                "spec": {
                    "sourceRef": {"kind": "GitRepository", "name": SOURCE},
                    "path": path,
                    "targetNamespace": self.namespace,
                    "interval": "1m",
                    "retryInterval": "3s",
                    "timeout": "1m",
                    "prune": True,
                    **spec,
                },
            }
        )

    def get(self, kind: str, name: str) -> dict[str, Any]:
        group, version, plural = {
            "GitRepository": (SOURCE_GROUP, SOURCE_VERSION, "gitrepositories"),
            "Kustomization": (KUSTOMIZE_GROUP, KUSTOMIZE_VERSION, "kustomizations"),
        }[kind]
        return self.api.get_namespaced_custom_object(group, version, self.namespace, plural, name)

    def commit(self, message: str, files: dict[str, Any]) -> str:
        """Commit `files` (see Repository.write) and have source-controller fetch the commit;
        return its Flux revision (`main@sha1:<sha>`)."""
        sha = self.repo.commit(message, files)
        self.revision = f"main@sha1:{sha}"
        self.request("gitrepository", SOURCE)
        wait_for(
            f"GitRepository artifact at {self.revision}",
            lambda: (
                ((self.get("GitRepository", SOURCE).get("status") or {}).get("artifact") or {}).get(
                    "revision"
                )
                == self.revision
            ),
            timeout=60,
        )
        return self.revision

    def request(self, kind: str, name: str) -> str:
        token = f"{time.time_ns()}-{uuid.uuid4().hex[:4]}"
        self.cluster.kubectl(
            "annotate", "--overwrite", kind, name, "-n", self.namespace, f"{REQUESTED_AT}={token}"
        )
        return token

    def settled(self, name: str, revision: str | None = None, timeout: float = 90.0) -> dict[str, Any]:
        """The Kustomization once it finished a reconciliation of `revision` (default: the last
        commit's): Ready True or False, for this generation. Returns its Ready condition."""
        revision = revision or self.revision

        def check() -> dict[str, Any] | None:
            ks = self.get("Kustomization", name)
            st = ks.get("status") or {}
            ready = condition(ks, "Ready")
            if (
                st.get("lastAttemptedRevision") == revision
                and ready.get("status") in ("True", "False")
                and ready.get("observedGeneration") == ks["metadata"]["generation"]
            ):
                return ready
            return None

        return wait_for(f"Kustomization {name} settled at {revision}", check, timeout, interval=0.2)

    def reconcile(self, name: str, timeout: float = 90.0) -> dict[str, Any]:
        """Force a reconciliation of the Kustomization now, as `flux reconcile ks` does; return
        its Ready condition once it was handled."""
        token = self.request("kustomization", name)
        wait_for(
            f"Kustomization {name} handled {token}",
            lambda: (
                (self.get("Kustomization", name).get("status") or {}).get("lastHandledReconcileAt") == token
            ),
            timeout,
            interval=0.2,
        )
        return self.settled(name)

    def describe(self) -> str:
        out = self.cluster.kubectl(
            "get", "gitrepositories,kustomizations", "-n", self.namespace, "-o", "yaml", check=False
        )
        return out.stdout + out.stderr


@pytest.fixture
def gitops(flux: Flux, cluster: ControlPlane, namespace: str, operator) -> GitOps:
    return GitOps(flux, cluster, namespace)
