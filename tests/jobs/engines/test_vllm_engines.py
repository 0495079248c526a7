"""The vLLM engine, for real, on the device the installed vLLM targets (the vLLM tier): vLLM's CPU
build in CI (`make test-vllm`), a CUDA build on a GPU. Held to the transformers engine's numbers on
the same tiny model in float32: greedy texts identical, continuation scores and classifier
probabilities within 1e-4.

Engines cost ~1 min each to start on CPU: one generate engine and one classify engine per module.
"""

from __future__ import annotations

import os
import signal

import pytest

from conftest import make_rows, vllm_options
from tribunal.jobs.engines import EngineConfig, GenerationRequest, SamplingConfig, ScoreRequest

TOL = 1e-4


def _cfg(model, device, **kw):
    return EngineConfig(kind="vllm", model=model, dtype="float32", **vllm_options(device), **kw)


@pytest.fixture(scope="module")
def vllm_engine(vllm_device, tiny_model):
    from tribunal.jobs.engines.vllm_engine import VLLMEngine

    import psutil

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    # float32: a rerun then reproduces the texts exactly even where it hits the prefix cache
    engine = VLLMEngine(_cfg(tiny_model, vllm_device))
    engine.test_pids = {p.pid for p in me.children(recursive=True)} - before  # its engine processes
    yield engine
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - the last test kills this engine; closing it may complain
        pass


@pytest.fixture(scope="module")
def hf_engine(vllm_device, tiny_model):
    from tribunal.jobs.engines.hf_engine import TransformersEngine

    return TransformersEngine(EngineConfig(kind="transformers", model=tiny_model, dtype="float32", device=vllm_device))


def _prompts(engine, n: int) -> list[str]:
    rows = make_rows(n)
    return [engine.render_chat(list(r["context"][:-1]) + [{"role": "user", "content": r["context"][-1]["content"] + "\n\n" + "\n---\n".join(r["responses"])}]) for r in rows]


def test_vllm_engine_generates_n_per_request_and_is_seeded(vllm_engine):
    prompt = vllm_engine.render_chat([{"role": "user", "content": "Score these responses."}])
    reqs = [GenerationRequest(prompt, 3, seed=11), GenerationRequest(prompt, 2, seed=12)]
    sampling = SamplingConfig(temperature=1.0, max_tokens=16)
    out = vllm_engine.generate(reqs, sampling)
    assert [len(r.generations) for r in out] == [3, 2]
    assert all(g.finish_reason in ("stop", "length") and 0 < g.completion_tokens <= 16 for r in out for g in r.generations)
    assert out[0].prompt_tokens == out[1].prompt_tokens > 0
    again = vllm_engine.generate(reqs, sampling)
    assert [g.text for r in again for g in r.generations] == [g.text for r in out for g in r.generations]
    # a prompt longer than a few KV blocks, asked twice: the engine's prefix cache serves the second
    long = _prompts(vllm_engine, 1)[0] * 8
    first = vllm_engine.generate([GenerationRequest(long, 1, seed=1)], SamplingConfig(max_tokens=2))
    second = vllm_engine.generate([GenerationRequest(long, 1, seed=2)], SamplingConfig(max_tokens=2))
    assert first[0].prompt_tokens > 300 and 0 < second[0].cached_tokens < second[0].prompt_tokens
    other = vllm_engine.generate([GenerationRequest(prompt, 3, seed=99)], sampling)
    assert [g.text for g in other[0].generations] != [g.text for g in out[0].generations]


def test_many_long_seeded_requests_at_once(vllm_engine):
    """More prompt tokens than one engine step takes, all seeded: on vLLM's CPU build a split
    (chunked) prefill of a seeded request kills the engine, so the engine prefills prompts whole."""
    prompts = [p * 5 for p in _prompts(vllm_engine, 24)]
    out = vllm_engine.generate([GenerationRequest(p, 2, seed=i) for i, p in enumerate(prompts)], SamplingConfig(max_tokens=4))
    assert sum(r.prompt_tokens for r in out) > 4096 and all(len(r.generations) == 2 for r in out)


def test_vllm_engine_greedy_repeats_its_one_answer(vllm_engine):
    prompt = vllm_engine.render_chat([{"role": "user", "content": "Score these responses."}])
    out = vllm_engine.generate([GenerationRequest(prompt, 3, seed=5)], SamplingConfig(temperature=0.0, max_tokens=16))
    texts = [g.text for g in out[0].generations]
    assert len(texts) == 3 and len(set(texts)) == 1


def test_greedy_generations_match_transformers(vllm_engine, hf_engine):
    prompts = _prompts(hf_engine, 16)
    assert prompts == _prompts(vllm_engine, 16)
    reqs = [GenerationRequest(p, 1, seed=i) for i, p in enumerate(prompts)]
    sampling = SamplingConfig(temperature=0.0, max_tokens=32)
    v = vllm_engine.generate(reqs, sampling)
    h = hf_engine.generate(reqs, sampling)
    assert [r.prompt_tokens for r in v] == [r.prompt_tokens for r in h]
    assert [(g.text, g.finish_reason, g.completion_tokens) for r in v for g in r.generations] == [
        (g.text, g.finish_reason, g.completion_tokens) for r in h for g in r.generations
    ]
    assert len({g.text for r in v for g in r.generations}) > 1  # the prompts do steer the model


def _score_requests(engine) -> list[ScoreRequest]:
    out = []
    for i, prompt in enumerate(_prompts(engine, 8)):
        answer = f"The better response is [[{1 + i % 2}]] because it is correct."
        out.append(ScoreRequest(prefix=prompt + "Reasoning: both are plausible. ", continuation=answer, suffix=" Done." if i % 3 else ""))
    out.append(ScoreRequest(prefix="The answer is wor", continuation="ld peace."))  # a boundary inside a merged token
    return out


def test_score_continuation_matches_transformers(vllm_engine, hf_engine):
    reqs = _score_requests(hf_engine)
    v = vllm_engine.score_continuation(reqs)
    h = hf_engine.score_continuation(reqs)
    assert len(v) == len(h) == len(reqs)
    for a, b in zip(v, h):
        assert a.token_ids == b.token_ids and a.prompt_tokens == b.prompt_tokens and len(a.logprobs) == len(a.token_ids) > 0
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < TOL
        assert all(x <= 0 for x in a.logprobs)
    # scored again, now from the prefix cache, the numbers do not move
    again = vllm_engine.score_continuation(reqs[:2])
    assert [r.logprobs for r in again] == [r.logprobs for r in v[:2]]


def test_engines_refuse_the_other_task(vllm_engine, hf_engine):
    from tribunal.schemas.errors import TribunalError

    for eng in (vllm_engine, hf_engine):
        with pytest.raises(TribunalError, match="task='classify'"):
            eng.classify(["x"])


def test_vllm_engine_load_is_safetensors_only(vllm_engine):
    cfg = vllm_engine._engine.vllm_config
    assert str(cfg.load_config.load_format) == "safetensors" and cfg.model_config.trust_remote_code is False


# ---------------------------------------------------------------- classify
@pytest.fixture(scope="module")
def classifiers(vllm_device, tiny_classifier):
    from tribunal.jobs.engines.hf_engine import TransformersEngine
    from tribunal.jobs.engines.vllm_engine import VLLMEngine

    hf = TransformersEngine(EngineConfig(kind="transformers", model=tiny_classifier, task="classify", dtype="float32", device=vllm_device))
    v = VLLMEngine(_cfg(tiny_classifier, vllm_device, task="classify"))
    yield v, hf
    v.close()


def test_classify_matches_transformers(classifiers):
    v, hf = classifiers
    msgs = [list(r["context"]) + [{"role": "assistant", "content": r["responses"][i % 2]}] for i, r in enumerate(make_rows(12))]
    texts = [hf.render_chat(m, add_generation_prompt=False) for m in msgs] + ["short", "a b c d e f g " * 40]
    assert texts[:12] == [v.render_chat(m, add_generation_prompt=False) for m in msgs]
    pv, ph = v.classify(texts), hf.classify(texts)
    assert len(pv) == len(ph) == len(texts)
    assert all(0 < p < 1 for p in pv)
    assert max(abs(a - b) for a, b in zip(pv, ph)) < TOL
    assert max(pv) - min(pv) > 1e-3  # the inputs do move the score
    with pytest.raises(Exception, match="task='generate'"):
        v.generate([GenerationRequest("x", 1, 0)], SamplingConfig(max_tokens=2))


# ---------------------------------------------------------------- last: it kills the module's engine
def test_dead_engine_fails_the_batch_clearly(vllm_engine):
    """The engine's processes SIGKILLed mid-batch: generate raises one clear error, no hang."""
    import threading

    prompt = vllm_engine.render_chat([{"role": "user", "content": "Score these responses."}])
    assert vllm_engine.test_pids
    killer = threading.Timer(0.5, lambda: [os.kill(pid, signal.SIGKILL) for pid in vllm_engine.test_pids])
    killer.start()
    # 1024 requests x 2 samples at temperature 2 take about 4 s on an idle 2-core machine (512 took
    # 2 s, and once ended before a kill at 2 s: the trained tiny model stops early); the kill lands
    # at 0.5 s, while they are being added or generated, both of which must fail the same way.
    with pytest.raises(RuntimeError, match="vLLM engine process died mid-batch"):
        vllm_engine.generate([GenerationRequest(prompt, 2, seed=i) for i in range(1024)], SamplingConfig(temperature=2.0, max_tokens=4000))
    killer.join()
