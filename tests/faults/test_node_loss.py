"""A worker node removed mid-job on a local multi-node Ray (``ray.cluster_utils.Cluster``: a head
and two workers, fractional CPUs), a replacement added: the job finishes, every key once."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import make_rows, write_samples
from helpers import check_output
from tribunal.jobs.pipeline.outputs import OutputDir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [c.add_node(num_cpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()
    from faults.conftest import restore_ray

    restore_ray(was_running)


def _engine_nodes() -> set[str]:
    from ray.util.state import list_actors

    return {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")]) if "GenerateStage" in (a.class_name or "")}


def _done(out) -> int:
    try:
        return len(OutputDir(str(out)).done_ids()) if (out / "_run.json").exists() else 0
    except OSError:
        return 0


def test_worker_node_removed_mid_job_and_replaced(cluster, tiny_model, tmp_path):
    from tribunal.jobs.sample import SampleConfig, run

    c, workers = cluster
    rows = make_rows(24)
    samples = write_samples(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    events: dict = {}
    result: dict = {}

    def job():  # the driver in a thread: adding a node needs the main thread
        try:
            result["manifest"] = run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, k=1, max_tokens=24,
                                                  batch_size=2, concurrency=2, num_cpus_per_actor=0.5, address=c.address))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=job, daemon=True)
    t.start()
    deadline = time.time() + 300
    while time.time() < deadline and _done(out) < 4 and t.is_alive():
        time.sleep(0.1)
    try:
        hosts = _engine_nodes()
    except Exception:  # noqa: BLE001 - the state API is best effort; any worker will do
        hosts = set()
    victim = next((w for w in workers if w.node_id in hosts), workers[0])
    events["victim_hosted_engine"] = victim.node_id in hosts
    events["done_before"] = _done(out)
    assert t.is_alive(), f"the job ended before the node went: {result}"
    c.remove_node(victim, allow_graceful=False)
    c.add_node(num_cpus=1)
    t.join(timeout=400)
    assert "error" not in result, result.get("error")
    manifest = result["manifest"]
    assert events["done_before"] < 24, "the job was over before the node went"
    check_output(str(out), [r["id"] for r in rows], k=1)
    assert manifest["counts"]["reconciled"] and manifest["counts"]["samples_out"] == 24
    print(events)
