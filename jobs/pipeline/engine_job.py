"""The options every engine job shares, declared once: input, output, model, engine and actor pool.

``EngineJobConfig`` is a frozen dataclass that the configs of ``sample`` (and ``label``, ``rft``),
``score`` and ``metarm-score`` inherit, so every engine knob is a flag of every engine job and the
checks that go with them (the model directory, the engine's package, does the pool fit the
cluster?) live here, once. A new engine job declares only its own fields, stages and counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from tribunal.jobs.engines import ENGINES, EngineConfig
from tribunal.jobs.pipeline.config import check, opt


@dataclass(frozen=True)
class EngineJobConfig:
    """Input, output, model, and the engine actors that run it."""

    input: str = opt("", "input Parquet file or directory (local path or s3://...)")
    output: str = opt("", "output directory (local path or s3://...)")
    model: str = opt("", "model: a local model directory (config.json + tokenizer)")
    engine: str = opt("transformers", "model backend: transformers (CPU or GPU) or vllm", choices=ENGINES)
    concurrency: int = opt(1, "engine actors in the pool")
    num_gpus_per_actor: float | None = opt(None, "GPUs per engine actor (default: 1 for vllm, 0 for transformers)")
    num_cpus_per_actor: float = opt(1.0, "CPUs per engine actor (the transformers engine uses that many threads)")
    concurrent_batches: int | None = opt(None, "batches in flight per actor (default: 4 for vllm, 1 for transformers)")
    dtype: str = opt("auto", "model dtype (auto, float32, bfloat16, float16)")
    device: str = opt("auto", "transformers device: auto, cpu, cuda")
    max_model_len: int | None = opt(None, "vLLM context length limit (tokens)")
    gpu_memory_utilization: float = opt(0.90, "vLLM share of GPU memory")
    max_num_seqs: int | None = opt(None, "vLLM max concurrent sequences")
    tensor_parallel_size: int = opt(1, "vLLM GPUs per engine (tensor parallelism)")
    enforce_eager: bool = opt(False, "vLLM: run eagerly, without CUDA graphs or torch.compile (starts much faster; slower steady state on GPU)")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    overwrite: bool = opt(False, "replace an existing output of this job (only ever a tribunal output of the same kind)")

    # The engine task this job's actors run (generate or classify); a subclass may override.
    ENGINE_TASK = "generate"

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(bool(self.model), "model", "is required")
        check(self.engine in ENGINES, "engine", f"must be one of {ENGINES}, got {self.engine!r}")
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
        )

    def pool(self):
        from tribunal.cluster.pools import plan_pool

        return plan_pool(self.engine, self.concurrency, self.num_gpus_per_actor, self.concurrent_batches, self.num_cpus_per_actor)

    def preflight(self) -> None:
        """Driver-side checks before Ray starts: the engine's package (where the engines run on
        this machine: an embedded Ray; a cluster's workers may install it through their runtime
        environment), the model directory."""
        import os

        from tribunal.jobs.engines import check_engine_installed, check_model_dir

        if not (self.address or os.environ.get("RAY_ADDRESS")):
            check_engine_installed(self.engine)
        check_model_dir(self.model)

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
