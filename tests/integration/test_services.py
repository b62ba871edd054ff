"""Smoke tests proving the test services are the real thing: an apiserver that serves CRDs and
enforces RBAC, and a Kafka broker that keeps acknowledged messages in order."""

from __future__ import annotations

import threading
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

SMOKE_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.kubesky.io
spec:
  group: smoke.kubesky.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
"""


def test_crd_create_list_watch(cluster, namespace):
    cluster.kubectl("apply", "-f", "-", input=SMOKE_CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.kubesky.io", "--timeout=60s")
    api = client.CustomObjectsApi(cluster.api_client())
    args = ("smoke.kubesky.io", "v1", namespace, "widgets")

    seen: list[tuple[str, str]] = []
    started = threading.Event()

    def watcher():
        w = watch.Watch()
        started.set()
        for event in w.stream(api.list_namespaced_custom_object, *args, timeout_seconds=20):
            seen.append((event["type"], event["object"]["metadata"]["name"]))
            if len(seen) >= 2:
                w.stop()

    t = threading.Thread(target=watcher, daemon=True)
    t.start()
    started.wait()
    for name, size in (("a", 1), ("b", 2)):
        body = {
            "apiVersion": "smoke.kubesky.io/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": size},
        }
        api.create_namespaced_custom_object(*args, body)
    listed = api.list_namespaced_custom_object(*args)["items"]
    assert sorted((i["metadata"]["name"], i["spec"]["size"]) for i in listed) == [("a", 1), ("b", 2)]
    t.join(25)
    assert seen == [("ADDED", "a"), ("ADDED", "b")]


def test_serviceaccount_without_rbac_is_forbidden(cluster, namespace):
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody",
        namespace,
        {"spec": {"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 600}},
    ).status.token
    kubeconfig = cluster.token_kubeconfig(token, cluster.workdir / f"nobody-{namespace}.kubeconfig")
    as_nobody = client.CoreV1Api(cluster.api_client(kubeconfig))
    with pytest.raises(ApiException) as err:
        as_nobody.list_namespaced_config_map(namespace)
    assert err.value.status == 403
    assert f"system:serviceaccount:{namespace}:nobody" in err.value.body
    # The same call as admin works: the 403 is RBAC, not a broken client.
    assert core.list_namespaced_config_map(namespace).items is not None


async def test_kafka_thousand_messages_in_order(kafka):
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, f"message-{i}".encode(), key=b"k") for i in range(1000)]
        offsets = [(await f).offset for f in futures]
    finally:
        await producer.stop()
    assert offsets == list(range(1000))
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka.bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        while len(received) < 1000:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, f"consumer stalled after {len(received)} messages"
            for records in batch.values():
                received.extend(r.value for r in records)
    finally:
        await consumer.stop()
    assert received == [f"message-{i}".encode() for i in range(1000)]
