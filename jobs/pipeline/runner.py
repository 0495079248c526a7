"""The one runner loop of the engine jobs: read, apply the plan's stages, stream the write stage's
per-shard counts to the recipe, and keep the progress line moving while the engines work.

A recipe says what its counts mean (``on_row``); how a plan is driven is written here once
(datatrove's ``PipelineExecutor._run_for_rank``, Ray Data LLM's ``Processor.__call__``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tribunal.jobs.pipeline.progress import Board, Progress
from tribunal.jobs.pipeline.stages import StagePlan, check_chain

POLL_S = 2.0  # how often the driver reads the engines' live counts


def new_board() -> Board:
    """The ``Board`` this run's engine stages post their live counts to (Ray's key-value store:
    no extra process). Needs a connected Ray."""
    return Board()


def run_plan(ds, stages: list[StagePlan], progress: Progress, on_row: Callable[[dict], None], board: Board | None = None,
             columns=None) -> None:
    """Apply ``stages`` to the dataset ``ds`` and hand every row the last stage emits (one per
    committed shard: its counts) to ``on_row``, which also feeds ``progress``. While it runs, a
    thread reads the board (``board``) the engine stages post to every ``POLL_S`` and ticks the
    line. ``columns``: the input's columns, to check the plan's column contracts first."""
    if columns is not None:
        check_chain(stages, columns)
    for st in stages:
        ds = st.apply(ds)
    stop = threading.Event()
    ticker = threading.Thread(target=_tick, args=(stop, progress, board), name="tribunal-progress", daemon=True)
    ticker.start()
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for row in batch.to_pylist():
                on_row(row)
    finally:
        stop.set()
        ticker.join(timeout=POLL_S + 5)
        _take(progress, board)
        if board is not None:
            try:
                board.close()
            except Exception:  # noqa: BLE001 - a few stale keys in a store that dies with the cluster
                pass


def _take(progress: Progress, board: Board | None) -> None:
    if board is None:
        return
    try:
        counts, loads = board.read()
    except Exception:  # noqa: BLE001 - the progress line is advisory: never fail a job for it
        return
    progress.add_live(counts, loads)


def _tick(stop: threading.Event, progress: Progress, board) -> None:
    while not stop.wait(POLL_S):
        _take(progress, board)
        progress.tick()
