"""label and score --mode grm with --engine openai on a real local Ray, against a real vLLM OpenAI
server on loopback serving the committed toy GRM (the vLLM tier): counts reconcile and the rows
carry their tokens; through a fault-injecting proxy every key is written once and every fault is
a counted retry; a server that dies mid-run fails the job with one line after the retry budget and
the re-run finishes it; a re-run after a killed driver sends no request for the committed samples.

Cost: one server (~1 min to start on CPU) and six short job runs (one in a subprocess, with its
own Ray), about 3 to 4 minutes on a loaded 2-core machine.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, write_samples
from tribunal.jobs.engines.openai_engine import clear_endpoint_usage, endpoint_usage
from tribunal.jobs.pipeline.outputs import OutputDir
from tribunal.schemas import columns as c
from tribunal.training.toy import task
from tribunal.training.toy.recipe import COMMITTED

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "faults"))
from helpers import Job, check_output  # noqa: E402
from openai_proxy import FaultProxy, VLLMServer  # noqa: E402

MODEL = str(COMMITTED / "toy-grm")
N = 8  # samples
K = 4  # trajectories per sample; 2 responses: up to 2 orders, one request (n = its trajectories) each
SEED = 3
MAX_TOKENS = 192  # the toy GRM's judgments of two responses end within about 140 tokens


def toy_rows(count: int) -> list[dict]:
    """Held-out samples of the toy task the toy GRM was trained on, those with two responses."""
    return [r for r in task.samples(6 * count, seed=0, split="test") if len(r["responses"]) == 2][:count]


@pytest.fixture(scope="module")
def server(vllm_device, tmp_path_factory):
    s = VLLMServer(MODEL, tmp_path_factory.mktemp("vllm_server") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("openai_jobs") / "samples.parquet", toy_rows(N))


def _opts(base_url: str, **kw) -> dict:
    return {"engine": "openai", "base_url": base_url, "model": MODEL, "template": "toy", "k": K, "seed": SEED, "max_tokens": MAX_TOKENS,
            "batch_size": 2, "num_cpus_per_actor": 0.5, **kw}


def _ids() -> list[str]:
    return [r["id"] for r in toy_rows(N)]


def requests_for(ids) -> int:
    """The requests the job sends for these samples: one per distinct response order among a
    sample's K seeded permutations (all K may draw the same one)."""
    from tribunal.jobs.grm import trajectories as tr

    return sum(len(tr.group_specs(tr.plan_trajectories(i, 2, K, SEED))) for i in ids)


def _done_ids(out) -> set[str]:
    if not (Path(out) / "_run.json").exists():
        return set()
    try:
        return {str(i) for i in OutputDir(str(out)).done_ids().to_pylist()}
    except (FileNotFoundError, OSError):
        return set()


def _done(out) -> int:
    return len(_done_ids(out))


def test_label_through_the_endpoint(server, ray_local, samples, tmp_path):
    from tribunal.jobs.engines.openai_engine import clear_endpoint_usage, endpoint_usage, usage_report
    from tribunal.jobs.label import LabelConfig, run

    clear_endpoint_usage()
    m = run(LabelConfig(input=str(samples), output=str(tmp_path / "l"), **_opts(server.base_url)))
    sampled = m["sample"]
    assert sampled["counts"]["reconciled"] and sampled["counts"]["trajectories"] == N * K
    assert sampled["counts"]["parse_failures"] < N * K // 2  # the toy GRM judges in format
    assert pq.read_table(tmp_path / "l" / "votes").num_rows == N
    rows = pq.read_table(tmp_path / "l" / "trajectories").to_pylist()
    assert all(r[c.PROMPT_TOKENS] > 0 and r[c.COMPLETION_TOKENS] > 0 and r[c.FINISH_REASON] in ("stop", "length") for r in rows)
    eng = sampled["engines"]
    assert eng["kind"] == "openai" and 0 < eng["cached_prompt_tokens"] < eng["request_prompt_tokens"]
    # the endpoint's own usage, summed over the pool: one request per distinct order of a sample
    usage = endpoint_usage()
    assert usage["requests"] == requests_for(_ids()) and usage["retries"] == 0
    assert usage["prompt_tokens"] == eng["request_prompt_tokens"] and usage["cached_tokens"] == eng["cached_prompt_tokens"]
    assert usage["completion_tokens"] == sum(r[c.COMPLETION_TOKENS] for r in rows) == sampled["counts"]["completion_tokens"]
    block, line = usage_report(usage, 0.5, 1.5)
    assert block["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 0.5 + usage["completion_tokens"] * 1.5) / 1e6, abs=1e-6)
    assert line.startswith(f"endpoint usage: {requests_for(_ids())} requests, 0 retries;")


def test_score_grm_through_the_endpoint(server, ray_local, tmp_path):
    import pyarrow as pa

    from tribunal.jobs.score import ScoreConfig, run

    rows = [{"prompt_id": f"p{i}", "rollout_index": j, "context": r["context"], "response": resp, "data_source": "toy"}
            for i, r in enumerate(toy_rows(4)) for j, resp in enumerate(r["responses"])]
    src = tmp_path / "rollouts.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    opts = {**_opts(server.base_url), "k": 2}
    opts.pop("batch_size")
    m = run(ScoreConfig(input=str(src), output=str(tmp_path / "s"), mode="grm", form="group", batch_rollouts=4, **opts))
    assert m["counts"]["reconciled"] and m["counts"]["rollouts_scored"] == len(rows) and m["counts"]["duplicate_keys"] == 0
    scored = pq.read_table(tmp_path / "s").to_pylist()
    assert sum(r[c.REWARD] is not None for r in scored) >= len(rows) // 2  # the toy GRM mostly answers in format


def test_faults_through_the_proxy_write_every_key_once(server, ray_local, samples, tmp_path):
    """429 with Retry-After, 500s, resets after the server answered, a stall past the timeout:
    every key once, and the endpoint usage counts one retry per fault."""
    from tribunal.jobs.engines.openai_engine import clear_endpoint_usage, endpoint_usage
    from tribunal.jobs.sample import SampleConfig, run

    plan = ["429", None, "500", "reset", None, None, "stall", "reset", None, "500", "429"]
    faults = sum(f is not None for f in plan)
    proxy = FaultProxy(server.port, plan=list(plan))
    try:
        clear_endpoint_usage()
        out = tmp_path / "f"
        # 10 s per attempt: long enough for a real answer on a loaded machine (one that is not is
        # one more counted timeout), short enough that the stall costs little
        m = run(SampleConfig(input=str(samples), output=str(out),
                             **_opts(proxy.base_url, request_timeout_s=10, retry_backoff_s=0.05, max_retries=4, max_in_flight=4)))
        check_output(str(out), _ids(), k=K)
        assert m["counts"]["reconciled"] and m["counts"]["duplicate_keys"] == 0
        usage = endpoint_usage()
        failed = {k[len("failed_"):]: v for k, v in usage.items() if k.startswith("failed_")}
        assert (failed["429"], failed["500"], failed["connection"]) == (2, 2, 2) and failed["timeout"] >= 1
        assert usage["retries"] == sum(failed.values()) >= faults and usage["requests"] == requests_for(_ids())
        assert proxy.counts["fault_reset"] == 2 and proxy.posts("/v1/completions") == requests_for(_ids()) + usage["retries"]
    finally:
        proxy.close()


def test_a_server_that_dies_mid_run_fails_the_job_in_one_line_and_the_rerun_finishes(server, ray_local, samples, tmp_path, capsys):
    from tribunal.jobs.cli import run_main

    proxy = FaultProxy(server.port)
    out = tmp_path / "d"
    argv = ["--input", str(samples), "--output", str(out), "--engine", "openai", "--base-url", proxy.base_url, "--model", MODEL,
            "--template", "toy", "--k", str(K), "--seed", str(SEED), "--max-tokens", str(MAX_TOKENS), "--batch-size", "2", "--num-cpus-per-actor", "0.5",
            "--concurrent-batches", "1", "--max-in-flight", "1", "--max-retries", "3", "--retry-backoff-s", "0.2",
            "--request-timeout-s", "30"]  # fmt: skip

    def kill_when_committed():
        deadline = time.monotonic() + 300
        while _done(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proxy.down()

    import ray.data

    killer = threading.Thread(target=kill_when_committed, daemon=True)
    ctx = ray.data.DataContext.get_current()
    old, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True  # what the CLI sets before Ray Data starts
    try:
        killer.start()
        assert run_main("sample", argv) == 2
        killer.join()
        ctx.raise_original_map_exception = old
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"tribunal sample: error: the endpoint http://127.0.0.1:{proxy.port}/v1/completions failed a generation "
                                  "request 4 times (3 retries, --max-retries); last error: ConnectError"), err[-3:]
        done = _done_ids(out)
        assert 2 <= len(done) < N
        # The failed run's actor may still hold the batch queued behind the one that failed (Ray
        # Data stops it asynchronously); that batch fails against the dead server too, within its
        # retry budget (about 2 s), before the server comes back. (A CLI run's actors end with it.)
        time.sleep(6)
        proxy.up()
        sent = proxy.posts("/v1/completions")
        clear_endpoint_usage()
        assert run_main("sample", argv) == 0
        # the re-run asked only for the samples not yet written (a slow answer on a loaded machine
        # may be asked twice: a counted retry)
        usage = endpoint_usage()
        assert usage["requests"] == requests_for(set(_ids()) - done)
        assert proxy.posts("/v1/completions") - sent == usage["requests"] + usage["retries"]
        check_output(str(out), _ids(), k=K)
    finally:
        ctx.raise_original_map_exception = old
        proxy.close()


def test_a_rerun_after_a_killed_driver_sends_nothing_for_committed_samples(server, ray_local, samples, tmp_path):
    proxy = FaultProxy(server.port)
    out = tmp_path / "k"
    argv = ["--input", str(samples), "--output", str(out), "--engine", "openai", "--base-url", proxy.base_url, "--model", MODEL,
            "--template", "toy", "--k", str(K), "--seed", str(SEED), "--max-tokens", str(MAX_TOKENS), "--batch-size", "2", "--num-cpus-per-actor", "0.5",
            "--concurrent-batches", "1", "--max-in-flight", "1"]  # fmt: skip
    try:
        job = Job([sys.executable, "-m", "tribunal.jobs.sample", *argv], ROOT)
        assert job.wait_for(lambda: _done(out) >= 2), f"the run ended before the kill: {job.lines[-3:]}"
        job.sigkill()
        done = _done_ids(out)
        assert len(done) < N, "the run finished before the kill"
        from tribunal.jobs.cli import run_main

        sent = proxy.posts("/v1/completions")
        clear_endpoint_usage()
        assert run_main("sample", argv) == 0
        usage = endpoint_usage()
        assert usage["requests"] == requests_for(set(_ids()) - done)
        assert proxy.posts("/v1/completions") - sent == usage["requests"] + usage["retries"]
        check_output(str(out), _ids(), k=K)
    finally:
        proxy.close()
