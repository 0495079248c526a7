"""score: a reward for every policy rollout, from a GRM's judgments or from the policy's own probabilities.

Input schema: Parquet file or directory (local or ``s3://``), one rollout per row: ``context``
(messages) or ``prompt``, ``response``, optional ``prompt_id``, ``rollout_index``,
``data_source`` and a reference answer (``--reference-column``). See ``tribunal.schemas.rollouts``.

Output schema: ``OUT/part-*.parquet`` in ``tribunal.schemas.arrow.SCORED_ROLLOUT``; one row per
valid rollout, keyed by (``prompt_id``, ``rollout_index``), with ``reward`` (null when none
could be computed) and ``reward_reason`` (why a reward is special: ``no_answer``, a GRM parse
failure...). Bad input rows go to ``OUT/_quarantine/`` with a reason.

Modes:

- ``--mode prob`` (RLPR, SPEC section 7): ``r`` = mean probability of the reference answer's
  tokens in place of the generated answer, ``r'`` = the same without the reasoning (once per
  prompt), reward ``clip(r - r', 0, 1)``, optionally mixed with the format check
  (``--format-weight 0.1``). One forward pass per rollout, no sampling.
- ``--mode grm --form pointwise|group``: the GRM judges each rollout alone, or a prompt's
  rollouts together (chunks of ``--max-n``), ``k`` times; the reward is the mean valid score.

The driver validates the whole input (prompt groups may span files), groups it into blocks of
whole prompts, and the engine actors score the blocks; each block is one atomic shard, so a
killed run resumes from the prompts already written.

Run::

    tribunal score --input rollouts/ --output scored/ --mode prob --model POLICY --reference-column answer
    tribunal score --input rollouts/ --output scored/ --mode grm --model GRM --k 4
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tribunal.jobs.engines import SamplingConfig
from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.pipeline.engine_job import EngineJobConfig, default_template
from tribunal.jobs.pipeline.outputs import OutputDir
from tribunal.jobs.pipeline.stages import StagePlan
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

MODES = ("prob", "grm")
FORMS = ("pointwise", "group")
KIND = "scored_rollout"


@dataclass(frozen=True)
class ScoreConfig(EngineJobConfig):
    """Everything that defines a scoring run."""

    input: str = opt("", "rollouts: a Parquet file or directory (local path or s3://...)")
    output: str = opt("", "output directory for scored rollout shards (local path or s3://...)")
    model: str = opt("", "scoring model: the policy (prob) or the GRM (grm); a local model directory")
    mode: str = opt("prob", "prob: RLPR probability reward under --model (the policy); grm: GRM judgments", choices=MODES)
    reference_column: str = opt(c.REFERENCE, "input column holding the reference answer (needed by prob mode)")
    chat_template: bool = opt(True, "prob: render the prompt with the model's chat template (else: the turns' text joined)")
    answer_open: str = opt("<answer>", "prob: tag opening the answer section")
    answer_close: str = opt("</answer>", "prob: tag closing the answer section")
    think_open: str = opt("<think>", "prob: tag opening the reasoning (format check; empty: no reasoning block)")
    think_close: str = opt("</think>", "prob: tag closing the reasoning")
    format_weight: float | None = opt(None, "prob: reward = (1 - w) * r_hat + w * format_ok (RLPR uses 0.1); default: r_hat alone")
    form: str = opt("pointwise", "grm: pointwise (each rollout alone) or group (a prompt's rollouts together)", choices=FORMS)
    template: str | None = opt(None, "grm: prompt template (a built-in name or a template file; default: the one the model "
                                     "records in tribunal_model.json, its one-response variant for pointwise; else default)")
    k: int = opt(4, "grm: GRM samples per rollout (pointwise) or per chunk (group)")
    max_n: int = opt(4, "grm group: rollouts judged together at most")
    temperature: float = opt(1.0, "grm: sampling temperature (0 = greedy)")
    top_p: float = opt(1.0, "grm: nucleus sampling mass")
    max_tokens: int = opt(512, "grm: max new tokens per judgment")
    seed: int = opt(0, "grm: run seed (permutations and sampling)")
    batch_rollouts: int = opt(64, "rollouts per engine call (whole prompt groups: a block may hold more)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.template is None and self.mode == "grm":
            object.__setattr__(self, "template", default_template(self.model, single=self.form == "pointwise"))
        check(self.mode in MODES, "mode", f"must be one of {MODES}, got {self.mode!r}")
        check(self.form in FORMS, "form", f"must be one of {FORMS}, got {self.form!r}")
        check(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        check(self.max_n >= 1, "max_n", f"must be >= 1, got {self.max_n}")
        check(self.batch_rollouts >= 1, "batch_rollouts", f"must be >= 1, got {self.batch_rollouts}")
        check(self.format_weight is None or 0 <= self.format_weight <= 1, "format_weight", f"must be in [0, 1], got {self.format_weight}")
        check(bool(self.answer_open) and bool(self.answer_close), "answer_open", "answer tags must be non-empty")
        check(bool(self.think_open) == bool(self.think_close), "think_open", "give both think tags or neither")
        check(0 <= self.temperature <= 2, "temperature", f"must be in [0, 2], got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")

    def engine_ops(self) -> tuple[str, ...]:
        return ("score_continuation",) if self.mode == "prob" else ("generate",)

    def answer_format(self):
        from tribunal.jobs.rewards.prob import AnswerFormat

        return AnswerFormat(self.answer_open, self.answer_close, self.think_open, self.think_close)

    def settings(self) -> dict:
        """The options that fix the results; a resumed run must match them."""
        keys = ["input", "mode", "model", "reference_column"]
        if self.mode == "prob":
            keys += ["chat_template", "answer_open", "answer_close", "think_open", "think_close", "format_weight"]
        else:
            keys += ["form", "template", "k", "max_n", "temperature", "top_p", "max_tokens", "seed"]
        return {key: getattr(self, key) for key in keys}


def build_stages(cfg: ScoreConfig, out: OutputDir, board=None) -> list[StagePlan]:
    """score -> write, as plain data (the input blocks are whole prompt groups already)."""
    from tribunal.jobs.pipeline.scoring import ROLLOUT_COLUMNS, STATS, GrmScoreStage, ProbScoreStage, write_scored_stage

    if cfg.mode == "prob":
        stage, ctor = ProbScoreStage, {"engine_cfg": cfg.engine_config(), "answer_format": cfg.answer_format(),
                                       "format_weight": cfg.format_weight, "chat_template": cfg.chat_template, "board": board}
    else:
        sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
        stage, ctor = GrmScoreStage, {"engine_cfg": cfg.engine_config(), "sampling": sampling, "template": cfg.template,
                                      "form": cfg.form, "k": cfg.k, "max_n": cfg.max_n, "seed": cfg.seed, "board": board}
    return [
        StagePlan("score", stage, {"batch_format": "pyarrow", "batch_size": None, "fn_constructor_kwargs": ctor, **cfg.pool().map_batches_kwargs()},
                  needs=ROLLOUT_COLUMNS, emits=tuple(arrow.SCORED_ROLLOUT.names)),
        StagePlan("write", write_scored_stage, {"batch_format": "pyarrow", "batch_size": None,
                                                 "fn_kwargs": {"out_dir": out.path, "fs": out.fs, "run": out.run, "quarantine_dir": out.quarantine}},
                  needs=(c.PROMPT_ID, c.ROLLOUT_INDEX, c.REWARD, c.REWARD_REASON), emits=tuple(STATS.names)),
    ]


def read_rollouts(cfg: ScoreConfig, out: OutputDir):
    """Validate the whole input on the driver: (canonical rollouts not yet scored, rows in,
    quarantined rows). Quarantine shards are named by their content, so a re-run rewrites the
    same files instead of adding copies."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import input_files
    from tribunal.jobs.pipeline.stages import shard_name
    from tribunal.schemas import arrow
    from tribunal.schemas.rollouts import check_rollout_schema, normalize_rollouts

    fs, files = input_files(cfg.input)
    need_ref = cfg.mode == "prob"
    tables = []
    for f in files:
        where = storage.display(fs, f)
        with fs.open(f, "rb") as fh:
            t = pq.ParquetFile(fh).read()
        check_rollout_schema(t.schema, where, cfg.reference_column if need_ref else None)
        tables.append(t.append_column(c.SOURCE_PATH, pa.array([where] * t.num_rows, pa.string())))
    table = pa.concat_tables(tables, promote_options="permissive")
    valid, quarantined = normalize_rollouts(table, reference_column=cfg.reference_column, need_reference=need_ref, where=cfg.input)
    if len(quarantined):
        name = shard_name(quarantined[c.RAW].to_pylist())
        storage.write_parquet_atomic(out.fs, storage.join(out.quarantine, name), quarantined, arrow.QUARANTINE)
    parts = out.parts()
    if parts:
        done = pc.unique(out.read(parts, [c.PROMPT_ID])[c.PROMPT_ID].combine_chunks())
        valid = valid.filter(pc.invert(pc.is_in(valid[c.PROMPT_ID], value_set=done)))
    return valid, table.num_rows, quarantined.num_rows


def summarize(out: OutputDir, rows_in: int) -> dict:
    """Counts from the shards themselves (they cover resumed runs too)."""
    import polars as pl

    parts = out.parts()
    cols = [c.PROMPT_ID, c.ROLLOUT_INDEX, c.REWARD, c.REWARD_REASON]
    df = pl.from_arrow(out.read(parts, cols)) if parts else pl.DataFrame(schema={c.PROMPT_ID: pl.String, c.ROLLOUT_INDEX: pl.Int32, c.REWARD: pl.Float64, c.REWARD_REASON: pl.String})
    reasons = dict(sorted((str(k), int(v)) for k, v in df.filter(pl.col(c.REWARD_REASON).is_not_null()).group_by(c.REWARD_REASON).len().iter_rows()))
    duplicates = int(df.select(c.PROMPT_ID, c.ROLLOUT_INDEX).is_duplicated().sum()) if len(df) else 0
    rewards = df[c.REWARD].drop_nulls()
    quarantined = out.quarantine_counts()
    return {
        "rows_in": rows_in,
        "rows_out": len(df),
        "rollouts_scored": len(df),
        "prompts": df[c.PROMPT_ID].n_unique() if len(df) else 0,
        "quarantined": sum(quarantined.values()),
        "quarantine_reasons": quarantined,
        "duplicate_keys": duplicates,
        "null_rewards": int(df[c.REWARD].null_count()),
        "reward_reasons": reasons,
        "reward_mean": float(rewards.mean()) if len(rewards) else None,
    }


def run(cfg: ScoreConfig, *, job: str = "score", stream=None) -> dict:
    """Score every rollout not yet scored (resuming a previous run) and return the manifest."""
    import ray.data

    from tribunal.cluster.pools import fault_policy
    from tribunal.cluster.ray_cluster import connect
    from tribunal.jobs.pipeline.progress import Progress
    from tribunal.jobs.pipeline.report import RunReport, Units, reasons_text
    from tribunal.jobs.pipeline.runner import run_plan, new_board
    from tribunal.jobs.pipeline.scoring import blocks_of_prompts

    cfg.preflight()
    if cfg.mode == "grm":
        from tribunal.jobs.grm.protocol import load_template

        load_template(cfg.template)
    out = OutputDir(cfg.output)
    report = RunReport(job, KIND, cfg, out, Units("rollouts"), stream)
    out.prepare_run(cfg.settings(), cfg.overwrite, kind=KIND, inputs=[cfg.input])
    valid, rows_in, quarantined = read_rollouts(cfg, out)
    blocks = blocks_of_prompts(valid, cfg.batch_rollouts)
    where = connect(cfg.address)
    cfg.check_fits()
    cfg.usage_start()
    todo_prompts = len(set(valid[c.PROMPT_ID].to_pylist()))
    mode = f"mode {cfg.mode}" + (f"/{cfg.form}, template {cfg.template}" if cfg.mode == "grm" else "")
    report.say(f"{rows_in} rollouts in, {quarantined} quarantined, {valid.num_rows} to score ({todo_prompts} prompts, "
               f"{len(blocks)} blocks); {mode}; {cfg.engine} on {where}")
    report.mark("prepared")
    grm = cfg.mode == "grm"
    progress = Progress(job, total=valid.num_rows, unit="rollouts", rows="judgments" if grm else "scored", stream=report.stream,
                        engines=cfg.concurrency, rows_total=valid.num_rows * cfg.k if grm and cfg.form == "pointwise" else None,
                        show_failures=False)
    if blocks:
        progress.engines_loading(cfg.engine)
        board = new_board()

        def on_shard(row: dict) -> None:
            progress.update(row["rollouts"] + row["quarantined"], row["rollouts"], 0)

        run_plan(ray.data.from_arrow(blocks), build_stages(cfg, out, board), progress, on_shard, board, columns=valid.column_names)
    report.mark("scored")
    counts = summarize(out, rows_in)
    progress.print()
    score_s = max(report.timer.marks["scored"] - report.timer.marks["prepared"], 1e-9)
    rewards = f"rewards: {counts['rows_out'] - counts['null_rewards']} of {counts['rows_out']} rollouts"
    if counts["reward_mean"] is not None:
        rewards += f", mean {counts['reward_mean']:.4g}"
    if counts["reward_reasons"]:
        rewards += f"; special: {reasons_text(counts['reward_reasons'])}"
    usage, usage_line = cfg.usage_report()
    return report.finish(
        counts,
        this_run={"rollouts": progress.rows, "resumed_from_rollouts": counts["rows_out"] - progress.rows},
        throughput={"rollouts_per_s": round(progress.rows / score_s, 3)},
        extra={"model": cfg.model, "fault_policy": fault_policy().as_dict(), "engines": {"kind": cfg.engine, "usage": usage}},
        lines=[rewards] + ([usage_line] if usage_line else []),
    )



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("score", argv)


if __name__ == "__main__":
    sys.exit(main())
