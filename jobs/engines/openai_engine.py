"""OpenAI-compatible engine: the jobs' three operations through an HTTP endpoint (``--engine openai``).

Two modes (``EndpointConfig.api``):

- ``completions`` (a server running your model: vLLM, or one that speaks vLLM's extensions):
  tribunal renders the prompt with the local model directory's chat template, exactly as the
  in-process engines do, tokenizes it without adding special tokens, and sends the token ids to
  ``/v1/completions``, so the server sees the very tokens ``--engine vllm`` would. ``generate`` is
  one request per ``GenerationRequest`` (``n`` and ``seed`` as the request carries them);
  ``score_continuation`` reads the server's ``prompt_logprobs`` (a vLLM extension) and
  ``classify`` its ``/classify`` endpoint (vLLM's pooling runner).
- ``chat`` (a hosted API that applies its own template): ``/v1/chat/completions`` with the
  messages. ``render_chat`` returns the messages encoded (``CHAT_PREFIX`` + JSON), which this
  engine's ``generate`` decodes, so the stages need not know. ``score_continuation`` and
  ``classify`` are refused: a hosted chat API has no prompt log-probabilities or classifier.

The client is ``httpx``'s async one on a private event-loop thread (as ``vllm_engine`` drives its
engine): ``generate`` is thread-safe and blocking, so an actor running several batches at once
keeps all their requests in flight together, up to ``max_in_flight``. Requests and tokens per
minute are metered by token buckets (a pool's limit divided among its actors by the job config).
Failures that may pass (429, 5xx, 408, timeouts, refused or reset connections, a truncated body)
are retried with exponential backoff and full jitter, honouring ``Retry-After``; after
``max_retries`` retries of one request the batch fails with one line naming the endpoint and the
last error (a ``TribunalError``: the job stops and a re-run resumes). A request the server
refuses for its content (400, 413, 422) raises ``RequestRejected``: the stage sets that sample
aside. Every request yields exactly one result, whatever was retried, so a batch's rows are
written once.

The API key is read from the environment variable the config names (never the key itself in a
config), in the actor, and is sent only as the ``Authorization`` header: no message, record or
log line carries it. Usage (requests, retries, tokens) is counted per actor and posted to Ray's
key-value store under the Ray job, where the driver sums it (``endpoint_usage``) for the manifest.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from tribunal.schemas.errors import TribunalError

API_MODES = ("completions", "chat")
CHAT_PREFIX = "\x00tribunal-chat\x00"  # render_chat's encoding of messages in chat mode
# Answers that may pass if asked again: rate limits, overload, a gateway's timeout, server errors.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
REJECT_STATUS = frozenset({400, 413, 422})  # this request's content: its sample is set aside
RETRY_AFTER_MAX_S = 300.0  # a Retry-After longer than this is cut to it
# The endpoint's finish reasons as the trajectory's stop/length; others mean the request failed.
FINISH_REASONS = {"stop": "stop", "eos": "stop", "end_turn": "stop", "stop_sequence": "stop", "repetition": "stop",
                  "content_filter": "stop", "tool_calls": "stop", "function_call": "stop",
                  "length": "length", "max_tokens": "length"}
USAGE_NAMESPACE = "tribunal_endpoint"
USAGE_KEYS = ("requests", "attempts", "retries", "prompt_tokens", "completion_tokens", "cached_tokens")


@dataclass(frozen=True)
class EndpointConfig:
    """Where an OpenAI-compatible endpoint is and how to talk to it (``--engine openai``)."""

    base_url: str  # e.g. http://127.0.0.1:8000/v1 (the part before /completions)
    api: str = "completions"  # completions (the server runs the local model) or chat (a hosted chat API)
    served_model: str | None = None  # the model name the endpoint knows; None = from /v1/models
    api_key_env: str | None = None  # NAME of the environment variable holding the key (never the key)
    headers: tuple[tuple[str, str], ...] = ()  # extra HTTP headers; a value "env:VAR" is read from $VAR
    timeout_s: float = 600.0  # one attempt's limit, connect to last byte (seconds)
    max_in_flight: int = 64  # requests one actor has at the endpoint at once
    requests_per_min: float | None = None  # this actor's share of the pool's request rate limit
    tokens_per_min: float | None = None  # this actor's share of the token rate limit (prompt + max new tokens)
    max_retries: int = 8  # retries of one request before its batch fails
    retry_backoff_s: float = 1.0  # first retry's backoff ceiling; doubles each retry (full jitter)
    retry_max_s: float = 60.0  # backoff ceiling

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint base_url must start with http:// or https://, got {self.base_url!r}")
        if self.api not in API_MODES:
            raise ValueError(f"endpoint api must be one of {API_MODES}, got {self.api!r}")
        for name in ("timeout_s", "retry_backoff_s", "retry_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"endpoint {name} must be > 0, got {getattr(self, name)}")
        if self.max_in_flight < 1 or self.max_retries < 0:
            raise ValueError(f"endpoint max_in_flight must be >= 1 and max_retries >= 0, got {self.max_in_flight}, {self.max_retries}")
        for name in ("requests_per_min", "tokens_per_min"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"endpoint {name} must be > 0, got {v}")

    @property
    def url(self) -> str:
        """The base URL as it may be shown: no user info, no query (``redact.scrub_url``)."""
        from tribunal.cluster.redact import scrub_url

        return scrub_url(self.base_url.rstrip("/"))


def parse_headers(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"Name: value; Other: value"`` as pairs (the ``--extra-headers`` form)."""
    out = []
    for part in (text or "").split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"extra header {part.strip()!r} is not 'Name: value'")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def retry_after_s(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), or None."""
    if not value:
        return None
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return min(max(when - time.time(), 0.0), RETRY_AFTER_MAX_S)


def backoff_s(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in ``[0, min(cap, base * 2**(retry - 1))]`` for the ``retry``-th retry."""
    return rng.uniform(0.0, min(cap, base * 2 ** max(retry - 1, 0)))


def encode_chat(messages: Sequence[dict]) -> str:
    return CHAT_PREFIX + json.dumps([{"role": m["role"], "content": m["content"]} for m in messages], ensure_ascii=False)


def decode_chat(prompt: str) -> list[dict]:
    if not prompt.startswith(CHAT_PREFIX):
        raise TribunalError("the openai engine in chat mode takes prompts from its own render_chat (a rendered template text cannot be sent to a chat API)")
    return json.loads(prompt[len(CHAT_PREFIX):])


class RequestRejected(RuntimeError):
    """The endpoint refused one request for its content (HTTP 400/413/422): not retried, and not
    the endpoint's fault: the stage sets the sample aside with this message."""


class _Bucket:
    """A token bucket on the engine's event loop: ``rate`` per second, holding at most ``capacity``
    (ten seconds' worth, so a start does not burst a whole minute's allowance). ``take`` may drive
    the level below zero (a request that used more than it reserved); later takers then wait."""

    def __init__(self, per_min: float):
        self.rate = per_min / 60.0
        self.capacity = max(self.rate * 10.0, 1.0)
        self.level = self.capacity
        self.t = time.monotonic()

    def _fill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    async def acquire(self, amount: float) -> None:
        import asyncio

        amount = min(amount, self.capacity)  # more than a full bucket would wait forever
        while True:
            self._fill()
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)

    def give(self, amount: float) -> None:
        """Return (``amount`` > 0) or charge more (< 0) once the true cost is known."""
        self._fill()
        self.level = min(self.capacity, self.level + amount)


class OpenAIEngine:
    """The engine contract over an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, cfg):
        import asyncio

        try:
            import httpx
        except ImportError:
            raise TribunalError("the openai engine needs httpx: pip install 'tribunal[openai]'") from None
        ep: EndpointConfig | None = cfg.endpoint
        if ep is None:
            raise TribunalError("the openai engine needs an endpoint: --base-url URL")
        self.ep = ep
        self.task = cfg.task
        self.chat = ep.api == "chat"
        if self.chat and cfg.task == "classify":
            raise TribunalError(refused("classify", ep))
        self._httpx = httpx
        self.stats: Counter = Counter()
        self.failures: Counter = Counter()  # failed attempts by reason (429, 503, timeout, connection ...)
        self._rng = random.Random()
        headers = {"User-Agent": "tribunal"}
        for name, value in ep.headers:
            if value.startswith("env:"):
                if not os.environ.get(value[4:]):
                    raise TribunalError(f"--extra-headers {name}: env:{value[4:]}: that environment variable is not set where the engine runs")
                value = os.environ[value[4:]]
            headers[name] = value
        if ep.api_key_env:
            key = os.environ.get(ep.api_key_env)
            if not key:
                raise TribunalError(f"--api-key-env {ep.api_key_env}: that environment variable is not set where the engine runs")
            headers["Authorization"] = f"Bearer {key}"
        self.tokenizer = None
        self.max_context: int | None = None
        if cfg.model and not self.chat:
            from transformers import AutoTokenizer

            try:
                self.tokenizer = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True, trust_remote_code=False)
            except Exception as e:  # noqa: BLE001 - missing files, a tokenizer transformers cannot read
                raise TribunalError(f"cannot load the tokenizer of {cfg.model}: {type(e).__name__}: {str(e).strip()[:200]}") from None
        elif not self.chat:
            raise TribunalError("--api completions needs --model: the local model directory whose tokenizer and chat template the server's model uses")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-loop", daemon=True)
        self._thread.start()

        async def _setup():
            self._sem = asyncio.Semaphore(ep.max_in_flight)
            self._requests = _Bucket(ep.requests_per_min) if ep.requests_per_min else None
            self._tokens = _Bucket(ep.tokens_per_min) if ep.tokens_per_min else None
            limits = httpx.Limits(max_connections=ep.max_in_flight, max_keepalive_connections=ep.max_in_flight)
            self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(ep.timeout_s), limits=limits)

        self._call(_setup())
        try:
            self.served_model, listed = self._call(self._resolve_model(cfg.model))
        except BaseException:
            self.close()
            raise
        if not self.chat:
            self.max_context = listed.get("max_model_len") or _local_context(cfg.model)
        self._usage = _UsagePoster()

    # ------------------------------------------------------------ plumbing
    def _call(self, coro):
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _url(self, path: str) -> str:
        base = self.ep.base_url.rstrip("/")
        if path.startswith("/v1/"):  # the base URL ends in /v1 (or another prefix the server uses)
            return base + path[3:]
        # vLLM's pooling endpoints hang off the server's root, not /v1
        return (base[: -len("/v1")] if base.endswith("/v1") else base) + path

    def _shown(self, path: str) -> str:
        from tribunal.cluster.redact import scrub_url

        return scrub_url(self._url(path))

    async def _resolve_model(self, model_dir: str) -> tuple[str, dict]:
        """The served model's name and its /v1/models entry ({} if not listed)."""
        data = await self._request("GET", "/v1/models", None, "list models")
        entries = {str(m.get("id")): m for m in (data.get("data") or []) if isinstance(m, dict)}
        want = self.ep.served_model
        if want:
            return want, entries.get(want, {})
        if model_dir:
            for name in (model_dir, os.path.abspath(model_dir), os.path.basename(os.path.normpath(model_dir))):
                if name in entries:
                    return name, entries[name]
        if len(entries) == 1:
            name = next(iter(entries))
            return name, entries[name]
        listed = ", ".join(sorted(entries)[:5]) + (" ..." if len(entries) > 5 else "")
        raise TribunalError(f"{self._shown('/v1/models')} serves {len(entries)} models ({listed or 'none'}): name one with --served-model")

    async def _request(self, method: str, path: str, body: dict | None, what: str, tokens: float = 0.0) -> dict:
        """One logical request, retried until it succeeds or the budget is spent."""
        import asyncio

        httpx = self._httpx
        url = self._url(path)
        last = "no attempt"
        wait: float | None = None
        for attempt in range(self.ep.max_retries + 1):
            if attempt:
                self.stats["retries"] += 1
                await asyncio.sleep(wait if wait is not None else backoff_s(attempt, self.ep.retry_backoff_s, self.ep.retry_max_s, self._rng))
            wait = None
            if self._requests is not None:
                await self._requests.acquire(1)
            if self._tokens is not None and tokens:
                await self._tokens.acquire(tokens)
            reason = None
            try:
                async with self._sem:
                    self.stats["attempts"] += 1
                    async with asyncio.timeout(self.ep.timeout_s):
                        resp = await self._client.request(method, url, json=body)
            except (TimeoutError, httpx.TimeoutException):
                reason, last = "timeout", f"no answer within {self.ep.timeout_s:g}s (--request-timeout-s)"
            except httpx.TransportError as e:  # refused, reset, closed mid-answer, a protocol error
                reason, last = "connection", f"{type(e).__name__}: {_first_line(e) or 'connection failed'}"
            else:
                status = resp.status_code
                if status == 200:
                    try:
                        data = resp.json()
                    except ValueError:
                        reason, last = "bad_response", "HTTP 200 with a body that is not JSON (cut short?)"
                    else:
                        if isinstance(data, dict):
                            return data
                        reason, last = "bad_response", "HTTP 200 with a JSON body that is not an object"
                elif status in RETRY_STATUS:
                    reason, last = str(status), f"HTTP {status}: {_body_line(resp)}"
                    wait = retry_after_s(resp.headers.get("retry-after"))
                elif status in (401, 403):
                    key = f"the key in ${self.ep.api_key_env}" if self.ep.api_key_env else "no API key (--api-key-env)"
                    raise TribunalError(f"{self._shown(path)} refused {what} with HTTP {status} ({_body_line(resp)}); sent {key}")
                elif status == 404:
                    raise TribunalError(f"{self._shown(path)}: HTTP 404 for {what} ({_body_line(resp)}): {not_found_hint(path, self.ep)}")
                elif status in REJECT_STATUS:
                    raise RequestRejected(f"{self._shown(path)} rejected the request (HTTP {status}): {_body_line(resp)}")
                else:
                    raise TribunalError(f"{self._shown(path)}: unexpected HTTP {status} for {what}: {_body_line(resp)}")
            if self._tokens is not None and tokens:
                self._tokens.give(tokens)  # nothing was processed: the reservation goes back
            self.failures[reason] += 1
        raise TribunalError(
            f"the endpoint {self._shown(path)} failed {what} {self.ep.max_retries + 1} times "
            f"({self.ep.max_retries} retries, --max-retries); last error: {last}"
        )

    def _run(self, coros: list):
        """Run coroutines on the loop; the first failure cancels the rest and is raised."""
        import asyncio

        async def _all():
            tasks = [asyncio.ensure_future(c) for c in coros]
            if not tasks:
                return []
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()
            return [t.result() for t in tasks]

        try:
            return self._call(_all())
        finally:
            self._usage.post(self.usage())

    def _usage_in(self, data: dict, reserved: float = 0.0) -> tuple[int, int, int]:
        """(prompt, completion, cached) tokens of one answer, counted into this engine's usage; the
        token bucket is settled: ``reserved`` (taken before the request) against what it used."""
        u = data.get("usage") or {}
        prompt, completion = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
        cached = int(((u.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        self.stats["requests"] += 1
        self.stats["prompt_tokens"] += prompt
        self.stats["completion_tokens"] += completion
        self.stats["cached_tokens"] += cached
        if self._tokens is not None and reserved:
            self._tokens.give(reserved - (prompt + completion))
        return prompt, completion, cached

    def usage(self) -> dict:
        """This engine's cumulative usage: requests answered, attempts, retries, failed attempts by
        reason (``failed_429`` ...), tokens."""
        out = {k: int(self.stats.get(k, 0)) for k in USAGE_KEYS}
        out.update({f"failed_{k}": int(v) for k, v in self.failures.items()})
        return out

    # ------------------------------------------------------------ the contract
    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        if self.chat:
            return encode_chat(messages)
        return self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)

    def _need(self, task: str, op: str) -> None:
        if self.task != task:
            raise TribunalError(f"{op} needs an engine built with task={task!r}; this one is task={self.task!r}")

    def generate(self, requests, sampling, on_result=None) -> list:
        self._need("generate", "generate")
        return self._run([self._generate_one(r, sampling, on_result) for r in requests])

    async def _generate_one(self, req, sampling, on_result):
        from tribunal.jobs.engines import Generation, RequestResult

        greedy = sampling.temperature == 0
        want = 1 if greedy else req.n  # greedy: ask once, repeat the (deterministic) answer, as the other engines do
        gens: list = []
        prompt_tokens = cached = 0
        # A server that ignores `n` (some hosted APIs) answers fewer choices: ask for the rest,
        # seeded on from where the answer stopped (bounded: each round adds at least one).
        for _ in range(want):
            if len(gens) >= want:
                break
            ask = want - len(gens)
            body = self._generate_body(req, sampling, ask, None if greedy else req.seed + len(gens))
            estimate = (len(body.get("prompt") or []) or _chars(body) // 4) + ask * sampling.max_tokens
            path = "/v1/chat/completions" if self.chat else "/v1/completions"
            data = await self._request("POST", path, body, "a generation request", tokens=estimate)
            p, completion, c = self._usage_in(data, estimate)
            prompt_tokens, cached = prompt_tokens or p, cached or c
            choices = sorted(data.get("choices") or [], key=lambda ch: ch.get("index", 0))[:ask]
            if not choices:
                raise RuntimeError(f"{self._shown(path)} answered without choices")
            split = _split(completion, len(choices))
            for ch, share in zip(choices, split):
                reason = FINISH_REASONS.get(str(ch.get("finish_reason")))
                if reason is None:
                    raise RuntimeError(f"{self._shown(path)} ended a generation with finish_reason={ch.get('finish_reason')!r}")
                text = (ch.get("message") or {}).get("content") if self.chat else ch.get("text")
                ids = ch.get("token_ids")
                gens.append(Generation(text=text or "", finish_reason=reason, completion_tokens=len(ids) if ids is not None else share))
        if greedy:
            gens = gens[:1] * req.n
        if not prompt_tokens and self.tokenizer is not None:
            prompt_tokens = len(self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"])
        result = RequestResult(prompt_tokens=prompt_tokens, generations=tuple(gens), cached_tokens=cached)
        if on_result is not None:
            on_result(result)  # progress, as each request finishes (on this event-loop thread)
        self._usage.maybe_post(self.usage())
        return result

    def _generate_body(self, req, sampling, n: int, seed: int | None) -> dict:
        body: dict = {"model": self.served_model, "n": n, "temperature": sampling.temperature}
        if sampling.top_p < 1:
            body["top_p"] = sampling.top_p
        if seed is not None:
            body["seed"] = seed
        if self.chat:
            body["messages"] = decode_chat(req.prompt)
            body["max_completion_tokens"] = sampling.max_tokens
        else:
            # the very tokens the in-process engines prefill: the template already carries any BOS
            body["prompt"] = self.tokenizer(req.prompt, add_special_tokens=False)["input_ids"]
            body["max_tokens"] = sampling.max_tokens
            body["return_token_ids"] = True  # vLLM: each choice's tokens (its completion_tokens)
        return body

    def score_continuation(self, requests) -> list:
        self._need("generate", "score_continuation")
        if self.chat:
            raise TribunalError(refused("score_continuation", self.ep))
        return self._run([self._score_one(r) for r in requests])

    async def _score_one(self, req):
        from tribunal.jobs.engines import ScoreResult, continuation_span

        ids, first, last = continuation_span(self.tokenizer, req)
        # prompt_logprobs=0: each prompt token's own log-probability, no top-k extras; one token
        # is generated because a request must generate something.
        body = {"model": self.served_model, "prompt": ids, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0}
        data = await self._request("POST", "/v1/completions", body, "a prompt_logprobs request", tokens=len(ids) + 1)
        self._usage_in(data, len(ids) + 1)
        choices = data.get("choices") or [{}]
        plp = choices[0].get("prompt_logprobs")
        if plp is None:
            raise TribunalError(f"{self._shown('/v1/completions')} returned no prompt_logprobs: score_continuation needs a vLLM server (its prompt_logprobs extension)")
        if len(plp) != len(ids):
            raise RuntimeError(f"{self._shown('/v1/completions')} returned {len(plp)} prompt logprobs for {len(ids)} tokens")
        picked = []
        for t in range(first, last):
            entry = (plp[t] or {}).get(str(ids[t]))
            if entry is None:
                raise RuntimeError(f"{self._shown('/v1/completions')}: no logprob for prompt token {t} (id {ids[t]})")
            picked.append(float(entry["logprob"] if isinstance(entry, dict) else entry))
        self._usage.maybe_post(self.usage())
        return ScoreResult(token_ids=tuple(ids[first:last]), logprobs=tuple(picked), prompt_tokens=len(ids))

    def classify(self, texts) -> list[float]:
        self._need("classify", "classify")
        return self._run([self._classify_one(t) for t in texts])

    async def _classify_one(self, text: str) -> float:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        body = {"model": self.served_model, "input": ids}
        data = await self._request("POST", "/classify", body, "a classify request", tokens=len(ids))
        self._usage_in(data, len(ids))
        rows = data.get("data") or []
        probs = rows[0].get("probs") if rows else None
        if not probs or len(probs) != 1:
            raise TribunalError(f"classify needs a one-logit classifier; {self._shown('/classify')} gives {len(probs or [])} values")
        self._usage.maybe_post(self.usage())
        return float(probs[0])

    def close(self) -> None:
        """Close the HTTP client and stop the event loop (also done when the engine is collected)."""
        import asyncio

        loop = getattr(self, "_loop", None)
        if loop is None or not loop.is_running() or not self._thread.is_alive():
            return
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            try:
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
            except Exception:  # noqa: BLE001 - closing: nothing left to report to
                pass
        loop.call_soon_threadsafe(loop.stop)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def refused(op: str, ep: EndpointConfig) -> str:
    """The one line for an operation a chat API cannot serve."""
    need = {"classify": "vLLM's /classify endpoint (a server running the meta-RM with its pooling runner)",
            "score_continuation": "the prompt_logprobs of /v1/completions (a vLLM extension)"}[op]
    return f"{op} needs {need}; --api chat ({ep.url}/chat/completions, a hosted chat API) has none: serve the model with vLLM and use --api completions"


def not_found_hint(path: str, ep: EndpointConfig) -> str:
    if path == "/classify":
        return "serve the one-logit classifier with vLLM (it starts its pooling runner for a *ForSequenceClassification model)"
    if path == "/v1/models":
        return "is --base-url the API root (it usually ends in /v1)?"
    return f"is --served-model right, and does the server offer {path}?"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def _body_line(resp) -> str:
    """The error an endpoint returned, in one short line (its JSON `message` when it has one)."""
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        msg = err.get("message") if isinstance(err, dict) else err
        text = str(msg if msg is not None else data)
    except Exception:  # noqa: BLE001 - not JSON: the text itself
        text = resp.text
    text = " ".join(text.split())
    return text[:200] or resp.reason_phrase or "no body"


def _chars(body: dict) -> int:
    return sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])


def _split(total: int, k: int) -> list[int]:
    """``total`` tokens shared by ``k`` choices (when the endpoint reports only their sum)."""
    return [total // k + (1 if i < total % k else 0) for i in range(k)]


def _local_context(model: str) -> int | None:
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------- usage, summed over the pool
class _UsagePoster:
    """In an engine actor: posts this engine's cumulative usage to Ray's key-value store under the
    Ray job (at most once a second, and after each call), so the driver can sum a run's usage over
    every actor, restarted ones included. Outside Ray: does nothing."""

    def __init__(self, every_s: float = 1.0):
        import uuid

        self.key: str | None = None
        self.every_s, self.last = every_s, 0.0
        self.lock = threading.Lock()
        try:
            import ray

            if ray.is_initialized():
                self.key = f"{ray.get_runtime_context().get_job_id()}/{uuid.uuid4().hex}"
        except Exception:  # noqa: BLE001 - no Ray, no pool to sum over
            self.key = None

    def maybe_post(self, usage: dict) -> None:
        if self.key is not None and time.monotonic() - self.last >= self.every_s:
            self.post(usage)

    def post(self, usage: dict) -> None:
        if self.key is None:
            return
        with self.lock:
            self.last = time.monotonic()
            try:
                from ray.experimental.internal_kv import _internal_kv_put

                _internal_kv_put(self.key, json.dumps(usage), namespace=USAGE_NAMESPACE)
            except Exception:  # noqa: BLE001 - usage is a report, never a reason to fail a batch
                pass


def _job_prefix() -> str:
    import ray

    return f"{ray.get_runtime_context().get_job_id()}/"


def clear_endpoint_usage() -> None:
    """On the driver, before a run: forget the usage earlier runs of this Ray job posted."""
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_job_prefix(), del_by_prefix=True, namespace=USAGE_NAMESPACE)


def endpoint_usage() -> dict:
    """On the driver: the usage every openai engine actor of this Ray job posted, summed."""
    from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

    total: Counter = Counter()
    for key in _internal_kv_list(_job_prefix(), namespace=USAGE_NAMESPACE):
        raw = _internal_kv_get(key, namespace=USAGE_NAMESPACE)
        if raw:
            total.update(json.loads(raw))
    return {k: int(v) for k, v in sorted(total.items())}


def usage_report(usage: dict, price_input_per_mtok: float | None = None, price_output_per_mtok: float | None = None) -> tuple[dict, str]:
    """(the manifest's ``usage`` block, the summary line) for a run's endpoint usage. The cost is
    an estimate: every prompt token at the input price (cached ones too), completions at the output price."""
    u = {k: int(usage.get(k, 0)) for k in USAGE_KEYS}
    reasons = {k[len("failed_"):]: int(v) for k, v in usage.items() if k.startswith("failed_") and v}
    block: dict = {**u, "failed_attempts": reasons, "cost_usd": None}
    if price_input_per_mtok is not None or price_output_per_mtok is not None:
        cost = (u["prompt_tokens"] * (price_input_per_mtok or 0.0) + u["completion_tokens"] * (price_output_per_mtok or 0.0)) / 1e6
        block.update(cost_usd=round(cost, 6), price_input_per_mtok=price_input_per_mtok, price_output_per_mtok=price_output_per_mtok)
    why = f" (failed attempts: {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))})" if reasons else ""
    line = (f"endpoint usage: {u['requests']} requests, {u['retries']} retries{why}; {u['prompt_tokens']} prompt tokens "
            f"({u['cached_tokens']} cached), {u['completion_tokens']} completion tokens")
    if block["cost_usd"] is not None:
        line += f"; estimated cost ${block['cost_usd']:.4f}"
    return block, line
