"""The openai engine against a real vLLM OpenAI server on loopback (the vLLM tier), serving the
committed toy GRM: the same numbers as the in-process vLLM engine on the same model (greedy and
seeded texts identical, token counts equal, continuation scores within 1e-4), the chat API on the
same server, the prefix cache's hits in the usage, and the faults a fault proxy injects between
the two (429 with Retry-After, 500s, a connection reset mid-answer, a stall past the timeout):
every request answered once, the retries counted.

Cost: one in-process engine (its reference numbers, then closed) and one server, each ~1 min to
start on CPU, then seconds per test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import vllm_options
from tribunal.jobs.demo import demo_rows
from tribunal.jobs.engines import EngineConfig, GenerationRequest, SamplingConfig, ScoreRequest
from tribunal.jobs.engines.openai_engine import EndpointConfig
from tribunal.schemas.errors import TribunalError
from tribunal.training.toy.recipe import COMMITTED

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from openai_proxy import FaultProxy, VLLMServer  # noqa: E402

MODEL = str(COMMITTED / "toy-grm")
TOL = 1e-4
GREEDY = SamplingConfig(temperature=0.0, max_tokens=48)
SEEDED = SamplingConfig(temperature=1.0, max_tokens=48)


def _messages(n: int) -> list[list[dict]]:
    from tribunal.jobs.grm import trajectories as tr
    from tribunal.jobs.grm.protocol import load_template

    template = load_template("toy")
    out = []
    for row in demo_rows(n)[:n]:
        spec = tr.plan_trajectories(row["id"], len(row["responses"]), 1, 0)[0]
        out.append(tr.messages_for(template, row, spec))
    return out


def _score_requests(prompts: list[str]) -> list[ScoreRequest]:
    out = [ScoreRequest(prefix=p + "Analysis: ", continuation=f"Response {1 + i % 2} is correct. Scores: \\boxed{{9, 2}}",
                        suffix="" if i % 2 else " Done.") for i, p in enumerate(prompts)]
    return out + [ScoreRequest(prefix="The answer is 4", continuation="2 exactly.")]


def _texts(results) -> list[tuple]:
    return [(g.text, g.finish_reason, g.completion_tokens) for r in results for g in r.generations]


@pytest.fixture(scope="module")
def reference(vllm_device):
    """The in-process vLLM engine's answers, computed and the engine closed before the server starts."""
    from tribunal.jobs.engines.vllm_engine import VLLMEngine

    eng = VLLMEngine(EngineConfig(kind="vllm", model=MODEL, dtype="float32", **{**vllm_options(vllm_device), "max_model_len": 1024}))
    try:
        prompts = [eng.render_chat(m) for m in _messages(12)]
        greedy_reqs = [GenerationRequest(p, 2, seed=i) for i, p in enumerate(prompts)]
        seeded_reqs = [GenerationRequest(p, 3, seed=100 + i) for i, p in enumerate(prompts[:6])]
        return {
            "prompts": prompts,
            "greedy_reqs": greedy_reqs,
            "greedy": eng.generate(greedy_reqs, GREEDY),
            "seeded_reqs": seeded_reqs,
            "seeded": eng.generate(seeded_reqs, SEEDED),
            "scores": eng.score_continuation(_score_requests(prompts[:6])),
        }
    finally:
        eng.close()


@pytest.fixture(scope="module")
def server(reference, tmp_path_factory):
    s = VLLMServer(MODEL, tmp_path_factory.mktemp("vllm_server") / "server.log")
    yield s
    s.stop()


def _engine(base_url: str, **kw):
    from tribunal.jobs.engines.openai_engine import OpenAIEngine

    model = kw.pop("model", MODEL)
    return OpenAIEngine(EngineConfig(kind="openai", model=model, endpoint=EndpointConfig(base_url=base_url, **kw)))


@pytest.fixture(scope="module")
def engine(server):
    e = _engine(server.base_url, timeout_s=120)
    yield e
    e.close()


def test_the_served_model_is_found_and_its_context_read(engine, server):
    assert engine.served_model == server.models[0] == MODEL  # vLLM names it by the path it was given
    assert engine.max_context == 1024  # from /v1/models: prompts that fill it are set aside before sending


def test_generations_match_the_in_process_engine(engine, reference):
    """The prompt rendered here, sent as its token ids: greedy and seeded texts, finish reasons and
    token counts equal those of --engine vllm on the same model."""
    assert [engine.render_chat(m) for m in _messages(12)] == reference["prompts"]
    greedy = engine.generate(reference["greedy_reqs"], GREEDY)
    assert [r.prompt_tokens for r in greedy] == [r.prompt_tokens for r in reference["greedy"]]
    assert _texts(greedy) == _texts(reference["greedy"])
    assert len({g.text for r in greedy for g in r.generations}) > 1 and all(len(r.generations) == 2 for r in greedy)
    seeded = engine.generate(reference["seeded_reqs"], SEEDED)
    assert _texts(seeded) == _texts(reference["seeded"])
    assert all(len({g.text for g in r.generations}) > 1 for r in seeded)  # n samples, each its own


def test_score_continuation_matches_the_in_process_engine(engine, reference):
    got = engine.score_continuation(_score_requests(reference["prompts"][:6]))
    for a, b in zip(got, reference["scores"], strict=True):
        assert a.token_ids == b.token_ids and a.prompt_tokens == b.prompt_tokens and len(a.logprobs) > 0
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL


def test_usage_and_the_prefix_cache(engine, reference):
    before = engine.usage()
    long = reference["prompts"][0] * 4
    first = engine.generate([GenerationRequest(long, 1, seed=1)], SamplingConfig(max_tokens=2))[0]
    second = engine.generate([GenerationRequest(long, 1, seed=2)], SamplingConfig(max_tokens=2))[0]
    assert first.prompt_tokens > 300 and 0 < second.cached_tokens < second.prompt_tokens
    after = engine.usage()
    assert after["requests"] - before["requests"] == 2 and after["retries"] == before["retries"]
    assert after["prompt_tokens"] - before["prompt_tokens"] == first.prompt_tokens + second.prompt_tokens
    assert after["completion_tokens"] - before["completion_tokens"] == sum(g.completion_tokens for g in first.generations + second.generations)


def test_the_chat_api_on_the_same_server(server, engine, reference):
    """--api chat, no model directory: the server applies the model's chat template itself, so the
    greedy answers equal those of the completions API on the prompt rendered here."""
    chat = _engine(server.base_url, api="chat", model="")
    try:
        assert chat.served_model == MODEL and chat.max_context is None
        reqs = [GenerationRequest(chat.render_chat(m), 1, seed=i) for i, m in enumerate(_messages(4))]
        got = chat.generate(reqs, GREEDY)
        assert [g.text for r in got for g in r.generations] == [r.generations[0].text for r in reference["greedy"][:4]]
        assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in reference["greedy"][:4]]
        with pytest.raises(TribunalError, match=r"^score_continuation needs the prompt_logprobs of /v1/completions"):
            chat.score_continuation(_score_requests(reference["prompts"][:1]))
    finally:
        chat.close()


def test_a_wrong_served_model_is_one_line(server):
    eng = _engine(server.base_url, served_model="no-such-model")
    try:
        with pytest.raises(TribunalError, match=rf"^http://127.0.0.1:{server.port}/v1/completions: HTTP 404 for a generation request .*"
                                                r"is --served-model right"):
            eng.generate([GenerationRequest("x", 1, seed=0)], SamplingConfig(max_tokens=2))
    finally:
        eng.close()


def test_faults_between_engine_and_server_leave_one_answer_per_request(server, reference):
    """429 with Retry-After, 500s, two connections reset after the server answered (the work was
    done: the retry asks again) and a stall past the 5 s timeout, among 12 requests: each request
    gets exactly one result, equal to the fault-free one, and every fault is one counted retry."""
    plan = ["429", None, "500", "reset", None, "stall", "500", None, "reset"]
    proxy = FaultProxy(server.port, plan=list(plan))
    eng = _engine(proxy.base_url, timeout_s=5, retry_backoff_s=0.05, max_retries=4, max_in_flight=4)
    try:
        got = eng.generate(reference["greedy_reqs"], GREEDY)
        assert _texts(got) == _texts(reference["greedy"])
        faults = sum(1 for f in plan if f is not None)
        u = eng.usage()
        failed = {k[len("failed_"):]: v for k, v in u.items() if k.startswith("failed_")}
        # a real answer slower than 5 s on a loaded machine would be one more counted timeout
        assert (failed["429"], failed["500"], failed["connection"]) == (1, 2, 2) and failed["timeout"] >= 1
        assert u["retries"] == sum(failed.values()) >= faults and u["requests"] == len(got)
        assert u["attempts"] == len(got) + u["retries"] + 1  # + the model list at start
        assert (proxy.counts["fault_429"], proxy.counts["fault_500"], proxy.counts["fault_reset"], proxy.counts["fault_stall"]) == (1, 2, 2, 1)
        assert proxy.posts("/v1/completions") == len(got) + u["retries"]
    finally:
        eng.close()
        proxy.close()
