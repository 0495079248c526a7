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

Output, under ``OUT/``: ``metrics.json`` (every number), ``report.md`` (the tables),
``scaling.png`` (accuracy against k with the intervals) and ``_manifest.json`` (the counts every
job has: samples in = samples evaluated at the largest k + samples with no trajectory to vote).
The parse-failure figure printed is the one every job prints (the share of all trajectories read
whose scores did not parse); the tables' per-k rates are of the first k of each sample.
RewardBench's ``Overall`` says how many of its 23 subsets it covers. A re-run with other settings
into the same output is refused unless ``--overwrite``.

Run::

    tribunal eval --input traj/ --output report/ --ks 1,2,4,8,16,32 [--samples samples.parquet]
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

EVAL_INPUT = (c.ID, c.SAMPLE_INDEX, c.HINTED, c.N_RESPONSES, c.SCORES, c.LABELS)
META_SCORE = c.META_SCORE  # written by `metarm-score`
SUBSET = "subset"  # carried by imported samples (`tribunal import`)
KIND = "eval"  # what the output holds (its run record's kind)
NO_VOTER = "no_trajectory_to_vote"  # a sample with only hinted trajectories (as `vote` counts it)


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
        return {key: getattr(self, key) for key in keys}


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


def _read_trajectories(uri: str, extra: tuple[str, ...] = (META_SCORE, c.PARSE_ERROR)):
    import pyarrow.parquet as pq

    from tribunal.jobs.pipeline.outputs import trajectory_input

    src, files = trajectory_input(uri, EVAL_INPUT)
    with src.fs.open(files[0], "rb") as fh:
        names = pq.ParquetFile(fh).schema_arrow.names
    cols = list(EVAL_INPUT) + [x for x in extra if x in names]
    traj = src.read_polars(files, cols)
    if traj[c.LABELS].is_null().all():
        raise TribunalError(f"{src.display()}: no labels: eval needs labelled samples")
    return traj


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
    return "\n".join(lines)


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
    greedy_traj = _read_trajectories(cfg.greedy, extra=()) if cfg.greedy else None
    subsets = _read_subsets(cfg.samples) if cfg.samples else None
    out.prepare_run(cfg.settings(), cfg.overwrite, kind=KIND, inputs=[x for x in (cfg.input, cfg.samples, cfg.greedy) if x])
    k_max = int(traj.filter(~pl.col(c.HINTED))[c.SAMPLE_INDEX].max() or 0) + 1
    ks = parse_ks(cfg.ks, k_max)
    n_samples = traj[c.ID].n_unique()
    if ks[-1] > k_max:
        report.say(f"note: the input has at most {k_max} trajectories per sample; k > {k_max} uses them all")
    report.say(f"{n_samples} samples, {len(traj)} trajectories; voting at k = {', '.join(map(str, ks))}")
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
    png = storage.join(out.path, "scaling.png")
    if storage.is_local(out.fs):
        plot_scaling(curves, cfg.tie, png, result.get("greedy"))
    else:  # matplotlib writes local files: draw, then upload
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            plot_scaling(curves, cfg.tie, f"{d}/scaling.png", result.get("greedy"))
            out.fs.put_file(f"{d}/scaling.png", png)
    result["plot"] = out.display(png)

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
            lines.append(f"{name}@{k}: {_headline(m, cfg.tie)}")
    if result.get("greedy"):
        lines.append(f"greedy (temperature 0): {_headline(result['greedy'], cfg.tie)}")
    lines.append(parse_failure_line(len(failed), len(traj), reasons))
    if result.get("rewardbench"):
        lines.append("RewardBench: " + rewardbench_text(result["rewardbench"], result["rewardbench_coverage"]))
    lines.append(f"report: {out.display(storage.join(out.path, 'report.md'))}, plot: {result['plot']}")
    manifest = report.finish(counts, lines=lines, extra={"metrics": out.display(storage.join(out.path, "metrics.json")), "plot": result["plot"]})
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
