"""Fault tests: a real local Ray whose workers see the engine fault hook (``TRIBUNAL_FAULT_DIR``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="module")
def fault_dir(tmp_path_factory):
    """A private Ray started with the hook's directory in its workers' environment (a Ray the
    session already runs would not see the variable, so it is replaced for this module)."""
    import ray

    from tribunal.cluster.ray_cluster import connect
    from tribunal.jobs.engines.faults import FAULT_DIR_ENV

    d = tmp_path_factory.mktemp("faults")
    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    os.environ[FAULT_DIR_ENV] = str(d)
    connect(None, num_cpus=2)
    yield d
    ray.shutdown()
    os.environ.pop(FAULT_DIR_ENV, None)
    restore_ray(was_running)


def restore_ray(was_running: bool) -> None:
    """Give later test modules back the session's embedded Ray (``ray_local``) if one was up."""
    if was_running:
        from tribunal.cluster.ray_cluster import connect

        connect(None, num_cpus=2)


@pytest.fixture
def arm(fault_dir):
    """``arm("init_exit")`` arms a one-shot fault; the test asserts it fired (the file is gone)."""
    made = []

    def _arm(name: str, text: str = "") -> Path:
        p = Path(fault_dir) / name
        p.write_text(text)
        made.append(p)
        return p

    yield _arm
    for p in made:
        p.unlink(missing_ok=True)
