# kubesky entry points. Everything the tests need is installed by these targets:
# Python packages into .venv, the Go-built control plane and the Kafka jars into ~/.cache/kubesky.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: all venv lock infra host-packages images sbom audit node-up node-down bench-node bench-retention crds crds-check lint test test-unit test-integration mutation demo dev-up dev-down \
        bench bench-worker bench-operator bench-reload bench-tiled soak clean

all: test

# The venv holds exactly the locked versions, so the tests run what the images ship whatever
# PyPI has published since; `make lock` re-resolves and rewrites the locks.
$(VENV)/.installed: pyproject.toml requirements-dev.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-dev.lock -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

lock: venv
	$(PY) -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev]'
	$(PY) tools/lock_requirements.py dev > requirements-dev.lock
	$(PY) tools/lock_requirements.py worker > worker_image/requirements.lock
	$(PY) tools/lock_requirements.py operator > operator/requirements.lock
	@touch $(VENV)/.installed

infra:
	bash tests/infra/build.sh

# The container images from the project's Dockerfiles, without a registry: a Debian-built Python
# base, the pod sandbox (pause) image, the operator and worker; archives for containerd in
# ~/.cache/kubesky/images (the last line of output lists them). Needs root.
images: venv host-packages
	bash tests/infra/images/build.sh

# CycloneDX SBOMs of the images built by `make images` (their venv's Python distributions, checked
# against the locks, and the Debian packages they carry), read from the image archives, in
# build/sbom/<image>.cdx.json.
sbom: venv images
	$(PY) tests/infra/images/sbom.py build/sbom

# pip-audit of both images' locks against PyPI's vulnerability data, printing the findings. Fails
# on any known vulnerability and on any pin it could not audit; AUDIT_ARGS="--ignore-vuln <id>"
# accepts one. Not part of `make test`: its verdict changes as advisories are published.
audit: venv
	$(PY) tests/infra/images/audit.py $(AUDIT_ARGS)

# The Debian packages of a real node (containerd, runc, CNI plugins, iptables, ipset) and of the
# image builds (buildah, mmdebstrap). Needs root on Debian or a derivative; says why otherwise.
host-packages:
	bash tests/infra/host-packages.sh

# A real single-node cluster here (containerd + kubelet + kube-proxy + CoreDNS + kube-router), the
# chart installed with the images built here and the example beamline applied. Needs root.
node-up: venv infra images
	$(PY) -m tests.infra.node_dev up

node-down: venv
	$(PY) -m tests.infra.node_dev down

crds: venv
	$(PY) -m kubesky_operator.api.crd crds
	$(PY) -m kubesky_operator.api.chart_schema charts/kubesky

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The node tests (tests/node) run the images on a real kubelet: they need root on Linux.
test: venv infra images lint
	$(PY) -m pytest -ra tests/unit tests/integration tests/node

test-unit: venv
	$(PY) -m pytest -ra tests/unit

# Mutation testing of the unit layer's pure modules (pyproject.toml's [tool.mutmut] only_mutate)
# with mutmut against tests/unit, in build/mutation; prints each module's score at the end
# (tools/mutation.py --score prints it again). Not part of `make test`: CPU-heavy; MUTANTS='*[05]'
# runs a sample (mutmut's names or globs: about one mutant in five), MUTANTS='kubesky_operator.queue.*' one module.
mutation: venv
	$(PY) tools/mutation.py $(MUTANTS)

test-integration: venv infra
	$(PY) -m pytest -ra tests/integration

demo: venv infra
	$(PY) tests/demo/demo.py $(if $(KEEP),--keep)

dev-up: venv infra
	$(PY) -m tests.infra.dev up

dev-down: venv
	$(PY) -m tests.infra.dev down

bench: bench-worker bench-operator bench-reload bench-retention bench-tiled bench-node

# The fuzzing `make test` runs, at length (tens of minutes): the worker API with 500 examples per
# operation, and the generated PlanRuns with the Hypothesis profile "soak".
soak: venv infra
	KUBESKY_FUZZ=soak KUBESKY_FUZZ_EXAMPLES=500 $(PY) -m pytest -ra -s \
		tests/integration/worker/test_fuzz_api.py tests/integration/operator/test_fuzz_planruns.py

bench-worker: venv infra
	$(PY) tests/bench/bench_worker.py

bench-operator: venv infra
	$(PY) tests/bench/bench_operator.py

bench-reload: venv infra
	$(PY) tests/bench/bench_reload.py

bench-retention: venv infra
	$(PY) tests/bench/bench_retention.py

bench-tiled: venv infra
	$(PY) tests/bench/bench_tiled.py

bench-node: venv infra images
	$(PY) tests/bench/bench_node.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
