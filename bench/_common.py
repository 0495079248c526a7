"""Helpers shared by the bench scripts: child processes with their own peak RSS, formatting."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def spawn(script: str, args: list[str]) -> dict:
    """Run ``script --child-result F ARGS`` in a fresh interpreter; its JSON result plus wall time."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = f.name
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.abspath(script), "--child-result", result, *args], check=True)
    wall = time.perf_counter() - t0
    with open(result) as f:
        r = json.load(f)
    os.unlink(result)
    r["process_wall_s"] = wall
    return r


def finish_child(result_path: str, r: dict) -> int:
    """Record the child's own peak RSS (KiB on Linux) with its result."""
    r["peak_rss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(result_path, "w") as f:
        json.dump(r, f)
    return 0


def gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"
