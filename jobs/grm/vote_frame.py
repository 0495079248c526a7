"""Voting column-wise in polars: the form of ``grm_math.vote`` and ``grm_math.vote_credit`` that
the reducers run over millions of trajectories (``vote``, ``eval``), row for row the same result
(``tests/jobs/test_vote.py`` checks it).

Input: a polars DataFrame of trajectory columns (``id``, ``sample_index``, ``hinted``,
``n_responses``, ``scores``, ``labels``; ``meta_score`` for guided voting) holding whole samples.
Output: one row per sample in ``tribunal.schemas.arrow.VOTE``'s columns.

No Ray, no torch, no filesystem.
"""

from __future__ import annotations

import pyarrow as pa

from tribunal.jobs.grm import grm_math
from tribunal.schemas import arrow
from tribunal.schemas import columns as c


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
