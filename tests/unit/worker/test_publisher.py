"""The publisher: the RunEngine's intake, the publish loop and the accounting it does per run."""

from __future__ import annotations

from kubesky_operator.api import Phase
from kubesky_worker.metrics import Metrics
from kubesky_worker.publisher import Publisher
from kubesky_worker.runs import Run


def test_accounting_without_kafka():
    pub = Publisher(None, Metrics())
    pub.start()
    try:
        run = Run("r1", "count", topic=None)
        run.set_phase(Phase.RUNNING)
        start = {"uid": "s1", "time": 0.0, "num_points": 3}
        desc = {"uid": "d1", "run_start": "s1", "name": "primary"}
        pub.enqueue(run, "start", start)
        pub.enqueue(run, "descriptor", desc)
        for i in range(3):
            pub.enqueue(run, "event", {"uid": f"e{i}", "descriptor": "d1", "seq_num": i + 1})
        pub.enqueue(run, "stop", {"uid": "x", "run_start": "s1", "exit_status": "success"})
        pub.finish(run).result(timeout=10)
        rec = run.record()
        assert rec.documents == {"start": 1, "descriptor": 1, "event": 3, "stop": 1}
        assert rec.run_uids == ["s1"]
        assert rec.progress is not None and (rec.progress.done, rec.progress.total) == (3, 3)
        assert run.exit_status == "success"
        assert pub.pending() == 0
    finally:
        pub.stop()
