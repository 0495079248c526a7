"""The embedded Ray is ours; an address attaches; an unreachable one fails fast, in one line.

Real processes throughout: a `ray start --head` with token authentication in a private temp dir,
drivers in child processes with that temp dir (so a plain ``ray.init()`` would find the head).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_rows, write_samples
from ray_head import RayHead, clean_env, free_port, start_head
from tribunal.cluster.ray_cluster import host_port, probe
from tribunal.schemas.errors import TribunalError

WHERE = """
import sys, ray
from tribunal.cluster.ray_cluster import connect
print("WHERE", connect(sys.argv[1] or None, num_cpus=1), flush=True)
print("GCS", ray.get_runtime_context().gcs_address, flush=True)
"""


def where(env: dict, address: str = "") -> tuple[str, str, str]:
    """(where connect() says it runs, the GCS address it is attached to, its stderr)."""
    r = subprocess.run([sys.executable, "-c", WHERE, address], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = dict(l.split(" ", 1) for l in r.stdout.splitlines() if l.startswith(("WHERE", "GCS")))
    return lines["WHERE"], lines["GCS"], r.stderr


@pytest.fixture(scope="module")
def head():
    # Two logical CPUs (scheduling slots, not cores): a Ray Data read task (1 CPU) beside a half-CPU
    # engine actor; the actual CPU use is that of the tiny job.
    h = start_head(num_cpus=2)
    try:
        yield h
    finally:
        h.stop()


def test_embedded_ray_never_attaches_to_a_running_cluster(head: RayHead):
    # Ray's own default would attach: the head is recorded in this environment's Ray temp dir.
    from ray._private.utils import read_ray_address  # noqa: F401 - the file we rely on below

    env = head.env()
    recorded = subprocess.run(
        [sys.executable, "-c", "from ray._private.utils import read_ray_address; print(read_ray_address())"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert recorded == head.gcs_address and recorded.endswith(f":{head.gcs_port}")
    desc, gcs, err = where(env)
    assert desc.startswith("embedded local Ray (1 CPU")
    assert gcs != head.gcs_address
    # RAY_ADDRESS is what `ray job submit` sets for its entrypoint: that one attaches.
    desc, gcs, _ = where(head.env(RAY_ADDRESS=head.gcs_address))
    assert gcs == head.gcs_address and desc.startswith(head.gcs_address)
    # Token authentication stayed on, and Ray's start-up warning about it is gone.
    assert "Token authentication is enabled" not in err


@pytest.mark.parametrize("how", ["address", "auto"])
def test_address_attaches(head: RayHead, how):
    desc, gcs, _ = where(head.env(), head.gcs_address if how == "address" else "auto")
    assert gcs == head.gcs_address
    assert "(2 CPU, 0 GPU)" in desc


def test_attaching_without_the_token_is_refused_in_one_line(head: RayHead):
    env = head.env(with_token=False, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)
    r = subprocess.run([sys.executable, "-c", WHERE, head.gcs_address], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "no Ray cluster answers at" in r.stderr and "RAY_AUTH_TOKEN" in r.stderr, r.stderr[-2000:]


def test_address_forms():
    assert host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert host_port("ray://head") == ("head", 10001)
    assert host_port("ray://user:pw@head:9999/x") == ("head", 9999)
    assert host_port("[::1]:6380") == ("::1", 6380)
    with pytest.raises(TribunalError, match="port 'x'"):
        host_port("head:x")


def test_a_dead_port_fails_fast():
    port = free_port()  # bound then released: nothing listens
    start = time.monotonic()
    with pytest.raises(TribunalError, match=rf"cannot reach the Ray cluster at 127\.0\.0\.1:{port} .*refused"):
        probe(f"127.0.0.1:{port}", timeout_s=5)
    assert time.monotonic() - start < 5


def cli(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tribunal.jobs.cli", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def label_args(tmp_path, tiny_model):
    samples = write_samples(tmp_path / "in.parquet", make_rows(2))
    return ["label", "--input", str(samples), "--output", str(tmp_path / "out"), "--model", tiny_model, "--k", "1", "--max-tokens", "8"]


def test_cli_with_an_unreachable_address_is_one_line_and_bounded(label_args):
    port = free_port()
    start = time.monotonic()
    proc = cli([*label_args, "--address", f"127.0.0.1:{port}"], clean_env(TRIBUNAL_RAY_CONNECT_TIMEOUT_S="3"))
    out, err = proc.communicate(timeout=120)
    elapsed = time.monotonic() - start
    lines = [l for l in err.splitlines() if l.strip()]
    assert proc.returncode == 2 and len(lines) == 1, err
    assert lines[0].startswith("tribunal label: error: cannot reach the Ray cluster at 127.0.0.1:")
    assert elapsed < 60  # start-up imports included; Ray's own retries alone took minutes


def test_ctrl_c_while_waiting_for_a_cluster(label_args, tmp_path):
    # A listening socket that never answers: the client waits until its timeout (60 s here).
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        proc = cli([*label_args, "--address", f"127.0.0.1:{port}"], clean_env(TRIBUNAL_RAY_CONNECT_TIMEOUT_S="60"))
        deadline = time.monotonic() + 120
        while not (tmp_path / "out" / "trajectories" / "_run.json").exists() and time.monotonic() < deadline:
            time.sleep(0.2)  # the run record is written just before connecting
        time.sleep(1.5)
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - sent < 10
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("tribunal label: interrupted"), err


def submit(head: RayHead, runtime_env: str, submission_id: str, entrypoint: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", head.dashboard_url, "--working-dir", ".",
           "--runtime-env", runtime_env, "--submission-id", submission_id, "--", *entrypoint]  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        r = subprocess.run(cmd, cwd=ROOT, env=env or head.env(), capture_output=True, text=True, timeout=360)
        # A fresh head's job agent registers a few seconds after the dashboard answers.
        if "No available agent to submit job" not in r.stderr or time.monotonic() > deadline:
            return r
        time.sleep(3)


@pytest.mark.slow
def test_ray_job_submit_label_with_the_shipped_runtime_env(head: RayHead, tiny_model, tmp_path):
    """`ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m
    tribunal.jobs.label ...` on a real head (token authentication on), then a re-submission that
    resumes: the KubeRay retry case."""
    import json
    import shlex
    import uuid

    import yaml

    from tribunal.cluster.package import build_py_modules

    # The shipped runtime env, without its pip block (this machine has the requirements, and no
    # GPU for vLLM): py_modules and env_vars as a user submits them.
    shipped = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    assert shipped["pip"]["packages"] and shipped["py_modules"] == ["build/ray/py_modules/tribunal"]
    package = build_py_modules()  # what `make cluster-modules` does
    assert package == str(ROOT / "build" / "ray" / "py_modules" / "tribunal")
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({k: v for k, v in shipped.items() if k != "pip"}))

    # Without the token the job server refuses the client.
    refused = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", "list", "--address", head.dashboard_url],
        env=head.env(with_token=False), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0

    env = head.env()
    samples = write_samples(tmp_path / "in" / "samples.parquet", make_rows(4))
    out = tmp_path / "out"
    job = ["python", "-m", "tribunal.jobs.label", "--input", str(samples), "--output", str(out), "--model", tiny_model,
           "--k", "2", "--max-tokens", "8", "--batch-size", "2", "--num-cpus-per-actor", "0.5"]  # fmt: skip
    # The first submission also says where the job's `tribunal` came from: the shipped py_modules
    # package, not the working directory's source tree (one submission less than a separate probe).
    probe = "python -c " + shlex.quote('import tribunal.jobs.cli as m; print("AT", m.__file__)')
    first = f"label-{uuid.uuid4().hex[:8]}"
    r = submit(head, str(runtime_env), first, ["sh", "-c", probe + " && " + shlex.join(job)], env)
    assert r.returncode == 0 and "succeeded" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    at = next((l.split(" ", 1)[1] for l in r.stdout.splitlines() if l.startswith("AT ")), r.stdout[-3000:] + r.stderr[-2000:])
    assert "runtime_resources" in at and "py_modules" in at and not at.startswith(str(ROOT / "jobs")), at
    assert f"{head.gcs_address.split(':')[0]}" in r.stdout or "CPU" in r.stdout
    traj = json.loads((out / "trajectories" / "_manifest.json").read_text())
    votes = json.loads((out / "votes" / "_manifest.json").read_text())
    assert traj["run"]["ray_submission_id"] == first and votes["run"]["ray_submission_id"] == first
    assert traj["counts"]["reconciled"] and traj["counts"]["samples_out"] == 4
    assert votes["counts"]["samples"] == 4 if "samples" in votes["counts"] else True
    assert traj["this_run"]["samples"] == 4

    again = f"label-{uuid.uuid4().hex[:8]}"
    r = submit(head, str(runtime_env), again, job, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    traj = json.loads((out / "trajectories" / "_manifest.json").read_text())
    assert traj["run"]["ray_submission_id"] == again
    assert traj["this_run"] == {"samples": 0, "trajectories": 0, "resumed_from": 4}


ACTOR_POOL = """
import ray.data  # imported before connect(), as some jobs do: its logging is configured again there
from tribunal.cluster.ray_cluster import connect

connect(None, num_cpus=2)

class Double:
    def __call__(self, batch):
        print("a line printed by the actor", flush=True)
        return {"id": batch["id"] * 2}

rows = ray.data.range(8).map_batches(Double, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.5, batch_format="numpy").take_all()
print("ROWS", len(rows), flush=True)
"""


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
def test_ray_prints_nothing_unless_debug(debug):
    """An actor pool makes Ray print its error-level restart note (core_worker.cc), Ray Data its
    INFO "execution finished", the actor's own output is forwarded: none of it unless
    TRIBUNAL_DEBUG (the CLI's --debug), which brings all of it back."""
    env = clean_env(**({"TRIBUNAL_DEBUG": "1"} if debug else {}))
    env.pop("RAY_BACKEND_LOG_LEVEL", None)
    if not debug:
        env.pop("TRIBUNAL_DEBUG", None)
    r = subprocess.run([sys.executable, "-c", ACTOR_POOL], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "ROWS 8" in r.stdout
    ray_lines = ["core_worker.cc", "has constructor arguments in the object store", "execution finished", "a line printed by the actor"]
    if debug:
        assert all(s in out for s in ray_lines), out[-3000:]
    else:
        assert r.stderr == "" and r.stdout.strip() == "ROWS 8", out[-3000:]


def test_a_healthy_job_prints_only_its_own_lines(tmp_path, tiny_model):
    """`tribunal sample` on a few rows with the tiny model: every stderr line is tribunal's own
    ("[sample] ..."), and nothing goes to stdout."""
    samples = write_samples(tmp_path / "in.parquet", make_rows(3))
    env = clean_env()
    for name in ("TRIBUNAL_DEBUG", "RAY_BACKEND_LOG_LEVEL"):
        env.pop(name, None)
    args = ["sample", "--input", str(samples), "--output", str(tmp_path / "out"), "--model", tiny_model, "--template", "default",
            "--k", "2", "--max-tokens", "16", "--batch-size", "2", "--num-cpus-per-actor", "0.5"]  # fmt: skip
    r = subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    assert lines and all(l.startswith("[sample] ") for l in lines), r.stderr[-3000:]
    assert any(l.startswith("[sample] done in ") for l in lines)
    assert r.stdout == ""
