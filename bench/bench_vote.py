"""``vote`` on synthetic trajectories: rows/s and peak RSS of the job vs a plain-Python baseline.

Generates ``--rows`` non-hinted trajectory rows (``tribunal.schemas.arrow.TRAJECTORY``; n responses, k
trajectories per sample, ~``--fail-rate`` parse failures as null scores, labels) as Parquet shards
of whole samples, vectorised with numpy/pyarrow. Then, in one run, each in its own subprocess so
that its peak RSS (``ru_maxrss`` of that process) is its own:

(a) ``tribunal.jobs.vote.run(VoteConfig(...))`` over all rows;
(b) the same job over the first ``--baseline-rows`` rows (whole shards), the common subset;
(c) a plain-Python baseline over that subset: ``to_pylist`` per shard, a dict loop grouping by
    id, ``grm_math.vote`` + ``grm_math.vote_credit`` per sample. It streams shard by shard (the
    same whole-samples-per-shard assumption the job makes), so its RSS is not inflated by
    holding every row at once.

Prints rows/s of each, the speed ratios (same data: (b)/(c); full run: (a)/(c)), peak RSS, and
whether the counts and accuracy of (b) and (c) agree. Nothing here asserts on time.

Run::

    .venv/bin/python bench/bench_vote.py --rows 10000000
    .venv/bin/python bench/bench_vote.py --rows 1000000 --baseline-rows 500000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from _common import add_child_args, finish_child, gib, link_subset, spawn
from tribunal.schemas import arrow
from tribunal.schemas import columns as c


def _lists(values: np.ndarray, width: int, mask: np.ndarray | None = None, typ=pa.int32()) -> pa.ListArray:
    """A list array of fixed ``width`` per row from a flat numpy array; ``mask`` True = null row."""
    rows = len(values) // width
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(values, typ), mask=pa.array(mask) if mask is not None else None)


def make_shard(first_sample: int, samples: int, n: int, k: int, fail_rate: float, seed: int) -> pa.Table:
    """``samples * k`` trajectory rows of samples ``first_sample ..``: whole samples, in schema order."""
    rng = np.random.default_rng(seed)
    rows = samples * k
    sid = pa.array([f"s{i:09d}" for i in range(first_sample, first_sample + samples)], pa.string())
    owner = np.repeat(np.arange(samples), k)
    best = rng.integers(0, n, size=samples)  # the labelled best response of each sample
    labels = np.zeros((samples, n))
    labels[np.arange(samples), best] = 1.0
    row_best = best[owner]
    perm = np.argsort(rng.random((rows, n)), axis=1).astype(np.int32)
    scores = rng.integers(1, 11, size=(rows, n))
    scores[np.arange(rows), row_best] = np.minimum(scores[np.arange(rows), row_best] + 2, 10)  # an informative judge
    failed = rng.random(rows) < fail_rate
    others = np.delete(scores, 0, axis=1) if n > 1 else scores
    top_other = np.where(np.arange(n)[None, :] == row_best[:, None], -1, scores).max(axis=1) if n > 1 else others[:, 0]
    correct = ~failed & (scores[np.arange(rows), row_best] > top_other) if n > 1 else ~failed
    cols = {
        c.ID: sid.take(pa.array(owner)),
        c.SAMPLE_INDEX: pa.array(np.tile(np.arange(k, dtype=np.int32), samples)),
        c.HINTED: pa.array(np.zeros(rows, dtype=bool)),
        c.N_RESPONSES: pa.array(np.full(rows, n, dtype=np.int32)),
        c.PERMUTATION: _lists(perm.ravel(), n),
        c.TEXT: pa.repeat(pa.scalar("Specific Criteria: ... Analysis: ... Scores: \\boxed{7, 4}"), rows),
        c.SCORES: _lists(scores.ravel().astype(np.int32), n, mask=failed),
        c.PARSE_ERROR: pc.if_else(pa.array(failed), pa.scalar("no_scores"), pa.scalar(None, pa.string())),
        c.PRINCIPLES: pa.nulls(rows, pa.string()),
        c.CRITIQUE: pa.nulls(rows, pa.string()),
        c.LABELS: _lists(labels[owner].ravel(), n, typ=pa.float64()),
        c.CORRECT: pa.array(correct),
        c.FINISH_REASON: pa.repeat(pa.scalar("stop"), rows),
        c.PROMPT_TOKENS: pa.array(np.full(rows, 900, dtype=np.int32)),
        c.COMPLETION_TOKENS: pa.array(rng.integers(100, 500, size=rows).astype(np.int32)),
    }
    per_sample = range(first_sample, first_sample + samples)
    if c.CONTEXT in arrow.TRAJECTORY.names:  # the judged sample, repeated on each of its k rows
        ctx = pa.array([[{c.ROLE: "user", c.CONTENT: f"Question {i}: what is {i} + {i}?"}] for i in per_sample],
                       arrow.TRAJECTORY.field(c.CONTEXT).type)
        cols[c.CONTEXT] = ctx.take(pa.array(owner))
    if c.RESPONSES in arrow.TRAJECTORY.names:
        resp = pa.array([[f"Answer {j} to question {i}." for j in range(n)] for i in per_sample], pa.list_(pa.string()))
        cols[c.RESPONSES] = resp.take(pa.array(owner))
    for f in arrow.TRAJECTORY:  # columns this generator does not know: null where the schema allows it
        if f.name not in cols:
            if not f.nullable:
                raise SystemExit(f"bench_vote: no generator for the non-nullable trajectory column {f.name!r}")
            cols[f.name] = pa.nulls(rows, f.type)
    return pa.Table.from_arrays([cols[f.name] for f in arrow.TRAJECTORY], schema=arrow.TRAJECTORY)


def generate(out: Path, rows: int, n: int, k: int, shard_rows: int, fail_rate: float, seed: int) -> list[tuple[Path, int]]:
    out.mkdir(parents=True, exist_ok=True)
    samples_total = rows // k
    per_shard = max(shard_rows // k, 1)
    files = []
    for i, first in enumerate(range(0, samples_total, per_shard)):
        m = min(per_shard, samples_total - first)
        path = out / f"part-{i:05d}.parquet"
        pq.write_table(make_shard(first, m, n, k, fail_rate, seed * 100_003 + i), path)
        files.append((path, m * k))
    return files


# ----------------------------------------------------------------------------- children
def child_vote(data: str, out: str, k: int | None, tie: str, chunk_rows: int) -> dict:
    # Imports before the clock starts, like the baseline's: polars, and the job's lazy imports
    # (fsspec, through the storage layer, pulls asyncio: ~50 ms on this machine).
    import fsspec  # noqa: F401
    import polars  # noqa: F401

    from tribunal.jobs.pipeline import files, progress, report, stages  # noqa: F401
    from tribunal.jobs.vote import VoteConfig, run

    t0 = time.perf_counter()
    m = run(VoteConfig(input=data, output=out, k=k, tie=tie, chunk_rows=chunk_rows), stream=open(os.devnull, "w"))
    s = time.perf_counter() - t0
    counts = m["counts"]
    return {"seconds": s, "rows": counts["trajectories_considered"], "counts": counts, "credit_sum": None}


def child_baseline(data: str, k: int | None, tie: str, seed: int) -> dict:
    from tribunal.jobs.grm import grm_math as gm

    t0 = time.perf_counter()
    cols = [c.ID, c.SAMPLE_INDEX, c.HINTED, c.N_RESPONSES, c.SCORES, c.LABELS]
    files = sorted(Path(data).glob("*.parquet"))
    rows = samples = valid = abstained = tied = judged = correct = 0
    credit = 0.0
    for f in files:
        by_id: dict[str, list[dict]] = {}
        for r in pq.read_table(f, columns=cols).to_pylist():
            if not r[c.HINTED]:
                by_id.setdefault(r[c.ID], []).append(r)
        for sid, rs in by_id.items():
            rs.sort(key=lambda r: r[c.SAMPLE_INDEX])
            rs = rs[:k] if k else rs
            n = rs[0][c.N_RESPONSES]
            v = gm.vote([r[c.SCORES] for r in rs], n, sid, seed)
            rows += v.k
            valid += v.valid
            samples += 1
            abstained += v.best is None
            tied += v.tied
            labels = rs[0][c.LABELS]
            if labels is not None and n >= 2:
                judged += 1
                credit += gm.vote_credit(v.best, v.tied, v.totals, labels, tie)
                correct += v.best is not None and v.best == gm.unique_argmax(labels)
    s = time.perf_counter() - t0
    counts = {
        "samples": samples, "trajectories_considered": rows, "parse_failure_rate": (rows - valid) / rows if rows else 0.0,
        "abstained": abstained, "tied": tied, "judged": judged, "accuracy": credit / judged if judged else None, "correct": correct,
    }
    return {"seconds": s, "rows": rows, "counts": counts}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="trajectory rows to generate and vote")
    p.add_argument("--baseline-rows", type=int, default=2_000_000, help="rows (whole shards) of the common subset for the baseline")
    p.add_argument("--n", type=int, default=2, help="responses per sample")
    p.add_argument("--k", type=int, default=8, help="trajectories per sample (all vote)")
    p.add_argument("--shard-rows", type=int, default=250_000, help="rows per Parquet shard (whole samples)")
    p.add_argument("--fail-rate", type=float, default=0.10, help="share of trajectories with null scores")
    p.add_argument("--chunk-rows", type=int, default=2_000_000, help="VoteConfig.chunk_rows")
    p.add_argument("--tie", default="random", choices=("random", "half", "strict"))
    add_child_args(p, ("vote", "baseline"))
    a = p.parse_args(argv)

    if a.child:
        if a.child == "vote":
            r = child_vote(a.data, a.out, a.k, a.tie, a.chunk_rows)
        else:
            r = child_baseline(a.data, a.k, a.tie, a.seed)
        return finish_child(a.child_result, r)

    load0 = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="bench_vote_") if not a.workdir else None
    work = Path(a.workdir or tmp.name)
    t0 = time.perf_counter()
    files = generate(work / "full", a.rows, a.n, a.k, a.shard_rows, a.fail_rate, a.seed)
    gen_s = time.perf_counter() - t0
    rows = sum(r for _, r in files)
    size = sum(f.stat().st_size for f, _ in files)
    print(f"generated {rows:,} rows ({rows // a.k:,} samples, n={a.n}, k={a.k}) in {len(files)} shards, "
          f"{size / 2**20:.0f} MiB, in {gen_s:.1f} s", file=sys.stderr)
    subset = work / "subset"
    sub_rows = link_subset(files, subset, a.baseline_rows)

    common = ["--k", str(a.k), "--tie", a.tie, "--seed", str(a.seed), "--chunk-rows", str(a.chunk_rows)]
    print("running vote (all rows) ...", file=sys.stderr)
    full = spawn(__file__, ["--child", "vote", "--data", str(work / "full"), "--out", str(work / "votes_full"), *common])
    print("running vote (subset) ...", file=sys.stderr)
    ours = spawn(__file__, ["--child", "vote", "--data", str(subset), "--out", str(work / "votes_subset"), *common])
    print("running plain-Python baseline (subset) ...", file=sys.stderr)
    base = spawn(__file__, ["--child", "baseline", "--data", str(subset), *common])

    for r in (full, ours, base):
        r["rows_per_s"] = r["rows"] / r["seconds"]
    keys = ("samples", "trajectories_considered", "abstained", "tied", "judged", "correct")
    agree = all(ours["counts"][key] == base["counts"][key] for key in keys) and abs(
        ours["counts"]["accuracy"] - base["counts"]["accuracy"]
    ) < 1e-12
    ratio_same = ours["rows_per_s"] / base["rows_per_s"]
    ratio_full = full["rows_per_s"] / base["rows_per_s"]

    print()
    print(f"vote on synthetic trajectories: n={a.n}, k={a.k}, {100 * a.fail_rate:.0f}% parse failures, tie={a.tie}, "
          f"{a.shard_rows:,} rows/shard, chunk_rows={a.chunk_rows:,}, {os.cpu_count()} cores")
    hdr = f"{'':<34} {'rows':>12} {'seconds':>9} {'rows/s':>12} {'peak RSS':>10} {'accuracy':>9}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in (("vote job, all rows", full), ("vote job, common subset", ours), ("plain Python, common subset", base)):
        acc = r["counts"]["accuracy"]
        print(f"{name:<34} {r['rows']:>12,} {r['seconds']:>9.2f} {r['rows_per_s']:>12,.0f} {gib(r['peak_rss_kib']):>10} "
              f"{100 * acc:>8.3f}%")
    print()
    print(f"speed ratio job/baseline, same data ({sub_rows:,} rows):   {ratio_same:.1f}x   (goal >= 20x)")
    print(f"speed ratio job (all {rows:,} rows)/baseline ({sub_rows:,}): {ratio_full:.1f}x   (baseline run on the subset only)")
    print(f"peak RSS of the job over all rows: {gib(full['peak_rss_kib'])}   (goal < 2 GiB)")
    print(f"counts and accuracy of job and baseline on the common subset agree: {'yes' if agree else 'NO'}")
    if not agree:
        print(f"  job:      {ours['counts']}\n  baseline: {base['counts']}")
    print(f"load average at start {load0[0]:.2f}, at end {os.getloadavg()[0]:.2f} (1 min; other work on the cores skews these figures)")
    print("(seconds: the job's run() / the baseline's read+group+vote loop, inside each child; process start and imports excluded)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({
                "bench": "vote", "rows": rows, "baseline_rows": sub_rows, "n": a.n, "k": a.k, "fail_rate": a.fail_rate,
                "shard_rows": a.shard_rows, "chunk_rows": a.chunk_rows, "tie": a.tie, "cores": os.cpu_count(),
                "generate_s": gen_s, "data_mib": size / 2**20,
                "job_full": full, "job_subset": ours, "baseline_subset": base,
                "ratio_same_data": ratio_same, "loadavg_start_end": [load0[0], os.getloadavg()[0]], "ratio_full_vs_baseline": ratio_full, "agree": agree,
            }, f, indent=2)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
