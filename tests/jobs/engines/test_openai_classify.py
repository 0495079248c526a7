"""classify through a vLLM server's /classify endpoint (the vLLM tier): the committed one-logit
toy meta-RM served by vLLM's OpenAI server gives the in-process vLLM engine's probabilities within
1e-4, and the meta-RM job runs through it. Cost: one in-process engine (closed before the server
starts) and one server, each ~1 min to start on CPU, and one short metarm-score run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, vllm_options
from tribunal.jobs.engines import EngineConfig
from tribunal.jobs.engines.openai_engine import EndpointConfig
from tribunal.schemas import columns as c
from tribunal.training.toy import task
from tribunal.training.toy.recipe import COMMITTED

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from openai_proxy import VLLMServer  # noqa: E402

MODEL = str(COMMITTED / "toy-metarm")
TOL = 1e-4


def _messages() -> list[list[dict]]:
    rows = task.samples(12, seed=1, split="test")
    return [list(r["context"]) + [{"role": "assistant", "content": r["responses"][i % len(r["responses"])]}] for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def reference(vllm_device):
    from tribunal.jobs.engines.vllm_engine import VLLMEngine

    eng = VLLMEngine(EngineConfig(kind="vllm", model=MODEL, task="classify", dtype="float32",
                                  **{**vllm_options(vllm_device), "max_model_len": 1024}))
    try:
        texts = [eng.render_chat(m, add_generation_prompt=False) for m in _messages()]
        return texts, eng.classify(texts)
    finally:
        eng.close()


@pytest.fixture(scope="module")
def server(reference, tmp_path_factory):
    s = VLLMServer(MODEL, tmp_path_factory.mktemp("vllm_server") / "server.log", extra=("--runner", "pooling"))
    yield s
    s.stop()


def test_classify_matches_the_in_process_engine(server, reference):
    from tribunal.jobs.engines.openai_engine import OpenAIEngine

    texts, want = reference
    eng = OpenAIEngine(EngineConfig(kind="openai", model=MODEL, task="classify", endpoint=EndpointConfig(base_url=server.base_url)))
    try:
        assert [eng.render_chat(m, add_generation_prompt=False) for m in _messages()] == texts
        got = eng.classify(texts)
        assert len(got) == len(want) and all(0 < p < 1 for p in got)
        assert max(abs(a - b) for a, b in zip(got, want)) < TOL
        assert max(got) - min(got) > 1e-3  # the inputs move the score
        assert eng.usage()["requests"] == len(texts) and eng.usage()["prompt_tokens"] > 0
    finally:
        eng.close()


def test_metarm_score_through_the_endpoint(server, ray_local, tmp_path):
    sys.path.insert(0, str(ROOT / "tests" / "jobs"))
    from test_metarm_score import trajectories, write_traj  # the main tier's trajectory builder

    from tribunal.jobs import metarm_score

    src = write_traj(tmp_path / "traj", trajectories(4, 2), per_file=4)
    m = metarm_score.run(metarm_score.MetaRmScoreConfig(input=str(src), output=str(tmp_path / "o"), model=MODEL, batch_size=4,
                                                        engine="openai", base_url=server.base_url, num_cpus_per_actor=0.5))
    assert m["counts"]["reconciled"] and m["counts"]["rows_out"] == 8
    scores = [r[c.META_SCORE] for r in pq.read_table(tmp_path / "o").to_pylist()]
    assert len(scores) == 8 and all(0 < s < 1 for s in scores)
