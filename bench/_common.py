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


def add_child_args(p, choices: tuple[str, ...]) -> None:
    """The hidden options a bench script's children are started with, and the shared ones."""
    import argparse

    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="where shards go (default: a temp dir, removed)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.add_argument("--child", choices=choices, help=argparse.SUPPRESS)
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)


def link_subset(files, dest, rows: int) -> int:
    """Hard-link the first whole shards holding at least ``rows`` rows into ``dest``; rows linked."""
    dest.mkdir(exist_ok=True)
    linked = 0
    for f, r in files:
        if linked >= rows:
            break
        os.link(f, dest / f.name)
        linked += r
    return linked


def gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"
