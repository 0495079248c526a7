"""The one runner loop of the engine jobs: read, apply the plan's stages, stream the write stage's
per-shard counts to the recipe, and keep the progress line moving while the engines work.

A recipe says what its counts mean (``on_row``); how a plan is driven is written here once
(datatrove's ``PipelineExecutor._run_for_rank``, Ray Data LLM's ``Processor.__call__``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tribunal.jobs.pipeline.progress import Progress, Tally
from tribunal.jobs.pipeline.stages import StagePlan, check_chain

POLL_S = 2.0  # how often the driver reads the engines' live counts


def start_tally():
    """A ``Tally`` actor for this run's engine stages to report to (0 CPUs: never competes with
    the engines for a slot). Needs a connected Ray."""
    import ray

    return ray.remote(num_cpus=0)(Tally).remote()


def run_plan(ds, stages: list[StagePlan], progress: Progress, on_row: Callable[[dict], None], tally=None,
             columns=None) -> None:
    """Apply ``stages`` to the dataset ``ds`` and hand every row the last stage emits (one per
    committed shard: its counts) to ``on_row``, which also feeds ``progress``. While it runs, a
    thread reads the ``tally`` the engine stages report to every ``POLL_S`` and ticks the line.
    ``columns``: the input's columns, to check the plan's column contracts first."""
    if columns is not None:
        check_chain(stages, columns)
    for st in stages:
        ds = st.apply(ds)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(stop, progress, tally), name="tribunal-progress", daemon=True)
    ticker.start()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                on_row(row)
    finally:
        stop.set()
        ticker.join(timeout=POLL_S + 5)
    _take(progress, tally)


def _take(progress: Progress, tally) -> None:
    if tally is None:
        return
    import ray

    try:
        counts, loads = ray.get(tally.take.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - the progress line is advisory: never fail a job for it
        return
    progress.add_live(counts, loads)


def _tick(stop: threading.Event, progress: Progress, tally) -> None:
    while not stop.wait(POLL_S):
        _take(progress, tally)
        progress.tick()
