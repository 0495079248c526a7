"""eval: accuracy of a GRM against labels, and its scaling with k, from one sampling run (CPU).

Input schema: trajectory shards (``tribunal.schemas.arrow.TRAJECTORY``) with labels, as ``sample``
or ``label`` write them, local or ``s3://``; with a ``meta_score`` column (``metarm-score``) the
meta-RM guided curve is drawn too. Optionally ``--samples``: the canonical samples the run judged
(``tribunal import`` writes them), whose ``subset`` column gives per-subset accuracy and, for
RewardBench subsets, RewardBench's section and overall scores.

For every k in ``--ks`` the first k non-hinted trajectories of each sample vote (``vote``'s own
``jobs.grm.vote_frame``, so the numbers are the ``vote`` job's); with meta scores, the ``ceil(k/2)`` (or
``--k-meta``) of those k with the highest meta score vote (SPEC section 5). Metrics (SPEC section
6): accuracy under each tie protocol (``random``, ``half``, ``strict``) with a 95% bootstrap
interval over samples, pairwise accuracy (n = 2), Best-of-N (n >= 3: the best response must beat
every other one, ties lose), ROC-AUC of the mean score against the label for n = 1, the
parse-failure rate and abstentions. ``--greedy`` adds the accuracy of a greedy (temperature 0)
run for reference.

How far to trust the judge (``jobs.grm.reliability``, defined in ``docs/reliability.md``), from
every non-hinted trajectory of each sample, with 95% bootstrap intervals, per run and per subset:
position consistency and the flip rate (the pick across response orders), position bias (the
share of pairwise picks shown first; for n > 2 the win rate of each displayed slot, with a test of
"no bias"), self-consistency (agreement with the vote, Fleiss' kappa), calibration (accuracy by
vote margin and by the winner's mean score, expected calibration error; labelled data only) and
length bias (Spearman between a response's score and its length). ``--compare OTHER`` adds the
agreement with another run or judge on the same samples (Cohen's kappa on the picks, Spearman of
the scores) and writes the samples they disagree on to ``disagreements.parquet``. Without labels
eval reports these figures alone (calibration and accuracy need labels).

Output, under ``OUT/``: ``metrics.json`` (every number), ``report.md`` (the tables),
``scaling.png`` (accuracy against k with the intervals), ``position_bias.png``,
``reliability.png`` and ``margin.png`` (labelled), ``disagreements.parquet`` (``--compare``,
``DISAGREEMENTS``) and ``_manifest.json`` (the counts every
job has: samples in = samples evaluated at the largest k + samples with no trajectory to vote).
The parse-failure figure printed is the one every job prints (the share of all trajectories read
whose scores did not parse); the tables' per-k rates are of the first k of each sample.
RewardBench's ``Overall`` says how many of its 23 subsets it covers. A re-run with other settings
into the same output is refused unless ``--overwrite``.

Run::

    tribunal eval --input traj/ --output report/ --ks 1,2,4,8,16,32 [--samples samples.parquet] [--compare other_traj/]
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

from tribunal.jobs.grm import grm_math
from tribunal.jobs.grm.metrics import REWARDBENCH_EXAMPLE_COUNTS, rewardbench_scores
from tribunal.jobs.pipeline.config import check, opt, to_dict
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

EVAL_INPUT = (c.ID, c.SAMPLE_INDEX, c.HINTED, c.N_RESPONSES, c.SCORES, c.LABELS, c.PERMUTATION)
META_SCORE = c.META_SCORE  # written by `metarm-score`
SUBSET = "subset"  # carried by imported samples (`tribunal import`)
KIND = "eval"  # what the output holds (its run record's kind)
NO_VOTER = "no_trajectory_to_vote"  # a sample with only hinted trajectories (as `vote` counts it)
DISAGREEMENTS_FILE = "disagreements.parquet"


def disagreements_schema():
    """The samples two runs pick differently (``--compare``): this run's and the other's vote,
    mean score per response (original order) and verdict; the other run's columns carry the
    prefix ``other_`` (``reliability.DISAGREEMENT_OTHER``)."""
    import pyarrow as pa

    other = "other_"
    return pa.schema([
        pa.field(c.ID, pa.string(), nullable=False),
        pa.field(c.N_RESPONSES, pa.int32(), nullable=False),
        pa.field(c.BEST, pa.int32()),
        pa.field(other + c.BEST, pa.int32()),
        pa.field(c.SCORES, pa.list_(pa.float64())),
        pa.field(other + c.SCORES, pa.list_(pa.float64())),
        pa.field(c.LABELS, pa.list_(pa.float64())),
        pa.field(c.CORRECT, pa.bool_()),
        pa.field(other + c.CORRECT, pa.bool_()),
    ])


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation of trajectory shards against their labels."""

    input: str = opt("", "trajectory shards with labels: a directory or file (local path or s3://...)")
    output: str = opt("", "report directory (metrics.json, report.md, scaling.png)")
    ks: str = opt("", "comma-separated k values for the scaling curves (default: 1, 2, 4, ... up to the largest k present)")
    k_meta: int | None = opt(None, "trajectories kept by the meta-RM before voting (default: ceil(k/2) for each k)")
    tie: str = opt("random", "tie protocol of the headline figures, per-subset table and plot", choices=grm_math.TIE_PROTOCOLS)
    samples: str = opt("", "canonical samples with a `subset` column, for per-subset and RewardBench section scores")
    greedy: str = opt("", "trajectory shards of a greedy (temperature 0) run of the same samples, reported for reference")
    compare: str = opt("", "trajectory shards of another run or judge on the same samples: agreement (Cohen's kappa, score rank correlation) and the disagreements written out")
    bootstrap: int = opt(1000, "bootstrap resamples for the confidence intervals (95 percent; 0 turns them off)")
    seed: int = opt(0, "seed of the vote tie-break and of the bootstrap")
    overwrite: bool = opt(False, "replace an eval report made with other settings (only ever a tribunal eval output)")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.tie in grm_math.TIE_PROTOCOLS, "tie", f"must be one of {grm_math.TIE_PROTOCOLS}, got {self.tie!r}")
        check(self.bootstrap >= 0, "bootstrap", f"must be >= 0, got {self.bootstrap}")
        check(self.k_meta is None or self.k_meta >= 1, "k_meta", f"must be >= 1, got {self.k_meta}")
        if self.ks:
            try:
                ks = [int(x) for x in self.ks.split(",")]
            except ValueError:
                ks = [0]
            check(all(k >= 1 for k in ks), "ks", f"must be comma-separated integers >= 1, got {self.ks!r}")

    def settings(self) -> dict:
        """The options that fix the report; a re-run into the same output must match them."""
        keys = ("input", "samples", "greedy", "ks", "k_meta", "tie", "bootstrap", "seed")
        # compare is recorded when given, so reports written before it existed still match
        return {key: getattr(self, key) for key in keys} | ({"compare": self.compare} if self.compare else {})


def parse_ks(spec: str, k_max: int) -> list[int]:
    if spec:
        return sorted({int(x) for x in spec.split(",")})
    ks, k = [], 1
    while k < k_max:
        ks.append(k)
        k *= 2
    return ks + [k_max]


def bootstrap_interval(values, resamples: int, seed: int, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (resampling samples with replacement)."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    if resamples == 0 or len(x) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, 2_000_000 // len(x))  # bound the index matrix to ~16 MB
    for b in range(0, resamples, step):
        m = min(step, resamples - b)
        means[b : b + m] = x[rng.integers(0, len(x), size=(m, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _metrics(votes: dict, traj_rows: int, valid: int, resamples: int, seed: int) -> dict:
    """Metrics of one voting configuration; ``votes`` maps each tie protocol to its vote frame."""
    import polars as pl

    out: dict = {
        "samples": len(votes["random"]),
        "parse_failure_rate": (traj_rows - valid) / traj_rows if traj_rows else 0.0,
        "abstained": int(votes["random"][c.BEST].is_null().sum()),
    }
    for tie, v in votes.items():
        judged = v.filter(pl.col(c.CREDIT).is_not_null())
        credits = judged[c.CREDIT].to_numpy()
        out[f"accuracy_{tie}"] = float(credits.mean()) if len(credits) else None
        out[f"ci95_{tie}"] = bootstrap_interval(credits, resamples, seed) if len(credits) else None
    out["judged"] = int(votes["random"][c.CREDIT].is_not_null().sum())
    strict = votes["strict"].filter(pl.col(c.CREDIT).is_not_null())
    pair = strict.filter(pl.col(c.N_RESPONSES) == 2)
    bon = strict.filter(pl.col(c.N_RESPONSES) >= 3)
    out["pairwise_accuracy_strict"] = float(pair[c.CREDIT].mean()) if len(pair) else None
    out["best_of_n_accuracy"] = float(bon[c.CREDIT].mean()) if len(bon) else None
    out["best_of_n_samples"] = len(bon)
    single = votes["random"].filter((pl.col(c.N_RESPONSES) == 1) & pl.col(c.TOTALS).is_not_null() & pl.col(c.LABELS).is_not_null())
    if len(single):
        mean_score = (single[c.TOTALS].list.get(0) / single[c.VALID]).to_list()
        positive = (single[c.LABELS].list.get(0) > 0).to_list()
        auc = grm_math.roc_auc(mean_score, positive)
        out["roc_auc_single"] = None if math.isnan(auc) else auc
        out["single_samples"] = len(single)
    return out


def evaluate_frame(traj, ks: list[int], k_meta: int | None, seed: int, resamples: int) -> dict:
    """Voting (and meta-RM guided voting, with meta scores) at every k: {"voting": {k: metrics}, ...}."""
    import polars as pl

    from tribunal.jobs.grm.vote_frame import vote_frame

    curves: dict[str, dict[int, dict]] = {"voting": {}}
    has_meta = META_SCORE in traj.columns and traj[META_SCORE].is_not_null().any()
    if has_meta:
        curves["metarm"] = {}
    for k in ks:
        first = traj.filter(~pl.col(c.HINTED) & (pl.col(c.SAMPLE_INDEX) < k))
        valid = int(first[c.SCORES].is_not_null().sum())
        votes = {tie: vote_frame(traj, k, seed, tie) for tie in grm_math.TIE_PROTOCOLS}
        curves["voting"][k] = _metrics(votes, len(first), valid, resamples, seed) | {"k": k}
        if has_meta:
            km = min(k_meta or grm_math.default_k_meta(k), k)
            votes = {tie: vote_frame(traj, k, seed, tie, guided=True, k_meta=km) for tie in grm_math.TIE_PROTOCOLS}
            m = _metrics(votes, len(first), valid, resamples, seed)
            curves["metarm"][k] = m | {"k": k, "k_meta": km}
    return curves


def subset_table(traj, samples, k: int, seed: int, tie: str) -> dict[str, dict]:
    """Accuracy per ``subset`` at k (judged samples only)."""
    import polars as pl

    from tribunal.jobs.grm.vote_frame import vote_frame

    v = vote_frame(traj, k, seed, tie).join(samples, on=c.ID, how="inner").filter(pl.col(c.CREDIT).is_not_null())
    agg = v.group_by(SUBSET).agg(pl.col(c.CREDIT).mean().alias("accuracy"), pl.len().alias("samples")).sort(SUBSET)
    return {r[SUBSET]: {"accuracy": r["accuracy"], "samples": r["samples"]} for r in agg.iter_rows(named=True)}


def reliability_report(traj, lengths, subsets, seed: int, resamples: int, tie: str):
    """How far to trust the judge (``jobs.grm.reliability``; docs/reliability.md), from every
    non-hinted trajectory of each sample and its vote (the largest k): the run's figures, the
    label-free ones per subset (with ``subsets``), and the votes (for ``--compare``)."""
    import polars as pl

    from tribunal.jobs.grm import reliability as rl
    from tribunal.jobs.grm.vote_frame import vote_frame

    considered = traj.filter(~pl.col(c.HINTED))
    votes = vote_frame(traj, None, seed, tie)
    st = rl.sample_stats(rl.trajectory_picks(considered), votes)
    out = rl.reliability(st, resamples, seed)
    if votes[c.LABELS].is_not_null().any():
        lo, hi = rl.score_range(considered[c.SCORES])
        out["accuracy_by_best_slot"] = rl.accuracy_by_best_slot(st)
        out["calibration"] = {"tie": tie, "score_range": [lo, hi], "multi": rl.calibration_multi(votes, st, resamples, seed),
                              "single": rl.calibration_single(votes, lo, hi, resamples, seed)}
    if lengths is not None:
        out["length_bias"] = rl.length_bias(votes, lengths, resamples, seed)
    per_subset = None
    if subsets is not None:
        names = pl.DataFrame({c.ID: st.ids}).join(subsets, on=c.ID, how="left", maintain_order="left")[SUBSET]
        per_subset = {}
        for name in sorted(names.drop_nulls().unique().to_list()):
            per_subset[name] = rl.reliability(st.take((names == name).fill_null(False).to_numpy()), resamples, seed)
    return out, per_subset, votes


def compare_runs(votes, other_traj, seed: int, resamples: int, tie: str):
    """Agreement with another run or judge (``--compare``): figures and the disagreement table."""
    from tribunal.jobs.grm import reliability as rl
    from tribunal.jobs.grm.vote_frame import vote_frame

    return rl.compare_votes(votes, vote_frame(other_traj, None, seed, tie), resamples, seed)


def _read_trajectories(uri: str, extra: tuple[str, ...] = (META_SCORE, c.PARSE_ERROR)):
    import pyarrow.parquet as pq

    from tribunal.jobs.pipeline.outputs import trajectory_input

    src, files = trajectory_input(uri, EVAL_INPUT)
    with src.fs.open(files[0], "rb") as fh:
        names = pq.ParquetFile(fh).schema_arrow.names
    cols = list(EVAL_INPUT) + [x for x in extra if x in names]
    return src.read_polars(files, cols)


def _read_lengths(uri: str):
    """``id`` and the characters of each response (original order), one row per sample: from
    each sample's first non-hinted trajectory, a file at a time (the responses are not kept)."""
    import polars as pl

    from tribunal.jobs.grm.reliability import RESPONSE_CHARS
    from tribunal.jobs.pipeline.outputs import trajectory_input

    src, files = trajectory_input(uri, (c.ID, c.SAMPLE_INDEX, c.HINTED, c.RESPONSES))
    parts = []
    for f in files:
        df = src.read_polars([f], [c.ID, c.SAMPLE_INDEX, c.HINTED, c.RESPONSES])
        parts.append(df.filter(~pl.col(c.HINTED) & (pl.col(c.SAMPLE_INDEX) == 0)).select(
            c.ID, pl.col(c.RESPONSES).list.eval(pl.element().str.len_chars()).alias(RESPONSE_CHARS)))
    return pl.concat(parts).unique(c.ID, keep="first", maintain_order=True)


def _read_subsets(uri: str):
    import polars as pl

    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import OutputDir

    src = OutputDir(uri)
    files = storage.list_parquet(src.fs, src.path, "samples")
    names = storage.parquet_footer(src.fs, files[0]).schema.to_arrow_schema().names
    for col in (c.ID, SUBSET):
        if col not in names:
            raise TribunalError(f"{storage.display(src.fs, files[0])}: no {col!r} column: --samples needs the canonical samples with ids and subsets (tribunal import writes them)")
    return pl.from_arrow(src.read(files, [c.ID, SUBSET])).with_columns(pl.col(c.ID).cast(pl.String))


def plot_scaling(curves: dict, tie: str, path_png: str, greedy: dict | None = None) -> None:
    """Accuracy against k (ROC-AUC when no sample has n >= 2), one line per curve, 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = any(m[f"accuracy_{tie}"] is not None for cur in curves.values() for m in cur.values())
    key, ci_key, ylabel = (f"accuracy_{tie}", f"ci95_{tie}", f"accuracy (%), {tie} ties") if judged else ("roc_auc_single", None, "ROC-AUC (%), n = 1")
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    names = {"voting": "Voting", "metarm": "MetaRM voting"}
    for curve, color in (("voting", "tab:blue"), ("metarm", "tab:orange")):
        pts = [m for m in curves.get(curve, {}).values() if m.get(key) is not None]
        if not pts:
            continue
        ks = [m["k"] for m in pts]
        ax.plot(ks, [100 * m[key] for m in pts], marker="o", color=color, label=f"{names[curve]}@k")
        if ci_key and all(m[ci_key] for m in pts):
            ax.fill_between(ks, [100 * m[ci_key][0] for m in pts], [100 * m[ci_key][1] for m in pts], color=color, alpha=0.18, label=f"{names[curve]} 95% CI")
    if greedy and greedy.get(key) is not None:
        ax.axhline(100 * greedy[key], color="gray", linestyle="--", label="greedy")
    all_ks = sorted({k for cur in curves.values() for k in cur})
    if len(all_ks) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(all_ks, [str(k) for k in all_ks])
    ax.set_xlabel("k (trajectories per sample)")
    ax.set_ylabel(ylabel)
    ax.set_title("Inference-time scaling")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png)
    plt.close(fig)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_position_bias(rel: dict, path_png: str) -> bool:
    """One panel per n: the share of decided trajectories whose pick was shown in each slot, with
    95% intervals and the no-bias line at 1/n. False when no sample has two responses."""
    by_n = rel.get("position_bias") or {}
    ns = [n for n in sorted(by_n, key=int) if by_n[n]["decided_trajectories"]]
    if not ns:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ns), figsize=(3.2 * len(ns) + 0.8, 3.9), dpi=120, squeeze=False, sharey=True)
    for ax, n in zip(axes[0], ns):
        e = by_n[n]
        m = int(n)
        rates = [100 * (r or 0) for r in e["win_rate"]]
        err = None
        if all(e["ci95"]):
            err = [[max(r - 100 * ci[0], 0) for r, ci in zip(rates, e["ci95"])], [max(100 * ci[1] - r, 0) for r, ci in zip(rates, e["ci95"])]]
        ax.bar(range(1, m + 1), rates, yerr=err, capsize=4, color="tab:blue", alpha=0.8, label="picks shown in the slot (95% CI)")
        ax.axhline(100 / m, color="tab:red", linestyle="--", label=f"no bias ({100 / m:.0f}%)")
        for x, r in zip(range(1, m + 1), rates):
            ax.text(x, r / 2, f"{r:.0f}%", ha="center", va="center", color="white", fontsize=9, fontweight="bold")
        p = e.get("p_value")
        ax.set_title(f"n = {m}: {e['decided_trajectories']} picks" + (f"\np = {p:.2g}" if p is not None else ""), fontsize=9)
        ax.set_xticks(range(1, m + 1))
        ax.set_xlabel("displayed slot")
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("share of decided trajectories (%)")
    axes[0][0].legend(loc="upper right", fontsize=7)
    fig.suptitle("Position bias: where the judge's pick was shown", fontsize=11)
    fig.tight_layout()
    fig.savefig(path_png)
    plt.close(fig)
    return True


def plot_reliability_diagram(cal: dict | None, path_png: str) -> bool:
    """Observed accuracy (or positive rate) against confidence per bin, with the diagonal of
    perfect calibration and the bin counts below. False when there is nothing to draw."""
    curves = [(key, name, color) for key, name, color in (
        ("multi", "vote share (n >= 2): the vote is right", "tab:blue"),
        ("single", "rescaled mean score (n = 1): the label", "tab:orange"),
    ) if cal and cal.get(key) and (cal[key].get("vote_share") if key == "multi" else cal[key]).get("diagram")]
    if not curves:
        return False
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.0, 5.6), dpi=120, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    width = 0.8 / len(curves) / 10
    for i, (key, name, color) in enumerate(curves):
        e = cal[key]["vote_share"] if key == "multi" else cal[key]
        d = e["diagram"]
        ece = f", ECE {100 * e['ece']:.1f}%" if e.get("ece") is not None else ""
        ax.plot([b["confidence"] for b in d], [b["observed"] for b in d], marker="o", color=color, label=f"{name}{ece}")
        hist.bar([(b["bin"][0] + b["bin"][1]) / 2 + (i - (len(curves) - 1) / 2) * width for b in d], [b["samples"] for b in d],
                 width=width, color=color, alpha=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("observed (share right / mean label)")
    ax.set_title("Reliability diagram: is the judge's confidence calibrated?")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("confidence (10 equal-width bins)")
    hist.set_ylabel("samples")
    hist.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_png)
    plt.close(fig)
    return True


def plot_margin(cal: dict | None, accuracy: float | None, path_png: str) -> bool:
    """Accuracy by the vote's margin and by the winner's mean score, with 95% intervals, sample
    counts and the run's overall accuracy. False without judged samples of n >= 2."""
    multi = (cal or {}).get("multi")
    if not multi or not multi["by_margin"]:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120, sharey=True)
    for ax, rows, xlabel, title in (
        (axes[0], multi["by_margin"], "vote margin (score points per voter; 0 = tie)", "Accuracy by the vote's margin"),
        (axes[1], multi["by_winner_score"], "the winner's mean score", "Accuracy by the winner's mean score"),
    ):
        x = range(len(rows))
        acc = [100 * r["accuracy"] for r in rows]
        err = None
        if all(r["ci95"] for r in rows):
            err = [[max(a - 100 * r["ci95"][0], 0) for a, r in zip(acc, rows)], [max(100 * r["ci95"][1] - a, 0) for a, r in zip(acc, rows)]]
        ax.errorbar(x, acc, yerr=err, marker="o", capsize=4, color="tab:blue", label="accuracy (95% CI)")
        if accuracy is not None:
            ax.axhline(100 * accuracy, color="gray", linestyle="--", label=f"overall {100 * accuracy:.1f}%")
        ax.set_xticks(list(x), [f"{r['bin']}\n{r['samples']} samples" for r in rows], fontsize=7)
        ax.set_xlim(-0.5, len(rows) - 0.5)
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 104)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy (%), {cal['tie']} ties")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path_png)
    plt.close(fig)
    return True


def _draw(out, name: str, draw) -> str | None:
    """Draw a PNG into the output (matplotlib writes local files: remote outputs get an upload);
    its display path, or None when ``draw`` had nothing to draw."""
    from tribunal.cluster import storage

    png = storage.join(out.path, name)
    if storage.is_local(out.fs):
        drawn = draw(png)
    else:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            drawn = draw(f"{d}/{name}")
            if drawn:
                out.fs.put_file(f"{d}/{name}", png)
    return out.display(png) if drawn else None


def _write_parquet(out, name: str, df, schema) -> str:
    """A small Parquet table written whole (a temporary file renamed, or one PUT)."""
    import io
    import os
    import uuid

    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    buf = io.BytesIO()
    pq.write_table(df.to_arrow().cast(schema), buf)
    path = storage.join(out.path, name)
    if storage.is_local(out.fs):
        tmp = storage.join(out.path, f".tmp-{uuid.uuid4().hex}-{name}")
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    else:
        out.fs.pipe_file(path, buf.getvalue())
    return out.display(path)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _ci(x) -> str:
    return "-" if not x else f"[{100 * x[0]:.1f}, {100 * x[1]:.1f}]"


def render_report(result: dict) -> str:
    from tribunal.jobs.pipeline.report import parse_failure_line

    tie = result["tie"]
    lines = ["# tribunal eval", "", f"Input: `{result['input']}`; accuracy with `{tie}` ties unless a column says otherwise; 95% bootstrap intervals over samples.", ""]
    pf = result.get("parse_failures")
    if pf:
        text = parse_failure_line(pf["failures"], pf["trajectories"], pf["reasons"])
        lines += [text[0].upper() + text[1:] + ": every trajectory read (the tables give the rate among the first k of each sample).", ""]
    for curve, title in (("voting", "Voting@k"), ("metarm", "MetaRM voting@k")):
        if curve not in result["curves"]:
            continue
        lines += [f"## {title}", "", "| k | accuracy | 95% CI | random | half | strict | pairwise (strict) | Best-of-N | parse failures (of the first k) | abstained | samples |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k, m in result["curves"][curve].items():
            lines.append(
                f"| {k} | {_pct(m[f'accuracy_{tie}'])} | {_ci(m[f'ci95_{tie}'])} | {_pct(m['accuracy_random'])} | {_pct(m['accuracy_half'])} | {_pct(m['accuracy_strict'])} "
                f"| {_pct(m['pairwise_accuracy_strict'])} | {_pct(m['best_of_n_accuracy'])} | {_pct(m['parse_failure_rate'])} | {m['abstained']} | {m['samples']} |"
            )
        lines.append("")
    if result.get("greedy"):
        g = result["greedy"]
        lines += ["## Greedy", "", f"accuracy {_pct(g[f'accuracy_{tie}'])} {_ci(g[f'ci95_{tie}'])}, parse failures {_pct(g['parse_failure_rate'])} (of its trajectories)", ""]
    if result.get("subsets"):
        lines += [f"## Per subset (k = {result['subsets_k']})", "", "| subset | accuracy | samples |", "|---|---|---|"]
        lines += [f"| {s} | {_pct(m['accuracy'])} | {m['samples']} |" for s, m in result["subsets"].items()]
        lines.append("")
    if result.get("rewardbench"):
        coverage = result.get("rewardbench_coverage")
        lines += ["## RewardBench", "", "| section | score |", "|---|---|"]
        lines += [f"| {s} | {_pct(v)}" + (f" ({coverage['text']})" if s == "Overall" and coverage else "") + " |" for s, v in result["rewardbench"].items()]
        if coverage and coverage["partial"]:
            lines += ["", f"Covers {coverage['text']} of RewardBench: not comparable with the leaderboard's Overall, which weighs all {coverage['of']}."]
        lines.append("")
    if result.get("plot"):
        lines += ["![scaling](scaling.png)", ""]
    if result.get("reliability"):
        lines += render_reliability(result)
    return "\n".join(lines)


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _ci_num(x) -> str:
    return "-" if not x else f"[{x[0]:.2f}, {x[1]:.2f}]"


def _p(x) -> str:
    return "-" if x is None else f"{x:.2g}"


def reliability_lines(rel: dict) -> list[str]:
    """The console's reliability lines (the report has the tables)."""
    lines = []
    pc, fl = rel["position_consistency"], rel["flip_rate"]
    if pc["value"] is not None:
        lines.append(f"position consistency {_pct(pc['value'])}% {_ci(pc['ci95'])}, flip rate {_pct(fl['value'])}% {_ci(fl['ci95'])} "
                     f"({pc['samples']} samples seen in 2+ orders)")
    first = rel.get("first_slot_rate_pairs")
    if first and first["value"] is not None:
        lines.append(f"position bias: the first slot wins {_pct(first['value'])}% {_ci(first['ci95'])} of {first['trajectories']} pairwise picks "
                     f"(50% = none; p = {_p(first['p_value'])}, {first['test']})")
    for n, e in sorted((rel.get("position_bias") or {}).items(), key=lambda t: int(t[0])):
        if n != "2" and e["decided_trajectories"]:
            lines.append(f"position bias, n = {n}: slot win rates {', '.join(_pct(r) for r in e['win_rate'])}% "
                         f"(no bias: {100 / int(n):.1f}%; p = {_p(e['p_value'])}, {e['test']})")
    av, fk = rel["agreement_with_vote"], rel["fleiss_kappa"]
    lines.append(f"self-consistency: {_pct(av['value'])}% {_ci(av['ci95'])} of trajectories pick their sample's vote; "
                 f"Fleiss' kappa {_num(fk['value'])} {_ci_num(fk['ci95'])}")
    cal = rel.get("calibration") or {}
    parts = []
    if cal.get("multi") and cal["multi"].get("vote_share"):
        e = cal["multi"]["vote_share"]
        parts.append(f"vote-share ECE {_pct(e['ece'])}% {_ci(e['ci95'])} ({e['samples']} samples)")
    if cal.get("single"):
        e = cal["single"]
        parts.append(f"single-response ECE {_pct(e['ece'])}% {_ci(e['ci95'])} ({e['samples']} samples, {e['labels']} labels)")
    if parts:
        lines.append("calibration: " + "; ".join(parts))
    lb = (rel.get("length_bias") or {}).get("overall")
    if lb and lb["spearman"] is not None:
        lines.append(f"length bias: Spearman {_num(lb['spearman'])} {_ci_num(lb['ci95'])} between score and characters ({lb['responses']} responses)")
    return lines


def render_reliability(result: dict) -> list[str]:
    """report.md's reliability sections."""
    rel = result["reliability"]
    lines = ["## Reliability of the judge", "",
             f"From every non-hinted trajectory of each sample ({rel['trajectories']} trajectories, {rel['samples']} samples) and its vote; "
             "a trajectory's pick is its unique top score (a tie or a parse failure: no pick). Definitions: `docs/reliability.md`.", "",
             "| figure | value | 95% CI | over |", "|---|---|---|---|"]
    pc = rel["position_consistency"]
    orders = f" (mean {rel['mean_orders_seen']:.1f} orders)" if rel.get("mean_orders_seen") else ""
    lines.append(f"| position consistency: same pick across orders | {_pct(pc['value'])}% | {_ci(pc['ci95'])} | {pc['samples']} samples seen in 2+ orders{orders} |")
    fl = rel["flip_rate"]
    lines.append(f"| flip rate: samples whose pick changes with the order | {_pct(fl['value'])}% | {_ci(fl['ci95'])} | {fl['samples']} samples |")
    so = rel["same_order_agreement"]
    lines.append(f"| same-order agreement: same pick, same order (sampling noise alone) | {_pct(so['value'])}% | {_ci(so['ci95'])} | {so['samples']} samples |")
    first = rel.get("first_slot_rate_pairs")
    if first:
        lines.append(f"| position bias: pairwise picks shown first (50% = none) | {_pct(first['value'])}% | {_ci(first['ci95'])} "
                     f"| {first['trajectories']} picks of {first['samples']} samples; p = {_p(first['p_value'])} ({first['test']}) |")
    av, fk = rel["agreement_with_vote"], rel["fleiss_kappa"]
    lines.append(f"| self-consistency: trajectories that pick their sample's vote | {_pct(av['value'])}% | {_ci(av['ci95'])} | {av['samples']} samples |")
    lines.append(f"| self-consistency: Fleiss' kappa of the picks | {_num(fk['value'])} | {_ci_num(fk['ci95'])} | {fk['samples']} samples with 2+ picks |")
    lines.append(f"| ties at the top (no pick) | {_pct(rel['tie_rate'])}% | | {rel['parsed']} parsed trajectories |")
    lines.append("")
    by_n = rel.get("position_bias") or {}
    if by_n:
        lines += ["### Position bias by displayed slot", "", "| n | samples | decided trajectories | win rate by slot (%) | no bias | Fleiss' kappa | p-value | test |",
                  "|---|---|---|---|---|---|---|---|"]
        for n, e in sorted(by_n.items(), key=lambda t: int(t[0])):
            rates = ", ".join(f"{_pct(r)} {_ci(ci)}" for r, ci in zip(e["win_rate"], e["ci95"]))
            lines.append(f"| {n} | {e['samples']} | {e['decided_trajectories']} | {rates} | {100 / int(n):.1f} | {_num(e['fleiss_kappa'])} | {_p(e['p_value'])} | {e['test']} |")
        lines += ["", "The p-values treat picks as independent; the trajectories of one sample are not, so they are optimistic: the "
                  "intervals (samples resampled) are the measure. With random orders the slot counts also carry where the best "
                  "response happened to be shown; balanced orders (`sample --orders balanced`) take that out.", ""]
        if result.get("plots", {}).get("position_bias"):
            lines += ["![position bias](position_bias.png)", ""]
    best_slot = rel.get("accuracy_by_best_slot")
    if best_slot:
        lines += ["### Single-trajectory accuracy by the slot the labelled best was shown in", "",
                  "| n | accuracy by slot (%) | trajectories by slot |", "|---|---|---|"]
        for n, e in sorted(best_slot.items(), key=lambda t: int(t[0])):
            lines.append(f"| {n} | {', '.join(_pct(a) for a in e['accuracy'])} | {', '.join(map(str, e['trajectories']))} |")
        lines.append("")
    cal = rel.get("calibration")
    if cal:
        lines += [f"### Calibration (labelled; `{cal['tie']}` ties)", ""]
        multi = cal.get("multi")
        if multi:
            lines += ["| vote margin (score points per voter) | samples | accuracy | 95% CI | mean margin |", "|---|---|---|---|---|"]
            lines += [f"| {b['bin']} | {b['samples']} | {_pct(b['accuracy'])} | {_ci(b['ci95'])} | {b['mean_margin']:.2f} |" for b in multi["by_margin"]]
            lines += ["", "| the winner's mean score | samples | accuracy | 95% CI |", "|---|---|---|---|"]
            lines += [f"| {b['bin']} | {b['samples']} | {_pct(b['accuracy'])} | {_ci(b['ci95'])} |" for b in multi["by_winner_score"]]
            lines.append("")
            if multi.get("vote_share"):
                e = multi["vote_share"]
                lines += [f"Vote share as confidence (n >= 2): expected calibration error {_pct(e['ece'])}% {_ci(e['ci95'])}, Brier score {_num(e['brier'])}, {e['samples']} samples.", ""]
        if cal.get("single"):
            e = cal["single"]
            lines += [f"Single responses (the mean score rescaled from {cal['score_range'][0]}..{cal['score_range'][1]} to [0, 1] against the {e['labels']} label): "
                      f"expected calibration error {_pct(e['ece'])}% {_ci(e['ci95'])}, Brier score {_num(e['brier'])}, {e['samples']} samples.", ""]
        for key, alt in (("reliability", "reliability diagram"), ("margin", "accuracy by vote margin")):
            if result.get("plots", {}).get(key):
                lines += [f"![{alt}]({key}.png)", ""]
    lb = rel.get("length_bias")
    if lb:
        lines += ["### Length bias (Spearman: a response's mean score against its length in characters)", "",
                  "| responses | Spearman | 95% CI | count |", "|---|---|---|---|"]
        lines.append(f"| all | {_num(lb['overall']['spearman'])} | {_ci_num(lb['overall']['ci95'])} | {lb['overall']['responses']} |")
        for label, e in (lb.get("by_label") or {}).items():
            lines.append(f"| label {label} | {_num(e['spearman'])} | {_ci_num(e['ci95'])} | {e['responses']} |")
        lines.append("")
    subsets = result.get("reliability_subsets")
    if subsets:
        lines += ["### Reliability per subset", "",
                  "| subset | samples | position consistency | flip rate | first slot (pairs) | agreement with vote | Fleiss' kappa |", "|---|---|---|---|---|---|---|"]
        for name, r in subsets.items():
            first = (r.get("first_slot_rate_pairs") or {}).get("value")
            lines.append(f"| {name} | {r['samples']} | {_pct(r['position_consistency']['value'])} {_ci(r['position_consistency']['ci95'])} "
                         f"| {_pct(r['flip_rate']['value'])} | {_pct(first)} | {_pct(r['agreement_with_vote']['value'])} | {_num(r['fleiss_kappa']['value'])} |")
        lines.append("")
    cmp_ = result.get("compare")
    if cmp_:
        lines += [f"## Agreement with `{result['config']['compare']}`", "",
                  f"{cmp_['common']} samples in both runs ({cmp_['samples_this']} here, {cmp_['samples_other']} there"
                  + (f"; {cmp_['n_mismatch']} with another number of responses, left out" if cmp_["n_mismatch"] else "") + ").", "",
                  "| figure | value | 95% CI | over |", "|---|---|---|---|",
                  f"| same pick | {_pct(cmp_['agreement']['value'])} | {_ci(cmp_['agreement']['ci95'])} | {cmp_['both_picked']} samples both picked |",
                  f"| Cohen's kappa of the picks | {_num(cmp_['cohen_kappa']['value'])} | {_ci_num(cmp_['cohen_kappa']['ci95'])} | {cmp_['both_picked']} samples |",
                  f"| Spearman of the mean scores | {_num(cmp_['score_spearman']['value'])} | {_ci_num(cmp_['score_spearman']['ci95'])} | {cmp_['score_spearman']['responses']} responses |"]
        if "accuracy_this" in cmp_:
            lines.append(f"| accuracy here / there | {_pct(cmp_['accuracy_this'])} / {_pct(cmp_['accuracy_other'])} | | {cmp_['judged']} judged samples |")
        lines += ["", f"{cmp_['disagreements']} samples picked differently: `{DISAGREEMENTS_FILE}`.", ""]
    return lines


def rewardbench_coverage(subsets) -> dict | None:
    """How many of RewardBench's subsets the per-subset table covers: ``Overall`` from a few of them
    is not the leaderboard's figure, and says so. None without any RewardBench subset."""
    present = sorted(s for s in subsets if s in REWARDBENCH_EXAMPLE_COUNTS)
    if not present:
        return None
    of = len(REWARDBENCH_EXAMPLE_COUNTS)
    text = f"{len(present)} of {of} subsets" + ("" if len(present) == of else ": partial")
    return {"subsets": len(present), "of": of, "partial": len(present) < of, "text": text,
            "missing": sorted(set(REWARDBENCH_EXAMPLE_COUNTS) - set(present))}


def rewardbench_text(scores: dict, coverage: dict | None) -> str:
    """``Chat 95.0, ..., Overall 92.9 (6 of 23 subsets: partial)``."""
    return ", ".join(f"{s} {_pct(v)}" + (f" ({coverage['text']})" if s == "Overall" and coverage else "") for s, v in scores.items())


def run(cfg: EvalConfig, *, stream=None) -> dict:
    import polars as pl

    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import OutputDir, package_versions
    from tribunal.jobs.pipeline.report import RunReport, Units, parse_failure_line

    out = OutputDir(cfg.output)
    report = RunReport("eval", KIND, cfg, out, Units(input="samples", output="samples evaluated"), stream)
    traj = _read_trajectories(cfg.input)
    labelled = not traj[c.LABELS].is_null().all()
    greedy_traj = _read_trajectories(cfg.greedy, extra=()) if cfg.greedy else None
    other_traj = _read_trajectories(cfg.compare, extra=()) if cfg.compare else None
    subsets = _read_subsets(cfg.samples) if cfg.samples else None
    lengths = _read_lengths(cfg.input)
    out.prepare_run(cfg.settings(), cfg.overwrite, kind=KIND, inputs=[x for x in (cfg.input, cfg.samples, cfg.greedy, cfg.compare) if x])
    k_max = int(traj.filter(~pl.col(c.HINTED))[c.SAMPLE_INDEX].max() or 0) + 1
    ks = parse_ks(cfg.ks, k_max)
    n_samples = traj[c.ID].n_unique()
    if ks[-1] > k_max:
        report.say(f"note: the input has at most {k_max} trajectories per sample; k > {k_max} uses them all")
    report.say(f"{n_samples} samples, {len(traj)} trajectories; voting at k = {', '.join(map(str, ks))}")
    if not labelled:
        report.say("no labels: accuracy, calibration and the scaling plot need them; the other reliability figures are reported")
    curves = evaluate_frame(traj, ks, cfg.k_meta, cfg.seed, cfg.bootstrap)
    report.mark("voted")
    result: dict = {"job": "eval", "input": cfg.input, "tie": cfg.tie, "config": to_dict(cfg), "versions": package_versions(), "curves": curves}
    # The one parse-failure figure: every trajectory read (the per-k rates in the tables are of
    # the first k of each sample).
    failed = traj.filter(pl.col(c.SCORES).is_null())
    reasons = dict(sorted((str(r), int(n)) for r, n in failed[c.PARSE_ERROR].value_counts().iter_rows())) if c.PARSE_ERROR in traj.columns else {}
    result["parse_failures"] = {"failures": len(failed), "trajectories": len(traj), "rate": len(failed) / len(traj) if len(traj) else 0.0, "reasons": reasons}
    if greedy_traj is not None:
        result["greedy"] = evaluate_frame(greedy_traj, [1], None, cfg.seed, cfg.bootstrap)["voting"][1]
    if subsets is not None:
        result["subsets_k"] = ks[-1]
        result["subsets"] = subset_table(traj, subsets, ks[-1], cfg.seed, cfg.tie)
        result["rewardbench"] = rewardbench_scores({s: m["accuracy"] for s, m in result["subsets"].items()})
        result["rewardbench_coverage"] = rewardbench_coverage(result["subsets"])
    result["plot"] = _draw(out, "scaling.png", lambda png: plot_scaling(curves, cfg.tie, png, result.get("greedy")) or True) if labelled else None
    # How far to trust the judge: every non-hinted trajectory of each sample, and its vote.
    rel, rel_subsets, votes = reliability_report(traj, lengths, subsets, cfg.seed, cfg.bootstrap, cfg.tie)
    result["reliability"] = rel
    if rel_subsets:
        result["reliability_subsets"] = rel_subsets
    cal = rel.get("calibration")
    top = curves["voting"][ks[-1]][f"accuracy_{cfg.tie}"]
    result["plots"] = {
        "position_bias": _draw(out, "position_bias.png", lambda png: plot_position_bias(rel, png)),
        "reliability": _draw(out, "reliability.png", lambda png: plot_reliability_diagram(cal, png)),
        "margin": _draw(out, "margin.png", lambda png: plot_margin(cal, top, png)),
    }
    if other_traj is not None:
        result["compare"], disagreements = compare_runs(votes, other_traj, cfg.seed, cfg.bootstrap, cfg.tie)
        result["compare"]["file"] = _write_parquet(out, DISAGREEMENTS_FILE, disagreements, disagreements_schema())
    report.mark("reliability")

    # Samples in = samples evaluated at the largest k (each in the accuracy, the n = 1 ROC-AUC, or
    # neither: labels without a unique best, or n = 1 and no score parsed) + samples with no
    # trajectory to vote (only hinted ones).
    last = curves["voting"][ks[-1]]
    single = last.get("single_samples", 0)
    counts = {
        "rows_in": n_samples,
        "rows_out": last["samples"],
        "quarantined": 0,
        "dropped": {NO_VOTER: n_samples - last["samples"]} if n_samples > last["samples"] else {},
        "trajectories": len(traj),
        "judged": last["judged"],
        "single_response": single,
        "no_verdict": last["samples"] - last["judged"] - single,
        "parse_failures": len(failed),
    }
    result["counts"] = counts
    storage.write_text_atomic(out.fs, storage.join(out.path, "metrics.json"), json.dumps(result, indent=2, default=str))
    storage.write_text_atomic(out.fs, storage.join(out.path, "report.md"), render_report(result))
    report.mark("written")
    # The table a user reads first.
    lines = []
    for curve, name in (("voting", "Voting"), ("metarm", "MetaRM")):
        for k, m in curves.get(curve, {}).items():
            if labelled:
                lines.append(f"{name}@{k}: {_headline(m, cfg.tie)}")
    if result.get("greedy"):
        lines.append(f"greedy (temperature 0): {_headline(result['greedy'], cfg.tie)}")
    lines.append(parse_failure_line(len(failed), len(traj), reasons))
    if result.get("rewardbench"):
        lines.append("RewardBench: " + rewardbench_text(result["rewardbench"], result["rewardbench_coverage"]))
    lines += reliability_lines(rel)
    if result.get("compare"):
        cmp_ = result["compare"]
        lines.append(f"agreement with {cfg.compare}: same pick {_pct(cmp_['agreement']['value'])}% of {cmp_['both_picked']} samples, "
                     f"Cohen's kappa {_num(cmp_['cohen_kappa']['value'])} {_ci_num(cmp_['cohen_kappa']['ci95'])}, "
                     f"score Spearman {_num(cmp_['score_spearman']['value'])}; {cmp_['disagreements']} disagreements: {cmp_['file']}")
    plots = ", ".join(p for p in (result["plot"], *result["plots"].values()) if p)
    lines.append(f"report: {out.display(storage.join(out.path, 'report.md'))}, plots: {plots}")
    manifest = report.finish(counts, lines=lines, extra={"metrics": out.display(storage.join(out.path, "metrics.json")), "plot": result["plot"],
                                                          "plots": result["plots"]})
    return {**result, "manifest": manifest}


def _headline(m: dict, tie: str) -> str:
    """A curve point's accuracy and interval, or its ROC-AUC when no sample has two responses."""
    if m[f"accuracy_{tie}"] is None and m.get("roc_auc_single") is not None:
        return f"ROC-AUC {_pct(m['roc_auc_single'])}% (n = 1, {m['single_samples']} samples)"
    return f"accuracy {_pct(m[f'accuracy_{tie}'])}% {_ci(m[f'ci95_{tie}'])}"



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("eval", argv)


if __name__ == "__main__":
    sys.exit(main())
