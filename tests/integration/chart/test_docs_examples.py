"""The examples in docs/ run: every manifest passes the real apiserver's validation, the
generateName submission works as written, and both consumer snippets of
docs/consuming-documents.md read records written the way the worker writes them (its own
serializer, keyed by the start uid) from the real Kafka broker."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from confluent_kafka import Producer
from kubesky_worker.document_serialization import serializer

from tests.infra.flux import apply_crds
from tests.infra.services import REPO_ROOT

DOCS = REPO_ROOT / "docs"


def code_blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for md in sorted(DOCS.glob("*.md")):
        for block in code_blocks(md, "yaml"):
            for doc in yaml.safe_load_all(block):
                if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                    out.append((md.name, doc))
    return out


def test_doc_manifests_pass_server_validation(cluster, crds):
    found = manifests()
    assert {kind for _, kind in ((n, d["kind"]) for n, d in found)} >= {"Beamline", "PlanRun", "ConfigMap"}
    if any(d["kind"] == "Kustomization" for _, d in found):
        apply_crds(cluster)  # docs/gitops.md's Flux Kustomization, checked against Flux's own CRD
    for name, doc in found:
        ns = doc["metadata"].get("namespace")
        if ns:
            cluster.kubectl("create", "namespace", ns, check=False)
        out = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc), check=False)
        assert out.returncode == 0, f"{name}: {doc['kind']} rejected:\n{out.stderr}"


def test_generate_name_submission_as_documented(cluster, crds, namespace):
    (run,) = [d for _, d in manifests() if d["kind"] == "PlanRun" and "generateName" in d["metadata"]]
    run["metadata"]["namespace"] = namespace
    manifest = yaml.safe_dump(run)
    names = {
        cluster.kubectl("create", "-f", "-", "-o", "name", input=manifest).stdout.strip() for _ in range(2)
    }
    assert len(names) == 2 and all(n.startswith("planrun.kubesky.io/scan-x-") for n in names), names
    refused = cluster.kubectl("apply", "-f", "-", input=manifest, check=False)
    assert refused.returncode != 0  # apply cannot use generateName, as the doc says


def produce_run(bootstrap: str, topic: str) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, Any]]:
    """One run's documents as the worker publishes them; returns them and a PlanRun status.kafka."""
    start_uid, desc_uid = str(uuid.uuid4()), str(uuid.uuid4())
    now = time.time()
    docs: list[tuple[str, dict[str, Any]]] = [
        ("start", {"uid": start_uid, "time": now, "plan_name": "count", "scan_id": 1}),
        (
            "descriptor",
            {
                "uid": desc_uid,
                "run_start": start_uid,
                "time": now,
                "name": "primary",
                "data_keys": {"det": {"source": "sim", "dtype": "array", "shape": [3], "dtype_numpy": "<f8"}},
            },
        ),
        (
            "event",
            {
                "uid": str(uuid.uuid4()),
                "descriptor": desc_uid,
                "time": now,
                "seq_num": 1,
                "data": {"det": np.arange(3.0)},
                "timestamps": {"det": now},
            },
        ),
        ("stop", {"uid": str(uuid.uuid4()), "run_start": start_uid, "time": now, "exit_status": "success"}),
    ]
    pack = serializer()
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    delivered: list[tuple[int, int]] = []

    def on_delivery(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset()))

    other = ("start", {"uid": str(uuid.uuid4()), "time": now, "plan_name": "other"})
    # Another run's record amid this one's, on the same partition, as when beamlines share a topic.
    for key, (name, doc) in (
        [(start_uid, d) for d in docs[:2]] + [(other[1]["uid"], other)] + [(start_uid, d) for d in docs[2:]]
    ):
        producer.produce(
            topic,
            partition=0,
            key=key.encode(),
            value=pack([name, doc]),
            headers=[("kubesky.io/planrun-name", b"count-det")],
            on_delivery=on_delivery,
        )
    assert producer.flush(30) == 0
    assert len(delivered) == len(docs) + 1
    status = {
        "topic": topic,
        "partition": 0,
        "firstOffset": min(o for _, o in delivered),
        "lastOffset": max(o for _, o in delivered),
    }
    return docs, status


def assert_same(got: list[tuple[str, dict[str, Any]]], want: list[tuple[str, dict[str, Any]]]) -> None:
    assert [n for n, _ in got] == [n for n, _ in want]
    for (_, g), (_, w) in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        if "data" in w:
            np.testing.assert_array_equal(g["data"]["det"], w["data"]["det"])
        else:
            assert g == w


def test_consumer_examples_read_worker_records(kafka, capsys):
    topic = f"i22-{uuid.uuid4().hex[:6]}.bluesky.runengine.documents"
    want, status = produce_run(kafka.bootstrap, topic)
    # the third block (reading from Tiled) runs in tests/integration/tiled
    dispatcher_code, aiokafka_code, _ = code_blocks(DOCS / "consuming-documents.md", "python")

    # aiokafka: one PlanRun's documents by the offsets in its status.kafka.
    ns: dict[str, Any] = {}
    exec(compile(aiokafka_code, "consuming-documents.md (aiokafka)", "exec"), ns)
    records = asyncio.run(ns["read_run"](kafka.bootstrap, status, [want[0][1]["uid"]]))
    assert_same([(name, doc) for name, doc in records], want)
    assert asyncio.run(ns["read_run"](kafka.bootstrap, status, ["another-run"])) == []

    # bluesky-kafka's RemoteDispatcher, as written, but pointed at this broker and topic, from
    # the topic's start, and stopping once it has seen the run.
    replaced = {
        '"i22.bluesky.runengine.documents"': repr(topic),
        '"kafka.kafka.svc:9092"': repr(kafka.bootstrap),
        '"auto.offset.reset": "latest"': '"auto.offset.reset": "earliest"',
        "dispatcher.start()": "dispatcher.start(continue_polling=keep_polling)",
    }
    for old, new in replaced.items():
        assert old in dispatcher_code, f"the doc's dispatcher example no longer has {old}"
        dispatcher_code = dispatcher_code.replace(old, new)
    seen: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + 60
    ns = {"keep_polling": lambda: len(seen) < len(want) + 1 and time.monotonic() < deadline}
    capsys.readouterr()
    code = dispatcher_code.replace(
        "dispatcher.start(",
        "dispatcher.subscribe(lambda name, doc: seen.append((name, doc)))\ndispatcher.start(",
    )
    exec(compile(code, "consuming-documents.md (RemoteDispatcher)", "exec"), {**ns, "seen": seen})
    assert_same([(n, d) for n, d in seen if d.get("plan_name") != "other"], want)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["start", "descriptor", "start", "event", "stop"]


def test_doc_values_render(cluster, tmp_path):
    """The chart values shown in docs/ install as written (helm template with its schema)."""
    blocks = [yaml.safe_load(b) for md in sorted(DOCS.glob("*.md")) for b in code_blocks(md, "yaml")]
    values = [b for b in blocks if isinstance(b, dict) and "beamlines" in b]
    assert values, "no chart values example in docs/"
    for i, v in enumerate(values):
        path = tmp_path / f"values-{i}.yaml"
        path.write_text(yaml.safe_dump(v))
        out = cluster.helm("template", "kubesky", str(REPO_ROOT / "charts" / "kubesky"), "-f", str(path))
        rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
        for bl in v["beamlines"]:
            assert any(d["kind"] == "Beamline" and d["metadata"]["name"] == bl["name"] for d in rendered)
