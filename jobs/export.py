"""export: kept (or scored) rollouts as the Parquet that verl and OpenRLHF read (CPU, polars).

Input schema: scored rollouts (``arrow.SCORED_ROLLOUT``, as ``score`` or ``filter`` writes them).

Output: ``OUT/part-00000.parquet`` in one of these layouts (schemas in ``EXPORT_SCHEMAS``), and
``OUT/_manifest.json`` with the counts:

- ``verl`` (RL prompts; one row per prompt, rollouts are generated again by the trainer):
  ``data_source`` string, ``prompt`` list<struct<role, content>>, ``ability`` string,
  ``reward_model`` struct<style, ground_truth>, ``extra_info`` struct<index int64, prompt_id>.
- ``openrlhf`` (one row per rollout with a reward): ``input`` (chat messages: use
  ``--input_key input --apply_chat_template``), ``output`` string, ``reward`` double.
- ``openrlhf-dpo`` (one pair per prompt: its best and worst rollout by reward): ``prompt``
  (messages), ``chosen`` and ``rejected`` strings, ``chosen_reward``, ``rejected_reward``.
  Prompts with fewer than two rewarded rollouts or all rewards equal have no pair (counted).

The counts reconcile per format: prompts in = verl rows; rollouts in = OpenRLHF rows + rollouts
without a reward; prompts in = DPO pairs + prompts without one, by reason. Rows are in a fixed order
(prompt_id, then rollout_index), so an export is reproducible; a re-run with other settings into
the same output is refused unless ``--overwrite``.

Run::

    tribunal export --input kept/ --output verl_data/ --format verl
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pyarrow as pa

from tribunal.jobs.pipeline.config import check, opt
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

FORMATS = ("verl", "openrlhf", "openrlhf-dpo")
SHARD = "part-00000.parquet"
KIND = "export"  # what the output holds (its run record's kind); the format is a setting
# What one input unit is, per format: verl and DPO rows are per prompt, OpenRLHF rows per rollout.
INPUT_UNIT = {"verl": "prompts", "openrlhf": "rollouts", "openrlhf-dpo": "prompts"}
NO_REWARD = "no_reward"  # openrlhf: a rollout without a finite reward
FEWER_THAN_TWO = "fewer_than_two_rewards"  # openrlhf-dpo: a prompt with under two rewarded rollouts
ALL_EQUAL = "rewards_all_equal"  # openrlhf-dpo: a prompt whose rewarded rollouts all tie

EXPORT_SCHEMAS = {
    "verl": pa.schema([
        pa.field("data_source", pa.string()),
        pa.field("prompt", pa.list_(arrow.MESSAGE), nullable=False),
        pa.field("ability", pa.string()),
        pa.field("reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])),
        pa.field("extra_info", pa.struct([pa.field("index", pa.int64()), pa.field("prompt_id", pa.string())])),
    ]),
    "openrlhf": pa.schema([
        pa.field("input", pa.list_(arrow.MESSAGE), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
    ]),
    "openrlhf-dpo": pa.schema([
        pa.field("prompt", pa.list_(arrow.MESSAGE), nullable=False),
        pa.field("chosen", pa.string(), nullable=False),
        pa.field("rejected", pa.string(), nullable=False),
        pa.field("chosen_reward", pa.float64(), nullable=False),
        pa.field("rejected_reward", pa.float64(), nullable=False),
    ]),
}

NEEDED = (c.PROMPT_ID, c.ROLLOUT_INDEX, c.CONTEXT, c.RESPONSE, c.REFERENCE, c.DATA_SOURCE, c.REWARD)


@dataclass(frozen=True)
class ExportConfig:
    """Which layout to write."""

    input: str = opt("", "scored or kept rollouts (a Parquet file or directory, local or s3://)")
    output: str = opt("", "output directory")
    format: str = opt("verl", "verl (prompts for RL), openrlhf (input/output/reward), openrlhf-dpo (best/worst pairs)", choices=FORMATS)
    ability: str = opt("general", "verl: the `ability` tag of every row")
    data_source: str | None = opt(None, "verl: data_source for rows without one (default: 'tribunal')")
    overwrite: bool = opt(False, "replace an export written with other settings (only ever a tribunal export)")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.format in FORMATS, "format", f"must be one of {FORMATS}, got {self.format!r}")

    def settings(self) -> dict:
        """The options that fix the export; a re-run into the same output must match them."""
        keys = ("input", "format", "ability", "data_source")
        return {key: getattr(self, key) for key in keys}


def to_verl(df, ability: str, default_source: str) -> tuple[pa.Table, dict]:
    """One row per prompt (its first rollout's context, reference and data_source)."""
    import polars as pl

    first = df.sort(c.PROMPT_ID, c.ROLLOUT_INDEX).unique(c.PROMPT_ID, keep="first", maintain_order=True)
    rows = first.with_row_index("_i").select(
        pl.col(c.DATA_SOURCE).fill_null(default_source).alias("data_source"),
        pl.col(c.CONTEXT).alias("prompt"),
        pl.lit(ability).alias("ability"),
        pl.struct(pl.lit("rule").alias("style"), pl.col(c.REFERENCE).alias("ground_truth")).alias("reward_model"),
        pl.struct(pl.col("_i").cast(pl.Int64).alias("index"), pl.col(c.PROMPT_ID).alias("prompt_id")).alias("extra_info"),
    )
    prompts = df[c.PROMPT_ID].n_unique()
    return rows.to_arrow(), {"rows_in": prompts, "rows_out": len(rows), "rows": len(rows), "prompts": prompts,
                             "no_reference": int(first[c.REFERENCE].null_count())}


def to_openrlhf(df) -> tuple[pa.Table, dict]:
    """One row per rollout with a finite reward."""
    import polars as pl

    ok = pl.col(c.REWARD).is_not_null() & pl.col(c.REWARD).is_finite()
    rows = df.sort(c.PROMPT_ID, c.ROLLOUT_INDEX).filter(ok).select(
        pl.col(c.CONTEXT).alias("input"), pl.col(c.RESPONSE).alias("output"), pl.col(c.REWARD).alias("reward"))
    no_reward = len(df) - len(rows)
    return rows.to_arrow(), {"rows_in": len(df), "rows_out": len(rows), "dropped": {NO_REWARD: no_reward} if no_reward else {},
                             "rows": len(rows), "no_reward": no_reward}


def to_dpo(df) -> tuple[pa.Table, dict]:
    """Best and worst rollout by reward per prompt (ties: the lower rollout_index)."""
    import polars as pl

    ok = df.filter(pl.col(c.REWARD).is_not_null() & pl.col(c.REWARD).is_finite())
    best = ok.sort([c.PROMPT_ID, c.REWARD, c.ROLLOUT_INDEX], descending=[False, True, False]).unique(c.PROMPT_ID, keep="first", maintain_order=True)
    worst = ok.sort([c.PROMPT_ID, c.REWARD, c.ROLLOUT_INDEX]).unique(c.PROMPT_ID, keep="first", maintain_order=True)
    pairs = best.join(worst, on=c.PROMPT_ID, suffix="_w").filter(pl.col(c.REWARD) > pl.col(f"{c.REWARD}_w")).sort(c.PROMPT_ID)
    rows = pairs.select(
        pl.col(c.CONTEXT).alias("prompt"), pl.col(c.RESPONSE).alias("chosen"), pl.col(f"{c.RESPONSE}_w").alias("rejected"),
        pl.col(c.REWARD).alias("chosen_reward"), pl.col(f"{c.REWARD}_w").alias("rejected_reward"))
    prompts = df[c.PROMPT_ID].n_unique()
    # A prompt without a pair has fewer than two rewarded rollouts, or rewards all equal.
    few = prompts - int((ok.group_by(c.PROMPT_ID).len()["len"] >= 2).sum())
    dropped = {FEWER_THAN_TWO: few, ALL_EQUAL: prompts - len(rows) - few}
    return rows.to_arrow(), {"rows_in": prompts, "rows_out": len(rows), "dropped": {k: v for k, v in dropped.items() if v},
                             "rows": len(rows), "prompts": prompts, "no_pair": prompts - len(rows)}


def run(cfg: ExportConfig, *, job: str = "export", stream=None) -> dict:
    import polars as pl
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import OutputDir, input_files
    from tribunal.jobs.pipeline.report import RunReport, Units

    out = OutputDir(cfg.output)
    report = RunReport(job, KIND, cfg, out, Units(input=INPUT_UNIT[cfg.format], output=f"{cfg.format} rows"), stream)
    fs, files = input_files(cfg.input)
    for f in files:
        with fs.open(f, "rb") as fh:
            names = pq.ParquetFile(fh).schema_arrow.names
        missing = [col for col in NEEDED if col not in names]
        if missing:
            raise TribunalError(f"{storage.display(fs, f)}: no {missing[0]!r} column: not scored rollouts (run `tribunal score` first)")
    out.prepare_run(cfg.settings(), cfg.overwrite, kind=KIND, inputs=[cfg.input])
    out.reset_parts()
    df = pl.from_arrow(ds.dataset(files, filesystem=storage.arrow_filesystem(fs), format="parquet").to_table(columns=list(NEEDED)))
    if cfg.format == "verl":
        out_table, counts = to_verl(df, cfg.ability, cfg.data_source or "tribunal")
    elif cfg.format == "openrlhf":
        out_table, counts = to_openrlhf(df)
    else:
        out_table, counts = to_dpo(df)
    counts = {"rollouts_in": len(df), "quarantined": 0, **counts}
    schema = EXPORT_SCHEMAS[cfg.format]
    storage.write_parquet_atomic(out.fs, storage.join(out.path, SHARD), out_table.cast(schema), schema, replace=True)
    report.mark("written")
    notes = {k: counts[k] for k in ("no_reference",) if k in counts}
    return report.finish(
        counts,
        extra={"format": cfg.format, "columns": schema.names},
        lines=[f"{len(df)} rollouts of {df[c.PROMPT_ID].n_unique()} prompts read" + "".join(f", {k} {v}" for k, v in notes.items())],
    )



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("export", argv)


if __name__ == "__main__":
    sys.exit(main())
