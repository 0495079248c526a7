"""The options every engine job shares, declared once: input, output, model, engine and actor pool.

``EngineJobConfig`` is a frozen dataclass that the configs of ``sample`` (and ``label``, ``rft``),
``score`` and ``metarm-score`` inherit, so every engine knob is a flag of every engine job and the
checks that go with them (the model directory, the engine's package, does the pool fit the
cluster?) live here, once. A new engine job declares only its own fields, stages and counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from tribunal.jobs.engines import ENGINES, EngineConfig
from tribunal.jobs.engines.openai_engine import API_MODES
from tribunal.jobs.pipeline.config import check, opt


@dataclass(frozen=True)
class EngineJobConfig:
    """Input, output, model, and the engine actors that run it."""

    input: str = opt("", "input Parquet file or directory (local path or s3://...)")
    output: str = opt("", "output directory (local path or s3://...)")
    model: str = opt("", "model: a local model directory (config.json + tokenizer); openai engine: the served model's tokenizer and chat template (optional with --api chat)")
    engine: str = opt("transformers", "model backend: transformers (CPU or GPU), vllm, or openai (an OpenAI-compatible endpoint: --base-url)", choices=ENGINES)
    concurrency: int = opt(1, "engine actors in the pool")
    num_gpus_per_actor: float | None = opt(None, "GPUs per engine actor (default: 1 for vllm, 0 for transformers and openai)")
    num_cpus_per_actor: float = opt(1.0, "CPUs per engine actor (the transformers engine uses that many threads)")
    concurrent_batches: int | None = opt(None, "batches in flight per actor (default: 4 for vllm, 8 for openai, 1 for transformers)")
    dtype: str = opt("auto", "model dtype (auto, float32, bfloat16, float16)")
    device: str = opt("auto", "transformers device: auto, cpu, cuda")
    max_model_len: int | None = opt(None, "vLLM context length limit (tokens)")
    gpu_memory_utilization: float = opt(0.90, "vLLM share of GPU memory")
    max_num_seqs: int | None = opt(None, "vLLM max concurrent sequences")
    tensor_parallel_size: int = opt(1, "vLLM GPUs per engine (tensor parallelism)")
    enforce_eager: bool = opt(False, "vLLM: run eagerly, without CUDA graphs or torch.compile (starts much faster; slower steady state on GPU)")
    # The openai engine's endpoint (EngineConfig.endpoint, an openai_engine.EndpointConfig).
    base_url: str | None = opt(None, "openai engine: the endpoint's API root, e.g. http://127.0.0.1:8000/v1")
    api: str = opt("completions", "openai engine: completions (a vLLM server running --model; tribunal renders the prompt) "
                                  "or chat (a hosted chat API, which applies its own template; generation only)", choices=API_MODES)
    served_model: str | None = opt(None, "openai engine: the model name the endpoint serves (default: --model, its basename, "
                                         "or the server's only model in /v1/models)")
    api_key_env: str | None = opt(None, "openai engine: NAME of the environment variable holding the API key, e.g. OPENAI_API_KEY "
                                        "(the key itself is never written anywhere)")
    extra_headers: str | None = opt(None, "openai engine: extra HTTP headers, 'Name: value; Name: value' (a value env:VAR is read from $VAR)")
    request_timeout_s: float = opt(600.0, "openai engine: one request attempt's time limit (seconds)")
    max_in_flight: int = opt(64, "openai engine: requests each actor has at the endpoint at once")
    requests_per_min: float | None = opt(None, "openai engine: request rate limit of the whole pool (each actor keeps to 1/concurrency)")
    tokens_per_min: float | None = opt(None, "openai engine: token rate limit of the whole pool, prompt + max new tokens "
                                             "(each actor keeps to 1/concurrency)")
    max_retries: int = opt(8, "openai engine: retries of one request (429, 5xx, timeouts, dropped connections) before the job fails")
    retry_backoff_s: float = opt(1.0, "openai engine: first retry's backoff ceiling (seconds), doubled each retry up to 60 s, "
                                      "full jitter; a Retry-After header wins")
    price_input_per_mtok: float | None = opt(None, "openai engine: USD per million prompt tokens, for the run's cost estimate")
    price_output_per_mtok: float | None = opt(None, "openai engine: USD per million completion tokens, for the run's cost estimate")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    overwrite: bool = opt(False, "replace an existing output of this job (only ever a tribunal output of the same kind)")

    # The engine task this job's actors run (generate or classify); a subclass may override.
    ENGINE_TASK = "generate"

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.engine in ENGINES, "engine", f"must be one of {ENGINES}, got {self.engine!r}")
        hosted = self.engine == "openai" and self.api == "chat" and bool(self.served_model)
        check(bool(self.model) or hosted, "model", "is required (with --engine openai --api chat, --served-model may stand for it)")
        check(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        check(self.num_gpus_per_actor is None or self.num_gpus_per_actor >= 0, "num_gpus_per_actor", f"must be >= 0, got {self.num_gpus_per_actor}")
        check(self.num_cpus_per_actor > 0, "num_cpus_per_actor", f"must be > 0, got {self.num_cpus_per_actor}")
        check(self.concurrent_batches is None or self.concurrent_batches >= 1, "concurrent_batches", f"must be >= 1, got {self.concurrent_batches}")
        check(0 < self.gpu_memory_utilization <= 1, "gpu_memory_utilization", f"must be in (0, 1], got {self.gpu_memory_utilization}")
        check(self.max_model_len is None or self.max_model_len >= 1, "max_model_len", f"must be >= 1, got {self.max_model_len}")
        check(self.max_num_seqs is None or self.max_num_seqs >= 1, "max_num_seqs", f"must be >= 1, got {self.max_num_seqs}")
        check(self.tensor_parallel_size >= 1, "tensor_parallel_size", f"must be >= 1, got {self.tensor_parallel_size}")
        check(self.dtype in ("auto", "float32", "bfloat16", "float16"), "dtype", f"must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        check(self.device in ("auto", "cpu", "cuda"), "device", f"must be auto, cpu or cuda, got {self.device!r}")
        self._check_endpoint()

    def _check_endpoint(self) -> None:
        from tribunal.jobs.engines.openai_engine import parse_headers

        check(self.api in API_MODES, "api", f"must be one of {API_MODES}, got {self.api!r}")
        if self.engine == "openai":
            check(bool(self.base_url), "base_url", "is required with --engine openai (e.g. http://127.0.0.1:8000/v1)")
            check(str(self.base_url).startswith(("http://", "https://")), "base_url", f"must start with http:// or https://, got {self.base_url!r}")
        check(self.request_timeout_s > 0, "request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        check(self.max_in_flight >= 1, "max_in_flight", f"must be >= 1, got {self.max_in_flight}")
        check(self.max_retries >= 0, "max_retries", f"must be >= 0, got {self.max_retries}")
        check(self.retry_backoff_s > 0, "retry_backoff_s", f"must be > 0, got {self.retry_backoff_s}")
        for key in ("requests_per_min", "tokens_per_min"):
            check(getattr(self, key) is None or getattr(self, key) > 0, key, f"must be > 0, got {getattr(self, key)}")
        for key in ("price_input_per_mtok", "price_output_per_mtok"):
            check(getattr(self, key) is None or getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        try:
            parse_headers(self.extra_headers)
        except ValueError as e:
            check(False, "extra_headers", str(e))

    def engine_options(self) -> dict:
        """The engine and pool fields, to build another engine job's config from this one
        (``label --meta-rm`` hands them to ``metarm-score``)."""
        from dataclasses import fields

        return {f.name: getattr(self, f.name) for f in fields(EngineJobConfig) if f.name not in ("input", "output", "model")}

    def engine_config(self, task: str | None = None) -> EngineConfig:
        return EngineConfig(
            kind=self.engine,
            model=self.model,
            task=task or self.ENGINE_TASK,
            dtype=self.dtype,
            device=self.device,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            max_num_seqs=self.max_num_seqs,
            tensor_parallel_size=self.tensor_parallel_size,
            enforce_eager=self.enforce_eager,
            endpoint=self.endpoint_config() if self.engine == "openai" else None,
        )

    def endpoint_config(self):
        """The openai engine's endpoint; the pool's rate limits are split evenly among its actors."""
        from tribunal.jobs.engines.openai_engine import EndpointConfig, parse_headers

        share = lambda limit: None if limit is None else limit / self.concurrency  # noqa: E731
        return EndpointConfig(
            base_url=self.base_url or "", api=self.api, served_model=self.served_model, api_key_env=self.api_key_env,
            headers=parse_headers(self.extra_headers), timeout_s=self.request_timeout_s, max_in_flight=self.max_in_flight,
            requests_per_min=share(self.requests_per_min), tokens_per_min=share(self.tokens_per_min),
            max_retries=self.max_retries, retry_backoff_s=self.retry_backoff_s,
        )

    def usage_start(self) -> None:
        """Before the engines start (Ray connected): forget the endpoint usage earlier runs of this
        Ray job posted (openai engine; nothing for the others)."""
        if self.engine == "openai":
            from tribunal.jobs.engines.openai_engine import clear_endpoint_usage

            clear_endpoint_usage()

    def usage_report(self) -> tuple[dict | None, str | None]:
        """After the run: the endpoint's usage summed over the pool's actors, with the cost estimate
        of ``--price-*-per-mtok`` (the manifest's ``engines.usage``), and its summary line; (None,
        None) for the in-process engines."""
        if self.engine != "openai":
            return None, None
        from tribunal.jobs.engines.openai_engine import endpoint_usage, usage_report

        return usage_report(endpoint_usage(), self.price_input_per_mtok, self.price_output_per_mtok)

    def engine_ops(self) -> tuple[str, ...]:
        """The engine operations this job calls (a job that scores continuations says so): checked
        against what the engine can serve before anything starts."""
        return ("classify",) if self.ENGINE_TASK == "classify" else ("generate",)

    def pool(self):
        from tribunal.cluster.pools import plan_pool

        return plan_pool(self.engine, self.concurrency, self.num_gpus_per_actor, self.concurrent_batches, self.num_cpus_per_actor)

    def preflight(self) -> None:
        """Driver-side checks before Ray starts: the engine's package (where the engines run on
        this machine: an embedded Ray; a cluster's workers may install it through their runtime
        environment), the model directory; for the openai engine, the API key's variable and the
        operations a chat API cannot serve."""
        import os

        from tribunal.jobs.engines import check_engine_installed, check_model_dir
        from tribunal.schemas.errors import TribunalError

        if not (self.address or os.environ.get("RAY_ADDRESS")):
            check_engine_installed(self.engine)
        if self.model:
            check_model_dir(self.model)
        if self.engine == "openai":
            from tribunal.jobs.engines.openai_engine import refused

            if self.api_key_env and not os.environ.get(self.api_key_env):
                raise TribunalError(f"--api-key-env {self.api_key_env}: that environment variable is not set")
            for op in self.engine_ops():
                if self.api == "chat" and op in ("classify", "score_continuation"):
                    raise TribunalError(refused(op, self.endpoint_config()))

    def check_fits(self) -> None:
        """The engine pool's GPUs and CPUs against the connected cluster: one line, not a hang."""
        import ray

        from tribunal.cluster.pools import check_fits

        check_fits(self.pool(), self.engine, ray.cluster_resources())


def default_template(model: str, single: bool = False) -> str:
    """The prompt template a model records (``tribunal_model.json``: what it was trained on),
    else ``default``; ``single``: its one-response variant."""
    from tribunal.jobs.grm.protocol import model_templates

    recorded = model_templates(model)
    if single:
        return recorded.get("template_single") or recorded.get("template") or "default"
    return recorded.get("template") or "default"
