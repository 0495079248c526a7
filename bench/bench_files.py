"""Output files before and after target-size rolling, the cost of the commit protocol, and
``vote`` over the rolled files against a plain-Python dict loop over the same files.

Trajectories are synthesised with numpy (``bench_vote.make_shard``, with GRM texts of about
``--text-bytes`` drawn from a pool of distinct random-word texts) and written exactly as
``sample``'s actors write them: engine batches of ``--batch-samples`` samples x k through the
real write stage (``stages.write_stage``: one committed file per batch, its commit record), then
rolled into ``--target-file-mb`` files by the driver-side roller (``outputs.Roller``, what
``sample`` runs). No engine runs here: the figures are the storage layer's.

1. ``--files-rows`` trajectories (default 80k: 1/1000 of a 10M-sample k=8 run): files and bytes
   per file before (one per engine batch) and after rolling; files per million trajectories;
   the commit protocol's cost per batch (the write stage against a plain ``pq.write_table`` of
   the same batch to a temporary name and a rename, the old write path) and the rolling's cost.
2. ``--vote-rows`` trajectories (default 2M): ``vote`` over the one-file-per-batch layout, then
   over the rolled layout, and a plain-Python dict loop (``bench_vote``'s baseline) over the
   rolled files; each in its own process.

Run::

    .venv/bin/python bench/bench_files.py                         # 80k + 2M
    .venv/bin/python bench/bench_files.py --vote-rows 200000      # quick
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
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import add_child_args, finish_child, gib, spawn  # noqa: E402
from bench_vote import child_baseline, child_vote, make_shard  # noqa: E402

from tribunal.cluster import storage  # noqa: E402
from tribunal.jobs.pipeline.outputs import OutputDir, Roller  # noqa: E402
from tribunal.jobs.pipeline.stages import write_stage  # noqa: E402
from tribunal.schemas import arrow  # noqa: E402
from tribunal.schemas import columns as c  # noqa: E402


def text_pool(size: int, text_bytes: int, seed: int) -> pa.Array:
    rng = np.random.default_rng(seed)
    vocab = np.array(["".join(chr(97 + x) for x in rng.integers(0, 26, rng.integers(2, 10))) for _ in range(5000)])
    words = max(text_bytes // 6, 1)
    return pa.array([" ".join(vocab[rng.integers(0, len(vocab), words)]) for _ in range(size)], pa.string())


def batches(rows: int, k: int, batch_samples: int, text_bytes: int, seed: int):
    """Engine batches (``batch_samples * k`` rows of whole samples), with realistic GRM texts."""
    pool = text_pool(4096, text_bytes, seed) if text_bytes else None
    rng = np.random.default_rng(seed + 1)
    samples = rows // k
    for i, first in enumerate(range(0, samples, batch_samples)):
        t = make_shard(first, min(batch_samples, samples - first), 2, k, 0.1, seed * 7919 + i)
        if pool is not None:
            t = t.set_column(t.schema.get_field_index(c.TEXT), arrow.TRAJECTORY.field(c.TEXT), pool.take(pa.array(rng.integers(0, len(pool), len(t)))))
        yield t


def write_committed(out: OutputDir, tables, roller: Roller | None) -> dict:
    """Each batch through the real write stage (and the roller, if any); times and sizes."""
    sizes, write_s, roll_s = [], 0.0, 0.0
    for t in tables:
        t0 = time.perf_counter()
        stats = write_stage(t, out_dir=out.path, fs=out.fs, schema=arrow.TRAJECTORY)
        t1 = time.perf_counter()
        write_s += t1 - t0
        b = stats["bytes"][0].as_py()
        sizes.append(b)
        if roller is not None:
            roller.add(b)
            roll_s += time.perf_counter() - t1
    if roller is not None:
        t0 = time.perf_counter()
        roller.finish()
        roll_s += time.perf_counter() - t0
    return {"batches": len(sizes), "batch_bytes": sizes, "write_s": write_s, "roll_s": roll_s}


def write_plain(directory: Path, tables) -> float:
    """The old write path: each batch to a temporary file, renamed (no record, no rolling)."""
    directory.mkdir(parents=True, exist_ok=True)
    s = 0.0
    for i, t in enumerate(tables):
        t0 = time.perf_counter()
        tmp = directory / f".tmp-{i}"
        pq.write_table(t, tmp, **storage.PARQUET_OPTIONS)
        os.replace(tmp, directory / f"part-{i:06d}.parquet")
        s += time.perf_counter() - t0
    return s


def layout(out: OutputDir) -> dict:
    recs = storage.commit_records(out.fs, out.path)[0]
    sizes = [r["bytes"] for r in recs]
    rows = sum(r["rows"] for r in recs)
    return {"files": len(recs), "rows": rows, "bytes": sum(sizes), "mean_bytes": sum(sizes) / max(len(sizes), 1), "max_bytes": max(sizes, default=0)}


def mib(b: float) -> str:
    return f"{b / 2**20:.2f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files-rows", type=int, default=80_000, help="trajectories of part 1 (files, bytes, commit cost)")
    p.add_argument("--vote-rows", type=int, default=2_000_000, help="trajectories of part 2 (vote); 0 skips it")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--batch-samples", type=int, default=16, help="samples per engine batch (sample's --batch-size)")
    p.add_argument("--text-bytes", type=int, default=1500, help="GRM text per trajectory (part 1; part 2 votes, which never reads it, uses 0)")
    p.add_argument("--target-file-mb", type=float, default=256.0)
    p.add_argument("--model", help="part 3: a local GRM (the tiny one) to run `sample` with; skipped without")
    p.add_argument("--sample-samples", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=48)
    add_child_args(p, ("vote", "baseline"))
    a = p.parse_args(argv)
    if a.child:
        r = child_vote(a.data, a.out, None, "random", 2_000_000) if a.child == "vote" else child_baseline(a.data, None, "random", a.seed)
        return finish_child(a.child_result, r)

    tmp = tempfile.TemporaryDirectory(prefix="bench_files_") if not a.workdir else None
    work = Path(a.workdir or tmp.name)
    target = int(a.target_file_mb * 2**20)
    load0 = os.getloadavg()
    result: dict = {"bench": "files", "k": a.k, "batch_rows": a.batch_samples * a.k, "target_bytes": target, "cores": os.cpu_count()}

    # ---- 1. files and bytes, commit cost
    out = OutputDir(str(work / "traj"))
    out.prepare_run({"bench": 1})
    w = write_committed(out, batches(a.files_rows, a.k, a.batch_samples, a.text_bytes, a.seed), Roller(out, target))
    after = layout(out)
    assert after["rows"] == a.files_rows // a.k * a.k, after
    plain_s = write_plain(work / "plain", batches(a.files_rows, a.k, a.batch_samples, a.text_bytes, a.seed))
    before_mean = sum(w["batch_bytes"]) / len(w["batch_bytes"])
    rows = after["rows"]
    per_m = 1e6 / rows
    result["files"] = {
        "rows": rows, "text_bytes": a.text_bytes,
        "before": {"files": w["batches"], "mean_bytes": before_mean, "files_per_million": w["batches"] * per_m},
        "after": {**after, "files_per_million": max(1.0, after["files"] * per_m), "files_per_million_from_bytes": max(1, -(-int(after["bytes"] * per_m) // target))},
        "write_stage_s": w["write_s"], "plain_write_s": plain_s, "roll_s": w["roll_s"],
        "commit_overhead_per_batch_ms": 1000 * (w["write_s"] - plain_s) / w["batches"],
        "roll_s_per_million_rows": w["roll_s"] * per_m,
    }
    f = result["files"]
    print(f"\n1. {rows:,} trajectories ({a.text_bytes} B texts) in engine batches of {a.batch_samples * a.k} rows, target {mib(target)}")
    print(f"   before (one file per batch): {w['batches']:,} files, {mib(before_mean)} per file, {f['before']['files_per_million']:,.0f} files per million trajectories")
    print(f"   after (rolled, committed):   {after['files']} file(s), {mib(after['mean_bytes'])} per file (max {mib(after['max_bytes'])}), "
          f"~{f['after']['files_per_million_from_bytes']} files per million trajectories (from bytes per row)   (goal: <= 3 files here)")
    print(f"   write stage with commit records {w['write_s']:.2f} s vs plain write+rename {plain_s:.2f} s for the same batches: "
          f"{f['commit_overhead_per_batch_ms']:+.2f} ms per batch ({w['write_s'] / plain_s:.2f}x); rolling {w['roll_s']:.2f} s "
          f"({w['roll_s'] / max(w['write_s'], 1e-9):.2f}x the writes' time)")

    # ---- 2. vote over small files vs rolled files, and the plain-Python loop over the rolled files
    if a.vote_rows:
        vout = OutputDir(str(work / "vtraj"))
        vout.prepare_run({"bench": 2})
        t0 = time.perf_counter()
        write_committed(vout, batches(a.vote_rows, a.k, a.batch_samples, 0, a.seed + 1), None)
        gen_s = time.perf_counter() - t0
        small = layout(vout)
        print(f"\n2. {small['rows']:,} trajectories written as {small['files']:,} committed batch files ({mib(small['mean_bytes'])} each) in {gen_s:.0f} s")
        vs = spawn(__file__, ["--child", "vote", "--data", vout.path, "--out", str(work / "votes_small")])
        t0 = time.perf_counter()
        vout.roll(target, final=True)
        roll_s = time.perf_counter() - t0
        big = layout(vout)
        on_disk = sorted(str(x) for x in Path(vout.path).glob("*.parquet"))
        assert on_disk == vout.parts(), "the rolled directory holds exactly the committed files"
        vb = spawn(__file__, ["--child", "vote", "--data", vout.path, "--out", str(work / "votes_big")])
        base = spawn(__file__, ["--child", "baseline", "--data", vout.path])
        for r in (vs, vb, base):
            r["rows_per_s"] = r["rows"] / r["seconds"]
        keys = ("samples", "trajectories_considered", "abstained", "tied", "judged", "correct")
        agree = all(vb["counts"][x] == base["counts"][x] == vs["counts"][x] for x in keys)
        result["vote"] = {"rows": small["rows"], "small_files": small, "rolled_files": big, "roll_s": roll_s,
                          "vote_small": vs, "vote_rolled": vb, "baseline_rolled": base, "agree": agree,
                          "ratio_vote_rolled_vs_baseline": vb["rows_per_s"] / base["rows_per_s"],
                          "ratio_vote_rolled_vs_small": vb["rows_per_s"] / vs["rows_per_s"]}
        v = result["vote"]
        print(f"   rolled into {big['files']} file(s) ({mib(big['mean_bytes'])} each) in {roll_s:.1f} s")
        hdr = f"   {'':<40} {'files':>7} {'seconds':>8} {'rows/s':>12} {'peak RSS':>9}"
        print(hdr)
        for name, r, n in (("vote, one file per batch", vs, small["files"]), ("vote, rolled files", vb, big["files"]), ("plain-Python dict loop, rolled files", base, big["files"])):
            print(f"   {name:<40} {n:>7,} {r['seconds']:>8.2f} {r['rows_per_s']:>12,.0f} {gib(r['peak_rss_kib']):>9}")
        print(f"   vote/plain Python over the same rolled files: {v['ratio_vote_rolled_vs_baseline']:.1f}x (goal >= 20x); "
              f"vote rolled/small files: {v['ratio_vote_rolled_vs_small']:.2f}x; counts agree: {'yes' if agree else 'NO'}")
    # ---- 3. the commit protocol's share of a real `sample` run (the tiny model)
    if a.model:
        from tribunal.jobs.sample import SampleConfig, run as run_sample
        from tribunal.jobs.demo import synthetic_rows

        samples = work / "samples.parquet"
        pq.write_table(pa.Table.from_pylist(synthetic_rows(a.sample_samples)), samples)
        cfg = SampleConfig(input=str(samples), output=str(work / "sampled"), model=a.model, k=a.k, batch_size=a.batch_samples,
                           max_tokens=a.max_tokens, num_cpus_per_actor=1.0)
        m = run_sample(cfg, stream=open(os.devnull, "w"))
        gen_s = m["timings_s"]["generated"] - m["timings_s"]["prepared"]
        final_roll_s = m["timings_s"]["rolled"] - m["timings_s"]["generated"]
        n_batches = -(-a.sample_samples // a.batch_samples)
        commit_s = result["files"]["commit_overhead_per_batch_ms"] / 1000 * n_batches
        result["sample"] = {"samples": a.sample_samples, "trajectories": m["counts"]["trajectories"], "generation_s": gen_s,
                            "final_roll_s": final_roll_s, "batches": n_batches, "commit_records_s_est": commit_s,
                            "protocol_share": (commit_s + final_roll_s) / gen_s, "output_files": m["output_files"]}
        r = result["sample"]
        print(f"\n3. sample, tiny model: {r['trajectories']} trajectories in {gen_s:.1f} s of generation ({n_batches} batches); "
              f"final roll {final_roll_s:.2f} s; commit records ~{commit_s:.2f} s (part 1's cost per batch x batches): "
              f"the protocol costs ~{100 * r['protocol_share']:.1f}% of the run; {r['output_files']['files']} output file(s)")
    print(f"\nload average at start {load0[0]:.1f}, at end {os.getloadavg()[0]:.1f} (1 min; other work on the cores skews these figures)")
    if a.json:
        for part in ("files",):
            result[part].pop("batch_bytes", None)
        with open(a.json, "w") as fh:
            json.dump(result, fh, indent=2, default=float)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
