"""The openai engine's options and its HTTP behaviour that needs no model server (the main tier):
flags on every engine job carried into one EndpointConfig, rate limits split over the pool, what a
chat API refuses before anything starts, the key read from the environment only, and the retry
budget against a loopback endpoint that never recovers (the fault proxy with no upstream).
The vLLM tier (test_openai_engine.py, test_openai_jobs.py) runs all of it against a real server."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import pytest

from tribunal.jobs.engines import EngineConfig
from tribunal.jobs.engines.openai_engine import (
    CHAT_PREFIX,
    EndpointConfig,
    backoff_s,
    decode_chat,
    encode_chat,
    parse_headers,
    retry_after_s,
    usage_report,
)
from tribunal.schemas.errors import TribunalError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from openai_proxy import FaultProxy  # noqa: E402

URL = "http://127.0.0.1:9/v1"


def _score_cfg(**kw):
    from tribunal.jobs.score import ScoreConfig

    return ScoreConfig(input="x", output="y", **kw)


def test_endpoint_options_reach_the_engine_config(tiny_model):
    from tribunal.jobs.sample import SampleConfig

    cfg = SampleConfig(input="x", output="y", model=tiny_model, engine="openai", base_url=URL, served_model="grm", api_key_env="MY_KEY",
                       extra_headers="X-A: 1; X-B: env:SOME_VAR", request_timeout_s=5, max_in_flight=7, requests_per_min=600,
                       tokens_per_min=90000, max_retries=3, retry_backoff_s=0.5, concurrency=3)
    e = cfg.engine_config()
    assert e.kind == "openai" and e.model == tiny_model
    assert e.endpoint == EndpointConfig(base_url=URL, api="completions", served_model="grm", api_key_env="MY_KEY",
                                        headers=(("X-A", "1"), ("X-B", "env:SOME_VAR")), timeout_s=5, max_in_flight=7,
                                        requests_per_min=200, tokens_per_min=30000, max_retries=3, retry_backoff_s=0.5)
    # the in-process engines get no endpoint; the pool of an openai job is CPU-only, batches overlap
    assert SampleConfig(input="x", output="y", model=tiny_model).engine_config().endpoint is None
    pool = cfg.pool()
    assert pool.num_gpus == 0 and pool.concurrent_batches == 8 and pool.size == 3


def test_endpoint_option_checks_name_their_key(tiny_model):
    with pytest.raises(ValueError, match="'base_url'"):
        _score_cfg(model=tiny_model, engine="openai")
    with pytest.raises(ValueError, match="'base_url'"):
        _score_cfg(model=tiny_model, engine="openai", base_url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="'extra_headers'"):
        _score_cfg(model=tiny_model, engine="openai", base_url=URL, extra_headers="no colon here")
    with pytest.raises(ValueError, match="'requests_per_min'"):
        _score_cfg(model=tiny_model, engine="openai", base_url=URL, requests_per_min=0)
    with pytest.raises(ValueError, match="'model'"):  # completions mode renders with the local template
        _score_cfg(engine="openai", base_url=URL, served_model="m")
    # a hosted chat API needs no model directory: the served model's name stands for it
    cfg = _score_cfg(engine="openai", base_url=URL, api="chat", served_model="gpt-x", mode="grm")
    assert cfg.engine_config().endpoint.served_model == "gpt-x" and cfg.engine_config().model == ""


def test_chat_api_refuses_what_it_cannot_serve_before_anything_starts(tiny_model, monkeypatch):
    from tribunal.jobs.metarm_score import MetaRmScoreConfig

    m = MetaRmScoreConfig(input="x", output="y", model=tiny_model, engine="openai", base_url=URL, api="chat")
    with pytest.raises(TribunalError, match=r"^classify needs vLLM's /classify endpoint \(.*\); --api chat \(http://127.0.0.1:9/v1/chat/completions, "
                                             r"a hosted chat API\) has none"):
        m.preflight()
    _score_cfg(model=tiny_model, engine="openai", base_url=URL, api="chat", mode="grm").preflight()  # generation: served
    with pytest.raises(TribunalError, match="--api-key-env TRIBUNAL_TEST_UNSET_KEY: that environment variable is not set"):
        monkeypatch.delenv("TRIBUNAL_TEST_UNSET_KEY", raising=False)
        _score_cfg(model=tiny_model, engine="openai", base_url=URL, mode="grm", api_key_env="TRIBUNAL_TEST_UNSET_KEY").preflight()
    # the engine itself refuses too (a job that calls score_continuation on a chat endpoint)
    from tribunal.jobs.engines.openai_engine import OpenAIEngine

    with pytest.raises(TribunalError, match="^classify needs"):
        OpenAIEngine(EngineConfig(kind="openai", task="classify", endpoint=EndpointConfig(base_url=URL, api="chat")))


def test_pure_parts():
    assert parse_headers("A: 1;B:two words ; ") == (("A", "1"), ("B", "two words"))
    assert parse_headers(None) == ()
    assert retry_after_s("2") == 2.0 and retry_after_s("-1") == 0.0 and retry_after_s("1e9") == 300.0
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert 0 <= retry_after_s(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))) <= 31
    rng = random.Random(0)
    draws = [backoff_s(r, 1.0, 60.0, rng) for r in range(1, 12) for _ in range(50)]
    assert all(0 <= d <= 60 for d in draws) and max(draws) > 30  # full jitter up to the cap
    assert max(backoff_s(1, 1.0, 60.0, rng) for _ in range(200)) <= 1.0
    msgs = [{"role": "user", "content": "é \x00 x"}]
    assert encode_chat(msgs).startswith(CHAT_PREFIX) and decode_chat(encode_chat(msgs)) == msgs
    with pytest.raises(TribunalError, match="render_chat"):
        decode_chat("<|im_start|>user")
    block, line = usage_report({"requests": 10, "retries": 3, "failed_429": 2, "failed_timeout": 1, "prompt_tokens": 2_000_000,
                                "completion_tokens": 500_000, "cached_tokens": 1_000_000}, 0.5, 2.0)
    assert block["cost_usd"] == 2.0 and block["failed_attempts"] == {"429": 2, "timeout": 1}
    assert line == ("endpoint usage: 10 requests, 3 retries (failed attempts: 429 2, timeout 1); 2000000 prompt tokens (1000000 cached), "
                    "500000 completion tokens; estimated cost $2.0000")
    assert usage_report({})[0]["cost_usd"] is None


def test_retry_budget_then_one_line_and_the_key_only_in_its_header(monkeypatch):
    """An endpoint that answers 429 with Retry-After twice, then 503 to everything: the engine
    waits out Retry-After, retries exactly --max-retries times, then fails with one line naming the
    endpoint and the last error, never the key, which went out only as the Authorization header."""
    from tribunal.jobs.engines import GenerationRequest, SamplingConfig
    from tribunal.jobs.engines.openai_engine import OpenAIEngine

    secret = "sk-sentinel-openai-key-3f9a1c"
    monkeypatch.setenv("TRIBUNAL_TEST_KEY", secret)
    proxy = FaultProxy(upstream_port=None, plan=["429", "429"])
    engine = None
    try:
        ep = EndpointConfig(base_url=proxy.base_url, api="chat", api_key_env="TRIBUNAL_TEST_KEY", max_retries=3, retry_backoff_s=0.05,
                            timeout_s=5)
        engine = OpenAIEngine(EngineConfig(kind="openai", endpoint=ep))
        assert engine.served_model == "m" and engine.max_context is None  # the endpoint's only model
        prompt = engine.render_chat([{"role": "user", "content": "hi"}])
        t0 = time.monotonic()
        with pytest.raises(TribunalError) as err:
            engine.generate([GenerationRequest(prompt, 1, seed=0)], SamplingConfig(max_tokens=4))
        waited = time.monotonic() - t0
        assert str(err.value) == (f"the endpoint http://127.0.0.1:{proxy.port}/v1/chat/completions failed a generation request 4 times "
                                  "(3 retries, --max-retries); last error: HTTP 503: no upstream")
        assert 2.0 <= waited < 6  # two Retry-After: 1, then two short backoffs
        posts = [h for m, _, h in proxy.seen if m == "POST"]
        assert len(posts) == 4 and proxy.counts["fault_429"] == 2 and proxy.counts["no_upstream"] == 2
        assert all(h.get("authorization") == f"Bearer {secret}" for _, _, h in proxy.seen)
        u = engine.usage()
        assert (u["attempts"], u["retries"], u["requests"], u["failed_429"], u["failed_503"]) == (5, 3, 0, 2, 2)
        assert secret not in repr(engine.usage()) + str(err.value) + repr(ep)
    finally:
        if engine is not None:
            engine.close()
        proxy.close()


def test_a_dead_endpoint_fails_the_start_with_one_line():
    """Connection refused (nothing listens): the engine's start, which lists the models, fails
    after its budget with one line naming the endpoint."""
    from tribunal.jobs.engines.openai_engine import OpenAIEngine

    proxy = FaultProxy(upstream_port=None)
    proxy.down()
    port = proxy.port
    proxy.close()
    ep = EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1", api="chat", max_retries=2, retry_backoff_s=0.01, timeout_s=2)
    with pytest.raises(TribunalError, match=rf"^the endpoint http://127.0.0.1:{port}/v1/models failed list models 3 times \(2 retries, "
                                            r"--max-retries\); last error: ConnectError: "):
        OpenAIEngine(EngineConfig(kind="openai", endpoint=ep))


def test_the_rate_limit_bucket():
    """600/min: ten seconds' worth (100) at once, then 10 a second; a request that used more than
    it reserved makes the next ones wait for it."""
    import asyncio

    from tribunal.jobs.engines.openai_engine import _Bucket

    async def go():
        b = _Bucket(600)
        t0 = time.monotonic()
        for _ in range(100):
            await b.acquire(1)
        burst = time.monotonic() - t0
        for _ in range(5):
            await b.acquire(1)
        paced = time.monotonic() - t0
        b.give(-10)  # 10 more used than reserved: a second's worth owed
        t1 = time.monotonic()
        await b.acquire(1)
        return burst, paced, time.monotonic() - t1

    burst, paced, owed = asyncio.run(go())
    assert burst < 0.2 and 0.4 <= paced < 1.5 and 0.9 <= owed < 2.0
