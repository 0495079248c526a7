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
    OUT/_filter_state.json        ema, step, warm-up list, steps done (after the last committed
                                  shard and at the end; after every step on S3): a killed run
                                  resumes from it, and ``--state`` seeds a later run's EMA with it
    OUT/_filter_steps.jsonl       (local output) one line per step since the start: steps done,
                                  state, the step's threshold; read on resume with the state file
    OUT/_manifest.json            config, counts (reconciled), timings

The state is persisted after every step (``_StateFile``: an appended journal line locally, a
whole-object PUT of the state file on S3), with the thresholds of the steps whose decisions are
not committed yet; decisions are committed every ``--steps-per-shard`` steps. A run killed at any
point resumes from its last step to a byte-identical result.

Run::

    tribunal filter --input scored/ --output kept/ --std-beta 0.5 --step-prompts 256
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from tribunal.jobs.pipeline.config import add_arguments, check, opt, to_dict
from tribunal.jobs.rewards import std_filter as sf
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

STATE_FILE = "_filter_state.json"
JOURNAL_FILE = "_filter_steps.jsonl"
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
    steps_per_shard: int = opt(512, "steps whose decisions are written as one shard (the state is written after every step)")
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
        # Non-finite rewards become null first: count and std skip nulls on their fast paths
        # (a filter inside the aggregation: 0.11-0.15 s against 0.10 s on 1M rows here).
        lf.select(pl.col(c.PROMPT_ID).cast(pl.String), pl.when(r.is_finite()).then(r).alias("_r"))
        .group_by(c.PROMPT_ID)
        .agg(
            pl.len().cast(pl.Int64).alias(c.N_ROLLOUTS),
            pl.col("_r").count().cast(pl.Int64).alias(c.N_REWARDS),
            pl.col("_r").std(ddof=1).alias(c.PROMPT_STD),
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
def step_spreads(stats: pl.DataFrame, step_prompts: int):
    """The mean std over each step's prompts with a spread (NaN: none has one), every step at
    once: a step's mean does not depend on the filter state, so it is one segment sum."""
    import numpy as np

    std = stats[c.PROMPT_STD].to_numpy().astype(np.float64)  # NaN where null
    if not len(std):
        return np.empty(0)
    has = ~np.isnan(std)
    starts = np.arange(0, len(std), step_prompts)
    n = np.add.reduceat(has.astype(np.int64), starts)
    total = np.add.reduceat(np.where(has, std, 0.0), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def advance(rule: sf.FilterRule, state: sf.FilterState, spread: float) -> tuple[list, sf.FilterState]:
    """One step of the threshold recurrence: ([step number, threshold or None], next state)."""
    t = rule.threshold(state)
    return [state.step, t], rule.advance(state, None if spread != spread else float(spread))


def decision_table(stats: pl.DataFrame, first_step: int, steps: list[list], step_prompts: int):
    """The decisions (arrow.FILTER_DECISION) of the prompts of steps ``first_step ..``, given each
    step's ``[step number, threshold]``: one vectorized comparison."""
    import numpy as np

    part = stats.slice(first_step * step_prompts, len(steps) * step_prompts)
    std = part[c.PROMPT_STD].to_numpy().astype(np.float64)  # NaN where null
    has = ~np.isnan(std)
    sizes = np.diff(np.append(np.arange(0, len(part), step_prompts), len(part)))
    thr = np.repeat(np.array([np.nan if t is None else t for _, t in steps], dtype=np.float64), sizes)
    warm = np.isnan(thr)
    code = np.where(~has, np.where(part[c.N_REWARDS].to_numpy() == 0, 3, 4), np.where(warm, 1, np.where(std >= thr, 0, 2)))
    reason = pl.Series(c.FILTER_REASON, [sf.KEPT, sf.WARMUP, sf.LOW_STD, sf.NO_REWARD, sf.ONE_REWARD], dtype=pl.String).gather(code)
    table = part.select(
        pl.col(c.PROMPT_ID),
        pl.Series(c.STEP, np.repeat(np.array([n for n, _ in steps], dtype=np.int64), sizes)),
        pl.col(c.N_ROLLOUTS),
        pl.col(c.N_REWARDS),
        pl.col(c.PROMPT_STD),
        pl.Series(c.THRESHOLD, thr).fill_nan(None),
        pl.Series(c.KEPT, code <= 1),
        reason,
    ).to_arrow()
    return table.cast(arrow.FILTER_DECISION)


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


# Columns worth a Parquet dictionary (few distinct values, repeated); the long text columns are
# not: hashing them costs more than it saves (zstd finds the repeats).
DICTIONARY_COLUMNS = (c.PROMPT_ID, c.DATA_SOURCE, f"{c.CONTEXT}.list.element.{c.ROLE}")


def _write_kept(src_fs, files: list[str], out, kept_ids: pl.Series, batch_rows: int = 1 << 18) -> int:
    """Stream the kept rollouts into one shard, in input order, with the input's own Arrow schema,
    atomically; returns its rows. Reading and filtering the next batch overlaps the encoding of
    this one (a writer thread; both sides release the GIL)."""
    import queue
    import threading

    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    with src_fs.open(files[0], "rb") as fh:
        schema = pq.ParquetFile(fh).schema_arrow
    wanted = kept_ids.implode()
    keep = pl.col(c.PROMPT_ID).cast(pl.String).is_in(wanted)
    if storage.is_local(src_fs) and storage.is_local(out.fs) and _polars_writes_exactly(schema) and _POLARS_SINK_METADATA:
        return _sink_kept(files, out, keep, schema)
    writer = storage.ParquetShardWriter(out.fs, storage.join(out.path, KEPT_SHARD), schema, replace=True, write_statistics=False,
                                        use_dictionary=[n for n in DICTIONARY_COLUMNS if n.split(".")[0] in schema.names])
    q: queue.Queue = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def write() -> None:
        while (t := q.get()) is not None:
            if not failed:
                try:
                    writer.write(t)
                except BaseException as e:  # noqa: BLE001 - re-raised by the reader
                    failed.append(e)

    thread = threading.Thread(target=write, daemon=True, name="tribunal-filter-writer")
    thread.start()
    try:
        for f in files:
            if failed:
                break
            if storage.is_local(src_fs):
                # polars decodes nested Parquet (the context messages) several times faster than
                # pyarrow here; the kept rows go back to the input's exact Arrow types.
                for df in pl.scan_parquet(f).filter(keep).collect_batches(chunk_size=batch_rows, maintain_order=True):
                    q.put(df.to_arrow().cast(schema))
                continue
            with src_fs.open(f, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                    mask = pl.from_arrow(batch.column(c.PROMPT_ID)).cast(pl.String).is_in(wanted).to_arrow()
                    q.put(pa.Table.from_batches([batch.filter(mask)]))
    except BaseException:
        failed.append(None)
        raise
    finally:
        q.put(None)
        thread.join()
        if failed:
            writer.close(publish=False)
    if failed:
        raise failed[0]
    rows = writer.rows
    writer.close()
    return rows


# Polars versions whose sink takes file metadata (the input's Arrow schema is stored through it).
_POLARS_SINK_METADATA = "metadata" in inspect.signature(pl.LazyFrame.sink_parquet).parameters


def _polars_writes_exactly(schema: pa.Schema) -> bool:
    """Whether polars' Parquet writer stores columns of these Arrow types exactly as pyarrow reads
    them back under the input's own schema: strings, numbers, booleans, and lists and structs of
    them, all nullable (polars writes every column optional)."""

    def ok(t: pa.DataType) -> bool:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return t.value_field.nullable and ok(t.value_type)
        if pa.types.is_struct(t):
            return all(f.nullable and ok(f.type) for f in t)
        return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
                or pa.types.is_boolean(t))

    return all(f.nullable and ok(f.type) for f in schema)


def _sink_kept(files: list[str], out, keep: pl.Expr, schema: pa.Schema) -> int:
    """Local files: polars' streaming engine reads, filters and writes the kept rows in one plan,
    decoding and encoding on every core (about 1.4x the pyarrow writer thread's speed). Polars
    writes 64-bit string and list offsets; the Parquet bytes do not depend on them, and the
    ``ARROW:schema`` metadata is the input's, so readers get the input's exact types back."""
    import base64

    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    writer = storage.ParquetShardWriter(out.fs, storage.join(out.path, KEPT_SHARD), schema, replace=True, external=True)
    published = False
    try:
        pl.scan_parquet(files).filter(keep).sink_parquet(
            writer.temp_path, compression=storage.PARQUET_OPTIONS["compression"], compression_level=storage.PARQUET_OPTIONS["compression_level"],
            statistics=False, maintain_order=True, metadata={"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()).decode()},
        )
        writer.rows = pq.ParquetFile(writer.temp_path).metadata.num_rows
        published = True
    finally:
        writer.close(publish=published)
    return writer.rows


class _StateFile:
    """The filter state after every step.

    ``OUT/_filter_state.json`` holds the whole record (settings, steps done, state, and the
    ``[step, threshold]`` of the steps whose decisions are not committed yet); it is replaced
    atomically (temporary file + rename locally, one whole-object PUT on S3). On an object store
    it is PUT after every step. Locally it is replaced when a shard of decisions is committed and
    at the end, and every step in between is appended as one JSON line to ``OUT/_filter_steps.jsonl``
    (after a header line with the settings): a rename over an existing file costs 2.5-4 ms on
    ext4 here (``auto_da_alloc`` writes the new file's data back first), an append 0.03 ms, and
    a process killed mid-append leaves at most a torn last line, which ``load`` ignores.
    """

    def __init__(self, fs, path: str, journal: str) -> None:
        from tribunal.cluster import storage

        self.fs, self.path, self.journal, self.local = fs, path, journal, storage.is_local(fs)
        self._log = None

    def load(self, settings: dict, prompts: int) -> tuple[dict, list] | None:
        """(the last record, the pending steps) saved by an earlier run with these settings."""
        record = _read_json(self.fs, self.path)
        if record is not None and (record.get("settings") != settings or record.get("prompts") != prompts):
            record = None
        pending = [list(x) for x in record.get("pending", [])] if record else []
        if not self.local or not self.fs.exists(self.journal):
            return (record, pending) if record else None
        with open(self.journal, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            return (record, pending) if record else None
        if header.get("settings") != settings or header.get("prompts") != prompts:
            return (record, pending) if record else None
        done = record["steps_done"] if record else 0
        for line in lines[1:]:
            try:
                entry = json.loads(line)
            except ValueError:  # a torn last line (or the empty string after the last newline)
                break
            if entry["steps_done"] <= done:
                continue
            if entry["steps_done"] != done + 1:
                break
            done = entry["steps_done"]
            pending.append(entry["step"])
            record = {"settings": settings, "prompts": prompts, "steps_done": done, "state": entry["state"]}
        return (record, pending) if record else None

    def start(self, settings: dict, prompts: int, fresh: bool) -> None:
        if not self.local:
            return
        self._log = open(self.journal, "w" if fresh else "a", encoding="utf-8")
        if fresh:
            self._log.write(json.dumps({"settings": settings, "prompts": prompts}, sort_keys=True) + "\n")
            self._log.flush()

    def write(self, record: dict, step: list, committed: bool) -> None:
        """After a step: ``record`` (with its ``pending`` list) and that step's ``[step, threshold]``."""
        from tribunal.cluster import storage

        if not self.local:
            self.fs.pipe_file(self.path, json.dumps(record, sort_keys=True).encode())
            return
        self._log.write(json.dumps({"steps_done": record["steps_done"], "state": record["state"], "step": step}) + "\n")
        self._log.flush()
        if committed:
            storage.write_text_atomic(self.fs, self.path, json.dumps(record, indent=2, sort_keys=True))

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


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

    state_file = _StateFile(out.fs, state_path, storage.join(out.path, JOURNAL_FILE))
    saved = state_file.load(settings, n_prompts)
    if saved is not None:
        state, done_steps = sf.FilterState.from_dict(saved[0]["state"]), int(saved[0]["steps_done"])
        pending = saved[1]  # [step, threshold] of the steps whose decisions are not committed yet
    else:  # a fresh run (or the input changed under an old state): start over
        decisions.reset_parts()
        state, done_steps, pending = (sf.FilterState.from_dict(seed) if seed else sf.FilterState()), 0, []
    state_file.start(settings, n_prompts, fresh=saved is None)
    resumed = done_steps
    print(f"[{job}] {n_prompts} prompts, {int(stats[c.N_ROLLOUTS].sum() or 0)} rollouts in {len(files)} file(s); "
          f"{total_steps} steps of {cfg.step_prompts}" + (f", resuming at step {done_steps}" if done_steps else ""), file=stream)

    # Decisions committed by an earlier run (parts named by their first step) are read back; the
    # ones made here are kept in memory as they are written.
    shard_start = done_steps - len(pending)
    tables = []
    if shard_start:
        committed = [p for p in decisions.parts() if int(p.rsplit("part-", 1)[1].split(".")[0]) < shard_start]
        tables.append(decisions.read(committed))
    spreads = step_spreads(stats, cfg.step_prompts)
    last_line = time.monotonic()
    decisions.fs.makedirs(decisions.path, exist_ok=True)
    while done_steps < total_steps:
        # One step: its threshold from the state, the state advanced by its mean std; then the
        # state (and the thresholds of the shard's steps so far) persisted before the next step.
        thr, state = advance(rule, state, spreads[done_steps])
        pending.append(thr)
        done_steps += 1
        commit = len(pending) >= cfg.steps_per_shard or done_steps == total_steps
        if commit:
            # A shard of decisions is published before the state that says so: a kill between
            # the two writes re-writes the same shard, with the same bytes.
            table = decision_table(stats, shard_start, pending, cfg.step_prompts)
            storage.write_parquet_atomic(decisions.fs, storage.join(decisions.path, f"part-{shard_start:08d}.parquet"), table, arrow.FILTER_DECISION, replace=True)
            tables.append(table)
            pending, shard_start = [], done_steps
        state_file.write({"settings": settings, "prompts": n_prompts, "steps_done": done_steps, "state": state.to_dict(), "pending": pending}, thr, commit)
        now = time.monotonic()
        if now - last_line >= PROGRESS_EVERY_S:
            last_line = now
            elapsed = time.time() - timer.start
            print(f"[{job}] step {done_steps}/{total_steps} ({100 * done_steps / max(total_steps, 1):.0f}%), ema {state.ema}, {fmt_duration(elapsed)}", file=stream, flush=True)
    state_file.close()
    timer.mark("decided")

    dec = pl.from_arrow(pa.concat_tables(tables) if tables else arrow.FILTER_DECISION.empty_table())
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
