"""``filter`` on synthetic scored rollouts: rows/s and peak RSS vs a plain-Python implementation.

Generates ``--rows`` scored rollouts (8 per prompt, prompt text, response, reference, reward with
~2% nulls; shards of 1M rows in shuffled order, as a sharded ``score`` run leaves them). Then,
each in its own subprocess so its peak RSS (``ru_maxrss``) is its own:

(a) ``tribunal.jobs.filter.run`` over all rows (stats, steps of 256 prompts, the state persisted
    after every step, decisions committed every 512 steps, kept rollouts written with every column);
(b) plain Python over the same rows: ``to_pylist`` per shard, a dict of rewards per prompt,
    ``std_filter.filter_prompts`` (the library's own rule) in sorted prompt order, the kept rows
    written back per shard with pyarrow.

With ``--baseline-rows N`` (whole shards, at least N rows) the plain-Python side and a second
``filter`` run take only the first N rows, for a quicker check; by default both sides run on all
of them (plain Python takes about 130 s per 10M rows here).

Prints rows/s, the speed ratio on the same data (goal >= 20x), peak RSS (goal < 2 GiB), and
whether the job and plain Python keep the same prompts.

Run::

    .venv/bin/python bench/bench_filter.py --rows 10000000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from _common import add_child_args, finish_child, gib, link_subset, spawn

PER_PROMPT = 8
SHARD_ROWS = 1_000_000


def make_data(root: Path, rows: int, seed: int) -> list[tuple[Path, int]]:
    from tribunal.jobs.demo import synthetic_rollouts

    root.mkdir(parents=True, exist_ok=True)
    files = []
    prompts_per_shard = SHARD_ROWS // PER_PROMPT
    for i in range(-(-rows // SHARD_ROWS)):
        n = min(prompts_per_shard, (rows - i * SHARD_ROWS) // PER_PROMPT)
        t = synthetic_rollouts(n, PER_PROMPT, seed=seed + i, first_prompt=i * prompts_per_shard)
        f = root / f"part-{i:04d}.parquet"
        pq.write_table(t, f)
        files.append((f, t.num_rows))
    return files


def child_job(data: str, out: str) -> dict:
    import io

    import fsspec  # noqa: F401 - imported by the job on first use: modules load before the clock starts, as for plain Python
    import numpy  # noqa: F401

    from tribunal.cluster import storage  # noqa: F401
    from tribunal.jobs.filter import FilterConfig, run
    from tribunal.jobs.pipeline import files, journal, outputs, progress, report  # noqa: F401

    t0 = time.perf_counter()
    m = run(FilterConfig(input=data, output=out, overwrite=True), stream=io.StringIO())
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "rows": m["counts"]["rollouts_in"], "kept_rows": m["counts"]["rollouts_kept"],
            "kept_prompts": m["counts"]["prompts_kept"], "reconciled": m["counts"]["reconciled"], "phases_s": m["timings_s"]}


def child_plain(data: str, out: str) -> dict:
    """The same filter, written the obvious way in plain Python."""
    import pyarrow as pa

    from tribunal.jobs.rewards import std_filter as sf

    t0 = time.perf_counter()
    files = sorted(str(p) for p in Path(data).glob("*.parquet"))
    rewards: dict[str, list] = {}
    for f in files:
        t = pq.read_table(f, columns=["prompt_id", "reward"])
        for pid, r in zip(t["prompt_id"].to_pylist(), t["reward"].to_pylist()):
            rewards.setdefault(pid, []).append(r)
    order = sorted(rewards)
    reasons, _ = sf.filter_prompts(sf.FilterRule(), [rewards[p] for p in order], 256)
    keep = {p for p, r in zip(order, reasons) if r in sf.KEEP_REASONS}
    os.makedirs(out, exist_ok=True)
    kept_rows = 0
    for i, f in enumerate(files):
        t = pq.read_table(f)
        rows = [r for r in t.to_pylist() if r["prompt_id"] in keep]
        kept_rows += len(rows)
        pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), os.path.join(out, f"part-{i:05d}.parquet"))
    wall = time.perf_counter() - t0
    rows = sum(len(v) for v in rewards.values())
    return {"wall_s": wall, "rows": rows, "kept_rows": kept_rows, "kept_prompts": len(keep)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--baseline-rows", type=int, default=0, help="plain Python on the first N rows only (0: all)")
    add_child_args(p, ("job", "plain"))
    a = p.parse_args(argv)
    if a.child:
        import resource

        r = child_job(a.data, a.out) if a.child == "job" else child_plain(a.data, a.out)
        use = resource.getrusage(resource.RUSAGE_SELF)
        r["cpu_s"] = use.ru_utime + use.ru_stime  # all threads; steadier than wall time on a busy machine
        return finish_child(a.child_result, r)

    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="bench-filter-"))
    t0 = time.perf_counter()
    files = make_data(work / "all", a.rows, a.seed)
    print(f"generated {sum(r for _, r in files):,} rollouts in {len(files)} shards ({time.perf_counter() - t0:.0f}s)")
    full = spawn(__file__, ["--child", "job", "--data", str(work / "all"), "--out", str(work / "out_all")])
    runs = [("filter job, all rows", full)]
    if 0 < a.baseline_rows < a.rows:
        subset = work / "subset"
        sub_rows = link_subset(files, subset, a.baseline_rows)
        job = spawn(__file__, ["--child", "job", "--data", str(subset), "--out", str(work / "out_sub")])
        plain = spawn(__file__, ["--child", "plain", "--data", str(subset), "--out", str(work / "out_plain")])
        runs += [("filter job, subset", job), ("plain Python, subset", plain)]
    else:
        sub_rows, job = full["rows"], full
        plain = spawn(__file__, ["--child", "plain", "--data", str(work / "all"), "--out", str(work / "out_plain")])
        runs.append(("plain Python, all rows", plain))
    ratio = plain["wall_s"] / job["wall_s"]  # same rows: the ratio of rows/s
    print(f"{'run':<28}{'rows':>12}{'wall s':>9}{'CPU s':>9}{'rows/s':>14}{'peak RSS':>14}")
    for name, r in runs:
        print(f"{name:<28}{r['rows']:>12,}{r['wall_s']:>9.1f}{r['cpu_s']:>9.1f}{r['rows'] / r['wall_s']:>14,.0f}{gib(r['peak_rss_kib']):>14}")
    same = (job["kept_rows"], job["kept_prompts"]) == (plain["kept_rows"], plain["kept_prompts"])
    print(f"speed ratio on the same {sub_rows:,} rows: {ratio:.1f}x wall, {plain['cpu_s'] / job['cpu_s']:.1f}x CPU time (goal >= 20x); job peak RSS on {full['rows']:,} rows: "
          f"{gib(full['peak_rss_kib'])} (goal < 2 GiB); same kept rows as plain Python: {same}; reconciled: {full['reconciled']}")
    print(f"filter job phases on all rows (cumulative s): {full['phases_s']}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"full": full, "job_same_rows": job, "plain_same_rows": plain, "same_rows": sub_rows, "ratio": ratio}, f, indent=2)
    if not a.workdir:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
