"""filter: keep the prompts whose rollouts disagree (RLPR's std filter, SPEC section 7; CPU, polars).

Input schema: scored rollouts (``tribunal.schemas.arrow.SCORED_ROLLOUT`` as ``score`` writes
them, or any Parquet with ``prompt_id`` and a numeric reward column). Per prompt: the unbiased
std of its rollouts' finite rewards. Prompts are taken in a fixed order (sorted by
``prompt_id``, so the result does not depend on how the input is sharded) in steps of
``--step-prompts``; a step's threshold is ``beta * ema`` after a warm-up (or a fixed
``--std-min``); whole prompt groups are kept or dropped (``jobs.rewards.std_filter``).

Output::

    OUT/part-00000.parquet        the kept rollouts, every input column untouched, input order
    OUT/_prompts/part-*.parquet   one row per prompt (arrow.FILTER_DECISION): std, step,
                                  threshold, kept, reason: the audit of every decision
    OUT/_filter_state.json        ema, step, warm-up list after the last committed step, plus
                                  how many prompts are done: a killed run resumes from it, and
                                  ``--state`` seeds a later run's EMA with it
    OUT/_manifest.json            config, counts (reconciled), timings

The state is written after every committed group of ``--steps-per-shard`` steps (together with
that group's decisions), so a run killed at any point resumes to a byte-identical result.

Run::

    tribunal filter --input scored/ --output kept/ --std-beta 0.5 --step-prompts 256
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass

import polars as pl

from tribunal.jobs.pipeline.config import add_arguments, check, opt, to_dict
from tribunal.jobs.rewards import std_filter as sf
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

STATE_FILE = "_filter_state.json"
PROMPTS_DIR = "_prompts"
KEPT_SHARD = "part-00000.parquet"
PROGRESS_EVERY_S = 5.0


@dataclass(frozen=True)
class FilterConfig:
    """The std filter's rule and its run."""

    input: str = opt("", "scored rollouts (a Parquet file or directory, local or s3://)")
    output: str = opt("", "output directory: kept rollouts, per-prompt decisions, filter state")
    std_beta: float = opt(0.5, "threshold = beta * ema of the per-step mean std")
    std_min: float | None = opt(None, "fixed std threshold instead of the EMA (keep iff std >= it)")
    warmup_steps: int = opt(1, "steps whose mean stds start the EMA (their prompts are kept: reason warmup)")
    step_prompts: int = opt(256, "prompts per filter step (B)")
    steps_per_shard: int = opt(64, "steps whose decisions are committed together with the state (resume granularity)")
    reward_column: str = opt(c.REWARD, "column holding the reward")
    state: str | None = opt(None, "a _filter_state.json of an earlier run: start from its ema and step")
    overwrite: bool = opt(False, "delete an existing output directory first")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.std_beta >= 0, "std_beta", f"must be >= 0, got {self.std_beta}")
        check(self.std_min is None or self.std_min >= 0, "std_min", f"must be >= 0, got {self.std_min}")
        check(self.warmup_steps >= 1, "warmup_steps", f"must be >= 1, got {self.warmup_steps}")
        check(self.step_prompts >= 1, "step_prompts", f"must be >= 1, got {self.step_prompts}")
        check(self.steps_per_shard >= 1, "steps_per_shard", f"must be >= 1, got {self.steps_per_shard}")

    def rule(self) -> sf.FilterRule:
        return sf.FilterRule(beta=self.std_beta, warmup_steps=self.warmup_steps, std_min=self.std_min)

    def settings(self, seed_state: dict | None) -> dict:
        """What fixes the result; a resumed run must match it."""
        keys = ("input", "std_beta", "std_min", "warmup_steps", "step_prompts", "reward_column")
        return {**{k: getattr(self, k) for k in keys}, "seed_state": seed_state}


# ------------------------------------------------------------------------------------ reading
def _scan(fs, files: list[str], columns: list[str] | None = None) -> pl.LazyFrame:
    """A lazy scan of the input files (polars' reader locally, pyarrow over fsspec elsewhere)."""
    from tribunal.cluster import storage

    if storage.is_local(fs):
        lf = pl.scan_parquet(files)
    else:
        import pyarrow.dataset as ds

        lf = pl.scan_pyarrow_dataset(ds.dataset(files, filesystem=storage.arrow_filesystem(fs), format="parquet"))
    return lf.select(columns) if columns else lf


def _check_columns(fs, files: list[str], reward_column: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    for f in files:
        with fs.open(f, "rb") as fh:
            schema = pq.ParquetFile(fh).schema_arrow
        where = storage.display(fs, f)
        for col, ok in ((c.PROMPT_ID, lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)),
                        (reward_column, lambda t: pa.types.is_floating(t) or pa.types.is_integer(t) or pa.types.is_null(t))):
            if col not in schema.names:
                raise TribunalError(f"{where}: no {col!r} column (run `tribunal score` first, or name the reward with --reward-column)")
            if not ok(schema.field(col).type):
                raise TribunalError(f"{where}: column {col!r} has type {schema.field(col).type}, which the filter cannot read")


def prompt_stats(lf: pl.LazyFrame, reward_column: str) -> pl.DataFrame:
    """One row per prompt in the fixed order (sorted by prompt_id): rollouts, finite rewards, std."""
    r = pl.col(reward_column).cast(pl.Float64)
    stats = (
        lf.select(pl.col(c.PROMPT_ID).cast(pl.String), r.alias("_r"))
        .group_by(c.PROMPT_ID)
        .agg(
            pl.len().cast(pl.Int64).alias(c.N_ROLLOUTS),
            (pl.col("_r").is_not_null() & pl.col("_r").is_finite()).sum().cast(pl.Int64).alias(c.N_REWARDS),
            pl.col("_r").filter(pl.col("_r").is_not_null() & pl.col("_r").is_finite()).std(ddof=1).alias(c.PROMPT_STD),
        )
        .sort(c.PROMPT_ID)
        # The in-memory engine on purpose: it aggregates each group over its row indices in
        # input order, so a std has the same bits on every run (resume is byte-identical); the
        # streaming engine merges partial aggregates in a thread-dependent order.
        .collect(engine="in-memory")
    )
    return stats.with_columns(
        pl.when(pl.col(c.N_REWARDS) >= 2).then(pl.col(c.PROMPT_STD)).otherwise(None).alias(c.PROMPT_STD)
    )


# ------------------------------------------------------------------------------------ deciding
def decide_steps(stats: pl.DataFrame, rule: sf.FilterRule, state: sf.FilterState, first_step: int, steps: int, step_prompts: int):
    """Decisions for ``steps`` steps starting at prompt ``first_step * step_prompts`` of ``stats``:
    (decision table in arrow.FILTER_DECISION, the state after them).

    A step's mean std does not depend on the state, so all of them come from one segment sum;
    the threshold recurrence (``std_filter.FilterRule``) then runs over one float per step, and
    the per-prompt comparison is one vectorized pass.
    """
    import numpy as np

    lo = first_step * step_prompts
    part = stats.slice(lo, steps * step_prompts)
    std = part[c.PROMPT_STD].to_numpy().astype(np.float64)  # NaN where null
    has = ~np.isnan(std)
    starts = np.arange(0, len(part), step_prompts)
    spread_n = np.add.reduceat(has.astype(np.int64), starts)
    spread_sum = np.add.reduceat(np.where(has, std, 0.0), starts)
    thresholds = np.empty(len(starts))
    step_no = np.empty(len(starts), dtype=np.int64)
    for k in range(len(starts)):
        t = rule.threshold(state)
        thresholds[k] = np.nan if t is None else t
        step_no[k] = state.step
        state = rule.advance(state, float(spread_sum[k] / spread_n[k]) if spread_n[k] else None)
    sizes = np.diff(np.append(starts, len(part)))
    thr = np.repeat(thresholds, sizes)
    warm = np.isnan(thr)
    code = np.where(~has, np.where(part[c.N_REWARDS].to_numpy() == 0, 3, 4), np.where(warm, 1, np.where(std >= thr, 0, 2)))
    reason = pl.Series(c.FILTER_REASON, [sf.KEPT, sf.WARMUP, sf.LOW_STD, sf.NO_REWARD, sf.ONE_REWARD], dtype=pl.String).gather(code)
    table = part.select(
        pl.col(c.PROMPT_ID),
        pl.Series(c.STEP, np.repeat(step_no, sizes)),
        pl.col(c.N_ROLLOUTS),
        pl.col(c.N_REWARDS),
        pl.col(c.PROMPT_STD),
        pl.Series(c.THRESHOLD, thr).fill_nan(None),
        pl.Series(c.KEPT, code <= 1),
        reason,
    ).to_arrow()
    return table.cast(arrow.FILTER_DECISION), state


# ------------------------------------------------------------------------------------ the run
def _read_json(fs, path: str) -> dict | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as f:
        return json.load(f)


def _seed_state(path: str | None) -> dict | None:
    if not path:
        return None
    from tribunal.cluster import storage

    fs, p = storage.resolve(path)
    data = _read_json(fs, p)
    if data is None:
        raise TribunalError(f"--state: {path} not found")
    if "state" not in data:
        raise TribunalError(f"--state: {path} is not a filter state file (no 'state' key)")
    return sf.FilterState.from_dict(data["state"]).to_dict()


def _write_kept(src_fs, files: list[str], out, kept_ids: pl.Series, batch_rows: int = 1 << 20) -> int:
    """Stream the kept rollouts into one shard, in input order, with the input's own Arrow schema,
    atomically; returns its rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    with src_fs.open(files[0], "rb") as fh:
        schema = pq.ParquetFile(fh).schema_arrow
    writer = storage.ParquetShardWriter(out.fs, storage.join(out.path, KEPT_SHARD), schema, replace=True, write_statistics=False)
    keep = pl.col(c.PROMPT_ID).cast(pl.String).is_in(kept_ids.implode())
    try:
        for f in files:
            if storage.is_local(src_fs):
                # polars decodes nested Parquet (the context messages) several times faster than
                # pyarrow here; the kept rows go back to the input's exact Arrow types.
                for df in pl.scan_parquet(f).filter(keep).collect_batches(chunk_size=batch_rows, maintain_order=True):
                    writer.write(df.to_arrow().cast(schema))
                continue
            with src_fs.open(f, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                    mask = pl.from_arrow(batch.column(c.PROMPT_ID)).cast(pl.String).is_in(kept_ids.implode()).to_arrow()
                    writer.write(pa.Table.from_batches([batch.filter(mask)]))
    except BaseException:
        writer.close(publish=False)
        raise
    rows = writer.rows
    writer.close()
    return rows


def run(cfg: FilterConfig, *, job: str = "filter", stream=None) -> dict:
    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import OutputDir, Timer, input_files, package_versions
    from tribunal.jobs.pipeline.progress import fmt_duration

    stream = stream or sys.stderr
    timer = Timer()
    in_fs, files = input_files(cfg.input)
    _check_columns(in_fs, files, cfg.reward_column)
    seed = _seed_state(cfg.state)
    rule = cfg.rule()
    out = OutputDir(cfg.output)
    settings = cfg.settings(seed)
    out.prepare_run(settings, cfg.overwrite)
    decisions = OutputDir(storage.join(cfg.output, PROMPTS_DIR))
    state_path = storage.join(out.path, STATE_FILE)

    stats = prompt_stats(_scan(in_fs, files), cfg.reward_column)
    timer.mark("stats")
    n_prompts = len(stats)
    total_steps = -(-n_prompts // cfg.step_prompts)

    saved = _read_json(out.fs, state_path)
    if saved is not None and saved.get("settings") == settings and saved.get("prompts") == n_prompts:
        state, done_steps = sf.FilterState.from_dict(saved["state"]), int(saved["steps_done"])
    else:  # a fresh run (or the input changed under an old state): start over
        decisions.reset_parts()
        state, done_steps = (sf.FilterState.from_dict(seed) if seed else sf.FilterState()), 0
    resumed = done_steps
    print(f"[{job}] {n_prompts} prompts, {int(stats[c.N_ROLLOUTS].sum() or 0)} rollouts in {len(files)} file(s); "
          f"{total_steps} steps of {cfg.step_prompts}" + (f", resuming at step {done_steps}" if done_steps else ""), file=stream)

    last_line = time.monotonic()
    decisions.fs.makedirs(decisions.path, exist_ok=True)
    while done_steps < total_steps:
        steps = min(cfg.steps_per_shard, total_steps - done_steps)
        table, state = decide_steps(stats, rule, state, done_steps, steps, cfg.step_prompts)
        name = f"part-{done_steps:08d}.parquet"
        storage.write_parquet_atomic(decisions.fs, storage.join(decisions.path, name), table, arrow.FILTER_DECISION, replace=True)
        done_steps += steps
        # The decisions are published first: a kill between the two writes re-does the same shard.
        record = {"settings": settings, "prompts": n_prompts, "steps_done": done_steps, "state": state.to_dict()}
        storage.write_text_atomic(out.fs, state_path, json.dumps(record, indent=2, sort_keys=True))
        now = time.monotonic()
        if now - last_line >= PROGRESS_EVERY_S:
            last_line = now
            elapsed = time.time() - timer.start
            print(f"[{job}] step {done_steps}/{total_steps} ({100 * done_steps / max(total_steps, 1):.0f}%), ema {state.ema}, {fmt_duration(elapsed)}", file=stream, flush=True)
    timer.mark("decided")

    parts = decisions.parts()
    dec = pl.from_arrow(decisions.read(parts)) if parts else pl.from_arrow(arrow.FILTER_DECISION.empty_table())
    kept_ids = dec.filter(pl.col(c.KEPT))[c.PROMPT_ID]
    kept_rows = _write_kept(in_fs, files, out, kept_ids) if n_prompts else 0
    timer.mark("written")

    by_reason = {r: 0 for r in sf.REASONS}
    rollouts_by_reason = {r: 0 for r in sf.REASONS}
    for reason, n, rows in dec.group_by(c.FILTER_REASON).agg(pl.len(), pl.col(c.N_ROLLOUTS).sum()).iter_rows():
        by_reason[reason], rollouts_by_reason[reason] = int(n), int(rows)
    rollouts_in = int(stats[c.N_ROLLOUTS].sum() or 0)
    kept_prompts = sum(by_reason[r] for r in sf.KEEP_REASONS)
    expected_kept_rows = sum(rollouts_by_reason[r] for r in sf.KEEP_REASONS)
    counts = {
        "prompts_in": n_prompts,
        "rollouts_in": rollouts_in,
        "prompts_kept": kept_prompts,
        "rollouts_kept": kept_rows,
        "prompts_by_reason": by_reason,
        "rollouts_by_reason": rollouts_by_reason,
        "steps": total_steps,
        "reconciled": len(dec) == n_prompts == sum(by_reason.values()) and kept_rows == expected_kept_rows
        and rollouts_in == sum(rollouts_by_reason.values()),
    }
    elapsed = time.time() - timer.start
    manifest = {
        "job": job, "config": to_dict(cfg), "settings": settings, "versions": package_versions(),
        "output": out.display(), "schema": "input rollouts (kept prompts)", "counts": counts,
        "final_state": state.to_dict(), "this_run": {"resumed_at_step": resumed},
        "timings_s": timer.marks, "throughput": {"rollouts_per_s": round(rollouts_in / max(elapsed, 1e-9), 1)},
    }
    path = out.write_manifest(manifest)
    dropped = ", ".join(f"{r} {by_reason[r]}" for r in sf.REASONS if r not in sf.KEEP_REASONS and by_reason[r])
    print(f"[{job}] done in {fmt_duration(elapsed)}: {n_prompts} prompts -> kept {kept_prompts} ({by_reason[sf.WARMUP]} in warm-up), "
          f"dropped: {dropped or 'none'}; {kept_rows}/{rollouts_in} rollouts kept; ema {state.ema}"
          + ("" if counts["reconciled"] else " (DO NOT RECONCILE)"), file=stream)
    print(f"[{job}] output: {out.display()} (manifest: {path}, state: {out.display(state_path)})", file=stream)
    return manifest


def add_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below (flags win)")
    add_arguments(parser, FilterConfig)


def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("filter", argv)


if __name__ == "__main__":
    sys.exit(main())
