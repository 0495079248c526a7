"""vote: k-way voting over sampled trajectories (CPU, polars; no GPU, no Ray).

Input schema: trajectory shards written by ``sample`` (``tribunal.schemas.arrow.TRAJECTORY``), local or
``s3://``. The first ``--k`` non-hinted trajectories of each sample by ``sample_index`` vote:
``S*_i = sum_j S_ij`` over those with valid scores (parse failures do not vote), ``best =
argmax_i S*_i`` with a tie-break seeded per sample id. One k=32 sampling run gives every smaller k.

Output schema: ``OUT/part-*.parquet`` in ``tribunal.schemas.arrow.VOTE``; one row per sample: totals,
``best`` (0-based index into ``responses``, null when every trajectory failed to parse, i.e. the
sample abstains), ``tied``, ``k`` used, ``valid`` voters, and with labels ``correct`` and the
accuracy ``credit`` under ``--tie random|half|strict``.

Meta-RM guided voting (SPEC section 5): when the trajectories carry ``meta_score`` (written by
``metarm-score``), only the ``--k-meta`` of the k with the highest meta score vote (default
``ceil(k/2)``; ties by trajectory index, unscored trajectories last); ``--meta off`` votes with all
k anyway. ``k`` in the output is then the number of trajectories kept. Recorded in the manifest.

Streaming: the ``sample`` job writes all trajectories of a sample into one shard, so shards are
voted in chunks of about ``--chunk-rows`` rows and memory stays bounded whatever the data size.

Run::

    tribunal vote --input traj/ --output votes/ --k 8
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

import pyarrow as pa

from tribunal.jobs.grm import grm_math
from tribunal.jobs.pipeline.config import add_arguments, check, opt, to_dict
from tribunal.jobs.pipeline.outputs import OutputDir, SeenIds, Timer, package_versions, trajectory_input
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

VOTE_INPUT = (c.ID, c.SAMPLE_INDEX, c.HINTED, c.N_RESPONSES, c.SCORES, c.LABELS)


@dataclass(frozen=True)
class VoteConfig:
    """A voting run over existing trajectory shards."""

    input: str = opt("", "trajectory shards: a directory or file (local path or s3://...)")
    output: str = opt("", "output directory for vote shards")
    k: int | None = opt(None, "vote with the first k non-hinted trajectories of each sample (default: all)")
    tie: str = opt("random", "tie protocol for accuracy: random (seeded), half (0.5), strict (0)", choices=grm_math.TIE_PROTOCOLS)
    seed: int = opt(0, "seed of the per-sample tie-break")
    chunk_rows: int = opt(2_000_000, "trajectory rows voted per chunk (bounds memory)")
    meta: str = opt("auto", "meta-RM guided voting: auto (on when the input has meta_score), on, off", choices=("auto", "on", "off"))
    k_meta: int | None = opt(None, "guided voting: trajectories kept by meta score out of k (default: ceil(k/2))")

    def __post_init__(self) -> None:
        check(self.meta in ("auto", "on", "off"), "meta", f"must be auto, on or off, got {self.meta!r}")
        check(self.k_meta is None or self.k_meta >= 1, "k_meta", f"must be >= 1, got {self.k_meta}")
        check(self.k_meta is None or self.k is None or self.k_meta <= self.k, "k_meta", f"must be <= k ({self.k}), got {self.k_meta}")
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.k is None or self.k >= 1, "k", f"must be >= 1, got {self.k}")
        check(self.tie in grm_math.TIE_PROTOCOLS, "tie", f"must be one of {grm_math.TIE_PROTOCOLS}, got {self.tie!r}")
        check(self.chunk_rows >= 1, "chunk_rows", f"must be >= 1, got {self.chunk_rows}")


def vote_frame(traj, k: int | None, seed: int, tie: str, guided: bool = False, k_meta: int | None = None):
    """Vote a polars DataFrame of trajectories holding whole samples -> one row per sample.

    ``guided``: of the considered trajectories, keep the ``k_meta`` (default ceil(count/2)) with
    the highest ``meta_score``, ties by ``sample_index``, nulls last (``grm_math.meta_select``).

    "The first k by sample_index" is ``sample_index < k``: ``sample`` numbers a sample's
    non-hinted trajectories 0..K-1. Totals are summed position by position over runs of equal ids
    (``_sum_runs``); only tied samples go through Python, for the seeded tie-break. Agrees with
    ``grm_math.vote`` and ``grm_math.vote_credit`` row for row (tested).
    """
    import polars as pl

    keep = ~pl.col(c.HINTED) if k is None else ~pl.col(c.HINTED) & (pl.col(c.SAMPLE_INDEX) < k)
    width = int(traj[c.N_RESPONSES].max() or 0)
    t = traj.lazy().filter(keep)
    if guided:
        t = t.sort([c.ID, c.META_SCORE, c.SAMPLE_INDEX], descending=[False, True, False], nulls_last=True, maintain_order=True)
        limit = pl.lit(k_meta) if k_meta is not None else (pl.len().over(c.ID) + 1) // 2
        t = t.filter(pl.int_range(pl.len()).over(c.ID) < limit)
    t = t.collect()
    v = _sum_runs(t, width)
    if v[c.ID].n_unique() != len(v):
        # `sample` writes a sample's rows next to each other; anything else is sorted first (stable).
        v = _sum_runs(t.sort(c.ID, maintain_order=True), width)
    v = v.with_columns(_truth(v[c.LABELS], v[c.N_RESPONSES]))
    tied_at = v[c.TIED].arg_true()
    if len(tied_at):
        tied = v[tied_at]
        picks = [
            grm_math.tie_break(seed, sid, [i for i, x in enumerate(tot) if x == max(tot)], n)
            for sid, tot, n in zip(tied[c.ID].to_list(), tied[c.TOTALS].to_list(), tied[c.N_RESPONSES].to_list())
        ]
        v = v.with_columns(v[c.BEST].scatter(tied_at, pl.Series(picks, dtype=pl.Int32)))
    judged = pl.col("_truth").is_not_null()
    abstain = pl.col(c.BEST).is_null()
    correct = pl.when(judged).then(pl.when(abstain).then(False).otherwise(pl.col(c.BEST) == pl.col("_truth")))
    truth_total = pl.col(c.TOTALS).list.get(pl.col("_truth").fill_null(0), null_on_oob=True)
    if tie == "random":
        credit = pl.when(abstain).then(0.0).otherwise(correct.cast(pl.Float64))
    elif tie == "half":
        credit = (
            pl.when(abstain)
            .then(0.5)
            .when(pl.col(c.TIED))
            .then(pl.when(truth_total == pl.col("_top")).then(0.5).otherwise(0.0))
            .otherwise(correct.cast(pl.Float64))
        )
    else:
        credit = pl.when(abstain | pl.col(c.TIED)).then(0.0).otherwise(correct.cast(pl.Float64))
    v = v.with_columns(correct.alias(c.CORRECT), pl.when(judged).then(credit).alias(c.CREDIT))
    return v.select([f.name for f in arrow.VOTE])


def _truth(labels, n):
    """``_truth``: the index of the unique top label; null for n = 1, no labels or a shared top
    label (no verdict). Null labels never count; the first maximum is the index."""
    import numpy as np
    import polars as pl

    lens = labels.list.len().fill_null(0).to_numpy()
    width = int(lens.max(initial=0))
    m = np.full((len(lens), width), -np.inf)
    # Every label in row order (explode gives an empty or null list one null: dropped by `keep`);
    # numpy through polars, since pyarrow's to_numpy imports pandas (0.1 s).
    keep = np.repeat(lens > 0, np.maximum(lens, 1))
    flat = labels.explode().cast(pl.Float64).to_numpy()[keep]
    m[np.arange(width)[None, :] < lens[:, None]] = np.where(np.isnan(flat), -np.inf, flat)
    top = m.max(axis=1, initial=-np.inf)
    ok = (top > -np.inf) & ((m == top[:, None]).sum(axis=1) == 1) & (n.to_numpy() >= 2)
    return pl.Series("_truth", m.argmax(axis=1) if width else np.zeros(len(lens), np.int64)).cast(pl.Int32).set(pl.Series(~ok), None)


def _sum_runs(t, width: int):
    """One row per run of equal ids (a sample): ``id``, ``n_responses`` and ``labels`` of its first
    row, ``k``, ``valid``, the totals ``S*_i`` (null when no trajectory voted), ``_top``, ``best``
    (the first position holding the top total; the tie-break comes later) and ``tied``. Sums are
    ``numpy.add.reduceat`` over the run starts: one pass, no group-by, no explode."""
    import numpy as np
    import polars as pl

    first = t[c.ID].ne_missing(t[c.ID].shift(1))
    head = t.select(c.ID, c.N_RESPONSES, c.LABELS).filter(first)
    starts = first.arg_true().to_numpy()
    n = head[c.N_RESPONSES].to_numpy().astype(np.int64)
    valid = np.add.reduceat(t[c.SCORES].is_not_null().cast(pl.Int32).to_numpy(), starts)
    totals = np.zeros((len(starts), width), np.int64)
    for i in range(width):
        totals[:, i] = np.add.reduceat(t[c.SCORES].list.get(i, null_on_oob=True).fill_null(0).to_numpy(), starts)
    # Positions past a sample's own n do not exist: masked out of the max, the argmax and the list.
    exists = np.arange(width)[None, :] < n[:, None]
    low = np.iinfo(np.int64).min
    top = np.where(exists, totals, low).max(axis=1, initial=low)
    hit = exists & (totals == top[:, None])
    abstain = pl.Series(valid == 0)
    # (numpy to arrow through polars: pyarrow.array on numpy input imports pandas, 0.2 s)
    offsets = pl.Series(np.concatenate([[0], np.cumsum(n)]).astype(np.int32)).to_arrow()
    return head.with_columns(
        pl.Series(c.K, np.diff(np.append(starts, len(t))).astype(np.int32)),
        pl.Series(c.VALID, valid.astype(np.int32)),
        pl.Series(c.TOTALS, pa.ListArray.from_arrays(offsets, pl.Series(totals[exists]).to_arrow(), mask=abstain.to_arrow())),
        pl.Series("_top", top).set(abstain, None),
        pl.Series(c.BEST, hit.argmax(axis=1).astype(np.int32)).set(abstain, None),
        pl.Series(c.TIED, (valid > 0) & (hit.sum(axis=1) > 1)),
    )


def to_arrow_votes(df) -> pa.Table:
    return df.to_arrow().cast(arrow.VOTE)


def chunk_files(out_fs, files: list[str], chunk_rows: int) -> list[list[str]]:
    """Group files into chunks of about ``chunk_rows`` rows (from Parquet footers)."""
    import pyarrow.parquet as pq

    chunks, cur, rows = [], [], 0
    for f in files:
        with out_fs.open(f, "rb") as fh:
            n = pq.ParquetFile(fh).metadata.num_rows
        if cur and rows + n > chunk_rows:
            chunks.append(cur)
            cur, rows = [], 0
        cur.append(f)
        rows += n
    if cur:
        chunks.append(cur)
    return chunks


def run(cfg: VoteConfig, *, job: str = "vote", stream=None) -> dict:
    import polars as pl

    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.progress import fmt_duration
    from tribunal.jobs.pipeline.stages import shard_name

    stream = stream or sys.stderr
    timer = Timer()
    src, files = trajectory_input(cfg.input, VOTE_INPUT)
    guided = _guided(cfg, src, files)
    columns = list(VOTE_INPUT) + ([c.META_SCORE] if guided else [])
    out = OutputDir(cfg.output)
    out.reset_parts()
    seen = SeenIds()
    totals = {"samples": 0, "trajectories": 0, "valid": 0, "abstained": 0, "tied": 0, "judged": 0, "credit": 0.0, "correct": 0}
    chunks = chunk_files(src.fs, files, cfg.chunk_rows)
    for i, chunk in enumerate(chunks):
        traj = src.read_polars(chunk, columns)
        votes = vote_frame(traj, cfg.k, cfg.seed, cfg.tie, guided, cfg.k_meta)
        dup = seen.add(votes[c.ID])
        if dup is not None:
            raise TribunalError(
                f"sample {dup!r} has trajectories in more than one chunk of {cfg.input}: "
                "vote needs each sample's trajectories in one shard (as `sample` writes them)"
            )
        ids = votes[c.ID]
        if len(ids):
            name = shard_name([str(ids[0]), str(ids[-1]), str(len(ids))])
            storage.write_parquet_atomic(out.fs, storage.join(out.path, name), to_arrow_votes(votes), arrow.VOTE)
        totals["samples"] += len(votes)
        totals["trajectories"] += int(votes[c.K].sum())
        totals["valid"] += int(votes[c.VALID].sum())
        totals["abstained"] += int(votes[c.BEST].is_null().sum())
        totals["tied"] += int(votes[c.TIED].sum())
        judged = votes.filter(pl.col(c.CREDIT).is_not_null())
        totals["judged"] += len(judged)
        totals["credit"] += float(judged[c.CREDIT].sum())
        totals["correct"] += int(judged[c.CORRECT].sum())
        print(f"[{job}] chunk {i + 1}/{len(chunks)}: {totals['samples']} samples voted", file=stream, flush=True)
    timer.mark("voted")
    n_traj = totals["trajectories"]
    counts = {
        "samples": totals["samples"],
        "trajectories_considered": n_traj,
        "parse_failure_rate": (n_traj - totals["valid"]) / n_traj if n_traj else 0.0,
        "abstained": totals["abstained"],
        "tied": totals["tied"],
        "judged": totals["judged"],
        "accuracy": totals["credit"] / totals["judged"] if totals["judged"] else None,
        "correct": totals["correct"],
        "guided": guided,
        "k_meta": (cfg.k_meta or (grm_math.default_k_meta(cfg.k) if cfg.k else "ceil(count/2)")) if guided else None,
    }
    manifest = {
        "job": job,
        "config": to_dict(cfg),
        "versions": package_versions(),
        "output": out.display(),
        "schema": "vote",
        "counts": counts,
        "timings_s": timer.marks,
        "throughput": {"trajectories_per_s": round(n_traj / max(timer.marks["voted"], 1e-9), 1)},
    }
    path = out.write_manifest(manifest)
    acc = f", accuracy {100 * counts['accuracy']:.1f}% ({cfg.tie} ties, {counts['judged']} judged)" if counts["accuracy"] is not None else ""
    guide = f" (meta-RM guided, k_meta={counts['k_meta']})" if guided else ""
    print(
        f"[{job}] done in {fmt_duration(time.time() - timer.start)}: {counts['samples']} samples, k={cfg.k or 'all'}{guide}, "
        f"parse failures {100 * counts['parse_failure_rate']:.1f}%, {counts['abstained']} abstained, {counts['tied']} tied{acc}",
        file=stream,
    )
    print(f"[{job}] output: {out.display()} (manifest: {path})", file=stream)
    return manifest


def _guided(cfg: VoteConfig, src: OutputDir, files: list[str]) -> bool:
    """Whether this run votes guided by the meta-RM (auto: when the shards carry meta scores)."""
    import pyarrow.parquet as pq

    if cfg.meta == "off":
        return False
    with src.fs.open(files[0], "rb") as fh:
        has = c.META_SCORE in pq.ParquetFile(fh).schema_arrow.names
    if cfg.meta == "on" and not has:
        raise TribunalError(f"{src.display(files[0])}: no {c.META_SCORE!r} column: run `tribunal metarm-score` first, or --meta off")
    if cfg.k_meta is not None and not has:
        raise TribunalError(f"--k-meta given but {src.display(files[0])} has no {c.META_SCORE!r} column (run `tribunal metarm-score` first)")
    return has


def add_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below (flags win)")
    add_arguments(parser, VoteConfig)


def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("vote", argv)


if __name__ == "__main__":
    sys.exit(main())
