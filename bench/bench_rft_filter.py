"""``rft-filter`` on synthetic trajectories: rows/s and peak RSS vs a plain-Python implementation.

Generates ``--rows`` trajectory rows (``tribunal.schemas.arrow.TRAJECTORY``: n=2, ``--n-rft`` non-hinted
trajectories per sample plus one hinted trajectory for the samples with no correct one, ~10%
parse failures, labels, the judged context and responses) as Parquet shards of whole samples.
Then, each in its own subprocess so its peak RSS (``ru_maxrss``) is its own:

(a) ``tribunal.jobs.rft_filter.run`` over all rows (verdicts, SFT and meta-RM corpora written to Parquet);
(b) the same over the first ``--baseline-rows`` rows (whole shards), the common subset;
(c) a plain-Python implementation over that subset: ``to_pylist`` per shard, a dict loop by id,
    ``grm_math.rft_verdicts`` per sample, ``protocol.build_messages`` and
    ``protocol.build_metarm_messages`` per row, the corpora written with pyarrow per shard.

Prints rows/s, the speed ratio on the same data (goal >= 20x), peak RSS (goal < 2 GiB), and
whether the funnel counts and corpus sizes of (b) and (c) agree.

Run::

    .venv/bin/python bench/bench_rft_filter.py --rows 10000000
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

from _common import add_child_args, finish_child, gib, link_subset, spawn
from bench_vote import make_shard
from tribunal.schemas import arrow
from tribunal.schemas import columns as c


def make_rft_shard(first: int, samples: int, n_rft: int, fail_rate: float, seed: int) -> pa.Table:
    """Non-hinted rows from bench_vote's generator, plus a hinted row where none is correct."""
    t = make_shard(first, samples, 2, n_rft, fail_rate, seed)
    rng = np.random.default_rng(seed + 7)
    ok = np.asarray(t[c.CORRECT].to_numpy(zero_copy_only=False)).reshape(samples, n_rft)
    need = np.flatnonzero(~ok.any(axis=1))
    h = t.take(pa.array(need * n_rft))
    hinted_ok = rng.random(len(need)) < 0.6
    h = h.set_column(h.schema.get_field_index(c.HINTED), c.HINTED, pa.array(np.ones(len(need), dtype=bool)))
    h = h.set_column(h.schema.get_field_index(c.SAMPLE_INDEX), c.SAMPLE_INDEX, pa.array(np.zeros(len(need), dtype=np.int32)))
    h = h.set_column(h.schema.get_field_index(c.CORRECT), c.CORRECT, pa.array(hinted_ok))
    h = h.set_column(h.schema.get_field_index(c.PARSE_ERROR), c.PARSE_ERROR, pa.nulls(len(need), pa.string()))
    both = pa.concat_tables([t, h.cast(arrow.TRAJECTORY)]).sort_by([(c.ID, "ascending"), (c.HINTED, "ascending"), (c.SAMPLE_INDEX, "ascending")])
    return both


def generate(out: Path, rows: int, n_rft: int, shard_rows: int, fail_rate: float, seed: int) -> list[tuple[Path, int]]:
    out.mkdir(parents=True, exist_ok=True)
    per_shard = max(shard_rows // n_rft, 1)
    total_samples = rows // n_rft
    files = []
    for i, first in enumerate(range(0, total_samples, per_shard)):
        t = make_rft_shard(first, min(per_shard, total_samples - first), n_rft, fail_rate, seed * 100_003 + i)
        path = out / f"part-{i:05d}.parquet"
        pq.write_table(t, path)
        files.append((path, t.num_rows))
    (out / "_run.json").write_text(json.dumps({"settings": {"template": "default"}}))
    return files


# ----------------------------------------------------------------------------- children
def child_ours(data: str, out: str, chunk_rows: int) -> dict:
    # The modules the job imports lazily are imported before the clock starts, like the
    # baseline's: both sides time their work, not their imports.
    import numpy  # noqa: F401
    import pandas  # noqa: F401 - pyarrow imports it on its first compute call (~0.1 s)
    import polars  # noqa: F401
    import pyarrow.compute  # noqa: F401

    import tribunal.cluster.storage  # noqa: F401
    import tribunal.jobs.grm.render_frame  # noqa: F401
    import tribunal.jobs.pipeline.files  # noqa: F401
    import tribunal.jobs.pipeline.report  # noqa: F401
    import tribunal.jobs.pipeline.stages  # noqa: F401
    from tribunal.jobs.rft_filter import RftFilterConfig, run

    t0 = time.perf_counter()
    r = run(RftFilterConfig(input=data, output=out, hint="auto", chunk_rows=chunk_rows), stream=open(os.devnull, "w"))
    f = r["funnel"]
    return {"seconds": time.perf_counter() - t0, "rows": f["trajectories"], "outcomes": f["outcomes"],
            "verdicts": f["trajectory_verdicts"], "sft_rows": f["sft_rows"], "metarm_rows": f["metarm_rows"]}


def child_baseline(data: str, out: str) -> dict:
    import pandas  # noqa: F401 - as for child_ours

    from tribunal.jobs.grm import grm_math as gm
    from tribunal.jobs.grm.protocol import build_messages, build_metarm_messages, load_template

    t0 = time.perf_counter()
    tpl = load_template("default")
    cols = [c.ID, c.SAMPLE_INDEX, c.HINTED, c.PERMUTATION, c.TEXT, c.PARSE_ERROR, c.LABELS, c.CORRECT, c.CONTEXT, c.RESPONSES]
    outcomes: dict[str, int] = {}
    verdicts: dict[str, int] = {}
    rows = sft_n = meta_n = 0
    Path(out, "sft").mkdir(parents=True, exist_ok=True)
    Path(out, "metarm").mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(data).glob("part-*.parquet")):
        by_id: dict[str, list[dict]] = {}
        for r in pq.read_table(f, columns=cols).to_pylist():
            by_id.setdefault(r[c.ID], []).append(r)
        sft, meta = [], []
        for rs in by_id.values():
            outcome, vs = gm.rft_verdicts([r[c.HINTED] for r in rs], [r[c.CORRECT] for r in rs], [r[c.PARSE_ERROR] for r in rs], "auto")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            for r, v in zip(rs, vs):
                rows += 1
                verdicts[v] = verdicts.get(v, 0) + 1
                view = [r[c.RESPONSES][i] for i in r[c.PERMUTATION]]
                if v == "accepted":
                    hint = gm.invert_permutation(r[c.PERMUTATION])[gm.unique_argmax(r[c.LABELS])] + 1 if r[c.HINTED] else None
                    prompt = build_messages(tpl, r[c.CONTEXT], view, hint=hint)
                    sft.append({c.ID: r[c.ID], c.SAMPLE_INDEX: r[c.SAMPLE_INDEX], c.HINTED: r[c.HINTED],
                                c.PERMUTATION: r[c.PERMUTATION], c.PROMPT: prompt,
                                c.COMPLETION: [{"role": "assistant", "content": r[c.TEXT]}],
                                c.MESSAGES: prompt + [{"role": "assistant", "content": r[c.TEXT]}]})
                if not r[c.HINTED]:
                    meta.append({c.ID: r[c.ID], c.SAMPLE_INDEX: r[c.SAMPLE_INDEX], c.HINTED: False,
                                 c.MESSAGES: build_metarm_messages(r[c.CONTEXT], view, r[c.TEXT]), c.LABEL: int(r[c.CORRECT])})
        pq.write_table(pa.Table.from_pylist(sft, schema=arrow.SFT), Path(out, "sft", f.name))
        pq.write_table(pa.Table.from_pylist(meta, schema=arrow.METARM), Path(out, "metarm", f.name))
        sft_n += len(sft)
        meta_n += len(meta)
    return {"seconds": time.perf_counter() - t0, "rows": rows, "outcomes": outcomes, "verdicts": verdicts,
            "sft_rows": sft_n, "metarm_rows": meta_n}


def same_corpus(ours: Path, base: Path) -> bool:
    """Both corpora hold the same rows, every column equal (row order and sharding may differ)."""
    import polars as pl

    key = [c.ID, c.SAMPLE_INDEX, c.HINTED]
    a = pl.read_parquet(sorted(ours.glob("part-*.parquet"))).sort(key)
    b = pl.read_parquet(sorted(base.glob("part-*.parquet"))).sort(key)
    return a.columns == b.columns and a.equals(b)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000, help="trajectory rows to generate and filter")
    p.add_argument("--baseline-rows", type=int, default=500_000, help="rows (whole shards) of the common subset for the baseline")
    p.add_argument("--n-rft", type=int, default=3, help="non-hinted trajectories per sample")
    p.add_argument("--shard-rows", type=int, default=250_000, help="non-hinted rows per Parquet shard")
    p.add_argument("--fail-rate", type=float, default=0.10, help="share of trajectories that failed to parse")
    p.add_argument("--chunk-rows", type=int, default=None, help="RftFilterConfig.chunk_rows (default: the job's)")
    add_child_args(p, ("ours", "baseline"))
    a = p.parse_args(argv)
    if a.child:
        from tribunal.jobs.rft_filter import RftFilterConfig

        chunk = a.chunk_rows or RftFilterConfig.__dataclass_fields__["chunk_rows"].default
        r = child_ours(a.data, a.out, chunk) if a.child == "ours" else child_baseline(a.data, a.out)
        return finish_child(a.child_result, r)

    load0 = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="bench_rft_") if not a.workdir else None
    work = Path(a.workdir or tmp.name)
    t0 = time.perf_counter()
    files = generate(work / "full", a.rows, a.n_rft, a.shard_rows, a.fail_rate, a.seed)
    rows = sum(r for _, r in files)
    print(f"generated {rows:,} trajectory rows in {len(files)} shards in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    subset = work / "subset"
    sub_rows = link_subset(files, subset, a.baseline_rows)
    (subset / "_run.json").write_text((work / "full" / "_run.json").read_text())
    extra = ["--chunk-rows", str(a.chunk_rows)] if a.chunk_rows else []
    print("running rft-filter (all rows) ...", file=sys.stderr)
    full = spawn(__file__, ["--child", "ours", "--data", str(work / "full"), "--out", str(work / "out_full"), *extra])
    print("running rft-filter (subset) ...", file=sys.stderr)
    ours = spawn(__file__, ["--child", "ours", "--data", str(subset), "--out", str(work / "out_subset"), *extra])
    print("running plain-Python implementation (subset) ...", file=sys.stderr)
    base = spawn(__file__, ["--child", "baseline", "--data", str(subset), "--out", str(work / "out_base")])
    for r in (full, ours, base):
        r["rows_per_s"] = r["rows"] / r["seconds"]
    same_rows = {corpus: same_corpus(work / "out_subset" / corpus, work / "out_base" / corpus) for corpus in ("sft", "metarm")}
    outcomes_ours = {k: v for k, v in ours["outcomes"].items() if k != "invalid" and v}
    agree = (outcomes_ours == base["outcomes"] and ours["verdicts"] == base["verdicts"]
             and ours["sft_rows"] == base["sft_rows"] and ours["metarm_rows"] == base["metarm_rows"])
    ratio = ours["rows_per_s"] / base["rows_per_s"]

    print()
    print(f"rft-filter on synthetic trajectories: n=2, n_rft={a.n_rft} + hinted, {100 * a.fail_rate:.0f}% parse failures, {os.cpu_count()} cores")
    hdr = f"{'':<36} {'rows':>12} {'seconds':>9} {'rows/s':>11} {'peak RSS':>10} {'SFT rows':>10} {'meta-RM rows':>13}"
    print(hdr)
    print("-" * len(hdr))
    for name, r in (("rft-filter, all rows", full), ("rft-filter, common subset", ours), ("plain Python, common subset", base)):
        print(f"{name:<36} {r['rows']:>12,} {r['seconds']:>9.2f} {r['rows_per_s']:>11,.0f} {gib(r['peak_rss_kib']):>10} "
              f"{r['sft_rows']:>10,} {r['metarm_rows']:>13,}")
    print()
    print(f"speed ratio rft-filter/plain Python, same data ({sub_rows:,} rows): {ratio:.1f}x   (goal >= 20x)")
    print(f"rft-filter's rate over all rows / the plain-Python rate: {full['rows_per_s'] / base['rows_per_s']:.1f}x")
    print(f"peak RSS of rft-filter over all rows: {gib(full['peak_rss_kib'])}   (goal < 2 GiB)")
    print(f"funnel, verdicts and corpus sizes agree on the common subset: {'yes' if agree else 'NO'}")
    print("corpora row for row identical to the plain-Python ones (every column, sorted by key): "
          + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in same_rows.items()))
    load1 = os.getloadavg()
    print(f"load average at start {load0[0]:.2f}, at end {load1[0]:.2f} (1 min)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "subset_rows": sub_rows, "full": full, "subset": ours, "baseline": base,
                       "ratio_same_data": ratio, "ratio_full_vs_baseline_rate": full["rows_per_s"] / base["rows_per_s"],
                       "agree": agree, "same_rows": same_rows}, f, indent=2)
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
