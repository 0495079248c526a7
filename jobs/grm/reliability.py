"""How far to trust the judge: reliability figures of a GRM from the trajectories it sampled.

The definitions, in prose, are in ``docs/reliability.md``; this module is their one implementation.
``eval`` reports them with 95% bootstrap intervals (per run and per subset), ``vote`` puts the
label-free ones in its manifest.

Input: a polars DataFrame of trajectory columns (``id``, ``sample_index``, ``n_responses``,
``permutation``, ``scores``; ``labels`` where given) holding the trajectories to judge: the caller
chooses which (``eval`` and ``vote``: the non-hinted ones that vote). ``permutation[p]`` is the
original index of the response shown in slot ``p``; ``scores`` are in the original order.

Words used throughout:

* a trajectory's **pick** is the original index of its unique top score; a tie at the top, or a
  parse failure, is no pick, and so is a sample of one response. A trajectory with a pick is
  **decided**.
* its **slot** is the displayed position (0-based) of its pick: ``permutation.index(pick)``.
* a sample's **vote** is ``vote_frame``'s ``best`` (the ``vote`` job's own answer).

The figures are sums over samples of per-sample quantities (``contributions``), so one function
of those sums gives both the point estimate and, over samples resampled with replacement, the
bootstrap interval; and ``vote`` can add them up chunk by chunk.

Pure: numpy and polars, no Ray, no torch, no filesystem. scipy, when installed, gives the exact
binomial p-value; without it a normal approximation is used, and the result says which.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from tribunal.schemas import columns as c

PICK = "_pick"  # original index of a trajectory's unique top score; null: a tie or a parse failure
SLOT = "_slot"  # displayed position (0-based) of the pick
ORDER = "_order"  # a code of the permutation: trajectories with equal codes saw the same order
TRUTH_SLOT = "_truth_slot"  # displayed position of the labelled best response (null: no unique best)
HIT = "_hit"  # the pick is the labelled best (null without a unique best or when unparsed)
RESPONSE_CHARS = "_response_chars"  # characters of each response, original order

# Calibration bins: the vote margin in score points per voter (top total minus runner-up total,
# over the valid voters); a margin of exactly 0 is a tie at the top.
MARGIN_EDGES = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0)
ECE_BINS = 10  # equal-width confidence bins of the expected calibration error


# ------------------------------------------------------------------------ per trajectory


def _padded(lists, width: int, fill: float) -> tuple[np.ndarray, np.ndarray]:
    """A list column as a (rows, width) float matrix (``fill`` past each list's end, for a null
    list and for null values) and the list lengths (0 for null)."""
    import polars as pl

    lens = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    m = np.full((len(lens), width), fill, dtype=np.float64)
    if width == 0 or len(lens) == 0:
        return m, lens
    # explode gives an empty or null list one null: dropped by `keep`
    keep = np.repeat(lens > 0, np.maximum(lens, 1))
    flat = lists.explode().cast(pl.Float64).to_numpy()[keep]
    m[np.arange(width)[None, :] < lens[:, None]] = np.where(np.isnan(flat), fill, flat)
    return m, lens


def unique_top(m: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per row, the column of the unique maximum of ``m`` (-inf cells never count), else -1;
    rows where ``valid`` is False are -1."""
    if m.shape[1] == 0:
        return np.full(len(m), -1, np.int64)
    top = m.max(axis=1, initial=-np.inf)
    hits = (m == top[:, None]) & np.isfinite(m)
    ok = valid & (hits.sum(axis=1) == 1)
    return np.where(ok, m.argmax(axis=1), -1)


def trajectory_picks(traj):
    """One row per trajectory: ``id``, ``n_responses``, ``sample_index``, ``scores``, ``labels``
    (null when absent) and the pick, its slot, the order, the labelled best's slot and whether
    the pick hit it (``PICK``, ``SLOT``, ``ORDER``, ``TRUTH_SLOT``, ``HIT``)."""
    import polars as pl

    width = int(traj[c.N_RESPONSES].max() or 0)
    scores, _ = _padded(traj[c.SCORES], width, -np.inf)
    parsed = traj[c.SCORES].is_not_null().to_numpy()
    n = traj[c.N_RESPONSES].to_numpy()
    pick = unique_top(scores, parsed & (n >= 2))  # one response: nothing to pick from
    perm, _ = _padded(traj[c.PERMUTATION], width, -1.0)
    slot = np.where(pick >= 0, (perm == pick[:, None]).argmax(axis=1) if width else -1, -1)
    labels = traj[c.LABELS] if c.LABELS in traj.columns else pl.Series(c.LABELS, [None] * len(traj), pl.List(pl.Float64))
    lab, lab_len = _padded(labels, width, -np.inf)
    truth = unique_top(lab, (lab_len == n) & (n >= 2))
    truth_slot = np.where(truth >= 0, (perm == truth[:, None]).argmax(axis=1) if width else -1, -1)
    hit = np.where(truth >= 0, pick == truth, False)

    def col(name: str, values: np.ndarray, missing: np.ndarray):
        return pl.Series(name, values, pl.Int32 if values.dtype != bool else pl.Boolean).set(pl.Series(missing), None)

    if width <= 12:  # the permutation as a number in base width + 1 (13**12 < 2**53: exact in float64)
        order = pl.Series(ORDER, (np.where(perm < 0, 0, perm + 1) * float(width + 1) ** np.arange(width)).sum(axis=1).astype(np.int64))
    else:
        order = traj[c.PERMUTATION].cast(pl.List(pl.String)).list.join(",").rank("dense").cast(pl.Int64).alias(ORDER)

    return pl.DataFrame([
        traj[c.ID], traj[c.N_RESPONSES], traj[c.SAMPLE_INDEX], traj[c.SCORES], labels.alias(c.LABELS),
        col(PICK, pick, pick < 0),
        col(SLOT, slot, pick < 0),
        order,
        col(TRUTH_SLOT, truth_slot, truth < 0),
        col(HIT, hit, (truth < 0) | ~parsed),
    ])


# ------------------------------------------------------------------------ per sample


@dataclass(frozen=True)
class SampleStats:
    """Per-sample counts behind every figure; row ``i`` is sample ``ids[i]``.

    Pairs are unordered pairs of decided trajectories; "same-order" pairs saw the same
    permutation, "cross-order" pairs (``pairs - same_pairs``) different ones.
    """

    ids: list[str]
    n: np.ndarray  # responses
    trajectories: np.ndarray
    parsed: np.ndarray  # of samples with two or more responses (one response: no pick to make)
    decided: np.ndarray
    orders: np.ndarray  # distinct orders among the decided trajectories
    pairs: np.ndarray
    agree: np.ndarray  # pairs with the same pick
    same_pairs: np.ndarray
    same_agree: np.ndarray
    pick_counts: np.ndarray  # (samples, width): decided trajectories picking original index j
    slot_wins: np.ndarray  # (samples, width): decided trajectories whose pick was shown in slot p
    best: np.ndarray  # the vote's pick (-1: abstained or no vote given)
    correct: np.ndarray  # the vote picked the labelled best: 1, 0, or -1 (no verdict)
    truth_parsed: np.ndarray  # (samples, width): parsed trajectories by the labelled best's slot
    truth_hits: np.ndarray  # (samples, width): of those, the ones that picked it

    def take(self, mask: np.ndarray) -> SampleStats:
        return SampleStats(**{k: ([x for x, m in zip(v, mask) if m] if k == "ids" else v[mask]) for k, v in self.__dict__.items()})

    def __len__(self) -> int:
        return len(self.ids)


def sample_stats(picks, votes=None) -> SampleStats:
    """``trajectory_picks`` rows -> per-sample counts; ``votes`` (``vote_frame`` output: ``id``,
    ``best``, ``correct``) adds agreement with the vote and the vote's verdict."""
    import polars as pl

    first = picks[c.ID].ne_missing(picks[c.ID].shift(1))
    ids = picks[c.ID].filter(first)
    if ids.n_unique() == len(ids):  # a sample's rows next to each other (as `sample` writes them): runs
        s = (first.cast(pl.Int64).cum_sum() - 1).to_numpy()
    else:
        ids = picks[c.ID].unique().sort()
        s = (picks[c.ID].rank("dense").to_numpy() - 1).astype(np.int64)
    S = len(ids)
    W = int(picks[c.N_RESPONSES].max() or 0)
    n = np.zeros(S, np.int64)
    n[s] = picks[c.N_RESPONSES].to_numpy()
    trajectories = np.bincount(s, minlength=S)
    multi = picks[c.N_RESPONSES].to_numpy() >= 2  # a sample of one response has no pick to make
    parsed = np.bincount(s, weights=picks[c.SCORES].is_not_null().to_numpy() & multi, minlength=S).astype(np.int64)
    pick = picks[PICK].fill_null(-1).to_numpy().astype(np.int64)
    slot = picks[SLOT].fill_null(-1).to_numpy().astype(np.int64)
    order = (picks[ORDER].rank("dense").to_numpy() - 1).astype(np.int64)  # 0..O-1
    d = pick >= 0
    def table(rows: np.ndarray, cols: np.ndarray, weights=None) -> np.ndarray:
        """(S, W) counts of (row, col) pairs (bincount: np.add.at is ten times slower)."""
        return np.bincount(rows * W + cols, weights=weights, minlength=S * W).reshape(S, W).astype(np.int64)

    pick_counts = table(s[d], pick[d])
    slot_wins = table(s[d], slot[d])
    decided = pick_counts.sum(axis=1)
    O = int(order.max(initial=0)) + 1

    def pairs_by(key: np.ndarray) -> np.ndarray:
        """Per sample, the pairs of its decided trajectories that share ``key`` (key // (O * W) is the sample)."""
        _, first, counts = np.unique(key, return_index=True, return_counts=True)
        return np.bincount(s[d][first], weights=counts * (counts - 1) // 2, minlength=S).astype(np.int64)

    same_pairs = pairs_by(s[d] * O + order[d])
    same_agree = pairs_by((s[d] * O + order[d]) * W + pick[d])
    orders = np.bincount(s[d][np.unique(s[d] * O + order[d], return_index=True)[1]], minlength=S)
    agree = (pick_counts * (pick_counts - 1) // 2).sum(axis=1)
    truth_slot = picks[TRUTH_SLOT].fill_null(-1).to_numpy().astype(np.int64)
    t = (truth_slot >= 0) & picks[c.SCORES].is_not_null().to_numpy()
    truth_parsed = table(s[t], truth_slot[t])
    truth_hits = table(s[t], truth_slot[t], picks[HIT].fill_null(False).to_numpy()[t].astype(np.float64))
    best = np.full(S, -1, np.int64)
    correct = np.full(S, -1, np.int64)
    if votes is not None:
        v = pl.DataFrame({c.ID: ids}).join(votes.select(c.ID, c.BEST, c.CORRECT), on=c.ID, how="left", maintain_order="left")
        best = v[c.BEST].fill_null(-1).to_numpy().astype(np.int64)
        correct = v[c.CORRECT].cast(pl.Int64).fill_null(-1).to_numpy()
    return SampleStats(
        ids=ids.to_list(), n=n, trajectories=trajectories, parsed=parsed, decided=decided, orders=orders,
        pairs=decided * (decided - 1) // 2, agree=agree, same_pairs=same_pairs, same_agree=same_agree,
        pick_counts=pick_counts, slot_wins=slot_wins, best=best, correct=correct,
        truth_parsed=truth_parsed, truth_hits=truth_hits,
    )


# ------------------------------------------------------------------------ sums -> figures
#
# ``contributions`` turns per-sample counts into per-sample arrays whose sums over samples are all
# a figure needs; each figure is a function of those sums, vectorised over a leading axis (one
# row per bootstrap resample).


def _div(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _pad(a: np.ndarray, width: int) -> np.ndarray:
    return a if a.shape[-1] >= width else np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])])


def contributions(st: SampleStats, slots: tuple[int, ...] = ()) -> dict[str, np.ndarray]:
    """Per-sample arrays (samples first) whose column sums give the label-free figures; ``slots``:
    the n values whose per-slot win counts to include (``wins_n{n}``)."""
    cross_pairs = st.pairs - st.same_pairs
    cross_agree = st.agree - st.same_agree
    seen = cross_pairs > 0
    voted = (st.best >= 0) & (st.decided > 0)
    fleiss = st.decided >= 2
    agree_vote = np.where(voted, st.pick_counts[np.arange(len(st)), np.maximum(st.best, 0)] if st.pick_counts.size else 0, 0)
    out = {
        "samples": np.ones(len(st)),
        "trajectories": st.trajectories.astype(float),
        "parsed": st.parsed.astype(float),
        "decided": st.decided.astype(float),
        "cons_num": np.where(seen, _div(cross_agree, cross_pairs), 0.0),
        "cons_den": seen.astype(float),
        "orders_seen": np.where(seen, st.orders, 0).astype(float),
        "flip_num": (seen & (cross_agree < cross_pairs)).astype(float),
        "same_num": np.where(st.same_pairs > 0, _div(st.same_agree, st.same_pairs), 0.0),
        "same_den": (st.same_pairs > 0).astype(float),
        "vote_num": np.where(voted, _div(agree_vote, st.decided), 0.0),
        "vote_den": voted.astype(float),
        "fleiss_p": np.where(fleiss, _div(st.agree, st.pairs), 0.0),
        "fleiss_den": fleiss.astype(float),
        "fleiss_counts": np.where(fleiss[:, None], st.pick_counts, 0).astype(float),
    }
    for m in slots:
        out[f"wins_n{m}"] = np.where((st.n == m)[:, None], _pad(st.slot_wins, m)[:, :m], 0).astype(float)
    return out


def add_sums(total: dict[str, np.ndarray] | None, part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Running column sums (``vote``: chunk by chunk); vectors of different widths are padded."""
    sums = {k: np.asarray(v).sum(axis=0) for k, v in part.items()}
    if total is None:
        return sums
    out = dict(total)
    for k, v in sums.items():
        if k not in out:
            out[k] = v
        elif np.ndim(v):
            w = max(np.shape(v)[-1], np.shape(out[k])[-1])
            out[k] = _pad(np.atleast_1d(out[k]), w) + _pad(np.atleast_1d(v), w)
        else:
            out[k] = out[k] + v
    return out


def fleiss_from_sums(p_sum, subjects, counts):
    """Fleiss' kappa with a varying number of raters per subject: ``p_sum`` = sum over subjects
    of the share of agreeing rater pairs, ``counts`` = ratings per category summed over subjects."""
    counts = np.asarray(counts, dtype=float)
    p_bar = _div(np.asarray(p_sum, float), np.asarray(subjects, float))
    p_j = _div(counts, counts.sum(axis=-1, keepdims=True))
    p_e = np.nansum(p_j**2, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1, (p_bar - p_e) / np.where(p_e < 1, 1 - p_e, 1), np.nan)


LABEL_FREE: dict[str, Callable] = {
    "position_consistency": lambda s: _div(s["cons_num"], s["cons_den"]),
    "flip_rate": lambda s: _div(s["flip_num"], s["cons_den"]),
    "same_order_agreement": lambda s: _div(s["same_num"], s["same_den"]),
    "agreement_with_vote": lambda s: _div(s["vote_num"], s["vote_den"]),
    "fleiss_kappa": lambda s: fleiss_from_sums(s["fleiss_p"], s["fleiss_den"], s["fleiss_counts"]),
}
# How many samples each figure is over (the sum that is its denominator).
LABEL_FREE_SAMPLES = {"position_consistency": "cons_den", "flip_rate": "cons_den", "same_order_agreement": "same_den",
                      "agreement_with_vote": "vote_den", "fleiss_kappa": "fleiss_den"}


def _value(x) -> float | None:
    x = float(np.asarray(x).reshape(-1)[0]) if np.size(x) else math.nan
    return None if math.isnan(x) else x


def label_free_figures(sums: Mapping[str, np.ndarray]) -> dict:
    """The figures ``vote`` puts in its manifest, from column sums (``add_sums``), no intervals."""
    out: dict = {k: _value(f(sums)) for k, f in LABEL_FREE.items()}
    out["samples_seen_in_two_orders"] = int(sums["cons_den"])
    out["mean_orders_seen"] = _value(_div(sums["orders_seen"], sums["cons_den"]))
    out["tie_rate"] = _value(_div(sums["parsed"] - sums["decided"], sums["parsed"]))
    out["decided_trajectories"] = int(sums["decided"])
    if "wins_n2" in sums:
        wins = np.asarray(sums["wins_n2"], float)
        out["first_slot_rate_pairs"] = _value(_div(wins[0], wins.sum()))
    return out


# ------------------------------------------------------------------------ bootstrap


def bootstrap(columns: Mapping[str, np.ndarray], stats: Mapping[str, Callable], resamples: int, seed: int,
              level: float = 0.95) -> dict[str, tuple[float, float] | None]:
    """Percentile intervals of ``stats[name](sums)`` over samples resampled with replacement:
    every statistic is evaluated on the same resamples. None without resamples, with fewer than 2
    samples, or when the statistic is undefined on most resamples.

    A resample's sums are its draw counts times the per-sample arrays: one matrix product for a
    batch of resamples (all columns side by side), not a gather per column."""
    S = len(next(iter(columns.values()))) if columns else 0
    if resamples == 0 or S < 2:
        return {k: None for k in stats}
    names = list(columns)
    shapes = [columns[k].shape[1:] for k in names]
    x = np.concatenate([np.asarray(columns[k], float).reshape(S, -1) for k in names], axis=1)
    bounds = np.cumsum([0] + [int(np.prod(sh)) for sh in shapes])
    rng = np.random.default_rng(seed)
    step = max(1, 4_000_000 // S)  # bound the count matrix to ~32 MB
    got: dict[str, list] = {k: [] for k in stats}
    for b in range(0, resamples, step):
        m = min(step, resamples - b)
        draws = rng.integers(0, S, size=(m, S)) + (np.arange(m) * S)[:, None]
        counts = np.bincount(draws.ravel(), minlength=m * S).reshape(m, S).astype(float)
        flat = counts @ x
        sums = {k: flat[:, bounds[i]:bounds[i + 1]].reshape((m, *shapes[i])) for i, k in enumerate(names)}
        for k, f in stats.items():
            got[k].append(np.broadcast_to(f(sums), (m,)))
    out: dict[str, tuple[float, float] | None] = {}
    for k, parts in got.items():
        v = np.concatenate(parts)
        v = v[np.isfinite(v)]
        if len(v) < resamples / 2:
            out[k] = None
            continue
        lo, hi = np.quantile(v, [(1 - level) / 2, 1 - (1 - level) / 2])
        out[k] = (float(lo), float(hi))
    return out


def figure(value, ci, samples: int) -> dict:
    """One reported figure: ``value`` (None when undefined), its 95% interval and the samples it is over."""
    return {"value": _value(value), "ci95": list(ci) if ci and _value(value) is not None else None, "samples": int(samples)}


# ------------------------------------------------------------------------ tests of "no bias"


def binomial_p_value(successes: int, trials: int, p: float = 0.5) -> tuple[float | None, str]:
    """Two-sided p-value of ``successes`` in ``trials`` under Binomial(trials, p), and the method:
    scipy's exact test when installed, else the normal approximation with continuity correction."""
    if trials == 0:
        return None, "none"
    try:
        from scipy.stats import binomtest
    except ImportError:
        z = (abs(successes - trials * p) - 0.5) / math.sqrt(trials * p * (1 - p))
        return math.erfc(max(z, 0.0) / math.sqrt(2)), "binomial, normal approximation, scipy not installed"
    return float(binomtest(successes, trials, p).pvalue), "binomial exact, scipy"


def chi_square_sf(x: float, df: int) -> float:
    """P(X >= x) for X ~ chi-square with integer ``df`` degrees of freedom (closed form)."""
    if x <= 0:
        return 1.0
    h = x / 2
    if df % 2 == 0:  # exp(-h) * sum_{i < df/2} h^i / i!
        term, total = 1.0, 1.0
        for i in range(1, df // 2):
            term *= h / i
            total += term
        return min(1.0, math.exp(-h) * total)
    # odd: erfc(sqrt(h)) + exp(-h) * sum_{i=1}^{(df-1)/2} h^(i-1/2) / Gamma(i+1/2)
    total, term = math.erfc(math.sqrt(h)), math.sqrt(h) / math.gamma(1.5)
    for i in range(1, (df - 1) // 2 + 1):
        total += math.exp(-h) * term
        term *= h / (i + 0.5)
    return min(1.0, total)


def chi_square_uniform(counts) -> tuple[float | None, float | None, str]:
    """Pearson's chi-square of ``counts`` against equal shares: (statistic, p-value, method)."""
    counts = np.asarray(counts, dtype=float)
    total, k = counts.sum(), len(counts)
    if total == 0 or k < 2:
        return None, None, "none"
    expected = total / k
    stat = float(((counts - expected) ** 2 / expected).sum())
    try:
        from scipy.stats import chi2
    except ImportError:
        return stat, chi_square_sf(stat, k - 1), f"chi-square {k - 1} df, closed form, scipy not installed"
    return stat, float(chi2.sf(stat, k - 1)), f"chi-square {k - 1} df, scipy"


# ------------------------------------------------------------------------ the label-free report


def reliability(st: SampleStats, resamples: int, seed: int) -> dict:
    """Position consistency, flip rate, position bias (pairs and per displayed slot for n > 2)
    and self-consistency, each with a 95% bootstrap interval over samples."""
    ns = tuple(int(m) for m in np.unique(st.n) if m >= 2)
    cols = contributions(st, ns)
    sums = {k: v.sum(axis=0) for k, v in cols.items()}
    stats: dict[str, Callable] = dict(LABEL_FREE)
    for m in ns:
        for p in range(m):
            stats[f"n{m}_slot{p}"] = lambda s, m=m, p=p: _div(s[f"wins_n{m}"][..., p], s[f"wins_n{m}"].sum(axis=-1))
    ci = bootstrap(cols, stats, resamples, seed)
    parsed, decided = int(sums["parsed"]), int(sums["decided"])
    out: dict = {
        "samples": len(st),
        "trajectories": int(sums["trajectories"]),
        "parsed": parsed,
        "decided": decided,
        "tie_rate": _value(_div(parsed - decided, parsed)),
        "mean_orders_seen": _value(_div(sums["orders_seen"], sums["cons_den"])),
    }
    for k in LABEL_FREE:
        out[k] = figure(LABEL_FREE[k](sums), ci[k], sums[LABEL_FREE_SAMPLES[k]])
    by_n: dict = {}
    for m in ns:
        wins = sums[f"wins_n{m}"]
        total = int(wins.sum())
        in_n = st.n == m
        entry: dict = {
            "samples": int(in_n.sum()),
            "decided_trajectories": total,
            "win_rate": [_value(_div(wins[p], total)) for p in range(m)],
            "ci95": [ci[f"n{m}_slot{p}"] if total else None for p in range(m)],
            "expected": 1 / m,
        }
        if m == 2:
            entry["p_value"], entry["test"] = binomial_p_value(int(wins[0]), total)
        else:
            entry["chi2"], entry["p_value"], entry["test"] = chi_square_uniform(wins)
        entry["fleiss_kappa"] = _value(LABEL_FREE["fleiss_kappa"](
            {k: cols[k][in_n].sum(axis=0) for k in ("fleiss_p", "fleiss_den", "fleiss_counts")}))
        by_n[str(m)] = entry
    out["position_bias"] = by_n
    if "2" in by_n:
        pair = by_n["2"]
        out["first_slot_rate_pairs"] = {"value": pair["win_rate"][0], "ci95": pair["ci95"][0], "samples": pair["samples"],
                                        "trajectories": pair["decided_trajectories"], "p_value": pair["p_value"], "test": pair["test"]}
    return out


def accuracy_by_best_slot(st: SampleStats) -> dict:
    """Labelled data: per n, the share of parsed trajectories that pick the labelled best, by the
    slot the best was shown in (an unbiased judge does equally well in every slot)."""
    out = {}
    for m in (int(x) for x in np.unique(st.n) if x >= 2):
        in_n = st.n == m
        parsed = st.truth_parsed[in_n, :m].sum(axis=0)
        if not parsed.sum():
            continue
        hits = st.truth_hits[in_n, :m].sum(axis=0)
        out[str(m)] = {"accuracy": [_value(_div(h, t)) for h, t in zip(hits, parsed)], "trajectories": [int(t) for t in parsed]}
    return out


# ------------------------------------------------------------------------ calibration (labels)


def _bins(values: np.ndarray, edges: tuple[float, ...]) -> tuple[np.ndarray, list[str]]:
    """Bin index per value: 0 for exactly ``edges[0]``, then (edges[i], edges[i+1]], then > last."""
    idx = np.searchsorted(np.asarray(edges), values, side="left")
    names = [f"{edges[0]:g}"] + [f"({lo:g}, {hi:g}]" for lo, hi in zip(edges, edges[1:])] + [f"> {edges[-1]:g}"]
    return idx, names


def vote_margins(votes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per vote row: the margin (top total minus runner-up, per valid voter), the winner's mean
    score and whether both are defined (a vote with voters and n >= 2)."""
    n = votes[c.N_RESPONSES].to_numpy()
    width = int(n.max(initial=0))
    totals, _ = _padded(votes[c.TOTALS], width, -np.inf)
    valid = votes[c.VALID].to_numpy().astype(float)
    ok = (valid > 0) & (n >= 2) & votes[c.TOTALS].is_not_null().to_numpy()
    if width < 2:
        return np.zeros(len(n)), np.zeros(len(n)), np.zeros(len(n), bool)
    top2 = -np.sort(-totals, axis=1)[:, :2]
    margin = np.where(ok, _div(top2[:, 0] - top2[:, 1], valid), np.nan)
    best = votes[c.BEST].fill_null(0).to_numpy()
    winner = np.where(ok, _div(totals[np.arange(len(n)), best], valid), np.nan)
    return margin, winner, ok


def mean_interval(values: np.ndarray, resamples: int, seed: int) -> tuple[float, float] | None:
    """Bootstrap interval of the mean of per-sample values."""
    values = np.asarray(values, float)
    return bootstrap({"x": values, "n": np.ones(len(values))}, {"m": lambda s: _div(s["x"], s["n"])}, resamples, seed)["m"]


def _table(names: list[str], idx: np.ndarray, credit: np.ndarray, x: np.ndarray, resamples: int, seed: int, key: str) -> list[dict]:
    """Accuracy (mean credit) per bin, with its interval and the bin's mean ``x`` as ``key``."""
    rows = []
    for b, name in enumerate(names):
        sel = idx == b
        if not sel.any():
            continue
        rows.append({"bin": name, "samples": int(sel.sum()), "accuracy": float(credit[sel].mean()),
                     "ci95": mean_interval(credit[sel], resamples, seed), key: float(x[sel].mean())})
    return rows


def calibration_multi(votes, st: SampleStats | None, resamples: int, seed: int) -> dict | None:
    """n >= 2 with labels: accuracy (the vote's credit) by vote margin and by the winner's mean
    score, and the vote share's expected calibration error (confidence = the share of the
    sample's decided trajectories that pick the vote's answer)."""
    import polars as pl

    v = votes.filter(pl.col(c.CREDIT).is_not_null() & (pl.col(c.N_RESPONSES) >= 2))
    if not len(v):
        return None
    margin, winner, ok = vote_margins(v)
    credit = v[c.CREDIT].to_numpy()
    idx, names = _bins(np.where(ok, margin, 0.0), MARGIN_EDGES)
    by_margin = _table(names, np.where(ok, idx, -1), credit, np.nan_to_num(margin), resamples, seed, "mean_margin")
    sidx = np.clip(np.floor(np.where(ok, winner, 0)).astype(int), 0, 9)
    snames = [f"[{b}, {b + 1})" if b < 9 else "[9, 10]" for b in range(10)]
    by_score = _table(snames, np.where(ok, sidx, -1), credit, np.nan_to_num(winner), resamples, seed, "mean_score")
    out: dict = {"samples": len(v), "abstained": int((~ok).sum()), "by_margin": by_margin, "by_winner_score": by_score}
    if st is not None:
        share = pl.DataFrame({c.ID: st.ids, "_share": _div(st.pick_counts[np.arange(len(st)), np.maximum(st.best, 0)] if st.pick_counts.size else np.zeros(len(st)), st.decided)})
        j = v.select(c.ID, c.CORRECT).join(share, on=c.ID, how="left")
        sel = j["_share"].is_not_null().to_numpy() & ~np.isnan(j["_share"].fill_null(np.nan).to_numpy()) & j[c.CORRECT].is_not_null().to_numpy()
        if sel.any():
            conf = j["_share"].to_numpy()[sel]
            y = j[c.CORRECT].to_numpy()[sel].astype(float)
            out["vote_share"] = ece(conf, y, resamples, seed)
    return out


def ece(conf: np.ndarray, outcome: np.ndarray, resamples: int, seed: int, bins: int = ECE_BINS) -> dict:
    """Expected calibration error of confidences in [0, 1] against outcomes in [0, 1] (0/1, or
    graded): sum over equal-width bins of (bin share) * |mean outcome - mean confidence|; with the
    reliability diagram's rows and a bootstrap interval over samples."""
    conf = np.clip(np.asarray(conf, float), 0, 1)
    outcome = np.asarray(outcome, float)
    b = np.minimum((conf * bins).astype(int), bins - 1)
    onehot = np.eye(bins)[b]
    cols = {"n": onehot, "c": onehot * conf[:, None], "y": onehot * outcome[:, None]}

    def stat(s):
        return np.abs(s["y"] - s["c"]).sum(axis=-1) / s["n"].sum(axis=-1)

    sums = {k: v.sum(axis=0) for k, v in cols.items()}
    diagram = [
        {"bin": [i / bins, (i + 1) / bins], "samples": int(sums["n"][i]), "confidence": float(sums["c"][i] / sums["n"][i]),
         "observed": float(sums["y"][i] / sums["n"][i])}
        for i in range(bins) if sums["n"][i]
    ]
    return {"ece": _value(stat(sums)), "ci95": bootstrap(cols, {"ece": stat}, resamples, seed)["ece"], "samples": int(len(conf)),
            "brier": float(((conf - outcome) ** 2).mean()) if len(conf) else None, "diagram": diagram}


def score_range(scores) -> tuple[int, int]:
    """The judge's score range, from the scores it gave: 0..1 (the single and pairwise templates)
    when no score exceeds 1, else 1..10 (0..10 when a 0 occurs; widened to the largest score)."""
    flat = scores.explode().drop_nulls()
    if not len(flat):
        return 1, 10
    lo, hi = int(flat.min()), int(flat.max())
    return (min(lo, 0), 1) if hi <= 1 else (min(lo, 1), max(hi, 10))


def calibration_single(votes, lo: int, hi: int, resamples: int, seed: int) -> dict | None:
    """n = 1 with a label: the mean score rescaled to [0, 1] as a confidence, against the label
    (0/1, or graded: rescaled to [0, 1] by the same range when it exceeds 1): ECE, the
    reliability diagram, and the mean label by mean score."""
    import polars as pl

    v = votes.filter((pl.col(c.N_RESPONSES) == 1) & pl.col(c.TOTALS).is_not_null() & pl.col(c.LABELS).is_not_null() & (pl.col(c.VALID) > 0))
    if not len(v):
        return None
    mean = (v[c.TOTALS].list.get(0) / v[c.VALID]).to_numpy()
    label = v[c.LABELS].list.get(0).to_numpy().astype(float)
    keep = np.isfinite(label)
    mean, label = mean[keep], label[keep]
    if not len(mean):
        return None
    binary = bool(np.isin(label, (0.0, 1.0)).all())
    graded_scale = not binary and label.max() > 1
    y = np.clip((label - lo) / (hi - lo), 0, 1) if graded_scale else label
    out = ece((mean - lo) / (hi - lo), y, resamples, seed)
    out |= {"labels": "binary" if binary else "graded", "score_range": [lo, hi]}
    return out


# ------------------------------------------------------------------------ length bias


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get their average rank."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rank correlation (Pearson's on average ranks); None when either is constant."""
    if len(x) < 3:
        return None
    rx, ry = rankdata(np.asarray(x, float)), rankdata(np.asarray(y, float))
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return None if den == 0 else float((rx * ry).sum() / den)


def spearman_interval(x: np.ndarray, y: np.ndarray, group: np.ndarray, resamples: int, seed: int, level: float = 0.95):
    """Bootstrap interval of Spearman's rho, resampling the groups (samples) with replacement."""
    if resamples == 0 or len(x) < 3:
        return None
    _, g = np.unique(group, return_inverse=True)
    G = int(g.max()) + 1
    if G < 2:
        return None
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(resamples):
        w = np.bincount(rng.integers(0, G, G), minlength=G)[g]
        rows = np.repeat(np.arange(len(x)), w)
        r = spearman(x[rows], y[rows])
        if r is not None:
            vals.append(r)
    if len(vals) < resamples / 2:
        return None
    lo, hi = np.quantile(vals, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def length_bias(votes, lengths, resamples: int, seed: int) -> dict | None:
    """Spearman correlation between a response's mean score (its vote total over the valid
    voters) and its length in characters, over every (sample, response) with a vote; overall and
    within each label value (labelled data with at most 10 distinct label values).

    ``lengths``: ``id`` and ``RESPONSE_CHARS`` (one list per sample, original order)."""
    import polars as pl

    v = votes.filter(pl.col(c.TOTALS).is_not_null() & (pl.col(c.VALID) > 0)).join(lengths, on=c.ID, how="inner")
    if not len(v):
        return None
    v = v.with_row_index("_s")
    flat = v.select(
        "_s",
        pl.col(c.TOTALS).cast(pl.List(pl.Float64)).alias("_t"),
        pl.col(c.VALID),
        pl.col(RESPONSE_CHARS),
        pl.col(c.LABELS),
    ).explode(["_t", RESPONSE_CHARS] + ([c.LABELS] if v[c.LABELS].is_not_null().all() else []))
    score = (flat["_t"] / flat[c.VALID]).to_numpy()
    chars = flat[RESPONSE_CHARS].to_numpy().astype(float)
    group = flat["_s"].to_numpy()
    out: dict = {"overall": {"spearman": spearman(score, chars), "ci95": spearman_interval(score, chars, group, resamples, seed),
                             "responses": len(score), "samples": len(v)}}
    if flat[c.LABELS].dtype == pl.Float64:
        label = flat[c.LABELS].to_numpy()
        values = np.unique(label[np.isfinite(label)])
        if 1 < len(values) <= 10:
            out["by_label"] = {}
            for val in values:
                sel = label == val
                out["by_label"][f"{val:g}"] = {"spearman": spearman(score[sel], chars[sel]),
                                              "ci95": spearman_interval(score[sel], chars[sel], group[sel], resamples, seed),
                                              "responses": int(sel.sum())}
    return out


# ------------------------------------------------------------------------ two runs or judges


def cohen_from_sums(agree, count, a_counts, b_counts):
    """Cohen's kappa from the agreeing items, the item count and each rater's category counts."""
    p_o = _div(np.asarray(agree, float), np.asarray(count, float))
    n = np.asarray(count, float)[..., None] if np.ndim(a_counts) > np.ndim(count) else np.asarray(count, float)
    p_e = (_div(np.asarray(a_counts, float), n) * _div(np.asarray(b_counts, float), n)).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p_e < 1, (p_o - p_e) / np.where(p_e < 1, 1 - p_e, 1), np.nan)


def cohen_kappa(a, b, categories: int | None = None) -> float | None:
    """Cohen's kappa of two raters' categories (non-negative integers) on the same items."""
    a, b = np.asarray(a, int), np.asarray(b, int)
    k = categories or int(max(a.max(initial=0), b.max(initial=0))) + 1
    return _value(cohen_from_sums((a == b).sum(), len(a), np.bincount(a, minlength=k), np.bincount(b, minlength=k)))


def fleiss_kappa(table) -> float | None:
    """Fleiss' kappa of a (subjects, categories) table of rating counts (raters may vary per subject)."""
    t = np.asarray(table, float)
    r = t.sum(axis=1)
    ok = r >= 2
    p_i = _div((t * (t - 1)).sum(axis=1), r * (r - 1))
    return _value(fleiss_from_sums(p_i[ok].sum(), ok.sum(), t[ok].sum(axis=0)))


DISAGREEMENT_OTHER = "other_"  # prefix of the other run's columns in the disagreement table


def compare_votes(votes, other, resamples: int, seed: int):
    """Agreement of two runs (or judges) on the samples both voted: Cohen's kappa on the picks,
    Spearman's rho between the mean scores of the same responses, and the disagreements.

    Returns (figures, disagreements): one row per common sample whose picks differ (one of them
    abstaining included): ``id``, ``n_responses``, ``best``, ``other_best``, the mean scores of
    each run (``scores``, ``other_scores``), ``labels``, ``correct``, ``other_correct``.
    """
    import polars as pl

    # mean score per response: the totals over the valid voters (null when none voted)
    means = pl.when(pl.col(c.VALID) > 0).then(pl.col(c.TOTALS).cast(pl.List(pl.Float64)) / pl.col(c.VALID)).alias(c.SCORES)
    a = votes.select(c.ID, c.N_RESPONSES, c.BEST, c.LABELS, c.CORRECT, c.CREDIT, means)
    b = other.select(c.ID, c.N_RESPONSES, c.BEST, c.CORRECT, c.CREDIT, means)
    j = a.join(b, on=c.ID, how="inner", suffix="_b")
    mismatched = j.filter(pl.col(c.N_RESPONSES) != pl.col(f"{c.N_RESPONSES}_b"))
    j = j.filter(pl.col(c.N_RESPONSES) == pl.col(f"{c.N_RESPONSES}_b"))
    both = j.filter(pl.col(c.BEST).is_not_null() & pl.col(f"{c.BEST}_b").is_not_null() & (pl.col(c.N_RESPONSES) >= 2))
    A, B = both[c.BEST].to_numpy().astype(int), both[f"{c.BEST}_b"].to_numpy().astype(int)
    k = int(both[c.N_RESPONSES].max() or 0)
    cols = {"agree": (A == B).astype(float), "count": np.ones(len(A)), "a": np.eye(max(k, 1))[A] if len(A) else np.zeros((0, 1)),
            "b": np.eye(max(k, 1))[B] if len(B) else np.zeros((0, 1))}
    sums = {key: v.sum(axis=0) for key, v in cols.items()}
    stats = {"kappa": lambda s: cohen_from_sums(s["agree"], s["count"], s["a"], s["b"]), "agreement": lambda s: _div(s["agree"], s["count"])}
    ci = bootstrap(cols, stats, resamples, seed)
    scored = j.filter(pl.col(c.SCORES).is_not_null() & pl.col(f"{c.SCORES}_b").is_not_null()).with_row_index("_s")
    flat = scored.select("_s", c.SCORES, f"{c.SCORES}_b").explode([c.SCORES, f"{c.SCORES}_b"])
    x, y, g = flat[c.SCORES].to_numpy(), flat[f"{c.SCORES}_b"].to_numpy(), flat["_s"].to_numpy()
    out: dict = {
        "samples_this": len(votes), "samples_other": len(other), "common": len(j) + len(mismatched),
        "n_mismatch": len(mismatched),
        "both_picked": len(both),
        "agreement": figure(stats["agreement"](sums), ci["agreement"], len(both)),
        "cohen_kappa": figure(stats["kappa"](sums), ci["kappa"], len(both)),
        "score_spearman": {"value": spearman(x, y), "ci95": spearman_interval(x, y, g, resamples, seed), "responses": len(x), "samples": len(scored)},
    }
    judged = j.filter(pl.col(c.CREDIT).is_not_null() & pl.col(f"{c.CREDIT}_b").is_not_null())
    if len(judged):
        out["accuracy_this"] = float(judged[c.CREDIT].mean())
        out["accuracy_other"] = float(judged[f"{c.CREDIT}_b"].mean())
        out["judged"] = len(judged)
    dis = j.filter(~pl.col(c.BEST).eq_missing(pl.col(f"{c.BEST}_b"))).select(
        c.ID, c.N_RESPONSES, c.BEST, pl.col(f"{c.BEST}_b").alias(DISAGREEMENT_OTHER + c.BEST), c.SCORES,
        pl.col(f"{c.SCORES}_b").alias(DISAGREEMENT_OTHER + c.SCORES), c.LABELS, c.CORRECT,
        pl.col(f"{c.CORRECT}_b").alias(DISAGREEMENT_OTHER + c.CORRECT),
    ).sort(c.ID)
    out["disagreements"] = len(dis)
    return out, dis
