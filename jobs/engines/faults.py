"""A test hook that makes an engine actor fail for real: process death, a hang, or a raising row.

Off unless ``TRIBUNAL_FAULT_DIR`` names a directory in the environment of the Ray workers (set it
before Ray starts). Each fault is armed by a file in that directory:

- ``init_exit``: the next engine actor to build its engine dies (``os._exit``) while doing so;
- ``batch_exit``: the next engine actor to finish generating a batch dies before returning it;
- ``batch_stall``: the next batch hangs (sleeps for an hour) before generating;
- ``raise_ids``: one sample id a line; rendering those samples raises ``ValueError`` every time.

The one-shot faults fire once: the process that removes the file (``os.unlink`` succeeds for
exactly one) is the one that fails. Nothing here is imported unless the variable is set.
"""

from __future__ import annotations

import os

FAULT_DIR_ENV = "TRIBUNAL_FAULT_DIR"
EXIT_CODE = 77


def _claim(name: str) -> bool:
    d = os.environ.get(FAULT_DIR_ENV)
    if not d:
        return False
    try:
        os.unlink(os.path.join(d, name))
    except FileNotFoundError:
        return False
    return True


def fault_point(where: str) -> None:
    """``where``: ``init`` (building an engine) or ``batch`` (after a batch is generated) or
    ``batch_start`` (before it is)."""
    if not os.environ.get(FAULT_DIR_ENV):
        return
    if where == "init" and _claim("init_exit"):
        os._exit(EXIT_CODE)
    if where == "batch" and _claim("batch_exit"):
        os._exit(EXIT_CODE)
    if where == "batch_start" and _claim("batch_stall"):
        import time

        time.sleep(3600)


def raise_for(sample_id: str) -> None:
    d = os.environ.get(FAULT_DIR_ENV)
    if not d:
        return
    try:
        with open(os.path.join(d, "raise_ids"), encoding="utf-8") as f:
            ids = {line.strip() for line in f}
    except FileNotFoundError:
        return
    if sample_id in ids:
        raise ValueError(f"injected fault for sample {sample_id}")
